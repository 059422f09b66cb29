//! What expert parallelism costs, measured with MPI (`make bench-expert-parallel`, about 10
//! minutes on 2 cores; writes docs/benchmarks/expert_parallel.md):
//!
//! 1. **Training step, one rank.** The same Switch model trained by the single-process trainer
//!    and through the expert-parallel path with `R = 1` (`mpirun --bind-to none -np 1`: the
//!    graph cuts, the segmented backward, the count exchange), interleaved step by step in one
//!    process (A B A B …), at several depths: the median of the per-pair ratios with its 95%
//!    interval, and the peak RSS of each in a process of its own.
//! 2. **Exchange share, two ranks.** The same training with `R = 2` (one libtorch thread per
//!    rank): the part of the step spent in the count and row exchanges, and in the gradient
//!    all-reduce.
//! 3. **One MoE layer** forward + backward against tokens per rank, for 2 and 4 ranks, next to
//!    the same layer in one process.
//!
//! ```text
//! cargo bench --features mpi --bench expert_parallel_bench -- --out docs/benchmarks/expert_parallel.md
//! ```

#[path = "../examples/common/mod.rs"]
mod common;

use altup_moe::data::TokenDataset;
use altup_moe::data::{RunTokenizer, TokenizerSpec};
use altup_moe::moe::{MoeConfig, MoeLayer};
use altup_moe::nn::VarBuilder;
use altup_moe::parallel::MpiWorld;
use altup_moe::parallel::{Collectives, ExchangeTape, ProcessGroup};
use altup_moe::testing::timing::{min_seconds, peak_rss_mib, PairedRatio};
use altup_moe::train::{TrainConfig, Trainer};
use altup_moe::{
    model::{Arch, LanguageModel, ModelConfig},
    Error, Result,
};
use clap::{Parser, ValueEnum};
use common::run_data;
use serde_json::json;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tch::{nn::VarStore, Device, Kind, Tensor};

/// Measure the cost of expert parallelism (training step with one rank, exchange share with
/// two, one MoE layer with 2 and 4 ranks).
#[derive(Debug, Clone, Parser)]
#[command(version)]
struct Args {
    /// Set by `cargo bench` (ignored).
    #[arg(long, hide = true)]
    bench: bool,
    /// Depths (blocks) of the training-step comparison.
    #[arg(long, value_delimiter = ',', default_value = "2,8,16")]
    blocks: Vec<usize>,
    /// Interleaved step pairs per depth (after 2 warm-up pairs).
    #[arg(long, default_value_t = 20)]
    pairs: usize,
    /// libtorch threads of the one-rank process.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Training steps of each peak-RSS process.
    #[arg(long, default_value_t = 2)]
    rss_steps: usize,
    /// Peak-RSS process pairs per depth (single process, then expert-parallel; peak RSS varies
    /// by several percent from one process to the next; 9 pairs give a 95% interval narrower
    /// than their range).
    #[arg(long, default_value_t = 9)]
    rss_pairs: usize,
    /// Depth of the two-rank exchange measurement.
    #[arg(long, default_value_t = 8)]
    exchange_blocks: usize,
    /// Training steps of the two-rank exchange measurement (after 2 warm-up steps).
    #[arg(long, default_value_t = 8)]
    exchange_steps: usize,
    /// Tokens per rank of the one-layer table.
    #[arg(long, value_delimiter = ',', default_value = "256,1024,4096")]
    tokens: Vec<i64>,
    /// Numbers of ranks of the one-layer table.
    #[arg(long, value_delimiter = ',', default_value = "2,4")]
    ranks: Vec<usize>,
    /// Timed runs of the one-layer table (the fastest is reported).
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Also write the report to this Markdown file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run as one process of a measurement (set by the launcher).
    #[arg(long, hide = true, value_enum)]
    child: Option<Child>,
}

#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
enum Child {
    /// Interleaved single-process and expert-parallel steps.
    Pairs,
    /// Peak RSS of single-process training.
    RssPlain,
    /// Peak RSS of expert-parallel training.
    RssEp,
    /// Exchange share of the step with several ranks.
    Exchange,
    /// One MoE layer.
    Layer,
}

const D_MODEL: usize = 128;
const EXPERTS: usize = 8;
const BATCH: usize = 16;
const SEQ_LEN: usize = 128;

/// Collectives that add up the time spent in the count and row exchanges and in all-reduces.
#[derive(Debug)]
struct Timed {
    inner: MpiWorld,
    exchange_s: Mutex<f64>,
    all_reduce_s: Mutex<f64>,
}

impl Timed {
    fn new() -> Result<Self> {
        Ok(Self { inner: MpiWorld::init()?, exchange_s: Mutex::new(0.0), all_reduce_s: Mutex::new(0.0) })
    }
    fn timed<T>(clock: &Mutex<f64>, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        *clock.lock().expect("timer") += t.elapsed().as_secs_f64();
        out
    }
    /// Seconds spent in exchanges and in all-reduces since the last call.
    fn take(&self) -> (f64, f64) {
        let take = |m: &Mutex<f64>| std::mem::take(&mut *m.lock().expect("timer"));
        (take(&self.exchange_s), take(&self.all_reduce_s))
    }
}

impl Collectives for Timed {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world_size(&self) -> usize {
        self.inner.world_size()
    }
    fn all_to_all_i64(&self, send: &[i64]) -> Result<Vec<i64>> {
        Self::timed(&self.exchange_s, || self.inner.all_to_all_i64(send))
    }
    fn all_to_all_bytes(&self, send: &[u8], send_counts: &[usize], recv_counts: &[usize]) -> Result<Vec<u8>> {
        Self::timed(&self.exchange_s, || self.inner.all_to_all_bytes(send, send_counts, recv_counts))
    }
    fn all_gather_i64(&self, send: &[i64]) -> Result<Vec<i64>> {
        Self::timed(&self.exchange_s, || self.inner.all_gather_i64(send))
    }
    fn all_gather_f32(&self, send: &[f32]) -> Result<Vec<f32>> {
        self.inner.all_gather_f32(send)
    }
    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()> {
        Self::timed(&self.all_reduce_s, || self.inner.all_reduce_sum_f64(values))
    }
    fn all_reduce_sum_f32(&self, values: &mut [f32]) -> Result<()> {
        Self::timed(&self.all_reduce_s, || self.inner.all_reduce_sum_f32(values))
    }
}

/// The model of the training measurements: Switch (8 top-1 experts on every other block), width
/// 128, `blocks` blocks.
fn model_config(blocks: usize) -> ModelConfig {
    let mut c = ModelConfig::preset(Arch::Switch);
    (c.d_model, c.num_layers) = (D_MODEL, blocks);
    c.moe = Some(MoeConfig { num_experts: EXPERTS, d_ff: c.ffn.d_ff, ..MoeConfig::default() });
    c
}

fn train_config() -> TrainConfig {
    TrainConfig {
        steps: 10_000,
        batch_size: BATCH,
        seq_len: SEQ_LEN,
        warmup_steps: 10,
        eval_every: 10_000,
        ..Default::default()
    }
}

fn data() -> Result<(TokenDataset, TokenDataset)> {
    let bytes = run_data(None, &Default::default(), &RunTokenizer::FromSpec(TokenizerSpec::Bytes), &|_| {})?;
    Ok((bytes.train, bytes.val))
}

/// A model on its own `VarStore` in `group` (plain in a group of one, expert-parallel in a
/// group over a transport).
fn build(blocks: usize, group: ProcessGroup) -> Result<(VarStore, LanguageModel)> {
    let vs = VarStore::new(Device::Cpu);
    let model = LanguageModel::new(VarBuilder::new(&vs.root()).with_group(group), &model_config(blocks))?;
    Ok((vs, model))
}

fn seconds(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

/// One rank (`-np 1`): the plain and the expert-parallel trainer alternate steps on the same
/// batches.
fn pairs(args: &Args, blocks: usize) -> Result<serde_json::Value> {
    let world: Arc<dyn Collectives> = Arc::new(MpiWorld::init()?);
    let (train, val) = data()?;
    let (plain_vs, plain) = build(blocks, ProcessGroup::single())?;
    let (ep_vs, ep) = build(blocks, ProcessGroup::new(world))?;
    let mut a = Trainer::new(&plain_vs, &plain, &train, &val, train_config())?;
    let mut b = Trainer::new(&ep_vs, &ep, &train, &val, train_config())?;
    let (mut plain_s, mut ep_s) = (Vec::new(), Vec::new());
    for pair in 0..args.pairs + 2 {
        let ta = seconds(|| a.step().map(|_| ()))?;
        let tb = seconds(|| b.step().map(|_| ()))?;
        if pair >= 2 {
            plain_s.push(ta);
            ep_s.push(tb);
        }
    }
    Ok(json!({"blocks": blocks, "plain_s": plain_s, "ep_s": ep_s}))
}

/// One process training `steps` steps, plain or expert-parallel; reports its peak RSS.
fn rss(args: &Args, blocks: usize, expert_parallel: bool) -> Result<serde_json::Value> {
    let world: Arc<dyn Collectives> = Arc::new(MpiWorld::init()?);
    let (train, val) = data()?;
    let group = if expert_parallel { ProcessGroup::new(world) } else { ProcessGroup::single() };
    let (vs, model) = build(blocks, group)?;
    let mut trainer = Trainer::new(&vs, &model, &train, &val, train_config())?;
    for _ in 0..args.rss_steps {
        trainer.step()?;
    }
    Ok(json!({"blocks": blocks, "expert_parallel": expert_parallel, "peak_rss_mib": peak_rss_mib()}))
}

/// Several ranks: per step, the slowest rank's step time, exchange time and all-reduce time.
fn exchange(args: &Args) -> Result<Option<serde_json::Value>> {
    let comm = Arc::new(Timed::new()?);
    let (train, val) = data()?;
    let (vs, model) = build(args.exchange_blocks, ProcessGroup::new(comm.clone()))?;
    let mut trainer = Trainer::new(&vs, &model, &train, &val, train_config())?;
    let mut rows = Vec::new();
    for step in 0..args.exchange_steps + 2 {
        comm.take();
        let total = seconds(|| trainer.step().map(|_| ()))?;
        let (exchange, all_reduce) = comm.take();
        let all = comm.all_gather_f32(&[total as f32, exchange as f32, all_reduce as f32])?;
        let slowest = |i: usize| all.iter().skip(i).step_by(3).fold(0f32, |a, &b| a.max(b));
        if step >= 2 {
            rows.push([slowest(0), slowest(1), slowest(2)]);
        }
    }
    Ok((comm.rank() == 0).then(|| json!({"ranks": comm.world_size(), "blocks": args.exchange_blocks, "steps": rows})))
}

fn layer_config() -> MoeConfig {
    MoeConfig { num_experts: EXPERTS, d_ff: 512, ..MoeConfig::default() }
}

/// One forward + backward of `layer` on `n` fresh tokens.
fn pass(layer: &MoeLayer, n: i64, backward: impl Fn(&Tensor) -> Result<()>) -> Result<()> {
    let x = Tensor::f_randn([n, D_MODEL as i64], (Kind::Float, Device::Cpu))?.set_requires_grad(true);
    let (y, aux) = layer.forward_t(&x, true)?;
    backward(&(y.f_square()?.f_mean(Kind::Float)? + aux.load_balancing_loss * 0.01))
}

/// One rank of the layer table: one JSON line per token count (rank 0), slowest rank's times.
fn layer(args: &Args) -> Result<Vec<serde_json::Value>> {
    let comm = Arc::new(Timed::new()?);
    let tape = ExchangeTape::new();
    let vs = VarStore::new(Device::Cpu);
    let group = ProcessGroup::with_tape(comm.clone(), tape.clone());
    let layer = MoeLayer::new(VarBuilder::new(&vs.root()).with_group(group), D_MODEL, &layer_config())?;
    let mut out = Vec::new();
    for &n in &args.tokens {
        let mut exchange = f64::INFINITY;
        let total = min_seconds(2, args.runs, || {
            let mut sync = [0.0];
            comm.all_reduce_sum_f64(&mut sync)?; // start together
            comm.take();
            pass(&layer, n, |loss| tape.backward(comm.as_ref(), loss))?;
            exchange = exchange.min(comm.take().0);
            Ok(())
        })?;
        let all = comm.all_gather_f32(&[total as f32, exchange as f32])?;
        let slowest = |i: usize| all.iter().skip(i).step_by(2).fold(0f32, |a, &b| a.max(b));
        out.push(json!({"ranks": comm.world_size(), "tokens": n, "total_s": slowest(0), "exchange_s": slowest(1)}));
    }
    Ok(if comm.rank() == 0 { out } else { Vec::new() })
}

/// The same layer in one process with all experts local.
fn local_layer(args: &Args, n: i64) -> Result<f64> {
    let vs = VarStore::new(Device::Cpu);
    let layer = MoeLayer::new(&vs.root(), D_MODEL, &layer_config())?;
    min_seconds(2, args.runs, || pass(&layer, n, |loss| Ok(loss.f_backward()?)))
}

fn child(args: &Args, mode: Child) -> Result<()> {
    let blocks = args.blocks.first().copied().unwrap_or(2);
    let lines = match mode {
        Child::Pairs => vec![pairs(args, blocks)?],
        Child::RssPlain => vec![rss(args, blocks, false)?],
        Child::RssEp => vec![rss(args, blocks, true)?],
        Child::Exchange => exchange(args)?.into_iter().collect(),
        Child::Layer => layer(args)?,
    };
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

/// Runs this program as `ranks` MPI processes in `mode`, with `threads` libtorch threads each;
/// returns the JSON lines they print.
fn launch(args: &Args, mode: Child, ranks: usize, threads: usize, blocks: usize) -> Result<Vec<serde_json::Value>> {
    let exe = std::env::current_exe().map_err(|e| Error::Input(format!("cannot find this program: {e}")))?;
    let list = |v: &[i64]| v.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let mode_name = mode.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default();
    let output = Command::new("mpirun")
        // Several libtorch threads per rank need the rank not to be bound to one core.
        .args(["--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", &ranks.to_string()])
        .env("OMP_NUM_THREADS", threads.to_string())
        .arg(exe)
        .args(["--child", &mode_name, "--blocks", &blocks.to_string(), "--pairs", &args.pairs.to_string()])
        .args(["--rss-steps", &args.rss_steps.to_string(), "--exchange-blocks", &args.exchange_blocks.to_string()])
        .args(["--exchange-steps", &args.exchange_steps.to_string(), "--tokens", &list(&args.tokens)])
        .args(["--runs", &args.runs.to_string(), "--threads", &threads.to_string()])
        .output()
        .map_err(|e| Error::Input(format!("cannot start mpirun ({e}); install openmpi-bin")))?;
    if !output.status.success() {
        return Err(Error::Input(format!(
            "mpirun -np {ranks} ({mode_name}) failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect()).unwrap_or_default()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// Section 1: step-time ratios and peak RSS at every depth.
fn step_table(args: &Args) -> Result<String> {
    let mut table = format!(
        "Switch, d = {D_MODEL}, {EXPERTS} top-1 experts (dropless) on every other block, {BATCH} × {SEQ_LEN} bytes per \
         step, {} libtorch threads, one MPI rank (`mpirun --bind-to none -np 1`). Each step of the single-process \
         trainer (A) is followed by the same step (same batch) through the expert-parallel path (B); ratio = B / A \
         per pair, median of {} pairs with its 95% interval (binomial order statistics). Peak RSS (`VmHWM`): \
         {} pairs of processes of their own (A, then B), each training {} steps; median of the per-pair ratios with \
         its 95% interval. Target: ≤ 1.10 × in time and in memory.\n\n\
         | blocks | single process, median step | EP (R = 1), median step | step-time ratio [95% interval] | verdict | \
         peak RSS single (median) | peak RSS EP (median) | RSS ratio [95% interval] | verdict |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        args.threads, args.pairs, args.rss_pairs, args.rss_steps
    );
    for &blocks in &args.blocks {
        eprintln!("step pairs, {blocks} blocks ...");
        let run = launch(args, Child::Pairs, 1, args.threads, blocks)?;
        let run = run.first().ok_or_else(|| Error::Input("the step-pair process printed nothing".into()))?;
        let (a, b) = (floats(&run["plain_s"]), floats(&run["ep_s"]));
        let ratio = PairedRatio::new(&a, &b);
        eprintln!("peak RSS, {blocks} blocks ...");
        let rss = |mode| -> Result<f64> {
            let r = launch(args, mode, 1, args.threads, blocks)?;
            Ok(r.first().and_then(|v| v["peak_rss_mib"].as_f64()).unwrap_or(f64::NAN))
        };
        let (mut rss_a, mut rss_b) = (Vec::new(), Vec::new());
        for _ in 0..args.rss_pairs {
            rss_a.push(rss(Child::RssPlain)?);
            rss_b.push(rss(Child::RssEp)?);
        }
        let rss_ratio = PairedRatio::new(&rss_a, &rss_b);
        let _ = writeln!(
            table,
            "| {blocks} | {:.1} ms | {:.1} ms | {} | {} | {:.0} MiB | {:.0} MiB | {} | {} |",
            median(a) * 1e3,
            median(b) * 1e3,
            ratio.show(),
            ratio.verdict(1.10),
            median(rss_a),
            median(rss_b),
            rss_ratio.show(),
            rss_ratio.verdict(1.10),
        );
    }
    Ok(table)
}

/// Section 2: the exchange share with two ranks.
fn exchange_table(args: &Args) -> Result<String> {
    eprintln!("exchange share, 2 ranks ...");
    let run = launch(args, Child::Exchange, 2, 1, args.exchange_blocks)?;
    let run = run.first().ok_or_else(|| Error::Input("the exchange process printed nothing".into()))?;
    let steps: Vec<Vec<f64>> = run["steps"].as_array().map(|a| a.iter().map(floats).collect()).unwrap_or_default();
    let col = |i: usize| median(steps.iter().filter_map(|s| s.get(i).copied()).collect());
    let share = |i: usize| median(steps.iter().filter_map(|s| Some(s.get(i)? / s.first()?)).collect());
    Ok(format!(
        "The same model with {} blocks trained by 2 MPI ranks (one libtorch thread each, `--bind-to none`), median \
         over {} steps of the slowest rank: step {:.1} ms; count and row exchanges {:.1} ms ({:.1}% of the step); \
         replicated-gradient and statistics all-reduces {:.1} ms ({:.1}%).\n",
        args.exchange_blocks,
        steps.len(),
        col(0) * 1e3,
        col(1) * 1e3,
        100.0 * share(1),
        col(2) * 1e3,
        100.0 * share(2),
    ))
}

/// Section 3: one MoE layer with 2 and 4 ranks against the local layer.
fn layer_table(args: &Args) -> Result<String> {
    if let Some(r) = args.ranks.iter().find(|&&r| r == 0 || EXPERTS % r != 0) {
        return Err(Error::Config(format!("every rank count must divide the {EXPERTS} experts (got {r})")));
    }
    let mut table = format!(
        "One MoE layer, forward + backward, D = {D_MODEL}, E = {EXPERTS}, F = 512, top-1, dropless; one libtorch \
         thread per process; fastest of {} runs (the slowest rank's time). `exchange` is the time spent in the \
         count and row exchanges, including waiting for the other ranks. The ranks and the local layer run in \
         different processes, not interleaved, so the times are indications, not ratios with a verdict.\n\n\
         | tokens per rank | local layer |",
        args.runs
    );
    for r in &args.ranks {
        let _ = write!(table, " R = {r}: layer | R = {r}: exchange |");
    }
    table.push_str("\n|---|---|");
    table.push_str(&"---|---|".repeat(args.ranks.len()));
    table.push('\n');
    eprintln!("one layer, {:?} ranks ...", args.ranks);
    let runs: Vec<Vec<serde_json::Value>> =
        args.ranks.iter().map(|&r| launch(args, Child::Layer, r, 1, 2)).collect::<Result<_>>()?;
    tch::set_num_threads(1);
    for (i, &n) in args.tokens.iter().enumerate() {
        let base = local_layer(args, n)?;
        let _ = write!(table, "| {n} | {:.2} ms |", base * 1e3);
        for rows in &runs {
            let row =
                rows.get(i).ok_or_else(|| Error::Input("a rank count produced fewer rows than token counts".into()))?;
            let (total, exchange) =
                (row["total_s"].as_f64().unwrap_or(f64::NAN), row["exchange_s"].as_f64().unwrap_or(f64::NAN));
            let _ =
                write!(table, " {:.2} ms | {:.2} ms ({:.0}%) |", total * 1e3, exchange * 1e3, 100.0 * exchange / total);
        }
        table.push('\n');
    }
    Ok(table)
}

fn driver(args: &Args) -> Result<String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(format!(
        "Measured on {cores} cores (CPU).\n\n## Training step with one rank: the cost of the expert-parallel path\n\n{}\n\
         ## Exchange share with two ranks\n\n{}\n## One MoE layer with 2 and 4 ranks\n\n{}",
        step_table(args)?,
        exchange_table(args)?,
        layer_table(args)?
    ))
}

fn main() -> ExitCode {
    // `cargo test --all-targets` runs every bench target without arguments: a report program has
    // nothing to check there (`cargo bench --bench NAME -- ARGS` runs it).
    if std::env::args().len() <= 1 {
        return ExitCode::SUCCESS;
    }
    let args = Args::parse();
    if let Some(mode) = args.child {
        tch::set_num_threads(args.threads as i32);
        return common::exit_code(child(&args, mode));
    }
    let report = match driver(&args) {
        Ok(report) => report,
        Err(e) => return common::exit_code(Err(e)),
    };
    println!("{report}");
    if let Some(out) = &args.out {
        let text = format!(
            "# Expert-parallel cost\n\nGenerated by `make bench-expert-parallel` (`cargo run --release --features mpi \
             --bench expert_parallel_bench`).\n\n{report}"
        );
        if let Err(e) = std::fs::write(out, text) {
            eprintln!("error: cannot write {}: {e}", out.display());
            return ExitCode::FAILURE;
        }
        eprintln!("wrote {}", out.display());
    }
    ExitCode::SUCCESS
}
