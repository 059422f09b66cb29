//! The training loop: steps, periodic evaluation written to `metrics.jsonl`, periodic
//! checkpoints, and resumption — shared by the `train` example and the tests.

use crate::error::{Error, Result};
use crate::io::list_checkpoints;
use crate::train::metrics::{EvalRecord, MetricsWindow, MetricsWriter};
use crate::train::stats::StepStats;
use crate::train::task::Task;
use crate::train::trainer::Trainer;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where and how often the loop writes.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOptions {
    /// Output folder: `metrics.jsonl` and `checkpoints/` go here.
    pub out_dir: PathBuf,
    /// Save a checkpoint every this many steps (and after the last step); `None` = only after
    /// the last step.
    pub save_every: Option<u64>,
    /// Checkpoints kept (the newest ones).
    pub keep_checkpoints: usize,
    /// When starting fresh (step 0) in a folder that already holds checkpoints: delete them
    /// (`true`) or refuse with an error (`false`).
    pub overwrite: bool,
    /// Stop after this step with a checkpoint, as if interrupted (for time-limited jobs; resume
    /// later from the checkpoint). `None` = run to the end.
    pub stop_after: Option<u64>,
}

impl RunOptions {
    /// The checkpoint folder, `out_dir/checkpoints`.
    pub fn checkpoint_root(&self) -> PathBuf {
        self.out_dir.join("checkpoints")
    }
}

/// Hooks for progress reporting (all optional).
pub trait Observer {
    /// After every optimizer step, with its wall-clock duration in seconds.
    fn on_step(&mut self, _stats: &StepStats, _seconds: f64) {}
    /// After every evaluation, with the record written to `metrics.jsonl`.
    fn on_eval(&mut self, _record: &EvalRecord) {}
    /// After every checkpoint, with its folder.
    fn on_checkpoint(&mut self, _dir: &Path) {}
}

/// An observer that does nothing.
#[derive(Debug, Default)]
pub struct Silent;

impl Observer for Silent {}

/// Trains until `trainer.config().steps`: evaluates every `eval_every` steps and after the last
/// one (appending to `out_dir/metrics.jsonl`), and checkpoints every `save_every` steps and after
/// the last one. Starts fresh when the trainer is at step 0 (truncating `metrics.jsonl`; an
/// earlier run's checkpoints are an error unless `overwrite`);
/// otherwise continues an interrupted run whose state `resumed` holds (from
/// [`Trainer::restore`]), dropping metrics written after its checkpoint.
///
/// A non-finite loss or gradient stops the loop with [`Error::NonFinite`] before anything is
/// saved for that step, so the last checkpoint stays the last good one.
///
/// # Errors
/// [`Error::Io`] for the output folder, errors of the trainer.
pub fn run<T: Task>(
    trainer: &mut Trainer<T>,
    resumed: Option<(MetricsWindow, f64)>,
    options: &RunOptions,
    observer: &mut dyn Observer,
) -> Result<()> {
    // With expert parallelism every rank runs this loop; only rank 0 writes files.
    let main = trainer.is_main_rank();
    if main {
        std::fs::create_dir_all(&options.out_dir).map_err(|e| Error::io(&options.out_dir, e))?;
    }
    let metrics_path = options.out_dir.join("metrics.jsonl");
    let start_step = trainer.step_count();
    let (mut window, elapsed_before) = resumed.unwrap_or_default();
    let root = options.checkpoint_root();
    let mut metrics = if !main {
        None
    } else if start_step == 0 {
        if let Some(existing) = list_checkpoints(&root)?.last() {
            if !options.overwrite {
                return Err(Error::Checkpoint(format!(
                    "{} already holds a training run ({}); resume it or allow overwriting",
                    options.out_dir.display(),
                    existing.display()
                )));
            }
            std::fs::remove_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        }
        Some(MetricsWriter::create(&metrics_path)?)
    } else {
        Some(MetricsWriter::resume(&metrics_path, start_step)?)
    };
    let config = trainer.config().clone();
    let started = Instant::now();
    let elapsed = |started: &Instant| elapsed_before + started.elapsed().as_secs_f64();
    while trainer.step_count() < config.steps {
        let t0 = Instant::now();
        let stats = trainer.step()?;
        let seconds = t0.elapsed().as_secs_f64();
        window.add(&stats, seconds);
        observer.on_step(&stats, seconds);
        let last = stats.step == config.steps;
        if stats.step % config.eval_every == 0 || last {
            let eval = trainer.evaluate()?;
            let record = window.record(&stats, &eval, elapsed(&started));
            if let Some(m) = metrics.as_mut() {
                m.write(&record)?;
            }
            observer.on_eval(&record);
            window = MetricsWindow::default();
        }
        let stop = options.stop_after == Some(stats.step);
        if last || stop || options.save_every.is_some_and(|every| every > 0 && stats.step % every == 0) {
            let dir = trainer.save_checkpoint(
                &options.checkpoint_root(),
                &window,
                elapsed(&started),
                options.keep_checkpoints,
            )?;
            observer.on_checkpoint(&dir);
        }
        if stop {
            break;
        }
    }
    Ok(())
}
