//! What a training checkpoint holds: a checkpoint folder ([`crate::io`] writes it atomically)
//! with `config.json`, `train_config.json`, `model.safetensors`, `optimizer.safetensors` and
//! `trainer_state.json` — the trainer's state besides its tensors, and how it is read back.

use crate::error::{Error, Result};
use crate::io::find_checkpoint;
use crate::train::config::TrainConfig;
use crate::train::metrics::MetricsWindow;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Format version written to `trainer_state.json`.
pub const CHECKPOINT_FORMAT: u32 = 1;

/// Everything besides tensors that resuming needs (`trainer_state.json`).
///
/// The data position and random state are functions of `(seed, step)`: the batch of step `s`
/// (micro-batch `m`) is drawn from a generator seeded by `(seed, s, m)`, and libtorch's generator
/// (router jitter) is reseeded from `(seed, s)` at every step, so `step` restores both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// [`CHECKPOINT_FORMAT`].
    pub format: u32,
    /// Optimizer steps completed.
    pub step: u64,
    /// Training batches consumed (`step · grad_accum`).
    pub data_position: u64,
    /// Seed of the data order and of the per-step generators.
    pub seed: u64,
    /// Wall-clock seconds of training so far.
    pub elapsed_s: f64,
    /// Running means since the last evaluation (so resumed metrics equal uninterrupted ones).
    pub window: MetricsWindow,
}

/// A checkpoint folder and its JSON parts.
#[derive(Debug, Clone)]
pub struct CheckpointMeta {
    /// The `step-*` folder.
    pub dir: PathBuf,
    /// `config.json` (a [`crate::model::ModelConfig`], or a [`crate::model::Seq2SeqConfig`] for an
    /// encoder-decoder; parse it with [`CheckpointMeta::model_config`]).
    pub model_config: serde_json::Value,
    /// `train_config.json`.
    pub train_config: TrainConfig,
    /// `trainer_state.json`.
    pub state: TrainerState,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::Checkpoint(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|source| Error::Json { context: path.display().to_string(), source })
}

impl CheckpointMeta {
    /// Reads the JSON parts of a checkpoint folder (a `step-*` folder, or a run folder /
    /// `checkpoints` folder, in which case the newest checkpoint is used). A compute precision
    /// recorded in the training config by older versions moves into the model config.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] when no checkpoint is found or a file is missing; [`Error::Json`] /
    /// [`Error::Config`] for malformed or invalid contents.
    pub fn read(path: &Path) -> Result<Self> {
        let dir = find_checkpoint(path)?;
        let mut model_config: serde_json::Value = read_json(&dir.join("config.json"))?;
        let mut train_config: TrainConfig = read_json(&dir.join("train_config.json"))?;
        train_config.validate()?;
        // Older runs recorded the compute precision in the training config: it is the model's.
        if let Some(precision) = train_config.precision.take().filter(|p| !p.is_f32()) {
            let value = serde_json::to_value(precision)
                .map_err(|source| Error::Json { context: dir.display().to_string(), source })?;
            match model_config.as_object_mut() {
                Some(m) if m.contains_key("encoder") && m.contains_key("decoder") => {
                    for stack in ["encoder", "decoder"] {
                        if let Some(c) = m.get_mut(stack).and_then(|c| c.as_object_mut()) {
                            c.insert("precision".into(), value.clone());
                        }
                    }
                }
                Some(m) => {
                    m.insert("precision".into(), value);
                }
                None => {}
            }
        }
        let state: TrainerState = read_json(&dir.join("trainer_state.json"))?;
        if state.format != CHECKPOINT_FORMAT {
            return Err(Error::Checkpoint(format!(
                "{} has format {} but this version reads format {CHECKPOINT_FORMAT}",
                dir.display(),
                state.format
            )));
        }
        for file in ["model.safetensors", "optimizer.safetensors"] {
            if !dir.join(file).is_file() {
                return Err(Error::Checkpoint(format!("{} is missing {file}", dir.display())));
            }
        }
        Ok(Self { dir, model_config, train_config, state })
    }
}

impl CheckpointMeta {
    /// The checkpoint's model config as `C` (e.g. [`crate::model::ModelConfig`]).
    ///
    /// # Errors
    /// [`Error::Json`] if `config.json` does not hold a `C`.
    pub fn model_config<C: serde::de::DeserializeOwned>(&self) -> Result<C> {
        serde_json::from_value(self.model_config.clone())
            .map_err(|source| Error::Json { context: self.dir.join("config.json").display().to_string(), source })
    }
}
