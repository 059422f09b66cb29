//! Measures altup-moe against its baselines and peers and writes `docs/benchmarks.md`. Every
//! ratio comes from interleaved timings: each round calls A then B (then C…) once, so both see
//! the same machine state; the report gives the median of the per-round ratios with a 95%
//! interval, and a target is `met` when the whole interval is on the right side, `missed` when it
//! is wholly on the wrong side, `within noise` otherwise. PyTorch / Hugging Face peers run in a
//! `benches/peers.py --serve` process driven call by call. Run by `make bench` after the
//! criterion benches and the `scaling` sweep.
//!
//! ```text
//! cargo bench --bench bench_report -- --scaling docs/benchmarks/scaling.json --out docs/benchmarks.md
//! ```

#[path = "../examples/common/mod.rs"]
mod common;

use altup_moe::altup::{AltUp, AltUpConfig, Coefficients, ComputeInput};
use altup_moe::data::TokenDataset;
use altup_moe::model::{Block, BlockConfig, FfnConfig};
use altup_moe::moe::{MoeConfig, MoeLayer};
use altup_moe::nn::{AttentionConfig, FeedForward, FeedForwardConfig, InitScheme, VarBuilder};
use altup_moe::residual::{collapse_stream, widen_stream, ResidualConfig};
use altup_moe::testing::timing::{interleaved, median, seconds, PairedRatio};
use altup_moe::train::{TrainConfig, Trainer};
use altup_moe::{
    model::{Arch, LanguageModel, ModelConfig},
    Error,
};
use clap::Parser;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use tch::{nn::VarStore, Device, Kind, Tensor};

/// Measure altup-moe against its baselines and peers (interleaved) and write docs/benchmarks.md.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Set by `cargo bench` (ignored).
    #[arg(long, hide = true)]
    bench: bool,
    /// JSON written by the scaling example.
    #[arg(long, default_value = "docs/benchmarks/scaling.json")]
    scaling: PathBuf,
    /// Markdown report to write.
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: PathBuf,
    /// Timed rounds per comparison (each round calls every variant once).
    #[arg(long, default_value_t = 12)]
    rounds: usize,
    /// Untimed warm-up rounds.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Python with torch and transformers for the peers (skipped when it cannot start).
    #[arg(long, default_value = ".venv/bin/python")]
    python: PathBuf,
    /// Smaller token counts and fewer rounds, for a smoke test.
    #[arg(long)]
    quick: bool,
    /// Measure only these sections (comma-separated; default: all); the report then holds only
    /// them — write it elsewhere with --out.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Section>,
}

/// The report's measured sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    /// MoE layers against Hugging Face's Switch layer.
    MoeLayers,
    /// Mixtral's block and Gemma 3n's AltUp against Hugging Face.
    MixtralGemma,
    /// AltUp stacks against dense.
    Altup,
    /// Residual-stream methods (Hyper-Connections, mHC, LAuReL) against the plain residual.
    Residual,
    /// Training steps against PyTorch eager.
    TrainingSteps,
}

const D: i64 = 256;
const F: usize = 1024;

type Res<T> = altup_moe::Result<T>;
/// One variant: a call that runs it once and returns its seconds.
type Call = Box<dyn FnMut() -> Res<f64>>;

/// The peers' process (`benches/peers.py --serve`): one timed call per request.
struct Peers {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    threads: String,
}

impl Peers {
    fn start(python: &PathBuf) -> Option<Peers> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/peers.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg("--serve")
            .env("OMP_NUM_THREADS", tch::get_num_threads().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        let (stdin, stdout) = (child.stdin.take()?, child.stdout.take()?);
        let mut peers = Peers { child, stdin, stdout: BufReader::new(stdout), threads: String::new() };
        let ready = peers.line().ok()?;
        peers.threads = ready.split_whitespace().nth(1)?.to_string();
        Some(peers)
    }

    fn line(&mut self) -> Res<String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line).map_err(|e| Error::Input(format!("peers process: {e}")))?;
        Ok(line.trim().to_string())
    }

    /// Seconds of one call of `case` in the peers' process.
    fn call(&mut self, case: &str) -> Res<f64> {
        writeln!(self.stdin, "{case}").map_err(|e| Error::Input(format!("peers process: {e}")))?;
        let answer = self.line()?;
        answer.parse().map_err(|_| Error::Input(format!("peers process, case {case}: {answer}")))
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Forward + backward of `f(x)` against a random cotangent (gradients returned, not
/// accumulated), as a timed call.
fn fwd_bwd(vs: VarStore, x: Tensor, f: impl Fn(&Tensor) -> Res<Tensor> + 'static) -> Res<Call> {
    let params: Vec<Tensor> = vs.trainable_variables();
    let g = Tensor::randn(f(&x)?.size(), (Kind::Float, Device::Cpu));
    Ok(Box::new(move || {
        let _keep = &vs;
        seconds(|| {
            let loss = (f(&x)? * &g).sum(Kind::Float);
            let _ = Tensor::f_run_backward(&[loss], &params, false, false)?;
            Ok(())
        })
    }))
}

fn rows(tokens: i64, d: i64) -> Tensor {
    Tensor::randn([tokens / 256, 256, d], (Kind::Float, Device::Cpu))
}

fn moe_layer(config: MoeConfig, tokens: i64) -> Res<Call> {
    let vs = VarStore::new(Device::Cpu);
    let layer = MoeLayer::new(&vs.root(), D as usize, &config)?;
    fwd_bwd(vs, rows(tokens, D), move |x| Ok(layer.forward_t(x, true)?.0))
}

fn dense_ffn(d_ff: usize, tokens: i64) -> Res<Call> {
    let vs = VarStore::new(Device::Cpu);
    let config = FeedForwardConfig { d_ff, ..Default::default() };
    let ffn = FeedForward::new(&vs.root(), D as usize, &config)?;
    fwd_bwd(vs, rows(tokens, D), move |x| ffn.forward(x))
}

/// The expert matmuls alone (no router, no dispatch): `E` per-expert GEMMs of `tokens / E` rows
/// (`grouped`: one `_grouped_mm` per projection) — what any MoE layer built on libtorch's matmuls
/// must at least spend.
fn expert_matmuls(e: i64, tokens: i64, grouped: bool) -> Res<Call> {
    let vs = VarStore::new(Device::Cpu);
    let init = InitScheme::default();
    let w_in = init.normal(&vs.root(), "w_in", &[e, D, F as i64], 0.02)?;
    let w_out = init.normal(&vs.root(), "w_out", &[e, F as i64, D], 0.02)?;
    let per = tokens / e;
    let offsets = Tensor::from_slice(&(1..=e).map(|i| (i * per) as i32).collect::<Vec<_>>());
    fwd_bwd(vs, Tensor::randn([tokens, D], (Kind::Float, Device::Cpu)), move |x| {
        if grouped {
            let h = x.f_internal_grouped_mm(&w_in, Some(&offsets), None, None)?.f_gelu("none")?;
            return Ok(h.f_internal_grouped_mm(&w_out, Some(&offsets), None, None)?);
        }
        let (wi, wo) = (w_in.f_unbind(0)?, w_out.f_unbind(0)?);
        let parts: Vec<Tensor> = (0..e as usize)
            .map(|i| Ok(x.f_narrow(0, i as i64 * per, per)?.f_matmul(&wi[i])?.f_gelu("none")?.f_matmul(&wo[i])?))
            .collect::<Res<_>>()?;
        Ok(Tensor::f_cat(&parts, 0)?)
    })
}

fn gemma_altup() -> Res<Call> {
    let vs = VarStore::new(Device::Cpu);
    let coefficients = Coefficients::InputDependent { clip: Some(120.0) };
    let config =
        AltUpConfig { num_blocks: 4, coefficients, compute_on: ComputeInput::Prediction, ..Default::default() };
    let altup = AltUp::new(&vs.root(), 512, &config)?;
    let x = Tensor::randn([4, 8, 256, 512], (Kind::Float, Device::Cpu));
    fwd_bwd(vs, x, move |x| {
        let pred = altup.predict(x, 0, true)?;
        altup.correct(&pred, &(pred.get(0) * 0.5), 0, true)
    })
}

/// What a stack of 4 blocks at width `d` runs.
#[derive(Debug, Clone, Copy)]
enum Stack {
    /// The plain blocks.
    Plain,
    /// The blocks wrapped by AltUp with `K` blocks.
    AltUp(usize),
    /// AltUp's predict/correct with `K` blocks around an identity layer: its mixing cost alone.
    Mixing(usize),
    /// The blocks with a residual-stream method (its stream widened from and collapsed to the
    /// input).
    Residual(ResidualConfig),
}

fn stack(d: usize, which: Stack) -> Res<Call> {
    let vs = VarStore::new(Device::Cpu);
    let init = InitScheme::default();
    let config = BlockConfig {
        attention: AttentionConfig { num_heads: d / 64, ..Default::default() },
        cross_attention: false,
        ffn: FfnConfig::Dense(FeedForwardConfig { d_ff: 4 * d, ..Default::default() }),
        norm_eps: 1e-6,
        residual: ResidualConfig::Plain,
        index: 0,
    };
    let residual = match which {
        Stack::Residual(r) => r,
        _ => ResidualConfig::Plain,
    };
    let blocks: Vec<Block> = (0..4)
        .map(|l| {
            let config = BlockConfig { residual, index: l, ..config.clone() };
            Block::new(VarBuilder::new(&(vs.root() / "b" / l)).with_init(init), d, &config)
        })
        .collect::<Res<_>>()?;
    let k = match which {
        Stack::Plain | Stack::Residual(_) => 1,
        Stack::AltUp(k) | Stack::Mixing(k) => k,
    };
    let altups: Vec<AltUp> = (0..4)
        .map(|l| {
            AltUp::new(
                VarBuilder::new(&(vs.root() / "a" / l)).with_init(init),
                d,
                &AltUpConfig { num_blocks: k, ..Default::default() },
            )
        })
        .collect::<Res<_>>()?;
    let shape: Vec<i64> = match which {
        Stack::Plain | Stack::Residual(_) => vec![8, 256, d as i64],
        _ => vec![k as i64, 8, 256, d as i64],
    };
    fwd_bwd(vs, Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu)), move |x| {
        let mut h = widen_stream(&residual, x)?;
        for (l, (b, a)) in blocks.iter().zip(&altups).enumerate() {
            h = match which {
                Stack::Plain | Stack::Residual(_) => b.forward_t(&h, None, true)?.0,
                Stack::AltUp(k) => a.forward_t(&h, l % k, true, |v| b.forward_t(v, None, true))?.0,
                Stack::Mixing(k) => a.forward_t(&h, l % k, true, |v| Ok((v * 1.0, ())))?.0,
            };
        }
        match which {
            Stack::Residual(_) => collapse_stream(&residual, &h),
            _ => Ok(if h.dim() == 4 { h.mean_dim(0, false, Kind::Float) } else { h }),
        }
    })
}

fn train_step(arch: Arch, d: usize) -> Res<Call> {
    let mut config = ModelConfig::preset(arch);
    config.d_model = d;
    config.attention.num_heads = if d >= 128 { 4 } else { 2 };
    config.ffn.d_ff = 4 * d;
    if let Some(m) = &mut config.moe {
        m.d_ff = 4 * d;
    }
    config.max_seq_len = 128;
    let text: Vec<u8> = b"O Romeo, Romeo! wherefore art thou Romeo? Deny thy father and refuse thy name. ".repeat(200);
    // The trainer borrows its data and model: both live as long as the call (leaked once per
    // benchmark process).
    let data: &'static (TokenDataset, TokenDataset) =
        Box::leak(Box::new((TokenDataset::new(text.clone()), TokenDataset::new(text))));
    let vs: &'static VarStore = Box::leak(Box::new(VarStore::new(Device::Cpu)));
    let model: &'static LanguageModel = Box::leak(Box::new(LanguageModel::new(&vs.root(), &config)?));
    let tc = TrainConfig { steps: 1_000_000, seq_len: 128, eval_batches: 1, ..TrainConfig::default() };
    let mut trainer = Trainer::new(vs, model, &data.0, &data.1, tc)?;
    Ok(Box::new(move || seconds(|| trainer.step().map(|_| ()))))
}

/// `calls` interleaved, round after round; returns every call's times.
fn measure(args: &Args, what: &str, calls: &mut [&mut dyn FnMut() -> Res<f64>]) -> Res<Vec<Vec<f64>>> {
    eprintln!("measuring {what} ...");
    interleaved(args.warmup, args.rounds, calls)
}

fn verdict(r: &PairedRatio, target: f64, at_most: bool) -> &'static str {
    match (at_most, r.verdict(target)) {
        (true, v) => v,
        // "at least": met when the whole interval is at or above the target.
        (false, _) if r.low >= target => "met",
        (false, _) if r.high < target => "missed",
        _ => "within noise",
    }
}

fn ms(times: &[f64]) -> String {
    format!("{:.1}", median(times) * 1e3)
}

/// The report being measured: the peers' process and the targets' table rows so far.
struct Report<'a> {
    args: &'a Args,
    peers: Option<Peers>,
    targets: String,
}

impl Report<'_> {
    fn target(&mut self, text: &str, r: &PairedRatio, goal: f64, at_most: bool) {
        let _ = writeln!(self.targets, "| {text} | {} | {} |", r.show(), verdict(r, goal, at_most));
    }

    /// The MoE layer against the dense FFN of equal active FLOPs and Hugging Face Switch, and the
    /// E = 64 layer's floor (its expert matmuls alone).
    fn moe_layers(&mut self, token_counts: &[i64], big: i64) -> Res<String> {
        let mut md = "| tokens | E | dense FFN (ms) | ours (ms) | ours / dense [95%] | HF Switch (ms) | HF / ours [95%] |\n|---|---|---|---|---|---|---|\n".to_string();
        for &tokens in token_counts {
            for e in [1usize, 8, 64] {
                let mut dense = dense_ffn(F, tokens)?;
                let mut moe = moe_layer(MoeConfig { num_experts: e, d_ff: F, ..Default::default() }, tokens)?;
                let (case, what) = (format!("switch/e{e}_t{tokens}"), format!("MoE E={e}, {tokens} tokens"));
                let times = match self.peers.as_mut() {
                    Some(p) => {
                        let mut hf = || p.call(&case);
                        measure(self.args, &what, &mut [&mut *dense, &mut *moe, &mut hf])?
                    }
                    None => measure(self.args, &what, &mut [&mut *dense, &mut *moe])?,
                };
                let vs_dense = PairedRatio::new(&times[0], &times[1]);
                let vs_hf = times.get(2).map(|hf| PairedRatio::new(&times[1], hf));
                let hf_ms = times.get(2).map_or("-".into(), |t| ms(t));
                let hf_ratio = vs_hf.map_or("-".into(), |r| r.show());
                let (dense_ms, ours_ms) = (ms(&times[0]), ms(&times[1]));
                let _ = writeln!(
                    md,
                    "| {tokens} | {e} | {dense_ms} | {ours_ms} | {} | {hf_ms} | {hf_ratio} |",
                    vs_dense.show()
                );
                if tokens == big && e > 1 {
                    let text =
                        format!("MoE layer ≤ 1.10× dense FFN of equal active FLOPs, E = {e}, top-1, {big} tokens");
                    self.target(&text, &vs_dense, 1.10, true);
                }
                if let Some(r) = &vs_hf {
                    if tokens == big && e == 64 {
                        self.target(&format!("≥ 1.5× faster than HF Switch at E = 64, {big} tokens"), r, 1.5, false);
                    }
                    if tokens == 2048 {
                        self.target(&format!("not slower than HF Switch at E = {e}, 2,048 tokens"), r, 1.0, false);
                    }
                }
            }
        }
        let mut dense = dense_ffn(F, big)?;
        let (mut looped, mut grouped) = (expert_matmuls(64, big, false)?, expert_matmuls(64, big, true)?);
        let times = measure(self.args, "expert matmuls, E = 64", &mut [&mut *dense, &mut *looped, &mut *grouped])?;
        let (floor_loop, floor_grouped) =
            (PairedRatio::new(&times[0], &times[1]), PairedRatio::new(&times[0], &times[2]));
        let floor = if floor_loop.median <= floor_grouped.median { &floor_loop } else { &floor_grouped };
        let _ = write!(
            md,
            "\nThe E = 64 layer's floor at {big} tokens — its expert matmuls alone (64 GEMMs of {} rows up and down, \
             forward + backward, no router or dispatch) over the dense FFN: {} with one matmul per expert, {} with \
             `_grouped_mm`. An MoE layer built on libtorch's matmuls cannot go below the smaller of the two{}",
            big / 64,
            floor_loop.show(),
            floor_grouped.show(),
            if floor.low > 1.10 {
                ": the whole interval lies above the 1.10 target, so the target cannot be met with these kernels \
                 (64 matmuls of 256 rows run slower per FLOP than one of 16,384)."
            } else {
                "."
            }
        );
        Ok(md)
    }

    /// The Mixtral block against Hugging Face's (a target) and Gemma 3n's AltUp (a sentence).
    fn mixtral_and_gemma(&mut self, big: i64) -> Res<String> {
        let Some(p) = self.peers.as_mut() else { return Ok(String::new()) };
        let mut ours = moe_layer(MoeConfig::mixtral(8, F), big)?;
        let mut hf = || p.call(&format!("mixtral_e8_k2_t{big}"));
        let times = measure(self.args, "Mixtral block", &mut [&mut *ours, &mut hf])?;
        let mixtral = PairedRatio::new(&times[0], &times[1]);
        let mut ours = gemma_altup()?;
        let mut hf = || p.call("gemma3n_altup_k4_d512_t2048");
        let times = measure(self.args, "Gemma 3n AltUp", &mut [&mut *ours, &mut hf])?;
        let text = format!("≥ 1.3× faster than the HF Mixtral block at E = 8, k = 2, {big} tokens");
        self.target(&text, &mixtral, 1.3, false);
        Ok(format!(
            "Gemma 3n AltUp predict + correct (K = 4, d = 512, 2,048 tokens): ours {} ms, HF `Gemma3nTextAltUp` {} \
             ms, HF / ours {}.\n",
            ms(&times[0]),
            ms(&times[1]),
            PairedRatio::new(&times[0], &times[1]).show()
        ))
    }

    /// AltUp stacks against the plain stack, with the mixing alone as the floor.
    fn altup_stacks(&mut self) -> Res<String> {
        let mut reading = String::new();
        let mut md = "| d | plain (ms) | K = 2 [95%] | K = 4 [95%] | K = 4 mixing alone, 1 + mixing / plain [95%] |\n|---|---|---|---|---|\n".to_string();
        for d in [256usize, 512] {
            let (mut plain, mut k2, mut k4) =
                (stack(d, Stack::Plain)?, stack(d, Stack::AltUp(2))?, stack(d, Stack::AltUp(4))?);
            let mut mixing = stack(d, Stack::Mixing(4))?;
            let calls: &mut [&mut dyn FnMut() -> Res<f64>] = &mut [&mut *plain, &mut *k2, &mut *k4, &mut *mixing];
            let times = measure(self.args, &format!("AltUp stacks, d = {d}"), calls)?;
            let (k2, k4) = (PairedRatio::new(&times[0], &times[1]), PairedRatio::new(&times[0], &times[2]));
            let with_mixing: Vec<f64> = times[0].iter().zip(&times[3]).map(|(p, m)| p + m).collect();
            let floor = PairedRatio::new(&times[0], &with_mixing);
            let _ = writeln!(md, "| {d} | {} | {} | {} | {} |", ms(&times[0]), k2.show(), k4.show(), floor.show());
            if d == 512 {
                reading = format!(
                    "At d = 512 AltUp's predict/correct alone (K = 4, around an identity layer, 4 layers) costs {} of \
                     the plain stack: {}",
                    floor.show(),
                    if floor.low > 1.06 {
                        "its whole interval lies above the 1.06 target, so no implementation of the K = 4 mixing \
                         with libtorch's kernels can meet it (the K × K mixing reads and writes all K blocks of width d)."
                    } else {
                        "the mixing itself leaves room under the 1.06 target; the rest is the wider embedding, the \
                         collapse and memory traffic of K blocks."
                    }
                );
                self.target("AltUp stack ≤ 1.03× plain stack, K = 2, d = 512 (4 blocks)", &k2, 1.03, true);
                self.target("AltUp stack ≤ 1.06× plain stack, K = 4, d = 512 (4 blocks)", &k4, 1.06, true);
            }
        }
        Ok(format!("{md}\n{reading}"))
    }

    /// Each residual-stream method's stack against the plain stack (forward + backward), all
    /// interleaved in one loop.
    fn residual_stacks(&mut self) -> Res<String> {
        let d = 512;
        let methods: Vec<ResidualConfig> = [
            "static-hyper-connections:4",
            "hyper-connections:4",
            "mhc:4",
            "laurel:rw",
            "laurel:rw+lr=16",
            "laurel:pa=3",
            "laurel:lr-norm=64",
        ]
        .iter()
        .map(|m| m.parse())
        .collect::<Res<_>>()?;
        let mut plain = stack(d, Stack::Plain)?;
        let mut stacks: Vec<Call> = methods.iter().map(|&m| stack(d, Stack::Residual(m))).collect::<Res<_>>()?;
        let mut calls: Vec<&mut dyn FnMut() -> Res<f64>> = vec![&mut *plain];
        calls.extend(stacks.iter_mut().map(|c| &mut **c as &mut dyn FnMut() -> Res<f64>));
        let times = measure(self.args, &format!("residual-stream stacks, d = {d}"), &mut calls)?;
        let mut md = format!(
            "Plain stack: {} ms. Each method's stack over the plain one (the same blocks; the method's stream \
             widened from the input and collapsed at the end):\n\n| method | parameters per sublayer | stack / plain \
             [95%] |\n|---|---|---|\n",
            ms(&times[0])
        );
        for (m, t) in methods.iter().zip(&times[1..]) {
            let r = PairedRatio::new(&times[0], t);
            let _ = writeln!(md, "| `{m}` | {} | {} |", m.params_per_sublayer(d), r.show());
        }
        Ok(md)
    }

    /// Training steps against PyTorch eager, and the scaling sweep's own target.
    fn training_steps(&mut self) -> Res<String> {
        let mut md =
            "| stack | d | ours (ms) | PyTorch eager (ms) | ours / theirs [95%] |\n|---|---|---|---|---|\n".to_string();
        let mut rows = Vec::new();
        if let Some(p) = self.peers.as_mut() {
            for (d, goal, label) in [(128usize, 0.95, "default size"), (64, 0.85, "tiny size (d = 64)")] {
                for arch in Arch::ALL {
                    let mut ours = train_step(arch, d)?;
                    let case = format!("train_step/{}_d{d}", arch.name());
                    let mut theirs = || p.call(&case);
                    let what = format!("training step {} d = {d}", arch.name());
                    let times = measure(self.args, &what, &mut [&mut theirs, &mut *ours])?;
                    let r = PairedRatio::new(&times[0], &times[1]);
                    let _ = writeln!(
                        md,
                        "| {} | {d} | {} | {} | {} |",
                        arch.name(),
                        ms(&times[1]),
                        ms(&times[0]),
                        r.show()
                    );
                    rows.push((format!("training step ≤ {goal}× PyTorch eager, {}, {label}", arch.name()), r, goal));
                }
            }
        }
        for (text, r, goal) in rows {
            self.target(&text, &r, goal, true);
        }
        let scaling = std::fs::read_to_string(&self.args.scaling)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
        let p64 = scaling.as_ref().and_then(|s| {
            s.as_array()?.iter().find(|p| p["family"] == "moe-k1" && p["experts"].as_u64() == Some(64)).cloned()
        });
        if let Some(p64) = p64 {
            let f = |k: &str| p64[k].as_f64().unwrap_or(f64::NAN);
            let r =
                PairedRatio { median: f("relative_time"), low: f("relative_low"), high: f("relative_high"), pairs: 0 };
            self.target("training step (fwd+bwd) at E = 64 ≤ 1.2× E = 1, top-1 (scaling sweep)", &r, 1.2, true);
        }
        Ok(md)
    }
}

fn run(args: Args) -> Res<()> {
    let token_counts: Vec<i64> = if args.quick { vec![2048] } else { vec![2048, 16384] };
    let big = *token_counts.last().unwrap_or(&2048);
    let peers = Peers::start(&args.python);
    if peers.is_none() {
        eprintln!("warning: cannot start {} benches/peers.py --serve: peers skipped", args.python.display());
    }
    let mut report = Report { args: &args, peers, targets: String::new() };
    let chosen = |s: Section| args.only.is_empty() || args.only.contains(&s);
    let moe_md = if chosen(Section::MoeLayers) { report.moe_layers(&token_counts, big)? } else { String::new() };
    let gemma = if chosen(Section::MixtralGemma) { report.mixtral_and_gemma(big)? } else { String::new() };
    let altup_md = if chosen(Section::Altup) { report.altup_stacks()? } else { String::new() };
    let residual_md = if chosen(Section::Residual) { report.residual_stacks()? } else { String::new() };
    let train_md = if chosen(Section::TrainingSteps) { report.training_steps()? } else { String::new() };
    let threads = tch::get_num_threads();
    let peer_threads = report.peers.as_ref().map_or("-".to_string(), |p| p.threads.clone());
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Benchmarks\n\nMeasured on this project's CI-class machine (CPU, {threads} threads for libtorch, {peer_threads} \
         for PyTorch in the peers' process, f32), all numbers from one `make bench` run. Every ratio comes from \
         interleaved timings: {} rounds after {} warm-up rounds, each round calling A then B (then C) once, so both see \
         the same machine state; the figure is the median of the per-round ratios with a distribution-free 95% \
         interval (binomial order statistics). A target is **met** when its whole interval is on the right side, \
         **missed** when it is wholly on the wrong side, and **within noise** when the interval contains the target. \
         Times in ms are medians. Reproduce with `make bench`.\n",
        args.rounds, args.warmup
    );
    let _ =
        writeln!(md, "## Targets\n\n| target | measured [95% interval] | verdict |\n|---|---|---|\n{}", report.targets);
    if !moe_md.is_empty() {
        let _ =
            writeln!(md, "## MoE layer (D = {D}, F = {F}, top-1, dropless, GELU, forward + backward)\n\n{moe_md}\n");
    }
    if !gemma.is_empty() {
        let _ = writeln!(md, "{gemma}");
    }
    if !altup_md.is_empty() {
        let _ = writeln!(md, "## AltUp stack (4 blocks, 8 × 256 tokens, forward + backward)\n\n{altup_md}\n");
    }
    if !residual_md.is_empty() {
        let _ = writeln!(
            md,
            "## Residual-stream methods (4 blocks, d = 512, 8 × 256 tokens, forward + backward)\n\n{residual_md}"
        );
    }
    if !train_md.is_empty() {
        let _ = writeln!(
            md,
            "## Training step versus PyTorch eager (16 × 128 bytes, forward + backward + clip + AdamW)\n\n{train_md}"
        );
    }
    if let Ok(table) = std::fs::read_to_string(args.scaling.with_file_name("scaling.md")) {
        let _ = writeln!(md, "## Parameters versus compute (the `scaling` sweep)\n\n{table}");
        let _ = writeln!(md, "![parameters vs step time](benchmarks/scaling_params_vs_time.svg)\n\n![relative step time](benchmarks/scaling_relative_time.svg)\n");
    }
    let _ = writeln!(
        md,
        "## Expert parallelism\n\nThe cost of the expert-parallel path with one rank against the single-process step at \
         2, 8 and 16 blocks (time and peak RSS), the exchange share with two ranks, and one MoE layer with 2 and 4 ranks: \
         [benchmarks/expert_parallel.md](benchmarks/expert_parallel.md) (`make bench-expert-parallel`).\n"
    );
    if report.peers.is_none() {
        let _ = writeln!(md, "(The peers' process could not start: PyTorch / Hugging Face comparisons are missing.)");
    }
    std::fs::write(&args.out, &md).map_err(|e| Error::io(&args.out, e))?;
    println!("{md}");
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn main() -> ExitCode {
    // `cargo test --all-targets` runs every bench target without arguments: a report program has
    // nothing to check there (`cargo bench --bench NAME -- ARGS` runs it).
    if std::env::args().len() <= 1 {
        return ExitCode::SUCCESS;
    }
    let mut args = Args::parse();
    if args.quick {
        args.rounds = args.rounds.min(6);
        args.warmup = args.warmup.min(1);
    }
    common::exit_code(run(args))
}
