//! Evaluation records written as JSON lines (`metrics.jsonl`, one object per evaluation).

use crate::error::{Error, Result};
use crate::train::stats::{EvalStats, MoeLayerMetrics, StepStats};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Natural log of 2: bits per byte = loss in nats per byte / ln 2.
pub const LN_2: f64 = std::f64::consts::LN_2;

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
    #[serde(alias = "aux_loss")]
    pub load_balancing_loss: Option<f64>,
    /// Mean unscaled router z-loss, likewise (`null` without MoE).
    pub z_loss: Option<f64>,
    /// Mean dropped-assignment fraction, likewise (`null` without MoE).
    #[serde(alias = "dropped_frac")]
    pub dropped_fraction: Option<f64>,
    /// Learning rate of the last step.
    pub lr: f64,
    /// Wall-clock seconds since training started.
    pub elapsed_s: f64,
    /// Per-MoE-layer statistics of the last training step.
    pub moe_layers: Vec<MoeLayerMetrics>,
}

/// Running sums of training statistics between two evaluations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsWindow {
    /// Sum of LM losses.
    pub loss_sum: f64,
    /// Sum and count of load-balancing losses (steps with MoE).
    pub aux_sum: f64,
    /// Sum of z-losses.
    pub z_sum: f64,
    /// Sum of dropped fractions.
    pub dropped_sum: f64,
    /// Steps with MoE statistics.
    pub moe_steps: u64,
    /// Steps in the window.
    pub steps: u64,
    /// Tokens processed.
    pub tokens: u64,
    /// Seconds spent in training steps.
    pub seconds: f64,
}

impl MetricsWindow {
    /// Adds one step's statistics and its wall-clock duration.
    pub fn add(&mut self, s: &StepStats, seconds: f64) {
        self.loss_sum += s.loss;
        if let (Some(a), Some(z), Some(d)) = (s.load_balancing_loss, s.z_loss, s.dropped_fraction) {
            self.aux_sum += a;
            self.z_sum += z;
            self.dropped_sum += d;
            self.moe_steps += 1;
        }
        self.steps += 1;
        self.tokens += s.tokens as u64;
        self.seconds += seconds;
    }

    /// The evaluation record for the window ending with step `last`.
    pub fn record(&self, last: &StepStats, eval: &EvalStats, elapsed_s: f64) -> EvalRecord {
        let moe_mean = |sum: f64| (self.moe_steps > 0).then(|| sum / self.moe_steps as f64);
        EvalRecord {
            step: last.step,
            train_loss: self.loss_sum / self.steps.max(1) as f64,
            val_loss: eval.loss,
            val_bpb: eval.bits_per_byte,
            tokens_per_s: self.tokens as f64 / self.seconds.max(1e-9),
            load_balancing_loss: moe_mean(self.aux_sum),
            z_loss: moe_mean(self.z_sum),
            dropped_fraction: moe_mean(self.dropped_sum),
            lr: last.lr,
            elapsed_s,
            moe_layers: last.moe_layers.clone(),
        }
    }
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

    /// Reopens the file of an interrupted run resumed at `step`: records after `step` (written
    /// before the interruption, after the checkpoint) are dropped, the rest kept, and new records
    /// are appended. A missing file is created.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file; [`Error::Json`] for a malformed line.
    pub fn resume(path: &Path, step: u64) -> Result<Self> {
        let kept: Vec<String> = match std::fs::read_to_string(path) {
            Ok(text) => text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| {
                    let r: EvalRecord = serde_json::from_str(l)
                        .map_err(|source| Error::Json { context: path.display().to_string(), source })?;
                    Ok((r.step <= step).then(|| l.to_string()))
                })
                .collect::<Result<Vec<Option<String>>>>()?
                .into_iter()
                .flatten()
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(path, e)),
        };
        let text: String = kept.iter().map(|l| format!("{l}\n")).collect();
        crate::fs::write_atomic(path, |tmp| std::fs::write(tmp, &text).map_err(|e| Error::io(tmp, e)))?;
        let file = OpenOptions::new().append(true).open(path).map_err(|e| Error::io(path, e))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StackKind;

    /// Metrics files written before the names settled (`aux_loss`, `dropped_frac`,
    /// `tokens_per_expert`) still read back.
    #[test]
    fn old_field_names_still_read() {
        let line = r#"{"step":100,"train_loss":2.5,"val_loss":2.4,"val_bpb":3.46,"tokens_per_s":7000.0,
            "aux_loss":1.02,"z_loss":2.5,"dropped_frac":0.0,"lr":0.003,"elapsed_s":12.0,
            "moe_layers":[{"stack":"decoder","layer":1,"load_balancing_loss":1.02,"z_loss":2.5,
            "dropped_frac":0.125,"router_entropy":2.0,"tokens_per_expert":[3,5],"max_load":1.25}]}"#;
        let record: EvalRecord = serde_json::from_str(line).unwrap();
        assert_eq!(record.load_balancing_loss, Some(1.02));
        assert_eq!(record.dropped_fraction, Some(0.0));
        let layer = &record.moe_layers[0];
        assert_eq!((layer.stack, layer.dropped_fraction), (StackKind::Decoder, 0.125));
        assert_eq!(layer.assignments_per_expert, vec![3, 5]);
        let written = serde_json::to_string(&record).unwrap();
        assert!(written.contains("\"load_balancing_loss\":1.02") && written.contains("\"assignments_per_expert\""));
    }
}
