//! One optimizer step, one evaluation, and checkpoints of a [`Task`] (a model and its data). The
//! step and the evaluation are here; the objective is [`Objective`]'s, what the step reads back
//! `readback.rs`'s, the bias-update counts `expert_counts.rs`'s, saving and restoring
//! `checkpointing.rs`'s.

mod captured;
mod checkpointing;
mod expert_counts;
mod readback;

use crate::data::TokenDataset;
use crate::error::{ensure_config, Error, Result};
use crate::host;
use crate::io::{load_named_weights, named_variables};
use crate::model::stack::all_finite;
use crate::model::{ForwardOptions, LanguageModel};
use crate::nn::role::roles;
use crate::parallel::ProcessGroup;
use crate::train::config::TrainConfig;
use crate::train::metrics::LN_2;
use crate::train::objective::Objective;
use crate::train::optim::AdamW;
use crate::train::schedule::LrSchedule;
use crate::train::stats::{EvalStats, StepStats};
use crate::train::task::Task;
use captured::{StepBody, StepGraph};
use expert_counts::ExpertCounts;
use rand::SeedableRng;
use readback::{PendingSteps, StepRecord, StepRow};
use std::path::Path;
use tch::{nn::VarStore, Device, Tensor};

/// Drives training of one [`Task`] (by default a [`LanguageModel`]): batches, loss, backward,
/// clipping, AdamW, schedule, aux-loss-free bias updates, checkpoints.
///
/// # Several ranks
/// The model's [`ProcessGroup`] decides: in a group of `R` ranks every rank runs the same
/// trainer; each draws the same global batch and keeps its `B/R` rows, its objective is its share
/// of the global one, the backward runs through the exchange tape, the replicated gradients are
/// summed over ranks, and clipping uses the global norm — so a step equals the single-process step
/// on the whole batch. Statistics and evaluations are global; rank 0 writes checkpoints (with the
/// experts gathered, in the single-process format) and every rank restores its slice. In one
/// process every one of those group operations is the identity.
pub struct Trainer<'a, T: Task = LanguageModel> {
    vs: &'a VarStore,
    task: &'a T,
    optimizer: AdamW,
    schedule: LrSchedule,
    objective: Objective,
    train: &'a TokenDataset,
    val_batches: Vec<T::Batch>,
    /// Bytes of validation text per validation token (1 for bytes).
    /// Bytes of text the validation targets stand for (`None`: count target tokens).
    val_bytes: Option<f64>,
    config: TrainConfig,
    device: Device,
    step: u64,
    /// Steps done on the device whose figures have not been read yet.
    pending: PendingSteps,
    /// The device-side guard: 1 once a step saw a non-finite value, after which every update is
    /// skipped until the figures are read (scalar f32).
    halted: Tensor,
    /// The captured step ([`TrainConfig::cuda_graph`]).
    graph: Option<StepGraph<T::Batch>>,
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
        let model = task.model();
        if let Some(legacy) = config.precision {
            ensure_config(model.precision() == legacy, || {
                format!(
                    "the model computes in {:?} but the training config says {legacy:?} (a legacy field: the \
                     model's config holds its precision)",
                    model.precision()
                )
            })?;
        }
        let group = model.group();
        let ranks = group.world_size();
        ensure_config(config.batch_size % ranks == 0, || {
            format!("batch_size ({}) must be a multiple of the {ranks} expert-parallel ranks", config.batch_size)
        })?;
        let device = vs.device();
        let val_batches = task
            .eval_batches(val, config.batch_size, config.seq_len, config.eval_batches, device)?
            .into_iter()
            .map(|b| task.shard_batch(b, group))
            .collect::<Result<Vec<_>>>()?;
        task.eval_batches(train, 1, config.seq_len, 1, device)?; // fails early if the training split is too short
        let graph = if config.cuda_graph { Some(Self::step_graph(task, device)?) } else { None };
        Ok(Self {
            vs,
            task,
            optimizer: AdamW::new(vs, config.optimizer.clone())?,
            schedule: LrSchedule::new(config.lr, config.warmup_steps, config.steps, config.min_lr_ratio)?,
            objective: Objective::for_model(model).with_overrides(config.load_balancing_coef, config.z_loss_coef),
            train,
            val_batches,
            val_bytes: task.eval_bytes(val, config.batch_size, config.seq_len, config.eval_batches)?,
            config,
            device,
            step: 0,
            pending: PendingSteps::default(),
            halted: Tensor::f_zeros([], (tch::Kind::Float, device))?,
            graph,
        })
    }

    /// The graph of a captured step of `task` on `device`, or why there cannot be one.
    fn step_graph(task: &T, device: Device) -> Result<StepGraph<T::Batch>> {
        let mut blockers = Vec::new();
        let Device::Cuda(index) = device else {
            return Err(Error::Config(format!("cuda_graph needs a CUDA device; the model is on {device:?}")));
        };
        if !crate::runtime::has_cuda_graphs() {
            blockers.push("this build of altup-moe has no CUDA support".to_string());
        }
        blockers.extend(task.graph_blockers());
        if !blockers.is_empty() {
            return Err(Error::Config(format!(
                "the training step cannot be captured in a CUDA graph: {}",
                blockers.join("; ")
            )));
        }
        StepGraph::new(index)
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
        let roles = roles(self.vs);
        let weights =
            self.group().slice_sharded(named_variables(source)?, |n| roles.get(n).is_some_and(|r| r.sharded))?;
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

    /// The objective's coefficients.
    pub fn objective(&self) -> Objective {
        self.objective
    }

    /// The process group of the model.
    pub fn group(&self) -> &ProcessGroup {
        self.task.model().group()
    }

    /// Whether this process writes metrics and checkpoints (rank 0, or the only process).
    pub fn is_main_rank(&self) -> bool {
        self.group().is_main()
    }

    fn step_seed(&self, step: u64) -> u64 {
        self.config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step
    }

    /// This rank's rows of micro-batch `micro` of `step`: a function of the seed, the step and
    /// the micro-batch only, so runs are reproducible and resumable.
    fn sample(&self, seed: u64, micro: usize) -> Result<T::Batch> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add((micro as u64) << 48));
        let (b, t) = (self.config.batch_size, self.config.seq_len);
        let batch = self.task.sample_batch(self.train, b, t, &mut rng, self.device)?;
        self.task.shard_batch(batch, self.group())
    }

    /// One optimizer step over `grad_accum` random micro-batches, and its statistics: the
    /// same as [`Trainer::advance`] followed by [`Trainer::read_stats`] (one host read).
    ///
    /// # Errors
    /// As [`Trainer::advance`] and [`Trainer::read_stats`].
    pub fn step(&mut self) -> Result<StepStats> {
        self.advance()?;
        let mut stats = self.read_stats()?;
        stats.pop().ok_or_else(|| Error::Config("a step was done but no statistics came back".into()))
    }

    /// One optimizer step over `grad_accum` random micro-batches, without reading anything back
    /// to the host: its losses, gradient norm and statistics stay on the device until
    /// [`Trainer::read_stats`]. The batches of step `s` depend only on the seed and `s`, and
    /// libtorch's generator is reseeded per step, so runs are reproducible and resumable.
    ///
    /// The non-finite guard runs on the device: a step whose LM loss, router losses or gradient
    /// norm is not finite is not applied, and neither is any later step until the next read, which
    /// reports it — so the parameters stay those before the first bad step.
    ///
    /// Host reads remain where a shape depends on the data: MoE layers with a capacity, a token
    /// mask, expert-choice routing or the per-expert loop read their group sizes (see
    /// [`crate::moe::GroupSizes`]); expert-parallel ranks agree on the guard through the host.
    ///
    /// # Errors
    /// Errors of the forward and backward passes.
    pub fn advance(&mut self) -> Result<()> {
        let step = self.step + 1;
        let seed = self.step_seed(step);
        let batches = (0..self.config.grad_accum).map(|micro| self.sample(seed, micro)).collect::<Result<Vec<_>>>()?;
        let lr = self.schedule.lr_at(step);
        self.optimizer.set_lr(lr)?;
        let (row, tokens) = match self.graph.take() {
            Some(mut graph) => {
                let result = graph.step(batches, self);
                self.graph = Some(graph);
                result?
            }
            None => {
                tch::manual_seed((seed >> 1) as i64);
                self.body(&batches)?
            }
        };
        self.pending.push(step, lr, tokens, row);
        self.step = step;
        Ok(())
    }

    /// Steps done by [`Trainer::advance`] whose statistics have not been read.
    pub fn pending_steps(&self) -> usize {
        self.pending.len()
    }

    /// The statistics of the steps since the last read, in one host read (none if nothing is
    /// pending).
    ///
    /// # Errors
    /// [`Error::NonFinite`] naming the first step the guard skipped and the first parameter,
    /// block output or router with non-finite values (or the loss / gradient norm); the trainer
    /// is then back before that step, with the parameters it had there.
    pub fn read_stats(&mut self) -> Result<Vec<StepStats>> {
        let steps = self.pending.read()?;
        let skipped = steps.iter().position(|v| v.skipped);
        let failure = skipped.map(|i| &steps[i]).map(|v| (v.step, v.first_non_finite(), v.grad_norm));
        if let Some((step, bad, grad_norm)) = failure {
            let local = bad.as_ref().map(|(_, what)| what.clone());
            let what = self.group().agree_on_failure(local)?.unwrap_or_else(|| format!("gradient norm ({grad_norm})"));
            return Err(self.rewind_to_failure(step, bad.map_or(0, |(micro, _)| micro), what));
        }
        let group = self.task.model().group();
        steps.into_iter().map(|v| v.into_stats(group)).collect()
    }

    /// After the guard skipped `step` (and every step after it): forgets the pending steps, goes
    /// back to just before `step` and builds its error from micro-batch `micro` of it.
    fn rewind_to_failure(&mut self, step: u64, micro: usize, fallback: String) -> Error {
        self.pending.clear();
        self.step = step - 1;
        let reset = self.halted.f_zero_().map(|_| ());
        let batch = self.sample(self.step_seed(step), micro);
        match (reset, batch) {
            (Ok(()), Ok(batch)) => self.non_finite(step, &batch, fallback),
            (Err(e), _) => e.into(),
            (_, Err(e)) => e,
        }
    }

    /// Builds the non-finite error of `step`, naming the first parameter (in name order) or
    /// block output / router with non-finite values when there is one, `fallback` otherwise.
    fn non_finite(&mut self, step: u64, batch: &T::Batch, fallback: String) -> Error {
        if let Err(e) = self.optimizer.zero_grad() {
            return e;
        }
        let mut params: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let bad_param = params.into_iter().find(|(_, p)| all_finite(p).is_ok_and(|finite| !finite));
        let what = match bad_param {
            Some((name, _)) => format!("parameter {name}"),
            // The diagnosis is a forward pass, which one of several ranks cannot run alone.
            None if self.group().world_size() > 1 => fallback,
            None => self.first_non_finite_block(batch).unwrap_or(fallback),
        };
        Error::NonFinite { step, what }
    }

    /// The first block whose output or router is non-finite on `batch` (a training-mode forward
    /// pass without gradients that stops there).
    fn first_non_finite_block(&self, batch: &T::Batch) -> Option<String> {
        let diagnosis = ForwardOptions { check_finite: true, ..ForwardOptions::train() };
        match tch::no_grad(|| self.task.loss(batch, diagnosis)) {
            Err(Error::NonFinite { what, .. }) => Some(what),
            _ => None,
        }
    }

    /// LM loss per token and bits per byte of the validation text (the summed loss / ln 2 over
    /// the bytes of text the scored targets stand for, [`Task::eval_bytes`]) on the fixed
    /// validation windows (evaluation mode, no gradients).
    ///
    /// # Errors
    /// [`Error::Torch`] on libtorch failure.
    pub fn evaluate(&self) -> Result<EvalStats> {
        tch::no_grad(|| -> Result<EvalStats> {
            let (mut sum, mut count) = (0.0, 0.0);
            for batch in &self.val_batches {
                let out = self.task.loss(batch, ForwardOptions::eval())?;
                let n = out.tokens as f64;
                sum += host::f64_scalar(&out.loss)? * n;
                count += n;
            }
            let mut v = [sum, count];
            self.group().all_reduce_sum(&mut v)?;
            (sum, count) = (v[0], v[1]);
            // Bits per byte of the text the windows score, whatever the tokenizer; every rank
            // evaluates its rows of the same windows, so their bytes are the global total.
            let bytes = self.val_bytes.unwrap_or(count);
            Ok(EvalStats { loss: sum / count, bits_per_byte: sum / LN_2 / bytes })
        })
    }
}

/// A step's device work: what the eager path runs and a CUDA graph captures.
impl<T: Task> StepBody<T::Batch> for Trainer<'_, T> {
    /// Zero → for each micro-batch: loss → objective → backward → clip → pack → guard → update →
    /// bias updates; no host read, no host value that changes between steps.
    fn body(&mut self, batches: &[T::Batch]) -> Result<(StepRow, usize)> {
        let group = self.task.model().group();
        let accum = batches.len();
        self.optimizer.zero_grad()?;
        let (mut record, mut counts, mut tokens) = (StepRecord::default(), ExpertCounts::default(), 0);
        for batch in batches {
            let out = self.task.loss(batch, ForwardOptions::train())?;
            group.backward(&self.objective.total(&out, 1.0 / accum as f64, group.world_size())?)?;
            record.add(&out)?;
            counts.add(&out.aux)?;
            tokens += out.tokens * group.world_size();
        }
        let grad_norm = self.optimizer.clip_grad_norm(group, self.config.grad_clip)?;
        let packed = record.pack(&grad_norm)?;
        // In place: a captured step must update the flag the next replay reads.
        let halted = group.any_rank(&self.halted.f_maximum(&packed.non_finite)?)?;
        let _ = self.halted.f_copy_(&halted)?;
        self.optimizer.apply(Some(&self.halted))?;
        counts.update_biases(self.task.model(), &self.halted)?;
        Ok((packed.finish(&self.halted)?, tokens))
    }

    fn copy_batch(&self, into: &T::Batch, from: &T::Batch) -> Result<()> {
        self.task.copy_batch(into, from)
    }

    fn check_capturable(&self) -> Result<()> {
        let looped: Vec<String> = crate::moe::kernel::choices()
            .into_iter()
            .filter(|(key, backend)| key.device == self.device && *backend == crate::moe::ExpertBackend::Loop)
            .map(|(key, _)| format!("{:?} experts of {:?}", key.shape, key.kind))
            .collect();
        if looped.is_empty() {
            return Ok(());
        }
        Err(Error::Config(format!(
            "the training step cannot be captured in a CUDA graph: expert backend auto chose the per-expert loop \
             (which reads its group sizes) for {}; set backend grouped-mm",
            looped.join(", ")
        )))
    }
}
