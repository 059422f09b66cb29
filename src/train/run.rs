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
    /// After every optimizer step, with its wall-clock duration in seconds — called when the
    /// step's statistics are read back (every [`crate::train::TrainConfig::log_every`] steps,
    /// and at evaluations and checkpoints), once for each step since the last read.
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
/// [`Error::Config`] when `stop_after` is not after the trainer's current step and before its
/// last step (checked before anything is written); [`Error::Io`] for the output folder, errors of
/// the trainer.
pub fn run<T: Task>(
    trainer: &mut Trainer<T>,
    resumed: Option<(MetricsWindow, f64)>,
    options: &RunOptions,
    observer: &mut dyn Observer,
) -> Result<()> {
    let start_step = trainer.step_count();
    if let Some(stop) = options.stop_after {
        let steps = trainer.config().steps;
        if stop <= start_step || stop >= steps {
            return Err(Error::Config(format!(
                "stop after step {stop}: it must come after the run's current step ({start_step}) and before its last \
                 step ({steps})"
            )));
        }
    }
    // With expert parallelism every rank runs this loop; only rank 0 writes files.
    let main = trainer.is_main_rank();
    if main {
        std::fs::create_dir_all(&options.out_dir).map_err(|e| Error::io(&options.out_dir, e))?;
    }
    let metrics_path = options.out_dir.join("metrics.jsonl");
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
    // Host time of each step since the last read (the device may still be working on them; the
    // read waits for it, and its wait is added to the last step).
    let mut step_seconds: Vec<f64> = Vec::new();
    while trainer.step_count() < config.steps {
        let t0 = Instant::now();
        trainer.advance()?;
        step_seconds.push(t0.elapsed().as_secs_f64());
        let step = trainer.step_count();
        let last = step == config.steps;
        let evaluate = step % config.eval_every == 0 || last;
        let stop = options.stop_after == Some(step);
        let checkpoint = last || stop || options.save_every.is_some_and(|every| every > 0 && step % every == 0);
        if !(evaluate || checkpoint || step % config.log_every == 0) {
            continue;
        }
        let t1 = Instant::now();
        let read = trainer.read_stats()?;
        if let Some(s) = step_seconds.last_mut() {
            *s += t1.elapsed().as_secs_f64();
        }
        for (stats, seconds) in read.iter().zip(step_seconds.drain(..)) {
            window.add(stats, seconds);
            observer.on_step(stats, seconds);
        }
        if evaluate {
            let stats = read.last().ok_or_else(|| Error::Config("no statistics for an evaluated step".into()))?;
            let eval = trainer.evaluate()?;
            let record = window.record(stats, &eval, elapsed(&started));
            if let Some(m) = metrics.as_mut() {
                m.write(&record)?;
            }
            observer.on_eval(&record);
            window = MetricsWindow::default();
        }
        if checkpoint {
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
