//! The training step at a real size on one GPU (`make gpu-bench`), beside PyTorch on the same
//! device: d = 1024, 16 heads, 12 blocks, sequences of 1,024, bf16-mixed, 32k tokens per step (8
//! sequences × 4 micro-batches), for five stacks — dense; Switch (E = 8, top-1, every other
//! block); Mixtral-style (E = 8, top-2, SwiGLU experts of width 2·d, every block); AltUp K = 2;
//! AltUp K = 2 + Switch. MoE layers are dropless on the grouped kernel.
//!
//! Per stack, interleaved round by round on the device (A B C D, A B C D, …): our eager step, our
//! step captured in a CUDA graph, the PyTorch twin eager and under `torch.compile`
//! (`benches/gpu_twin.py`). Reported: tokens/s, model FLOPs per token
//! ([`ModelConfig::train_flops_per_token`]), MFU against the device's dense bf16 peak (NVIDIA's
//! datasheet figures, or `--peak-tflops`), the process's peak CUDA memory, host reads and ATen
//! operations per step, and every ratio with its 95% interval. `--size tiny` runs the same
//! pipeline in seconds (CI runs it on the CPU as a smoke test).
//!
//! ```text
//! cargo run --release --example gpu_bench -- --out target/gpu-bench/report.md
//! cargo run --release --example gpu_bench -- --device cpu --size tiny --compile off
//! ```

mod common;

use altup_moe::data::TokenDataset;
use altup_moe::host::host_reads;
use altup_moe::model::{Arch, LanguageModel, ModelConfig, MoeLayers, Precision};
use altup_moe::moe::{ExpertBackend, MoeConfig};
use altup_moe::runtime::{cuda_memory, reset_peak_cuda_memory, OpCounter};
use altup_moe::testing::timing::{interleaved, median, PairedRatio};
use altup_moe::train::{TrainConfig, Trainer};
use altup_moe::{Error, Result};
use clap::{Parser, ValueEnum};
use common::{device_name, parse_device};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::time::Instant;
use tch::{nn::VarStore, Device};

/// Time the training step of five stacks at a real size on one GPU, beside PyTorch eager and
/// torch.compile on the same device, and write a Markdown report.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// cuda, cuda:N, or cpu.
    #[arg(long, default_value = "cuda", value_parser = parse_device)]
    device: Device,
    /// full: d = 1024, 16 heads, 12 blocks, 1,024 tokens × 8 × 4 micro-batches; tiny: d = 64,
    /// 2 heads, 2 blocks, 64 tokens × 4 (the smoke test).
    #[arg(long, value_enum, default_value = "full")]
    size: Size,
    /// Compute precision: f32, bf16, bf16-mixed.
    #[arg(long, default_value = "bf16-mixed")]
    precision: Precision,
    /// The stacks to time (comma-separated) [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    stacks: Vec<Stack>,
    /// Timed rounds per stack (each calls every variant once).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Untimed rounds first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Python with PyTorch for the twin (benches/gpu_twin.py); without one the twin is skipped.
    #[arg(long, default_value = ".venv/bin/python")]
    python: PathBuf,
    /// The twin under torch.compile: on, off, or auto (on for CUDA).
    #[arg(long, value_enum, default_value = "auto")]
    compile: Switch,
    /// Our step captured in a CUDA graph: on, off, or auto (on for CUDA).
    #[arg(long, value_enum, default_value = "auto")]
    cuda_graph: Switch,
    /// The device's dense bf16 peak in TFLOP/s [default: from the device's name].
    #[arg(long)]
    peak_tflops: Option<f64>,
    /// Where to write the report.
    #[arg(long, default_value = "target/gpu-bench/report.md")]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Size {
    Full,
    Tiny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Switch {
    On,
    Off,
    Auto,
}

impl Switch {
    fn on(self, device: Device) -> bool {
        self == Switch::On || (self == Switch::Auto && device.is_cuda())
    }
}

/// The stacks, as the twin names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Stack {
    Dense,
    Switch,
    Mixtral,
    Altup,
    AltupSwitch,
}

impl Stack {
    const ALL: [Stack; 5] = [Stack::Dense, Stack::Switch, Stack::Mixtral, Stack::Altup, Stack::AltupSwitch];

    fn name(self) -> &'static str {
        match self {
            Stack::Dense => "dense",
            Stack::Switch => "switch",
            Stack::Mixtral => "mixtral",
            Stack::Altup => "altup",
            Stack::AltupSwitch => "altup-switch",
        }
    }

    fn has_moe(self) -> bool {
        matches!(self, Stack::Switch | Stack::Mixtral | Stack::AltupSwitch)
    }
}

/// The shape of every stack's model and step.
#[derive(Debug, Clone, Copy)]
struct Dims {
    d: usize,
    heads: usize,
    layers: usize,
    seq: usize,
    batch: usize,
    accum: usize,
    experts: usize,
}

impl Dims {
    fn of(size: Size) -> Self {
        match size {
            Size::Full => Dims { d: 1024, heads: 16, layers: 12, seq: 1024, batch: 8, accum: 4, experts: 8 },
            Size::Tiny => Dims { d: 64, heads: 2, layers: 2, seq: 64, batch: 4, accum: 1, experts: 4 },
        }
    }

    fn tokens_per_step(&self) -> usize {
        self.seq * self.batch * self.accum
    }
}

/// The model of `stack` (our presets, resized; MoE layers dropless on the grouped kernel).
fn config(stack: Stack, dims: &Dims, precision: Precision) -> ModelConfig {
    let arch = match stack {
        Stack::Dense | Stack::Mixtral => Arch::Dense,
        Stack::Switch => Arch::Switch,
        Stack::Altup => Arch::AltUp,
        Stack::AltupSwitch => Arch::AltUpMoe,
    };
    let mut c = ModelConfig::preset(arch);
    (c.d_model, c.num_layers, c.max_seq_len, c.precision) = (dims.d, dims.layers, dims.seq, precision);
    c.attention.num_heads = dims.heads;
    c.ffn.d_ff = 4 * dims.d;
    let (moe, every) = match stack {
        Stack::Switch | Stack::AltupSwitch => {
            (MoeConfig { num_experts: dims.experts, d_ff: 4 * dims.d, ..MoeConfig::default() }, 2)
        }
        Stack::Mixtral => (MoeConfig::mixtral(dims.experts, 2 * dims.d), 1),
        Stack::Dense | Stack::Altup => return c,
    };
    c.moe = Some(MoeConfig { backend: ExpertBackend::GroupedMm, ..moe });
    c.moe_layers = MoeLayers::Every { every, offset: every - 1 };
    c
}

/// The twin's process (`benches/gpu_twin.py --serve`).
struct Twin {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Its PyTorch version and device name, from its first line.
    version: String,
    device: String,
}

impl Twin {
    fn start(python: &PathBuf) -> Option<Twin> {
        let script = altup_moe::testing::source_dir().join("benches/gpu_twin.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg("--serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        let (stdin, stdout) = (child.stdin.take()?, child.stdout.take()?);
        let mut twin =
            Twin { child, stdin, stdout: BufReader::new(stdout), version: String::new(), device: String::new() };
        let ready = twin.line().ok()?;
        let mut parts = ready.splitn(4, ' ');
        (parts.next() == Some("ready")).then_some(())?;
        let _threads = parts.next()?;
        twin.version = parts.next()?.to_string();
        twin.device = parts.next().unwrap_or("").to_string();
        Some(twin)
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line).map_err(|e| Error::Input(format!("PyTorch twin: {e}")))?;
        if line.is_empty() {
            return Err(Error::Input("the PyTorch twin exited".into()));
        }
        Ok(line.trim().to_string())
    }

    fn ask(&mut self, request: &serde_json::Value) -> Result<String> {
        writeln!(self.stdin, "{request}").map_err(|e| Error::Input(format!("PyTorch twin: {e}")))?;
        let answer = self.line()?;
        match answer.strip_prefix("error: ") {
            Some(e) => Err(Error::Input(format!("PyTorch twin: {e}"))),
            None => Ok(answer),
        }
    }

    fn number(&mut self, request: &serde_json::Value) -> Result<f64> {
        let answer = self.ask(request)?;
        answer.parse().map_err(|_| Error::Input(format!("PyTorch twin answered {answer:?}")))
    }
}

impl Drop for Twin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// NVIDIA's dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the product datasheets,
/// by a fragment of the device's name (the first match wins).
const BF16_PEAKS: [(&str, f64); 9] = [
    ("H200", 989.0),
    ("GH200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
];

/// One stack's figures.
struct Row {
    stack: Stack,
    /// Total and active parameters.
    params: (usize, usize),
    flops_per_token: f64,
    /// First pass, per round: our eager step, our captured step, the twin eager.
    ours: Vec<f64>,
    graph: Option<Vec<f64>>,
    eager: Option<Vec<f64>>,
    /// Second pass, per round: our eager step and the compiled twin.
    compiled: Option<(Vec<f64>, Vec<f64>)>,
    peak_bytes: Option<u64>,
    twin_peak_bytes: Option<u64>,
    /// Host reads and ATen operations of one eager step; operations of one replay.
    reads: u64,
    ops: i64,
    replay_ops: Option<i64>,
    notes: Vec<String>,
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// One step of `trainer`, timed with the device synchronised; its statistics are read after the
/// clock stops.
fn timed_step(trainer: &mut Trainer, device: Device) -> Result<f64> {
    sync(device);
    let start = Instant::now();
    trainer.advance()?;
    sync(device);
    let seconds = start.elapsed().as_secs_f64();
    trainer.read_stats()?;
    Ok(seconds)
}

/// One step's host reads, top-level ATen operations (eager; replayed when captured) and the peak
/// CUDA memory of one eager step.
type StepCounts = (u64, i64, Option<i64>, Option<u64>);

/// Warms both trainers up (kernel choices, allocations, the capture after the graph's 3 eager
/// steps), then counts one step ([`StepCounts`]).
fn warm_up_and_count(eager: &mut Trainer, mut graph: Option<&mut Trainer>, device: Device) -> Result<StepCounts> {
    // Warm-up: kernel choices, allocations, and the capture (after the graph's 3 eager steps).
    for _ in 0..2 {
        timed_step(eager, device)?;
    }
    if let Some(g) = graph.as_mut() {
        for _ in 0..5 {
            timed_step(g, device)?;
        }
    }
    let before = host_reads();
    let counter = OpCounter::start()?;
    eager.advance()?;
    let (reads, ops) = (host_reads() - before, counter.counts().top_level);
    drop(counter);
    eager.read_stats()?;
    let mut replay_ops = None;
    if let Some(g) = graph.as_mut() {
        let counter = OpCounter::start()?;
        g.advance()?;
        replay_ops = Some(counter.counts().top_level);
        drop(counter);
        g.read_stats()?;
    }
    reset_peak_cuda_memory(device)?;
    timed_step(eager, device)?;
    let peak_bytes = cuda_memory(device)?.map(|m| m.peak);
    Ok((reads, ops, replay_ops, peak_bytes))
}

fn measure(args: &Args, dims: &Dims, stack: Stack, twin: &mut Option<Twin>) -> Result<Row> {
    let config = config(stack, dims, args.precision);
    let counts = config.param_counts();
    eprintln!(
        "{}: {:.1}M parameters, {:.1}M active",
        stack.name(),
        counts.total as f64 / 1e6,
        counts.active_per_token as f64 / 1e6
    );
    let text: Vec<u8> = (0..dims.tokens_per_step() * 4 + 2 * dims.seq).map(|i| (i * 7919 % 251) as u8).collect();
    let data = (TokenDataset::new(text.clone()), TokenDataset::new(text));
    let vs = VarStore::new(args.device);
    let model = LanguageModel::new(&vs.root(), &config)?;
    let train_config = |cuda_graph| TrainConfig {
        steps: 1_000_000,
        batch_size: dims.batch,
        grad_accum: dims.accum,
        seq_len: dims.seq,
        lr: 3e-4,
        eval_batches: 1,
        log_every: 1_000_000,
        cuda_graph,
        ..TrainConfig::default()
    };
    let mut notes = Vec::new();
    let mut eager = Trainer::new(&vs, &model, &data.0, &data.1, train_config(false))?;
    let mut graph = None;
    if args.cuda_graph.on(args.device) {
        match Trainer::new(&vs, &model, &data.0, &data.1, train_config(true)) {
            Ok(t) => graph = Some(t),
            Err(e) => notes.push(format!("no CUDA graph: {e}")),
        }
    }
    let (reads, ops, replay_ops, peak_bytes) = warm_up_and_count(&mut eager, graph.as_mut(), args.device)?;

    eprintln!("{}: timing {} rounds ...", stack.name(), args.rounds);
    let case = serde_json::json!({
        "stack": stack.name(), "d": dims.d, "heads": dims.heads, "layers": dims.layers, "seq": dims.seq,
        "batch": dims.batch, "accum": dims.accum, "experts": dims.experts,
        "device": if args.device.is_cuda() { device_name(args.device) } else { "cpu".to_string() },
        "precision": args.precision.to_string(),
    });
    let graph_on = graph.is_some();
    let mut ours_call = || timed_step(&mut eager, args.device);
    let mut graph_call = || match graph.as_mut() {
        Some(g) => timed_step(g, args.device),
        None => Ok(f64::NAN),
    };
    let mut row = Row {
        stack,
        params: (counts.total, counts.active_per_token),
        flops_per_token: config.train_flops_per_token(dims.seq),
        ours: Vec::new(),
        graph: None,
        eager: None,
        compiled: None,
        peak_bytes,
        twin_peak_bytes: None,
        reads,
        ops,
        replay_ops,
        notes,
    };
    let Some(t) = twin.as_mut() else {
        let times = interleaved(args.warmup, args.rounds, &mut [&mut ours_call, &mut graph_call])?;
        row.ours = times[0].clone();
        row.graph = graph_on.then(|| times[1].clone());
        return Ok(row);
    };
    let eager_request = serde_json::json!({"case": case, "compile": false});
    let times = {
        let mut eager_call = || t.number(&eager_request);
        interleaved(args.warmup, args.rounds, &mut [&mut ours_call, &mut graph_call, &mut eager_call])?
    };
    (row.ours, row.eager) = (times[0].clone(), Some(times[2].clone()));
    row.graph = graph_on.then(|| times[1].clone());
    if args.device.is_cuda() {
        row.twin_peak_bytes = t.number(&serde_json::json!({"peak": case, "compile": false})).ok().map(|b| b as u64);
    }
    if args.compile.on(args.device) {
        // The compiled twin in a second pass, against our eager step again; the eager twin's
        // model is freed first, so that the device holds at most three models.
        t.ask(&serde_json::json!({"drop": true}))?;
        let compiled_request = serde_json::json!({"case": case, "compile": true});
        let mut compiled_call = || t.number(&compiled_request);
        match interleaved(args.warmup, args.rounds, &mut [&mut ours_call, &mut compiled_call]) {
            Ok(times) => row.compiled = Some((times[0].clone(), times[1].clone())),
            Err(e) => row.notes.push(format!("torch.compile: {e}")),
        }
    }
    t.ask(&serde_json::json!({"drop": true}))?;
    Ok(row)
}

fn main() -> ExitCode {
    common::exit_code(run(Args::parse()))
}

fn run(args: Args) -> Result<()> {
    let dims = Dims::of(args.size);
    let stacks = if args.stacks.is_empty() { Stack::ALL.to_vec() } else { args.stacks.clone() };
    let mut twin = Twin::start(&args.python);
    if twin.is_none() {
        eprintln!(
            "warning: cannot start {} benches/gpu_twin.py --serve: the PyTorch twin is skipped",
            args.python.display()
        );
    }
    let device_label = match (&twin, args.device) {
        (Some(t), Device::Cuda(_)) => t.device.clone(),
        (_, Device::Cuda(i)) => format!("CUDA device {i}"),
        (_, other) => format!("{other:?}").to_lowercase(),
    };
    let peak = args.peak_tflops.or_else(|| BF16_PEAKS.iter().find(|(n, _)| device_label.contains(n)).map(|(_, p)| *p));
    let mut rows = Vec::new();
    for stack in stacks {
        rows.push(measure(&args, &dims, stack, &mut twin)?);
    }
    let report = report(&args, &dims, &device_label, peak, twin.as_ref().map(|t| t.version.as_str()), &rows);
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::write(&args.out, &report).map_err(|e| Error::io(&args.out, e))?;
    println!("{report}");
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn gib(bytes: Option<u64>) -> String {
    bytes.map_or("–".into(), |b| format!("{:.1}", b as f64 / (1u64 << 30) as f64))
}

fn report(args: &Args, dims: &Dims, device: &str, peak: Option<f64>, torch: Option<&str>, rows: &[Row]) -> String {
    let tokens = dims.tokens_per_step() as f64;
    let mfu = |seconds: f64, flops: f64| {
        peak.map_or("–".into(), |p| format!("{:.1}%", 100.0 * tokens * flops / seconds / (p * 1e12)))
    };
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Training step at size on one device\n\nDevice: **{device}** ({}), precision {}; PyTorch twin: {}. Model: d = {}, {} heads, \
         {} blocks, byte vocabulary; {} tokens per step ({} × {} tokens × {} micro-batches). MFU = tokens/s × model FLOPs \
         per token (6 × active non-embedding parameters + 12 · L · d · T) / the device's dense bf16 peak ({}). Every \
         ratio comes from {} interleaved rounds after {} warm-up rounds (ours, ours captured, PyTorch eager; then \
         ours and torch.compile): the median of the per-round ratios with its 95% interval. Memory: the peak the CUDA \
         allocator held during one eager step (our process holds the eager and the captured trainer).\n",
        device_name(args.device),
        args.precision,
        torch.map_or("not run".to_string(), |v| format!("PyTorch {v}")),
        dims.d,
        dims.heads,
        dims.layers,
        dims.tokens_per_step(),
        dims.batch,
        dims.seq,
        dims.accum,
        peak.map_or("unknown: pass --peak-tflops".to_string(), |p| format!("{p} TFLOP/s, NVIDIA datasheet")),
        args.rounds,
        args.warmup,
    );
    md += "| stack | params (active) | MFLOP/token | ours (ms) | tokens/s | MFU | captured (ms) | MFU | PyTorch eager (ms) | torch.compile (ms) | peak GiB (ours / twin) | host reads / step | ATen ops / step (eager / replay) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for r in rows {
        let ours = median(&r.ours);
        let graph = r.graph.as_ref().map(|g| median(g));
        let ms = |s: Option<f64>| s.map_or("–".into(), |s| format!("{:.1}", s * 1e3));
        let _ = writeln!(
            md,
            "| {} | {:.1}M ({:.1}M) | {:.1} | {} | {:.0} | {} | {} | {} | {} | {} | {} / {} | {} | {} / {} |",
            r.stack.name(),
            r.params.0 as f64 / 1e6,
            r.params.1 as f64 / 1e6,
            r.flops_per_token / 1e6,
            ms(Some(ours)),
            tokens / ours,
            mfu(ours, r.flops_per_token),
            ms(graph),
            graph.map_or("–".into(), |g| mfu(g, r.flops_per_token)),
            ms(r.eager.as_ref().map(|e| median(e))),
            ms(r.compiled.as_ref().map(|c| median(&c.1))),
            gib(r.peak_bytes),
            gib(r.twin_peak_bytes),
            r.reads,
            r.ops,
            r.replay_ops.map_or("–".into(), |n| n.to_string()),
        );
    }
    md += "\n## Ratios (time; below 1 = ours faster)\n\n| stack | ours / PyTorch eager | ours / torch.compile | captured / ours eager |\n|---|---|---|---|\n";
    for r in rows {
        let show = |r: Option<PairedRatio>| r.map_or("–".into(), |r| r.show());
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            r.stack.name(),
            show(r.eager.as_ref().map(|e| PairedRatio::new(e, &r.ours))),
            show(r.compiled.as_ref().map(|(ours, compiled)| PairedRatio::new(compiled, ours))),
            show(r.graph.as_ref().map(|g| PairedRatio::new(&r.ours, g))),
        );
    }
    md += &targets(rows, peak, tokens);
    let notes: Vec<String> =
        rows.iter().flat_map(|r| r.notes.iter().map(move |n| format!("* {}: {n}", r.stack.name()))).collect();
    if !notes.is_empty() {
        let _ = writeln!(md, "\n## Notes\n\n{}", notes.join("\n"));
    }
    md
}

/// The report's targets table: MFU per stack (with a peak), ours against PyTorch eager and
/// torch.compile, AltUp's step against dense.
fn targets(rows: &[Row], peak: Option<f64>, tokens: f64) -> String {
    let mut md = String::new();
    md += "\n## Targets\n\n| target | measured | verdict |\n|---|---|---|\n";
    let dense = rows.iter().find(|r| r.stack == Stack::Dense).map(|r| median(&r.ours));
    for r in rows {
        let best = r.graph.as_ref().map_or(median(&r.ours), |g| median(g).min(median(&r.ours)));
        if let Some(p) = peak {
            let goal = if r.stack.has_moe() { 30.0 } else { 40.0 };
            let value = 100.0 * tokens * r.flops_per_token / best / (p * 1e12);
            let verdict = if value >= goal { "met" } else { "missed" };
            let _ = writeln!(
                md,
                "| {} MFU ≥ {goal}% (best of eager and captured) | {value:.1}% | {verdict} |",
                r.stack.name()
            );
        }
        if let Some(e) = r.eager.as_ref() {
            let ratio = PairedRatio::new(e, &r.ours);
            let _ = writeln!(
                md,
                "| {} ≥ 1.1× PyTorch eager (time ≤ 0.909×) | {} | {} |",
                r.stack.name(),
                ratio.show(),
                ratio.verdict(1.0 / 1.1)
            );
        }
        if let Some((ours, compiled)) = r.compiled.as_ref() {
            let ratio = PairedRatio::new(compiled, ours);
            let _ = writeln!(
                md,
                "| {} ≥ 0.95× torch.compile (time ≤ 1.053×) | {} | {} |",
                r.stack.name(),
                ratio.show(),
                ratio.verdict(1.0 / 0.95)
            );
        }
    }
    if let (Some(d), Some(a)) = (dense, rows.iter().find(|r| r.stack == Stack::Altup)) {
        let ratio = median(&a.ours) / d;
        let verdict = if ratio <= 1.05 { "met" } else { "missed" };
        let _ = writeln!(
            md,
            "| AltUp K = 2 step ≤ 1.05× dense (ratio of medians, separate rounds) | {ratio:.3}× | {verdict} |"
        );
    }
    md
}
