//! One optimizer step, one evaluation, and checkpoints of a [`Task`] (a model and its objective)
//! on byte-level data. The step and the evaluation are here; saving and restoring are in
//! `checkpointing.rs`, the MoE layers' per-step statistics in `layer_record.rs`.
//!
//! The objective is `LM loss + α · mean_layers(load-balancing loss) + β · mean_layers(z-loss)`
//! (Switch Transformer §2.2 with α = 1e-2; ST-MoE §3.3, eq. 5 with β = 1e-3). With gradient
//! accumulation every term of every micro-batch is divided by the number of micro-batches, so
//! the auxiliary losses are scaled exactly like the LM loss.

mod checkpointing;
mod layer_record;

use crate::error::{ensure_config, Error, Result};
use crate::host;
use crate::model::stack::all_finite;
use crate::model::{LanguageModel, ModelAux, StackKind};
use crate::moe::ExpertParallel;
use crate::nn::role::roles;
use crate::train::config::TrainConfig;
use crate::train::data::TokenDataset;
use crate::train::metrics::LN_2;
use crate::train::optim::AdamW;
use crate::train::schedule::LrSchedule;
use crate::train::stats::{EvalStats, MoeLayerMetrics, StepStats};
use crate::train::task::Task;
use crate::train::weights::{load_named_weights, named_variables};
use layer_record::{mean_over_moe_layers, LayerRecord};
use rand::SeedableRng;
use std::path::Path;
use tch::{nn::VarStore, Device, Kind, Tensor};

/// Drives training of one [`Task`] (by default a [`LanguageModel`]): batches, loss, backward,
/// clipping, AdamW, schedule, aux-loss-free bias updates, checkpoints.
///
/// # Expert parallelism
/// When the task has an [`ExpertParallel`] group of `R` ranks ([`Task::expert_parallel`]), every
/// rank runs the same trainer: each draws the same global batch and keeps its `B/R` rows, its
/// objective is its share of the global one (LM loss `/ R`, the MoE layers' partial auxiliary
/// losses), the backward runs through the exchange tape, the replicated gradients are summed
/// over ranks, and clipping uses the global norm — so a step equals the single-process step on
/// the whole batch. Statistics and evaluations are global; rank 0 writes checkpoints (with the
/// experts gathered, in the single-process format) and every rank restores its slice.
pub struct Trainer<'a, T: Task = LanguageModel> {
    vs: &'a VarStore,
    task: &'a T,
    optimizer: AdamW,
    schedule: LrSchedule,
    train: &'a TokenDataset,
    val_batches: Vec<T::Batch>,
    /// Bytes of validation text per validation token (1 for bytes).
    val_bytes_per_token: f64,
    config: TrainConfig,
    device: Device,
    step: u64,
}

impl<T: Task> std::fmt::Debug for Trainer<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer").field("step", &self.step).field("config", &self.config).finish_non_exhaustive()
    }
}

impl<'a, T: Task> Trainer<'a, T> {
    /// Prepares training of `task` (a model and its objective), whose parameters live in `vs`.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid config, `seq_len` above the model's `max_seq_len`, or a
    /// precision that differs from the model's; [`Error::Data`] if a split is too short for one
    /// window.
    pub fn new(
        vs: &'a VarStore,
        task: &'a T,
        train: &'a TokenDataset,
        val: &TokenDataset,
        config: TrainConfig,
    ) -> Result<Self> {
        config.validate()?;
        task.check_data(config.seq_len, train.vocab_size().max(val.vocab_size()))?;
        ensure_config(task.precision() == config.precision, || {
            format!("the model computes in {:?} but the training config says {:?}", task.precision(), config.precision)
        })?;
        let ranks = task.expert_parallel().map_or(1, ExpertParallel::world_size);
        ensure_config(config.batch_size % ranks == 0, || {
            format!("batch_size ({}) must be a multiple of the {ranks} expert-parallel ranks", config.batch_size)
        })?;
        let device = vs.device();
        let val_batches = task
            .eval_batches(val, config.batch_size, config.seq_len, config.eval_batches, device)?
            .into_iter()
            .map(|b| shard(task, b))
            .collect::<Result<Vec<_>>>()?;
        task.eval_batches(train, 1, config.seq_len, 1, device)?; // fails early if the training split is too short
        Ok(Self {
            vs,
            task,
            optimizer: AdamW::new(vs, config.optimizer.clone())?,
            schedule: LrSchedule::new(config.lr, config.warmup_steps, config.steps, config.min_lr_ratio)?,
            train,
            val_batches,
            val_bytes_per_token: task.val_bytes_per_token(val),
            config,
            device,
            step: 0,
        })
    }

    /// Starts training from the parameters in `source` (the whole model, e.g. a loaded dense
    /// run after [`crate::model::upcycle`], or a Hugging Face import; `origin` names it in
    /// errors) instead of the initialisation; the optimizer and the schedule start fresh. An
    /// expert-parallel rank takes its own experts' slice.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] after the first step, or when the parameters do not match the
    /// model exactly (names, shapes, dtypes).
    pub fn initialize_from(&mut self, source: &VarStore, origin: &Path) -> Result<()> {
        if self.step > 0 {
            return Err(Error::Checkpoint(format!(
                "initial weights {} must be loaded before the first step (at step {})",
                origin.display(),
                self.step
            )));
        }
        let mut weights = named_variables(source)?;
        if let Some(p) = self.task.expert_parallel() {
            let roles = roles(self.vs);
            weights = p.slice_sharded(weights, |n| roles.get(n).is_some_and(|r| r.sharded))?;
        }
        load_named_weights(self.vs, &weights, origin)
    }

    /// Optimizer steps completed.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The training configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The task being trained.
    pub fn task(&self) -> &T {
        self.task
    }

    /// Whether this process writes metrics and checkpoints (rank 0, or the only process).
    pub fn is_main_rank(&self) -> bool {
        self.task.expert_parallel().is_none_or(|p| p.rank() == 0)
    }

    fn step_seed(&self, step: u64) -> u64 {
        self.config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step
    }

    /// One optimizer step over `grad_accum` random micro-batches. The batches of step `s`
    /// depend only on the seed and `s`, and libtorch's generator is reseeded per step, so runs
    /// are reproducible and resumable.
    ///
    /// The step reads values back to the host once (besides one read per MoE layer for its
    /// expert group sizes): losses, gradient norm and per-layer statistics together, after the
    /// backward — which is also when the non-finite guard looks at them.
    ///
    /// # Errors
    /// [`Error::NonFinite`] naming the step and the first parameter, block output or router with
    /// non-finite values (or the loss / gradient norm); the parameters are left unchanged.
    pub fn step(&mut self) -> Result<StepStats> {
        let step = self.step + 1;
        let seed = self.step_seed(step);
        tch::manual_seed((seed >> 1) as i64);
        let accum = self.config.grad_accum;
        let scale = 1.0 / accum as f64;
        let parallel = self.task.expert_parallel();
        let ranks = parallel.map_or(1, ExpertParallel::world_size);
        self.optimizer.zero_grad();
        // Everything the step reports stays on the device until the one read below.
        let mut micro_batches = Vec::with_capacity(accum);
        let mut losses = Vec::with_capacity(accum); // LM loss per micro-batch
        let mut routers = Vec::new(); // per micro-batch and MoE layer: balance, z-loss
        let mut layers: Vec<LayerRecord> = Vec::new(); // the last micro-batch's MoE layers
        let mut counts: Vec<(StackKind, usize, Tensor)> = Vec::new();
        let (mut dropped_sum, mut tokens) = (0.0, 0);
        for micro in 0..accum {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add((micro as u64) << 48));
            let batch = self.task.sample_batch(
                self.train,
                self.config.batch_size,
                self.config.seq_len,
                &mut rng,
                self.device,
            )?;
            let batch = shard(self.task, batch)?;
            let out = self.task.loss(&batch, true)?;
            tokens += out.tokens * ranks;
            losses.push(out.loss.f_detach()?.f_to_kind(Kind::Double)?.f_reshape([1])?);
            // This rank's share of the global mean LM loss (every rank holds B/R sequences).
            let mut total = out.loss.f_mul_scalar(scale / ranks as f64)?;
            let records: Vec<&ModelAux> = out.aux.iter().map(|(_, a)| a).collect();
            if let (Some(lb), Some(z)) = (
                mean_over_moe_layers(&records, |m| &m.load_balancing_loss)?,
                mean_over_moe_layers(&records, |m| &m.z_loss)?,
            ) {
                total = total
                    .f_add(&lb.f_mul_scalar(self.config.load_balancing_coef * scale)?)?
                    .f_add(&z.f_mul_scalar(self.config.z_loss_coef * scale)?)?;
                let dropped: Vec<f64> =
                    records.iter().flat_map(|a| a.moe_layers().map(|(_, m)| m.dropped_fraction)).collect();
                dropped_sum += dropped.iter().sum::<f64>() / dropped.len().max(1) as f64;
            }
            layers = LayerRecord::of(&out.aux)?;
            for layer in &layers {
                routers.push(layer.losses.f_narrow(0, 0, 2)?);
            }
            for (i, layer) in layers.iter().enumerate() {
                match counts.get_mut(i) {
                    Some((_, _, c)) => *c = c.f_add(&layer.assignments_per_expert)?,
                    None => counts.push((layer.stack, layer.layer, layer.assignments_per_expert.shallow_clone())),
                }
            }
            match parallel {
                Some(p) => p.backward(&total)?,
                None => total.f_backward()?,
            }
            micro_batches.push(batch);
        }
        let grad_norm = match parallel {
            None => self.optimizer.clip_grad_norm(self.config.grad_clip)?,
            Some(p) => {
                p.all_reduce_replicated_grads(self.vs)?;
                let mut sums = host::f64s(&self.optimizer.grad_square_sums()?)?;
                let mut sharded = [sums[1]];
                p.comm().all_reduce_sum_f64(&mut sharded)?;
                sums[1] = sharded[0];
                // On the parameters' device: it joins the step's other figures in one read.
                let norm = Tensor::from((sums[0] + sums[1]).sqrt() as f32).f_to_device(self.vs.device())?;
                self.optimizer.clip_to(&norm, self.config.grad_clip)?;
                norm
            }
        };
        // The step's one read: [losses (accum), grad norm, routers (accum × layers × 2), the last
        // micro-batch's layers (balance, z-loss, entropy, tokens per expert)].
        let mut parts: Vec<Tensor> = losses;
        parts.push(grad_norm.f_to_kind(Kind::Double)?.f_reshape([1])?);
        parts.extend(routers.iter().map(|r| r.f_to_kind(Kind::Double)).collect::<std::result::Result<Vec<_>, _>>()?);
        for layer in &layers {
            parts.push(layer.losses.f_to_kind(Kind::Double)?);
            parts.push(layer.assignments_per_expert.f_to_kind(Kind::Double)?);
        }
        let values = host::f64s(&Tensor::f_cat(&parts, 0)?)?;
        let (micro_losses, rest) = values.split_at(accum);
        let (grad_norm, rest) = (rest[0], &rest[1..]);
        let per_micro = layers.len();
        let (router_values, mut rest) = rest.split_at(accum * per_micro * 2);
        let moe_layers: Vec<MoeLayerMetrics> = layers
            .iter()
            .map(|layer| {
                let e = layer.assignments_per_expert.numel();
                let (losses, after) = rest.split_at(3);
                let (per_expert, after) = after.split_at(e);
                rest = after;
                layer.metrics(losses, per_expert)
            })
            .collect();
        // The non-finite guard: the first micro-batch whose LM loss or router went bad.
        let mut local_bad = None;
        for (micro, loss) in micro_losses.iter().enumerate() {
            let router = router_values[micro * per_micro * 2..(micro + 1) * per_micro * 2]
                .chunks(2)
                .position(|v| !v[0].is_finite() || !v[1].is_finite());
            local_bad = match router {
                _ if !loss.is_finite() => Some((micro, format!("LM loss ({loss})"))),
                Some(i) => Some((micro, format!("router of {} block {}", layers[i].stack, layers[i].layer))),
                None => continue,
            };
            break;
        }
        let failed = agree_on_failure(parallel, local_bad.as_ref().map(|(_, what)| what.clone()))?;
        if let Some(what) = failed {
            let micro = local_bad.map_or(0, |(micro, _)| micro);
            return Err(self.non_finite(step, &micro_batches[micro], what));
        }
        let (mut loss_sum, mut lb_sum, mut z_sum) = (micro_losses.iter().sum::<f64>(), 0.0, 0.0);
        if per_micro > 0 {
            for micro in router_values.chunks(per_micro * 2) {
                lb_sum += micro.iter().step_by(2).sum::<f64>() / per_micro as f64;
                z_sum += micro.iter().skip(1).step_by(2).sum::<f64>() / per_micro as f64;
            }
        }
        let mut moe_layers = moe_layers;
        if let Some(p) = parallel {
            // Global statistics: the mean LM loss over ranks; the partial auxiliary losses summed.
            let mut v = vec![loss_sum / ranks as f64, lb_sum, z_sum];
            for m in &moe_layers {
                v.extend([m.load_balancing_loss, m.z_loss, m.router_entropy]);
            }
            p.comm().all_reduce_sum_f64(&mut v)?;
            (loss_sum, lb_sum, z_sum) = (v[0], v[1], v[2]);
            for (m, chunk) in moe_layers.iter_mut().zip(v[3..].chunks(3)) {
                (m.load_balancing_loss, m.z_loss, m.router_entropy) = (chunk[0], chunk[1], chunk[2]);
            }
        }
        if !grad_norm.is_finite() {
            self.optimizer.zero_grad();
            return Err(Error::NonFinite { step, what: format!("gradient norm ({grad_norm})") });
        }
        let lr = self.schedule.lr_at(step);
        self.optimizer.step(lr)?;
        self.task.update_expert_biases(&counts)?;
        self.step = step;
        let moe_mean = |sum: f64| (per_micro > 0).then_some(sum * scale);
        Ok(StepStats {
            step,
            loss: loss_sum * scale,
            load_balancing_loss: moe_mean(lb_sum),
            z_loss: moe_mean(z_sum),
            dropped_fraction: moe_mean(dropped_sum),
            moe_layers,
            lr,
            grad_norm,
            tokens,
        })
    }

    /// Builds the non-finite error of `step`, naming the first parameter (in name order) or
    /// block output / router with non-finite values when there is one, `fallback` otherwise.
    fn non_finite(&mut self, step: u64, batch: &T::Batch, fallback: String) -> Error {
        self.optimizer.zero_grad();
        let mut params: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let bad_param = params.into_iter().find(|(_, p)| all_finite(p).is_ok_and(|finite| !finite));
        let what = match bad_param {
            Some((name, _)) => format!("parameter {name}"),
            // The diagnosis is a forward pass, which expert-parallel ranks cannot run alone.
            None if self.task.expert_parallel().is_some() => fallback,
            None => self.task.first_non_finite(batch).ok().flatten().unwrap_or(fallback),
        };
        Error::NonFinite { step, what }
    }

    /// LM loss per token and bits per byte of the validation text (loss / ln 2 / the validation
    /// split's bytes per token) on the fixed validation windows (evaluation mode, no gradients).
    ///
    /// # Errors
    /// [`Error::Torch`] on libtorch failure.
    pub fn evaluate(&self) -> Result<EvalStats> {
        tch::no_grad(|| -> Result<EvalStats> {
            let (mut sum, mut count) = (0.0, 0.0);
            for batch in &self.val_batches {
                let out = self.task.loss(batch, false)?;
                let n = out.tokens as f64;
                sum += host::f64_scalar(&out.loss)? * n;
                count += n;
            }
            if let Some(p) = self.task.expert_parallel() {
                let mut v = [sum, count];
                p.comm().all_reduce_sum_f64(&mut v)?;
                (sum, count) = (v[0], v[1]);
            }
            let loss = sum / count;
            // Bits per byte of the validation text, whatever the tokenizer: the loss per token over
            // the text's bytes per token.
            Ok(EvalStats { loss, bits_per_byte: loss / LN_2 / self.val_bytes_per_token })
        })
    }
}

/// This rank's rows of a batch (the batch itself in one process).
fn shard<T: Task>(task: &T, batch: T::Batch) -> Result<T::Batch> {
    match task.expert_parallel() {
        Some(p) if p.world_size() > 1 => task.shard_batch(batch, p.rank(), p.world_size()),
        _ => Ok(batch),
    }
}

/// Whether any rank failed (so that all stop together instead of waiting in a collective): the
/// local failure (named with its rank when there are several), or a note that another rank
/// failed.
fn agree_on_failure(parallel: Option<&ExpertParallel>, local: Option<String>) -> Result<Option<String>> {
    let Some(p) = parallel else { return Ok(local) };
    let mut failed = [if local.is_some() { 1.0 } else { 0.0 }];
    p.comm().all_reduce_sum_f64(&mut failed)?;
    Ok(match local {
        Some(what) => Some(format!("{what} on rank {}", p.rank())),
        None if failed[0] > 0.0 => Some("another rank failed (see its message)".into()),
        None => None,
    })
}
