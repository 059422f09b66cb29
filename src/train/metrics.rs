//! Evaluation records written as JSON lines (`metrics.jsonl`, one object per evaluation).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Natural log of 2: bits per byte = loss in nats per byte / ln 2.
pub const LN_2: f64 = std::f64::consts::LN_2;

/// Per-MoE-layer statistics of the last training step before an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoeLayerMetrics {
    /// Block index.
    pub layer: usize,
    /// Unscaled load-balancing loss (1.0 = balanced).
    pub load_balancing_loss: f64,
    /// Unscaled router z-loss.
    pub z_loss: f64,
    /// Fraction of assignments dropped for lack of capacity.
    pub dropped_frac: f64,
    /// Mean router entropy in nats.
    pub router_entropy: f64,
    /// Assignments per expert before capacity.
    pub tokens_per_expert: Vec<i64>,
    /// Most loaded expert's assignments over the mean (1 = perfectly balanced).
    pub max_load: f64,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Optimizer steps completed.
    pub step: u64,
    /// Mean LM loss (nats per byte) over the training steps since the previous evaluation.
    pub train_loss: f64,
    /// LM loss on the validation windows (nats per byte).
    pub val_loss: f64,
    /// Validation bits per byte (`val_loss / ln 2`).
    pub val_bpb: f64,
    /// Training throughput since the previous evaluation (tokens per second, evaluation excluded).
    pub tokens_per_s: f64,
    /// Mean unscaled load-balancing loss over MoE layers and steps since the previous
    /// evaluation (`null` without MoE).
    pub aux_loss: Option<f64>,
    /// Mean unscaled router z-loss, likewise (`null` without MoE).
    pub z_loss: Option<f64>,
    /// Mean dropped-assignment fraction, likewise (`null` without MoE).
    pub dropped_frac: Option<f64>,
    /// Learning rate of the last step.
    pub lr: f64,
    /// Wall-clock seconds since training started.
    pub elapsed_s: f64,
    /// Per-MoE-layer statistics of the last training step.
    pub moe_layers: Vec<MoeLayerMetrics>,
}

/// Appends records to a JSON-lines file, flushing after each line.
#[derive(Debug)]
pub struct MetricsWriter {
    file: File,
    path: PathBuf,
}

impl MetricsWriter {
    /// Creates (truncates) the file.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn create(path: &Path) -> Result<Self> {
        let file =
            OpenOptions::new().create(true).write(true).truncate(true).open(path).map_err(|e| Error::io(path, e))?;
        Ok(Self { file, path: path.to_path_buf() })
    }

    /// Writes one record as a line.
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::Json`].
    pub fn write(&mut self, record: &EvalRecord) -> Result<()> {
        let line =
            serde_json::to_string(record).map_err(|source| Error::Json { context: "metrics record".into(), source })?;
        writeln!(self.file, "{line}").and_then(|()| self.file.flush()).map_err(|e| Error::io(&self.path, e))
    }
}
