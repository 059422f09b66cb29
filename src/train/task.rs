//! What the trainer trains: the [`Task`] seam between the generic optimisation loop and a model
//! with its objective (next-byte prediction for a [`LanguageModel`], span corruption for a
//! [`Seq2SeqModel`]).

use crate::error::{ensure_config, Error, Result};
use crate::model::{LanguageModel, ModelAux, Precision, Seq2SeqModel, StackContext, StackKind};
use crate::moe::ExpertParallel;
use crate::train::data::{Batch, TokenDataset};
use crate::train::span_corruption::{Seq2SeqBatch, SpanCorruption};
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
    /// Auxiliary records, one per stack, with the stack's name.
    pub aux: Vec<(StackKind, ModelAux)>,
}

/// A model and its training objective, as seen by [`crate::train::Trainer`].
pub trait Task {
    /// A training or evaluation batch.
    type Batch;

    /// The model's configuration as JSON (written as `config.json` in checkpoints and compared
    /// on restore).
    ///
    /// # Errors
    /// [`Error::Json`] if serialisation fails.
    fn config_json(&self) -> Result<serde_json::Value>;

    /// The compute precision of the model.
    fn precision(&self) -> Precision;

    /// Checks that windows of `seq_len` tokens fit the model (their length) and that the ids of
    /// data with `data_vocab` ids are valid for it.
    ///
    /// # Errors
    /// [`Error::Config`] naming the limit.
    fn check_data(&self, seq_len: usize, data_vocab: usize) -> Result<()>;

    /// Bytes of text per predicted token of `val`, which turns the validation loss (nats per
    /// token) into `val_bpb` = loss / ln 2 / this. The default is the data's own ratio (next-token
    /// prediction predicts every token of the text: bits per byte of the original text, whatever
    /// the tokenizer).
    fn val_bytes_per_token(&self, val: &TokenDataset) -> f64 {
        val.bytes_per_token()
    }

    /// A random training batch of `batch_size` windows of `seq_len` tokens.
    ///
    /// # Errors
    /// [`Error::Data`] if the data is too short.
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
    /// [`Error::Data`] if the data is too short.
    fn eval_batches(
        &self,
        data: &TokenDataset,
        batch_size: usize,
        seq_len: usize,
        max_batches: usize,
        device: Device,
    ) -> Result<Vec<Self::Batch>>;

    /// The loss of a batch.
    ///
    /// # Errors
    /// Errors of the model's forward pass.
    fn loss(&self, batch: &Self::Batch, train: bool) -> Result<TaskLoss>;

    /// The first block (`"<stack> …"`) whose output or router is non-finite on `batch`.
    ///
    /// # Errors
    /// Errors of the model's forward pass.
    fn first_non_finite(&self, batch: &Self::Batch) -> Result<Option<String>>;

    /// Aux-loss-free bias updates from per-layer counts `(stack, block, counts [E])`.
    ///
    /// # Errors
    /// [`Error::Input`] for an unknown stack or a non-MoE block.
    fn update_expert_biases(&self, counts: &[(StackKind, usize, Tensor)]) -> Result<()>;

    /// The expert-parallel group of the model (`None`, the default, in one process). With a
    /// group, the trainer gives each rank its shard of every batch ([`Task::shard_batch`]) and
    /// synchronises the replicated gradients.
    fn expert_parallel(&self) -> Option<&ExpertParallel> {
        None
    }

    /// Rows `rank·B/R .. (rank+1)·B/R` of a batch of `B` sequences (the caller checks that `R`
    /// divides `B`).
    ///
    /// # Errors
    /// [`Error::Config`] by default for `ranks > 1`: the task does not support expert
    /// parallelism.
    fn shard_batch(&self, batch: Self::Batch, rank: usize, ranks: usize) -> Result<Self::Batch> {
        let _ = rank;
        ensure_config(ranks == 1, || format!("this task cannot shard its batches over {ranks} ranks"))?;
        Ok(batch)
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

fn json<T: serde::Serialize>(value: &T) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|source| Error::Json { context: "model config".into(), source })
}

/// Next-byte prediction with a decoder-only language model (the stack is called `"decoder"`).
impl Task for LanguageModel {
    type Batch = Batch;

    fn config_json(&self) -> Result<serde_json::Value> {
        json(self.config())
    }

    fn precision(&self) -> Precision {
        LanguageModel::precision(self)
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

    fn loss(&self, batch: &Batch, train: bool) -> Result<TaskLoss> {
        let ctx = StackContext { train, ids_validated: true, ..Default::default() };
        let out = self.forward_with(&batch.inputs, &ctx)?;
        Ok(TaskLoss {
            loss: cross_entropy(&out.logits, &batch.targets)?,
            tokens: batch.targets.numel(),
            aux: vec![(StackKind::Decoder, out.aux)],
        })
    }

    fn first_non_finite(&self, batch: &Batch) -> Result<Option<String>> {
        LanguageModel::first_non_finite(self, &batch.inputs)
    }

    fn expert_parallel(&self) -> Option<&ExpertParallel> {
        LanguageModel::expert_parallel(self)
    }

    fn shard_batch(&self, batch: Batch, rank: usize, ranks: usize) -> Result<Batch> {
        let b = batch.inputs.size()[0];
        let per = b / ranks as i64;
        let rows = |t: &Tensor| t.f_narrow(0, rank as i64 * per, per);
        Ok(Batch { inputs: rows(&batch.inputs)?, targets: rows(&batch.targets)? })
    }

    fn update_expert_biases(&self, counts: &[(StackKind, usize, Tensor)]) -> Result<()> {
        let layers: Vec<(usize, Tensor)> = counts.iter().map(|(_, l, c)| (*l, c.shallow_clone())).collect();
        LanguageModel::update_expert_biases(self, &layers)
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

    fn config_json(&self) -> Result<serde_json::Value> {
        json(self.model.config())
    }

    fn precision(&self) -> Precision {
        self.model.precision()
    }

    /// 1: span corruption's targets are sentinels and dropped spans, not the text, so its
    /// `val_bpb` is bits per *target token* (comparable between runs of one tokenizer only).
    fn val_bytes_per_token(&self, _val: &TokenDataset) -> f64 {
        1.0
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

    fn loss(&self, batch: &Seq2SeqBatch, train: bool) -> Result<TaskLoss> {
        let out = self.model.forward_t(&batch.src, None, &batch.tgt_in, train)?;
        Ok(TaskLoss {
            loss: cross_entropy(&out.logits, &batch.tgt_out)?,
            tokens: batch.tgt_out.numel(),
            aux: vec![(StackKind::Encoder, out.encoder_aux), (StackKind::Decoder, out.decoder_aux)],
        })
    }

    fn first_non_finite(&self, batch: &Seq2SeqBatch) -> Result<Option<String>> {
        let ctx = crate::model::StackContext { train: true, check_finite: true, ..Default::default() };
        tch::no_grad(|| {
            let memory = match self.model.encoder().forward(&batch.src, &ctx, None) {
                Ok((memory, _)) => memory,
                Err(Error::NonFinite { what, .. }) => return Ok(Some(format!("encoder {what}"))),
                Err(e) => return Err(e),
            };
            let ctx = crate::model::StackContext { memory: Some(&memory), ..ctx };
            match self.model.decoder().forward(&batch.tgt_in, &ctx, None) {
                Ok(_) => Ok(None),
                Err(Error::NonFinite { what, .. }) => Ok(Some(format!("decoder {what}"))),
                Err(e) => Err(e),
            }
        })
    }

    fn expert_parallel(&self) -> Option<&ExpertParallel> {
        self.model.expert_parallel()
    }

    fn shard_batch(&self, batch: Seq2SeqBatch, rank: usize, ranks: usize) -> Result<Seq2SeqBatch> {
        let per = batch.src.size()[0] / ranks as i64;
        let rows = |t: &Tensor| t.f_narrow(0, rank as i64 * per, per);
        Ok(Seq2SeqBatch { src: rows(&batch.src)?, tgt_in: rows(&batch.tgt_in)?, tgt_out: rows(&batch.tgt_out)? })
    }

    fn update_expert_biases(&self, counts: &[(StackKind, usize, Tensor)]) -> Result<()> {
        for kind in [StackKind::Encoder, StackKind::Decoder] {
            let layers: Vec<(usize, Tensor)> =
                counts.iter().filter(|(s, _, _)| *s == kind).map(|(_, l, c)| (*l, c.shallow_clone())).collect();
            let stack = if kind == StackKind::Encoder { self.model.encoder() } else { self.model.decoder() };
            stack.update_expert_biases(&layers)?;
        }
        Ok(())
    }
}
