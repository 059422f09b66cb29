//! Training hyper-parameters, validated once.

use crate::data::TokenizerSpec;
use crate::error::{ensure_config, Result};
use crate::model::Precision;
use crate::train::optim::AdamWConfig;
use crate::train::schedule::LrSchedule;
use serde::{Deserialize, Serialize};

/// Training hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Optimizer steps.
    pub steps: u64,
    /// Sequences per micro-batch `B`.
    pub batch_size: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    pub grad_accum: usize,
    /// Tokens per sequence `T`.
    pub seq_len: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup steps.
    pub warmup_steps: u64,
    /// Final learning rate as a fraction of the peak (cosine decay).
    pub min_lr_ratio: f64,
    /// Maximum global gradient norm (0 disables clipping).
    pub grad_clip: f64,
    /// AdamW moments and weight decay.
    pub optimizer: AdamWConfig,
    /// α, the load-balancing loss coefficient; `None`: the model's default
    /// ([`crate::train::Objective::for_model`]: 1e-2, or 0 when every MoE layer balances without
    /// the loss).
    pub load_balancing_coef: Option<f64>,
    /// β, the router z-loss coefficient; `None`: the default 1e-3.
    pub z_loss_coef: Option<f64>,
    /// Evaluate every this many steps (and after the last step).
    pub eval_every: u64,
    /// Read the steps' statistics back to the host every this many steps (and at every
    /// evaluation and checkpoint): between reads a step runs without waiting for the device, and
    /// a non-finite step is reported at the next read (its update, and those after it, are not
    /// applied). Progress and `metrics.jsonl` still show every step.
    pub log_every: u64,
    /// Validation batches per evaluation.
    pub eval_batches: usize,
    /// Capture the training step in a CUDA graph after a few eager steps and replay it (one
    /// launch per step): CUDA only, and only for steps whose shapes never change — dense, AltUp,
    /// dropless token-choice MoE on the grouped kernel, one process. Anything else is refused
    /// when the trainer is built, naming why.
    pub cuda_graph: bool,
    /// Seed of the data order and the per-step generators (the initial weights use
    /// [`crate::model::ModelConfig::init_seed`]).
    pub seed: u64,
    /// Legacy: the compute precision, as training configs written before the model's config held
    /// it ([`crate::model::ModelConfig::precision`]) recorded it. New runs leave it `None` (the
    /// model owns its precision and the trainer reads it); reading an old checkpoint moves it
    /// into the model's config ([`crate::train::CheckpointMeta::read`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    /// Description of the training data (e.g. path, files, bytes), recorded for provenance.
    pub data: String,
    /// Content hash of the training corpus (`Corpus::content_hash`, e.g. `sha256:…`); empty when
    /// unknown (older configs), which skips the check on resume.
    pub data_hash: String,
    /// The tokenizer the run was started with (a subword tokenizer itself is stored in the run
    /// folder as `tokenizer.json`; older configs without this field trained on bytes).
    pub tokenizer: TokenizerSpec,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 1200,
            batch_size: 16,
            grad_accum: 1,
            seq_len: 128,
            lr: 3e-3,
            warmup_steps: Self::default_warmup(1200),
            min_lr_ratio: 0.1,
            grad_clip: 1.0,
            optimizer: AdamWConfig::default(),
            load_balancing_coef: None,
            z_loss_coef: None,
            eval_every: 100,
            log_every: 10,
            eval_batches: 16,
            cuda_graph: false,
            seed: 0,
            precision: None,
            data: String::new(),
            data_hash: String::new(),
            tokenizer: TokenizerSpec::Bytes,
        }
    }
}

impl TrainConfig {
    /// These settings as they act on a model of `model`'s configuration: the objective's
    /// coefficients filled in with the model's defaults ([`crate::train::Objective::for_config`])
    /// and a legacy precision that agrees with the model's dropped — so that two configurations
    /// that train the same way compare equal, whichever version wrote them.
    pub fn effective(&self, model: &crate::model::ModelConfig) -> Self {
        let defaults = crate::train::Objective::for_config(model);
        Self {
            load_balancing_coef: Some(self.load_balancing_coef.unwrap_or(defaults.load_balancing_coef)),
            z_loss_coef: Some(self.z_loss_coef.unwrap_or(defaults.z_loss_coef)),
            precision: self.precision.filter(|p| *p != model.precision),
            ..self.clone()
        }
    }

    /// The warmup of a run of `steps` steps when none is chosen: 50 steps, at most a tenth of the
    /// run.
    pub fn default_warmup(steps: u64) -> u64 {
        50.min(steps / 10)
    }

    /// # Errors
    /// [`crate::Error::Config`] naming the value: zero steps, batch size, accumulation, sequence length,
    /// eval period or eval batches; a negative or non-finite coefficient or clip norm; a bad
    /// learning rate or schedule.
    pub fn validate(&self) -> Result<()> {
        ensure_config(self.steps > 0, || "steps (0) must be positive".into())?;
        ensure_config(self.batch_size > 0, || "batch_size (0) must be positive".into())?;
        ensure_config(self.grad_accum > 0, || "grad_accum (0) must be positive".into())?;
        ensure_config(self.seq_len > 0, || "seq_len (0) must be positive".into())?;
        ensure_config(self.eval_every > 0, || "eval_every (0) must be positive".into())?;
        ensure_config(self.log_every > 0, || "log_every (0) must be positive".into())?;
        ensure_config(self.eval_batches > 0, || "eval_batches (0) must be positive".into())?;
        for (name, v) in [
            ("grad_clip", Some(self.grad_clip)),
            ("load_balancing_coef", self.load_balancing_coef),
            ("z_loss_coef", self.z_loss_coef),
        ] {
            let Some(v) = v else { continue };
            ensure_config(v >= 0.0 && v.is_finite(), || format!("{name} ({v}) must be >= 0 and finite"))?;
        }
        ensure_config(self.warmup_steps < self.steps, || {
            format!("warmup_steps ({}) must be smaller than steps ({})", self.warmup_steps, self.steps)
        })?;
        LrSchedule::new(self.lr, self.warmup_steps, self.steps, self.min_lr_ratio)?;
        Ok(())
    }
}
