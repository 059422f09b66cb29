//! Exchange overhead of expert parallelism: the forward + backward time of one MoE layer and the
//! part of it spent exchanging token rows, against tokens per rank, for R = 2 and 4 MPI ranks,
//! printed next to the same layer in one process (all experts local, same tokens).
//!
//! ```text
//! cargo run --release --features mpi --example expert_parallel_bench   # launches mpirun itself
//! ```
//!
//! Every process uses one libtorch thread; with more ranks than cores the ranks share cores and
//! the figures include that contention (the report says how many cores there were).

mod common;

use altup_moe::moe::parallel::MpiWorld;
use altup_moe::moe::{Collectives, ExchangeTape, MoeConfig, MoeLayer};
use altup_moe::nn::InitScheme;
use altup_moe::Result;
use clap::Parser;
use common::min_seconds;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tch::{nn::VarStore, Device, Kind, Tensor};

/// Time one expert-parallel MoE layer (forward + backward) and its exchanges.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Tokens per rank.
    #[arg(long, value_delimiter = ',', default_value = "256,1024,4096")]
    tokens: Vec<i64>,
    /// Numbers of ranks.
    #[arg(long, value_delimiter = ',', default_value = "2,4")]
    ranks: Vec<usize>,
    /// Model width D.
    #[arg(long, default_value_t = 128)]
    d_model: usize,
    /// Experts E (a multiple of every rank count).
    #[arg(long, default_value_t = 8)]
    experts: usize,
    /// Expert hidden width F.
    #[arg(long, default_value_t = 512)]
    d_ff: usize,
    /// Timed runs (the fastest is reported).
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Also write the table to this Markdown file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run as one rank of the MPI job (set by the launcher).
    #[arg(long, hide = true)]
    child: bool,
}

/// Collectives that add up the time spent in the row and count exchanges.
#[derive(Debug)]
struct Timed {
    inner: MpiWorld,
    exchange_s: Mutex<f64>,
}

impl Timed {
    fn timed<T>(&self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        *self.exchange_s.lock().expect("timer") += t.elapsed().as_secs_f64();
        out
    }
    fn take(&self) -> f64 {
        std::mem::take(&mut *self.exchange_s.lock().expect("timer"))
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
        self.timed(|| self.inner.all_to_all_i64(send))
    }
    fn all_to_all_f32(&self, send: &[f32], send_counts: &[usize], recv_counts: &[usize]) -> Result<Vec<f32>> {
        self.timed(|| self.inner.all_to_all_f32(send, send_counts, recv_counts))
    }
    fn all_gather_i64(&self, send: &[i64]) -> Result<Vec<i64>> {
        self.inner.all_gather_i64(send)
    }
    fn all_gather_f32(&self, send: &[f32]) -> Result<Vec<f32>> {
        self.inner.all_gather_f32(send)
    }
    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()> {
        self.inner.all_reduce_sum_f64(values)
    }
    fn all_reduce_sum_f32(&self, values: &mut [f32]) -> Result<()> {
        self.inner.all_reduce_sum_f32(values)
    }
}

fn config(args: &Args) -> MoeConfig {
    MoeConfig { num_experts: args.experts, d_ff: args.d_ff, ..MoeConfig::default() }
}

/// One forward + backward of `layer` on `n` fresh tokens.
fn pass(layer: &MoeLayer, n: i64, d: i64, backward: impl Fn(&Tensor) -> Result<()>) -> Result<()> {
    let x = Tensor::f_randn([n, d], (Kind::Float, Device::Cpu))?.set_requires_grad(true);
    let (y, aux) = layer.forward_t(&x, true)?;
    backward(&(y.f_square()?.f_mean(Kind::Float)? + aux.load_balancing_loss * 0.01))
}

/// One rank: prints one JSON line per token count (rank 0), with the slowest rank's times.
fn child(args: &Args) -> Result<()> {
    tch::set_num_threads(1);
    let comm = Arc::new(Timed { inner: MpiWorld::init()?, exchange_s: Mutex::new(0.0) });
    let tape = ExchangeTape::new();
    let vs = VarStore::new(Device::Cpu);
    let init = InitScheme::default();
    let layer =
        MoeLayer::new_expert_parallel(&vs.root(), args.d_model, &config(args), &init, comm.clone(), tape.clone())?;
    let d = args.d_model as i64;
    for &n in &args.tokens {
        let mut exchange = f64::INFINITY;
        let total = min_seconds(2, args.runs, || {
            let mut sync = [0.0];
            comm.all_reduce_sum_f64(&mut sync)?; // start together
            comm.take();
            pass(&layer, n, d, |loss| tape.backward(comm.as_ref(), loss))?;
            exchange = exchange.min(comm.take());
            Ok(())
        })?;
        let all = comm.all_gather_f32(&[total as f32, exchange as f32])?;
        let slowest = |i: usize| all.iter().skip(i).step_by(2).fold(0f32, |a, &b| a.max(b));
        if comm.rank() == 0 {
            println!(
                "{}",
                serde_json::json!({"ranks": comm.world_size(), "tokens": n, "total_s": slowest(0), "exchange_s": slowest(1)})
            );
        }
    }
    Ok(())
}

/// The same layer in one process with all experts local.
fn local(args: &Args, n: i64) -> Result<f64> {
    tch::set_num_threads(1);
    let vs = VarStore::new(Device::Cpu);
    let layer = MoeLayer::new(&vs.root(), args.d_model, &config(args), &InitScheme::default())?;
    min_seconds(2, args.runs, || pass(&layer, n, args.d_model as i64, |loss| Ok(loss.f_backward()?)))
}

fn launch(args: &Args, ranks: usize) -> std::result::Result<Vec<serde_json::Value>, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let join = |v: &[i64]| v.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let output = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", &ranks.to_string()])
        .arg(exe)
        .args(["--child", "--tokens", &join(&args.tokens), "--runs", &args.runs.to_string()])
        .args(["--d-model", &args.d_model.to_string(), "--experts", &args.experts.to_string()])
        .args(["--d-ff", &args.d_ff.to_string()])
        .output()
        .map_err(|e| format!("cannot start mpirun ({e}); install openmpi-bin"))?;
    if !output.status.success() {
        return Err(format!("mpirun -np {ranks} failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

fn driver(args: &Args) -> std::result::Result<String, String> {
    if let Some(r) = args.ranks.iter().find(|&&r| r == 0 || args.experts % r != 0) {
        return Err(format!("--experts ({}) must be a multiple of every rank count (got {r})", args.experts));
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut table = format!(
        "One MoE layer, forward + backward, D = {}, E = {}, F = {}, top-1, dropless; one libtorch thread per \
         process, {cores} cores; fastest of {} runs (the slowest rank's time). `exchange` is the time spent in \
         the count and row all-to-alls, including waiting for the other ranks.\n\n| tokens per rank | local layer |",
        args.d_model, args.experts, args.d_ff, args.runs
    );
    for r in &args.ranks {
        let _ = write!(table, " R = {r}: layer | R = {r}: exchange |");
    }
    table.push_str("\n|---|---|");
    table.push_str(&"---|---|".repeat(args.ranks.len()));
    table.push('\n');
    let runs: Vec<Vec<serde_json::Value>> =
        args.ranks.iter().map(|&r| launch(args, r)).collect::<std::result::Result<_, _>>()?;
    for (i, &n) in args.tokens.iter().enumerate() {
        let base = local(args, n).map_err(|e| e.to_string())?;
        let _ = write!(table, "| {n} | {:.2} ms |", base * 1e3);
        for rows in &runs {
            let row = rows.get(i).ok_or("a rank count produced fewer rows than token counts")?;
            let (total, exchange) =
                (row["total_s"].as_f64().unwrap_or(f64::NAN), row["exchange_s"].as_f64().unwrap_or(f64::NAN));
            let _ = write!(
                table,
                " {:.2} ms ({:.2}×) | {:.2} ms ({:.0}%) |",
                total * 1e3,
                total / base,
                exchange * 1e3,
                100.0 * exchange / total
            );
        }
        table.push('\n');
    }
    Ok(table)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.child {
        return match child(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match driver(&args) {
        Ok(table) => {
            println!("{table}");
            if let Some(out) = &args.out {
                let text = format!("# Expert-parallel exchange overhead\n\nGenerated by `make bench` (`cargo run --release --features mpi --example expert_parallel_bench`).\n\n{table}");
                if let Err(e) = std::fs::write(out, text) {
                    eprintln!("error: cannot write {}: {e}", out.display());
                    return ExitCode::FAILURE;
                }
                eprintln!("wrote {}", out.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
