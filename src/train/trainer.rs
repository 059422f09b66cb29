//! One optimizer step and one evaluation of a [`LanguageModel`] on byte-level data.
//!
//! The objective is `LM loss + α · mean_layers(load-balancing loss) + β · mean_layers(z-loss)`
//! (Switch Transformer §2.2 with α = 1e-2; ST-MoE §3.1 with β = 1e-3).

use crate::error::{ensure_config, Error, Result};
use crate::model::LanguageModel;
use crate::train::data::{Batch, ByteDataset};
use crate::train::metrics::{MoeLayerMetrics, LN_2};
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::schedule::LrSchedule;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Device, Kind, Reduction, Tensor};

/// Training hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Optimizer steps.
    pub steps: u64,
    /// Sequences per step `B`.
    pub batch_size: usize,
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
    /// α, the load-balancing loss coefficient.
    pub load_balancing_coef: f64,
    /// β, the router z-loss coefficient.
    pub z_loss_coef: f64,
    /// Evaluate every this many steps (and after the last step).
    pub eval_every: u64,
    /// Validation batches per evaluation.
    pub eval_batches: usize,
    /// Seed of the data order (the initial weights use [`crate::ModelConfig::init_seed`]).
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            batch_size: 16,
            seq_len: 128,
            lr: 3e-3,
            warmup_steps: 50,
            min_lr_ratio: 0.1,
            grad_clip: 1.0,
            optimizer: AdamWConfig::default(),
            load_balancing_coef: 1e-2,
            z_loss_coef: 1e-3,
            eval_every: 100,
            eval_batches: 8,
            seed: 0,
        }
    }
}

impl TrainConfig {
    /// # Errors
    /// [`Error::Config`] naming the value: zero steps, batch size, sequence length, eval period
    /// or eval batches; a negative coefficient or clip norm.
    pub fn validate(&self) -> Result<()> {
        ensure_config(self.steps > 0, || "steps (0) must be positive".into())?;
        ensure_config(self.batch_size > 0, || "batch_size (0) must be positive".into())?;
        ensure_config(self.seq_len > 0, || "seq_len (0) must be positive".into())?;
        ensure_config(self.eval_every > 0, || "eval_every (0) must be positive".into())?;
        ensure_config(self.eval_batches > 0, || "eval_batches (0) must be positive".into())?;
        for (name, v) in [
            ("grad_clip", self.grad_clip),
            ("load_balancing_coef", self.load_balancing_coef),
            ("z_loss_coef", self.z_loss_coef),
        ] {
            ensure_config(v >= 0.0 && v.is_finite(), || format!("{name} ({v}) must be >= 0 and finite"))?;
        }
        LrSchedule::new(self.lr, self.warmup_steps, self.steps, self.min_lr_ratio)?;
        Ok(())
    }
}

/// What one training step measured.
#[derive(Debug, Clone, PartialEq)]
pub struct StepStats {
    /// Optimizer steps completed (1-based).
    pub step: u64,
    /// LM loss of the batch, nats per byte.
    pub loss: f64,
    /// Unscaled load-balancing loss averaged over MoE layers.
    pub load_balancing_loss: Option<f64>,
    /// Unscaled z-loss averaged over MoE layers.
    pub z_loss: Option<f64>,
    /// Dropped-assignment fraction averaged over MoE layers.
    pub dropped_fraction: Option<f64>,
    /// Per-MoE-layer statistics.
    pub moe_layers: Vec<MoeLayerMetrics>,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens in the batch.
    pub tokens: usize,
}

/// Result of an evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalStats {
    /// Mean LM loss, nats per byte.
    pub loss: f64,
    /// Bits per byte (`loss / ln 2`).
    pub bits_per_byte: f64,
}

/// Drives training of one model: batches, loss, backward, clipping, AdamW, schedule.
#[derive(Debug)]
pub struct Trainer<'a> {
    model: &'a LanguageModel,
    optimizer: AdamW,
    schedule: LrSchedule,
    train: &'a ByteDataset,
    val_batches: Vec<Batch>,
    config: TrainConfig,
    device: Device,
    step: u64,
}

impl<'a> Trainer<'a> {
    /// Prepares training of `model`, whose parameters live in `vs`.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid config or `seq_len` above the model's `max_seq_len`;
    /// [`Error::Data`] if a split is too short for one window.
    pub fn new(
        vs: &VarStore,
        model: &'a LanguageModel,
        train: &'a ByteDataset,
        val: &ByteDataset,
        config: TrainConfig,
    ) -> Result<Self> {
        config.validate()?;
        let max = model.config().max_seq_len;
        ensure_config(config.seq_len <= max, || {
            format!("seq_len ({}) must be <= the model's max_seq_len ({max})", config.seq_len)
        })?;
        let device = vs.device();
        let val_batches = val.eval_batches(config.batch_size, config.seq_len, config.eval_batches, device)?;
        train.eval_batches(1, config.seq_len, 1, device)?; // fails early if the training split is too short
        Ok(Self {
            model,
            optimizer: AdamW::new(vs, config.optimizer.clone())?,
            schedule: LrSchedule::new(config.lr, config.warmup_steps, config.steps, config.min_lr_ratio)?,
            train,
            val_batches,
            config,
            device,
            step: 0,
        })
    }

    /// Optimizer steps completed.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The training configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Mean cross-entropy of next-token predictions.
    ///
    /// # Shapes
    /// `logits`: `[B, T, V]`; `targets`: `[B, T]` → scalar.
    fn lm_loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let v = logits.size()[2];
        Ok(logits.f_reshape([-1, v])?.f_cross_entropy_loss::<Tensor>(
            &targets.f_reshape([-1])?,
            None,
            Reduction::Mean,
            -100,
            0.0,
        )?)
    }

    /// One optimizer step on a random batch. The batch of step `s` depends only on the seed and
    /// `s`, so runs are reproducible.
    ///
    /// # Errors
    /// [`Error::NonFinite`] naming the step and the first MoE layer whose router went
    /// non-finite (or the LM loss / gradient); the parameters are left unchanged in that case.
    pub fn step(&mut self) -> Result<StepStats> {
        let step = self.step + 1;
        let step_seed = self.config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step;
        // libtorch's generator drives router jitter: reseed it per step so runs are reproducible.
        tch::manual_seed((step_seed >> 1) as i64);
        let mut rng = rand::rngs::StdRng::seed_from_u64(step_seed);
        let batch = self.train.random_batch(self.config.batch_size, self.config.seq_len, &mut rng, self.device)?;
        let out = self.model.forward_t(&batch.inputs, true)?;
        let lm = Self::lm_loss(&out.logits, &batch.targets)?;
        let mut total = lm.shallow_clone();
        let lb = out.aux.load_balancing_loss()?;
        let z = out.aux.z_loss()?;
        if let Some(lb) = &lb {
            total = total.f_add(&lb.f_mul_scalar(self.config.load_balancing_coef)?)?;
        }
        if let Some(z) = &z {
            total = total.f_add(&z.f_mul_scalar(self.config.z_loss_coef)?)?;
        }
        let mut moe_layers = Vec::new();
        for (layer, m) in out.aux.moe_layers() {
            let z_loss = m.z_loss.f_double_value(&[])?;
            let load_balancing_loss = m.load_balancing_loss.f_double_value(&[])?;
            if !z_loss.is_finite() || !load_balancing_loss.is_finite() {
                return Err(Error::NonFinite {
                    step,
                    what: format!(
                        "router of block {layer} (z-loss {z_loss}, load-balancing loss {load_balancing_loss})"
                    ),
                });
            }
            let tokens_per_expert = Vec::<i64>::try_from(&m.tokens_per_expert.f_to_device(Device::Cpu)?)?;
            let mean = tokens_per_expert.iter().sum::<i64>() as f64 / tokens_per_expert.len().max(1) as f64;
            let max = tokens_per_expert.iter().copied().max().unwrap_or(0) as f64;
            moe_layers.push(MoeLayerMetrics {
                layer,
                load_balancing_loss,
                z_loss,
                dropped_frac: m.dropped_fraction,
                router_entropy: m.router_entropy.f_double_value(&[])?,
                max_load: if mean > 0.0 { max / mean } else { 0.0 },
                tokens_per_expert,
            });
        }
        let loss = lm.f_double_value(&[])?;
        if !loss.is_finite() {
            return Err(Error::NonFinite { step, what: format!("LM loss ({loss})") });
        }
        self.optimizer.zero_grad();
        total.f_backward()?;
        let grad_norm = self.optimizer.clip_grad_norm(self.config.grad_clip)?;
        if !grad_norm.is_finite() {
            self.optimizer.zero_grad();
            return Err(Error::NonFinite { step, what: format!("gradient norm ({grad_norm})") });
        }
        let lr = self.schedule.lr_at(step);
        self.optimizer.step(lr)?;
        let counts: Vec<(usize, Tensor)> =
            out.aux.moe_layers().map(|(layer, m)| (layer, m.tokens_per_expert.shallow_clone())).collect();
        self.model.update_expert_biases(&counts)?;
        self.step = step;
        Ok(StepStats {
            step,
            loss,
            load_balancing_loss: lb.map(|t| t.f_double_value(&[])).transpose()?,
            z_loss: z.map(|t| t.f_double_value(&[])).transpose()?,
            dropped_fraction: out.aux.dropped_fraction(),
            moe_layers,
            lr,
            grad_norm,
            tokens: self.config.batch_size * self.config.seq_len,
        })
    }

    /// LM loss and bits per byte on the fixed validation windows (evaluation mode, no gradients).
    ///
    /// # Errors
    /// [`Error::Torch`] on libtorch failure.
    pub fn evaluate(&self) -> Result<EvalStats> {
        tch::no_grad(|| -> Result<EvalStats> {
            let (mut sum, mut count) = (0.0, 0.0);
            for batch in &self.val_batches {
                let logits = self.model.forward_t(&batch.inputs, false)?.logits;
                let n = batch.targets.numel() as f64;
                sum += Self::lm_loss(&logits, &batch.targets)?.f_to_kind(Kind::Double)?.f_double_value(&[])? * n;
                count += n;
            }
            let loss = sum / count;
            Ok(EvalStats { loss, bits_per_byte: loss / LN_2 })
        })
    }
}
