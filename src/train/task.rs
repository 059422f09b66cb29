//! What the trainer trains: the [`Task`] seam between the generic optimisation loop and a model
//! with its objective (next-byte prediction for a [`LanguageModel`], span corruption for a
//! [`Seq2SeqModel`]).

use crate::data::{Batch, Seq2SeqBatch, SpanCorruption, TokenDataset};
use crate::error::{ensure_config, Result};
use crate::model::{ForwardOptions, LanguageModel, ModelAux, Seq2SeqModel, Trainable};
use crate::moe::{ExpertBackend, RouterKind};
use crate::parallel::ProcessGroup;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tch::{Device, Reduction, Tensor};

/// The loss of one batch.
#[derive(Debug)]
pub struct TaskLoss {
    /// Mean cross-entropy over the predicted tokens, nats, scalar.
    pub loss: Tensor,
    /// Tokens predicted in the batch.
    pub tokens: usize,
    /// Auxiliary records of every stack, as one ([`ModelAux::merged`]: an encoder-decoder's
    /// encoder blocks, then its decoder blocks).
    pub aux: ModelAux,
}

/// A model and its data, as seen by [`crate::train::Trainer`]: how batches are drawn and sharded,
/// and the loss of a batch. Everything else the trainer needs of the model (its configuration,
/// precision, process group and MoE layers) comes from [`Task::model`].
pub trait Task {
    /// A training or evaluation batch.
    type Batch;

    /// The model being trained.
    fn model(&self) -> &dyn Trainable;

    /// Checks that windows of `seq_len` tokens fit the model (their length) and that the ids of
    /// data with `data_vocab` ids are valid for it.
    ///
    /// # Errors
    /// [`crate::Error::Config`] naming the limit.
    fn check_data(&self, seq_len: usize, data_vocab: usize) -> Result<()>;

    /// The denominator of `val_bpb` (bits = summed loss / ln 2 over it): bytes of text the
    /// targets of the validation windows ([`TokenDataset::eval_batches`] with these arguments)
    /// stand for, so bits per byte count the bytes actually scored whatever the tokenizer; `None`
    /// for the number of target tokens (bits per token).
    ///
    /// # Errors
    /// As [`TokenDataset::eval_target_bytes`].
    fn eval_bytes(
        &self,
        val: &TokenDataset,
        batch_size: usize,
        seq_len: usize,
        max_batches: usize,
    ) -> crate::Result<Option<f64>> {
        val.eval_target_bytes(batch_size, seq_len, max_batches).map(Some)
    }

    /// A random training batch of `batch_size` windows of `seq_len` tokens.
    ///
    /// # Errors
    /// [`crate::Error::Data`] if the data is too short.
    fn sample_batch(
        &self,
        data: &TokenDataset,
        batch_size: usize,
        seq_len: usize,
        rng: &mut StdRng,
        device: Device,
    ) -> Result<Self::Batch>;

    /// Fixed evaluation batches (the same every call).
    ///
    /// # Errors
    /// [`crate::Error::Data`] if the data is too short.
    fn eval_batches(
        &self,
        data: &TokenDataset,
        batch_size: usize,
        seq_len: usize,
        max_batches: usize,
        device: Device,
    ) -> Result<Vec<Self::Batch>>;

    /// This rank's rows `r·B/R .. (r+1)·B/R` of a batch of `B` sequences
    /// ([`ProcessGroup::shard_rows`] of each of its tensors; the batch itself in one process).
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    fn shard_batch(&self, batch: Self::Batch, group: &ProcessGroup) -> Result<Self::Batch>;

    /// The loss of a batch, in the mode `options` gives (training, evaluation, or a diagnosis
    /// that stops at the first non-finite block with [`crate::Error::NonFinite`]).
    ///
    /// # Errors
    /// Errors of the model's forward pass.
    fn loss(&self, batch: &Self::Batch, options: ForwardOptions) -> Result<TaskLoss>;

    /// Why a training step of this task cannot be captured in a CUDA graph
    /// ([`crate::train::TrainConfig::cuda_graph`]), one reason each; empty when it can. By
    /// default a task cannot (its batches may change shape).
    fn graph_blockers(&self) -> Vec<String> {
        vec!["this task's batches are not known to keep their shapes from step to step".into()]
    }

    /// Copies the values of batch `from` into batch `into` (same shapes), in place: how each
    /// step's batch reaches the input buffers of a captured step.
    ///
    /// # Errors
    /// [`crate::Error::Config`] for a task that cannot be captured (the default);
    /// [`crate::Error::Shape`] when the shapes differ.
    fn copy_batch(&self, into: &Self::Batch, from: &Self::Batch) -> Result<()> {
        let _ = (into, from);
        Err(crate::Error::Config("this task's steps cannot be captured in a CUDA graph".into()))
    }
}

/// Mean cross-entropy of `logits` `[B, T, V]` against `targets` `[B, T]`.
fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let v = logits.size()[2];
    Ok(logits.f_reshape([-1, v])?.f_cross_entropy_loss::<Tensor>(
        &targets.f_reshape([-1])?,
        None,
        Reduction::Mean,
        -100,
        0.0,
    )?)
}

/// Next-byte prediction with a decoder-only language model (the stack is called `"decoder"`).
impl Task for LanguageModel {
    type Batch = Batch;

    fn model(&self) -> &dyn Trainable {
        self
    }

    fn check_data(&self, seq_len: usize, data_vocab: usize) -> Result<()> {
        let max = self.config().max_seq_len;
        ensure_config(seq_len <= max, || format!("seq_len ({seq_len}) must be <= the model's max_seq_len ({max})"))?;
        // Batches hold ids below the data's vocabulary: with V ≥ that every id is valid, and the
        // forward pass need not check them (a host read per step).
        let vocab = self.config().vocab_size;
        ensure_config(vocab >= data_vocab, || {
            format!(
                "vocab_size ({vocab}) must be at least the data's {data_vocab} token ids (the tokenizer's vocabulary)"
            )
        })
    }

    fn sample_batch(
        &self,
        data: &TokenDataset,
        batch_size: usize,
        seq_len: usize,
        rng: &mut StdRng,
        device: Device,
    ) -> Result<Batch> {
        data.random_batch(batch_size, seq_len, rng, device)
    }

    fn eval_batches(
        &self,
        data: &TokenDataset,
        batch_size: usize,
        seq_len: usize,
        max_batches: usize,
        device: Device,
    ) -> Result<Vec<Batch>> {
        data.eval_batches(batch_size, seq_len, max_batches, device)
    }

    fn loss(&self, batch: &Batch, options: ForwardOptions) -> Result<TaskLoss> {
        // `check_data` has checked the ids of every batch the trainer draws.
        let out = self.forward_t(&batch.inputs, ForwardOptions { ids_validated: true, ..options })?;
        Ok(TaskLoss { loss: cross_entropy(&out.logits, &batch.targets)?, tokens: batch.targets.numel(), aux: out.aux })
    }

    fn shard_batch(&self, batch: Batch, group: &ProcessGroup) -> Result<Batch> {
        Ok(Batch { inputs: group.shard_rows(&batch.inputs)?, targets: group.shard_rows(&batch.targets)? })
    }

    fn graph_blockers(&self) -> Vec<String> {
        let config = self.config();
        let mut blockers = Vec::new();
        if self.group().world_size() > 1 {
            blockers.push("expert parallelism exchanges rows through the host".into());
        }
        if let Some(moe) = config.moe.as_ref().filter(|_| (0..config.num_layers).any(|l| config.is_moe_layer(l))) {
            if moe.capacity_factor.is_some() {
                blockers.push(format!(
                    "MoE layers with a training capacity factor ({}) read their group sizes (use dropless MoE)",
                    moe.capacity_factor.unwrap_or_default()
                ));
            }
            if moe.backend == ExpertBackend::Loop {
                blockers.push("the per-expert loop reads its group sizes (use backend grouped-mm or auto)".into());
            }
            if moe.router == RouterKind::ExpertChoice {
                blockers.push("expert-choice routing reads its row counts".into());
            }
        }
        blockers
    }

    fn copy_batch(&self, into: &Batch, from: &Batch) -> Result<()> {
        for (name, a, b) in [("inputs", &into.inputs, &from.inputs), ("targets", &into.targets, &from.targets)] {
            if a.size() != b.size() {
                return Err(crate::Error::Shape(format!(
                    "a captured step's {name} have shape {:?}, the batch has {:?}",
                    a.size(),
                    b.size()
                )));
            }
            let _ = a.shallow_clone().f_copy_(b)?;
        }
        Ok(())
    }
}

/// Span-corruption pre-training of an encoder-decoder: windows of `seq_len` tokens are corrupted
/// ([`SpanCorruption`]); the loss is the cross-entropy of the target (sentinels and dropped
/// spans) given the corrupted input.
#[derive(Debug)]
pub struct SpanCorruptionTask<'a> {
    /// The model.
    pub model: &'a Seq2SeqModel,
    /// The objective.
    pub corruption: SpanCorruption,
    /// Seed of the fixed evaluation corruption.
    pub eval_seed: u64,
}

impl Task for SpanCorruptionTask<'_> {
    type Batch = Seq2SeqBatch;

    fn model(&self) -> &dyn Trainable {
        self.model
    }

    /// `None`: span corruption's targets are sentinels and dropped spans, not the text, so its
    /// `val_bpb` is bits per *target token* (comparable between runs of one tokenizer only).
    fn eval_bytes(&self, _val: &TokenDataset, _batch: usize, _seq: usize, _max: usize) -> crate::Result<Option<f64>> {
        Ok(None)
    }

    fn check_data(&self, seq_len: usize, data_vocab: usize) -> Result<()> {
        self.corruption.validate()?;
        ensure_config(data_vocab <= self.corruption.text_vocab, || {
            format!(
                "the data holds ids of a {data_vocab}-id tokenizer but span corruption's sentinels start at \
                 text_vocab = {} (set it to the tokenizer's vocabulary size)",
                self.corruption.text_vocab
            )
        })?;
        let (src, tgt) = self.corruption.lengths(seq_len)?;
        let config = self.model.config();
        ensure_config(config.encoder.vocab_size >= self.corruption.vocab_size(), || {
            format!(
                "vocab_size ({}) must hold the {} text ids, {} sentinels and the start id ({})",
                config.encoder.vocab_size,
                self.corruption.text_vocab,
                self.corruption.num_sentinels,
                self.corruption.vocab_size()
            )
        })?;
        ensure_config(src <= config.encoder.max_seq_len, || {
            format!(
                "corrupted inputs of {src} tokens exceed the encoder's max_seq_len ({})",
                config.encoder.max_seq_len
            )
        })?;
        ensure_config(tgt <= config.decoder.max_seq_len, || {
            format!("targets of {tgt} tokens exceed the decoder's max_seq_len ({})", config.decoder.max_seq_len)
        })
    }

    fn sample_batch(
        &self,
        data: &TokenDataset,
        batch_size: usize,
        seq_len: usize,
        rng: &mut StdRng,
        device: Device,
    ) -> Result<Seq2SeqBatch> {
        self.corruption.batch(data, batch_size, seq_len, rng, device)
    }

    fn eval_batches(
        &self,
        data: &TokenDataset,
        batch_size: usize,
        seq_len: usize,
        max_batches: usize,
        device: Device,
    ) -> Result<Vec<Seq2SeqBatch>> {
        let mut rng = StdRng::seed_from_u64(self.eval_seed);
        self.corruption.eval_batches(data, batch_size, seq_len, max_batches, &mut rng, device)
    }

    fn loss(&self, batch: &Seq2SeqBatch, options: ForwardOptions) -> Result<TaskLoss> {
        let out = self.model.forward_t(&batch.src, None, &batch.tgt_in, options)?;
        Ok(TaskLoss {
            loss: cross_entropy(&out.logits, &batch.tgt_out)?,
            tokens: batch.tgt_out.numel(),
            aux: ModelAux::merged([out.encoder_aux, out.decoder_aux]),
        })
    }

    fn shard_batch(&self, batch: Seq2SeqBatch, group: &ProcessGroup) -> Result<Seq2SeqBatch> {
        let rows = |t: &Tensor| group.shard_rows(t);
        Ok(Seq2SeqBatch { src: rows(&batch.src)?, tgt_in: rows(&batch.tgt_in)?, tgt_out: rows(&batch.tgt_out)? })
    }
}
