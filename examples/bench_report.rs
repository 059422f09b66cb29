//! Measures altup-moe at the shapes of its peers (`benches/peers.py`) and of the targets, reads
//! the peers' timings and the scaling sweep, and writes `docs/benchmarks.md` with every ratio.
//! Run by `make bench` after the criterion benches, `scaling` and `benches/peers.py`.
//!
//! ```text
//! cargo run --release --example bench_report -- --peers target/bench/peers.json --scaling target/bench/scaling.json
//! ```

mod common;

use altup_moe::altup::{AltUp, Coefficients, ComputeInput};
use altup_moe::moe::{MoeConfig, MoeLayer};
use altup_moe::nn::{AttentionConfig, Block, BlockConfig, FeedForward, FeedForwardConfig, FfnConfig, InitScheme};
use altup_moe::train::{ByteDataset, TrainConfig, Trainer};
use altup_moe::{Arch, LanguageModel, ModelConfig};
use clap::Parser;
use common::min_seconds;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use tch::{nn::VarStore, Device, Kind, Tensor};

/// Measure altup-moe at its peers' shapes and write docs/benchmarks.md.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// JSON written by benches/peers.py.
    #[arg(long, default_value = "target/bench/peers.json")]
    peers: PathBuf,
    /// JSON written by the scaling example.
    #[arg(long, default_value = "target/bench/scaling.json")]
    scaling: PathBuf,
    /// Markdown report to write.
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: PathBuf,
    /// Timed runs per measurement (the fastest is reported).
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Untimed warm-up runs.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Smaller token counts, for a smoke test.
    #[arg(long)]
    quick: bool,
}

const D: i64 = 256;
const F: usize = 1024;

type Res<T> = altup_moe::Result<T>;

/// Forward + backward of `f(x)` against a random cotangent, gradients returned (not accumulated).
fn fwd_bwd(args: &Args, vs: &VarStore, x: &Tensor, f: impl Fn(&Tensor) -> Res<Tensor>) -> Res<f64> {
    let params: Vec<Tensor> = vs.trainable_variables();
    let g = Tensor::randn(f(x)?.size(), (Kind::Float, Device::Cpu));
    min_seconds(args.warmup, args.runs, || {
        let y = f(x)?;
        let loss = (y * &g).sum(Kind::Float);
        let _ = Tensor::f_run_backward(&[loss], &params, false, false)?;
        Ok(())
    })
}

fn moe_layer(args: &Args, config: MoeConfig, tokens: i64) -> Res<f64> {
    let vs = VarStore::new(Device::Cpu);
    let layer = MoeLayer::new(&vs.root(), D as usize, &config, &InitScheme::default())?;
    let x = Tensor::randn([tokens / 256, 256, D], (Kind::Float, Device::Cpu));
    fwd_bwd(args, &vs, &x, |x| Ok(layer.forward_t(x, true)?.0))
}

fn dense_ffn(args: &Args, d_ff: usize, tokens: i64) -> Res<f64> {
    let vs = VarStore::new(Device::Cpu);
    let ffn = FeedForward::new(
        &vs.root(),
        D as usize,
        &FeedForwardConfig { d_ff, ..Default::default() },
        &InitScheme::default(),
    )?;
    let x = Tensor::randn([tokens / 256, 256, D], (Kind::Float, Device::Cpu));
    fwd_bwd(args, &vs, &x, |x| ffn.forward(x))
}

fn gemma_altup(args: &Args) -> Res<f64> {
    let vs = VarStore::new(Device::Cpu);
    let coefficients = Coefficients::InputDependent { clip: Some(120.0) };
    let altup = AltUp::new(&vs.root(), 4, 512, coefficients, ComputeInput::Prediction, &InitScheme::default())?;
    let x = Tensor::randn([4, 8, 256, 512], (Kind::Float, Device::Cpu));
    fwd_bwd(args, &vs, &x, |x| {
        let pred = altup.predict(x, 0, true)?;
        altup.correct(&pred, &(pred.get(0) * 0.5), 0, true)
    })
}

/// A stack of 4 blocks at width `d`, plain or AltUp-wrapped with `k` blocks.
fn altup_stack(args: &Args, d: usize, k: Option<usize>) -> Res<f64> {
    let vs = VarStore::new(Device::Cpu);
    let init = InitScheme::default();
    let config = BlockConfig {
        attention: AttentionConfig { num_heads: d / 64, ..Default::default() },
        cross_attention: false,
        ffn: FfnConfig::Dense(FeedForwardConfig { d_ff: 4 * d, ..Default::default() }),
        norm_eps: 1e-6,
    };
    let blocks: Vec<Block> =
        (0..4).map(|l| Block::new(&(vs.root() / "b" / l), d, &config, &init)).collect::<Res<_>>()?;
    match k {
        None => {
            let x = Tensor::randn([8, 256, d as i64], (Kind::Float, Device::Cpu));
            fwd_bwd(args, &vs, &x, |x| {
                let mut h = x.shallow_clone();
                for b in &blocks {
                    h = b.forward_t(&h, None, true)?.0;
                }
                Ok(h)
            })
        }
        Some(k) => {
            let altups: Vec<AltUp> = (0..4)
                .map(|l| AltUp::new(&(vs.root() / "a" / l), k, d, Coefficients::Static, ComputeInput::Input, &init))
                .collect::<Res<_>>()?;
            let x = Tensor::randn([k as i64, 8, 256, d as i64], (Kind::Float, Device::Cpu));
            fwd_bwd(args, &vs, &x, |x| {
                let mut h = x.shallow_clone();
                for (l, (b, a)) in blocks.iter().zip(&altups).enumerate() {
                    h = a.forward_t(&h, l % k, true, |v| b.forward_t(v, None, true))?.0;
                }
                Ok(h.mean_dim(0, false, Kind::Float))
            })
        }
    }
}

fn train_step(args: &Args, arch: Arch, d: usize) -> Res<f64> {
    let mut config = ModelConfig::preset(arch);
    config.d_model = d;
    config.attention.num_heads = if d >= 128 { 4 } else { 2 };
    config.ffn.d_ff = 4 * d;
    if let Some(m) = &mut config.moe {
        m.d_ff = 4 * d;
    }
    config.max_seq_len = 128;
    let text: Vec<u8> = b"O Romeo, Romeo! wherefore art thou Romeo? Deny thy father and refuse thy name. ".repeat(200);
    let (train, val) = (ByteDataset::new(text.clone()), ByteDataset::new(text));
    let vs = VarStore::new(Device::Cpu);
    let model = LanguageModel::new(&vs.root(), &config)?;
    let tc = TrainConfig { steps: 1_000_000, seq_len: 128, eval_batches: 1, ..TrainConfig::default() };
    let mut trainer = Trainer::new(&vs, &model, &train, &val, tc)?;
    min_seconds(args.warmup, args.runs, || trainer.step().map(|_| ()))
}

const NOTES: &str = "## Reading the misses\n\n\
* The MoE layer's own work is small: at 4,096 tokens (`benches/components.rs`) the router takes 2-4 ms, \
planning + dispatch + combine 4-5 ms, and the experts 64 ms (E = 8) to 176 ms (E = 64) forward + backward. \
The experts are libtorch matmuls, the same kernels Hugging Face and plain PyTorch call, so on CPU the \
layers meet at parity; the 1.3-1.5x margins over Hugging Face would need fused kernels that tch cannot \
express (no custom operators). Where we win (E = 64 at 16,384 tokens, the Gemma 3n AltUp mixing, tiny \
training steps) it is from fewer passes over memory and no Python overhead.\n\
* E = 64 costs more than dense at few tokens per expert: 33.5M expert weights get full gradient buffers \
every step however few tokens each expert saw (parameter-proportional work); at 2,048 tokens (32 rows \
per expert) that dominates, at 16,384 tokens it is diluted (see the scaling sweep).\n\
* Ratios within about 10% of 1 are parity on this machine: repeated runs of the same binary move by up \
to 30%, which is also why some overheads come out below 1.\n";

fn read_json(path: &PathBuf) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "missed"
    }
}

fn run(args: Args) -> Res<()> {
    let token_counts: Vec<i64> = if args.quick { vec![2048] } else { vec![2048, 16384] };
    let big = *token_counts.last().unwrap_or(&2048);
    let peers = read_json(&args.peers);
    let peer = |key: &str| -> Option<f64> {
        let p = peers.as_ref()?;
        key.split('/').try_fold(p, |v, k| v.get(k))?.as_f64()
    };
    let mut ours: BTreeMap<String, f64> = BTreeMap::new();
    let mut record = |name: String, seconds: f64| {
        eprintln!("{name:<40} {:>9.1} ms", seconds * 1e3);
        ours.insert(name, seconds);
    };
    for &tokens in &token_counts {
        record(format!("dense_t{tokens}"), dense_ffn(&args, F, tokens)?);
        for e in [1usize, 8, 64] {
            record(
                format!("moe_e{e}_t{tokens}"),
                moe_layer(&args, MoeConfig { num_experts: e, d_ff: F, ..Default::default() }, tokens)?,
            );
        }
    }
    record("mixtral_e8_k2".into(), moe_layer(&args, MoeConfig::mixtral(8, F), big)?);
    record("gemma_altup".into(), gemma_altup(&args)?);
    for d in [256usize, 512] {
        record(format!("plain_stack_d{d}"), altup_stack(&args, d, None)?);
        for k in [2usize, 4] {
            record(format!("altup_stack_k{k}_d{d}"), altup_stack(&args, d, Some(k))?);
        }
    }
    for d in [128usize, 64] {
        for arch in Arch::ALL {
            record(format!("train_{}_d{d}", arch.name()), train_step(&args, arch, d)?);
        }
    }

    let threads = tch::get_num_threads();
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Measured on this project's CI-class machine (CPU, {threads} threads for libtorch here, {} for PyTorch in the peers script, f32), all numbers from one `make bench` run; \
         times are the fastest of {} runs after {} warm-up runs on both sides (forward + backward unless stated; the minimum is the most repeatable figure on this shared machine). \
         Reproduce with `make bench` (criterion benches, the `scaling` sweep, `benches/peers.py` for PyTorch / \
         Hugging Face, then this report). The machine is shared and noisy: single timings move by up to ±30% between runs, so read ratios near 1 as parity. The scaling sweep reports medians.\n",
        peer("threads").map_or("?".into(), |t| t.to_string()),
        args.runs,
        args.warmup
    );
    let r = |a: &str, b: &str| -> Option<f64> { Some(ours.get(a)? / ours.get(b)?) };
    let _ = writeln!(md, "## Targets\n\n| target | measured | |\n|---|---|---|");
    for e in [8usize, 64] {
        if let Some(x) = r(&format!("moe_e{e}_t{big}"), &format!("dense_t{big}")) {
            let _ = writeln!(
                md,
                "| MoE layer ≤ 1.10× dense FFN of equal active FLOPs, E = {e}, top-1, {big} tokens | {x:.2}× | {} |",
                verdict(x <= 1.10)
            );
        }
    }
    if let Some(scaling) = read_json(&args.scaling) {
        let find = |e: u64| {
            scaling.as_array()?.iter().find(|p| p["family"] == "moe-k1" && p["experts"].as_u64() == Some(e)).cloned()
        };
        if let (Some(p1), Some(p64)) = (find(1), find(64)) {
            let x = p64["step_seconds"].as_f64().unwrap_or(f64::NAN) / p1["step_seconds"].as_f64().unwrap_or(f64::NAN);
            let growth = p64["total_params"].as_f64().unwrap_or(0.0) / p1["total_params"].as_f64().unwrap_or(1.0);
            let _ = writeln!(md, "| training step (fwd+bwd) at E = 64 ≤ 1.2× E = 1, top-1 (scaling sweep) | {x:.2}× with {growth:.1}× the parameters | {} |", verdict(x <= 1.2));
        }
    }
    let speedup = |ours_key: &str, peer_key: &str| -> Option<f64> { Some(peer(peer_key)? / ours.get(ours_key)?) };
    if let Some(x) = speedup(&format!("moe_e64_t{big}"), &format!("switch/e64_t{big}")) {
        let _ = writeln!(
            md,
            "| ≥ 1.5× faster than HF Switch at E = 64, {big} tokens | {x:.2}× faster | {} |",
            verdict(x >= 1.5)
        );
    }
    if let Some(x) = speedup("mixtral_e8_k2", "mixtral_e8_k2_t16384") {
        let _ = writeln!(
            md,
            "| ≥ 1.3× faster than the HF Mixtral block at E = 8, k = 2, {big} tokens | {x:.2}× faster | {} |",
            verdict(x >= 1.3)
        );
    }
    let slowest = [1usize, 8, 64]
        .iter()
        .filter_map(|e| speedup(&format!("moe_e{e}_t2048"), &format!("switch/e{e}_t2048")))
        .fold(f64::INFINITY, f64::min);
    if slowest.is_finite() {
        let _ = writeln!(
            md,
            "| not slower than HF Switch at any E at 2,048 tokens | worst {slowest:.2}× faster | {} |",
            verdict(slowest >= 1.0)
        );
    }
    for (k, target) in [(2usize, 1.03), (4, 1.06)] {
        if let Some(x) = r(&format!("altup_stack_k{k}_d512"), "plain_stack_d512") {
            let _ = writeln!(
                md,
                "| AltUp block ≤ {target}× plain block, K = {k}, d = 512 (stack of 4) | {x:.3}× | {} |",
                verdict(x <= target)
            );
        }
    }
    for (d, target, label) in [(128usize, 0.95, "default size"), (64, 0.8, "tiny size (d = 64)")] {
        let ratios: Vec<(Arch, f64)> = Arch::ALL
            .iter()
            .filter_map(|&a| {
                Some((
                    a,
                    ours.get(&format!("train_{}_d{d}", a.name()))? / peer(&format!("train_step/{}_d{d}", a.name()))?,
                ))
            })
            .collect();
        if !ratios.is_empty() {
            let worst = ratios.iter().map(|(_, x)| *x).fold(0.0, f64::max);
            let list: Vec<String> = ratios.iter().map(|(a, x)| format!("{} {x:.2}×", a.name())).collect();
            let _ = writeln!(
                md,
                "| training step ≤ {target}× PyTorch eager, {label} | {} | {} |",
                list.join(", "),
                verdict(worst <= target)
            );
        }
    }

    let _ = writeln!(md, "\n## MoE layer (D = {D}, F = {F}, top-1, dropless, GELU)\n");
    let _ = writeln!(
        md,
        "| tokens | E | ours (ms) | ours / dense FFN | HF Switch (ms) | HF / ours |\n|---|---|---|---|---|---|"
    );
    for &tokens in &token_counts {
        for e in [1usize, 8, 64] {
            let key = format!("moe_e{e}_t{tokens}");
            let dense = r(&key, &format!("dense_t{tokens}")).map_or("-".into(), |x| format!("{x:.2}×"));
            let hf = peer(&format!("switch/e{e}_t{tokens}"));
            let _ = writeln!(
                md,
                "| {tokens} | {e} | {:.1} | {dense} | {} | {} |",
                ours[&key] * 1e3,
                hf.map_or("-".into(), |h| format!("{:.1}", h * 1e3)),
                hf.map_or("-".into(), |h| format!("{:.2}×", h / ours[&key]))
            );
        }
    }
    let _ = writeln!(
        md,
        "\nMixtral-style block (E = 8, k = 2, SwiGLU, {big} tokens): ours {:.1} ms, HF `MixtralSparseMoeBlock` {}.\n\
         Gemma 3n AltUp predict + correct (K = 4, d = 512, 2,048 tokens): ours {:.1} ms, HF `Gemma3nTextAltUp` {}.",
        ours["mixtral_e8_k2"] * 1e3,
        peer("mixtral_e8_k2_t16384").map_or("-".into(), |h| format!("{:.1} ms", h * 1e3)),
        ours["gemma_altup"] * 1e3,
        peer("gemma3n_altup_k4_d512_t2048").map_or("-".into(), |h| format!("{:.1} ms", h * 1e3)),
    );
    let _ = writeln!(md, "\n## AltUp overhead (stack of 4 blocks, 8 × 256 tokens)\n\n| d | plain (ms) | K = 2 | K = 4 |\n|---|---|---|---|");
    for d in [256usize, 512] {
        let _ = writeln!(
            md,
            "| {d} | {:.1} | {:.3}× | {:.3}× |",
            ours[&format!("plain_stack_d{d}")] * 1e3,
            r(&format!("altup_stack_k2_d{d}"), &format!("plain_stack_d{d}")).unwrap_or(f64::NAN),
            r(&format!("altup_stack_k4_d{d}"), &format!("plain_stack_d{d}")).unwrap_or(f64::NAN)
        );
    }
    let _ = writeln!(md, "\n## Training step versus PyTorch eager (16 × 128 bytes, forward + backward + clip + AdamW)\n\n| stack | d | ours (ms) | PyTorch eager (ms) | ours / theirs |\n|---|---|---|---|---|");
    for d in [128usize, 64] {
        for arch in Arch::ALL {
            let key = format!("train_{}_d{d}", arch.name());
            let theirs = peer(&format!("train_step/{}_d{d}", arch.name()));
            let _ = writeln!(
                md,
                "| {} | {d} | {:.1} | {} | {} |",
                arch.name(),
                ours[&key] * 1e3,
                theirs.map_or("-".into(), |t| format!("{:.1}", t * 1e3)),
                theirs.map_or("-".into(), |t| format!("{:.2}×", ours[&key] / t))
            );
        }
    }
    let scaling_md = args.scaling.with_file_name("scaling.md");
    if let Ok(table) = std::fs::read_to_string(&scaling_md) {
        let _ = writeln!(md, "\n## Parameters versus compute (the `scaling` sweep)\n\n{table}");
        let _ = writeln!(md, "![parameters vs step time](benchmarks/scaling_params_vs_time.svg)\n\n![relative step time](benchmarks/scaling_relative_time.svg)");
    }
    let _ = writeln!(
        md,
        "\n## Expert parallelism\n\nExchange time per MoE layer against tokens per rank, for 2 and 4 MPI ranks next to the local layer: [benchmarks/expert_parallel.md](benchmarks/expert_parallel.md) (`make bench-expert-parallel`)."
    );
    let _ = writeln!(md, "\n{NOTES}");
    if peers.is_none() {
        let _ = writeln!(
            md,
            "\n(No peer timings found at {}: run `python benches/peers.py {}`.)",
            args.peers.display(),
            args.peers.display()
        );
    }
    std::fs::write(&args.out, &md).map_err(|e| altup_moe::Error::io(&args.out, e))?;
    println!("{md}");
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn main() -> ExitCode {
    common::exit_code(run(Args::parse()))
}
