//! One finished run's figures, kept in a small JSON file (committed under `docs/results/runs/`)
//! so that an interrupted study continues where it stopped and the report is regenerated from the
//! files alone.

use altup_moe::io::save_json;
use altup_moe::model::ModelConfig;
use altup_moe::train::{EvalRecord, TrainConfig};
use altup_moe::Error;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One validation point of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    /// Optimizer steps completed.
    pub step: u64,
    /// Wall-clock seconds since training started.
    pub elapsed_s: f64,
    /// Validation bits per byte.
    pub val_bpb: f64,
}

/// A finished run: what was trained and its validation curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The stack's name in the report.
    pub name: String,
    /// Seed of the initialisation and the data order.
    pub seed: u64,
    /// Total parameters.
    pub params_total: usize,
    /// Parameters active per token.
    pub params_active: usize,
    /// The model.
    pub model: ModelConfig,
    /// The training settings.
    pub train: TrainConfig,
    /// Every evaluation, in order.
    pub evals: Vec<EvalPoint>,
}

impl RunRecord {
    /// The record of a run from its metrics.
    pub fn new(name: &str, seed: u64, model: &ModelConfig, train: &TrainConfig, evals: &[EvalRecord]) -> Self {
        let counts = model.param_counts();
        Self {
            name: name.to_string(),
            seed,
            params_total: counts.total,
            params_active: counts.active_per_token,
            model: model.clone(),
            train: train.clone(),
            evals: evals
                .iter()
                .map(|r| EvalPoint { step: r.step, elapsed_s: r.elapsed_s, val_bpb: r.val_bpb })
                .collect(),
        }
    }

    /// Where the record of `name` with `seed` lives under `dir`.
    pub fn path(dir: &Path, name: &str, seed: u64) -> PathBuf {
        dir.join(format!("{name}-seed{seed}.json"))
    }

    /// Reads a record, `None` when there is none yet.
    ///
    /// # Errors
    /// [`Error::Json`] naming a damaged file.
    pub fn read(dir: &Path, name: &str, seed: u64) -> altup_moe::Result<Option<Self>> {
        let path = Self::path(dir, name, seed);
        let Ok(text) = std::fs::read_to_string(&path) else { return Ok(None) };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| Error::Json { context: path.display().to_string(), source })
    }

    /// Writes the record atomically.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn write(&self, dir: &Path) -> altup_moe::Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        save_json(&Self::path(dir, &self.name, self.seed), self)
    }

    /// Whether this record is a finished run of exactly `model` and `train` (the corpus is
    /// compared by its content hash, not by where it lies on this machine).
    pub fn is_run_of(&self, model: &ModelConfig, train: &TrainConfig) -> bool {
        let recorded = TrainConfig { data: train.data.clone(), ..self.train.effective(&self.model) };
        let same_train = recorded == train.effective(model);
        &self.model == model && same_train && self.evals.last().is_some_and(|e| e.step == train.steps)
    }

    /// The final validation bits per byte.
    pub fn final_bpb(&self) -> f64 {
        self.evals.last().map_or(f64::NAN, |e| e.val_bpb)
    }

    /// Wall time per optimizer step, evaluations included.
    pub fn step_time(&self) -> f64 {
        self.evals.last().map_or(f64::NAN, |e| e.elapsed_s / e.step.max(1) as f64)
    }

    /// The validation curve against steps.
    pub fn by_step(&self) -> Vec<(f64, f64)> {
        self.evals.iter().map(|e| (e.step as f64, e.val_bpb)).collect()
    }

    /// The validation curve against wall time.
    pub fn by_time(&self) -> Vec<(f64, f64)> {
        self.evals.iter().map(|e| (e.elapsed_s, e.val_bpb)).collect()
    }
}
