//! T5-style encoder-decoder (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with
//! a Unified Text-to-Text Transformer", arXiv 1910.10683): a bidirectional encoder stack and a
//! causal decoder stack that cross-attends to the encoder's output, each optionally AltUp-widened
//! and/or MoE (Switch Transformer and AltUp were introduced and measured in this setting).

use crate::error::{ensure_config, Error, Result};
use crate::model::config::ModelConfig;
use crate::model::forward::{ForwardOptions, Memory};
use crate::model::generate::{sample, Sampling};
use crate::model::head::OutputHead;
use crate::model::output::{ModelAux, StackKind};
use crate::model::params::ParamCounts;
use crate::model::precision::Precision;
use crate::model::presets::Arch;
use crate::model::stack::{check_tokens, Stack, StackCache};
use crate::nn::{Embedding, InitScheme, VarBuilder};
use crate::parallel::ProcessGroup;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Configuration of a [`Seq2SeqModel`]: two stack configs and whether they share embeddings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seq2SeqConfig {
    /// The encoder stack (bidirectional: `attention.causal = false`, no cross-attention).
    pub encoder: ModelConfig,
    /// The decoder stack (causal, `cross_attention = true`; its `tie_embeddings` ties the head).
    pub decoder: ModelConfig,
    /// One embedding table for both stacks.
    pub share_embeddings: bool,
}

impl Seq2SeqConfig {
    /// An encoder-decoder of `arch` with the preset sizes and `vocab_size` ids in both stacks
    /// (e.g. 256 bytes + span-corruption sentinels), shared embeddings, and the same AltUp/MoE
    /// settings in the encoder and the decoder.
    pub fn preset(arch: Arch, vocab_size: usize) -> Self {
        let mut encoder = ModelConfig::preset(arch);
        encoder.vocab_size = vocab_size;
        encoder.attention.causal = false;
        let mut decoder = encoder.clone();
        decoder.attention.causal = true;
        decoder.cross_attention = true;
        decoder.init_seed = encoder.init_seed;
        Self { encoder, decoder, share_embeddings: true }
    }

    /// # Errors
    /// [`Error::Config`] naming the value: an invalid stack, a causal or cross-attending
    /// encoder, a bidirectional or non-cross-attending decoder, different vocabularies or widths,
    /// or shared embeddings of different widths.
    pub fn validate(&self) -> Result<()> {
        self.encoder.validate()?;
        self.decoder.validate()?;
        let (e, d) = (&self.encoder, &self.decoder);
        ensure_config(!e.attention.causal, || "encoder attention.causal (true) must be false".into())?;
        ensure_config(!e.cross_attention, || "encoder cross_attention (true) must be false".into())?;
        ensure_config(d.attention.causal, || "decoder attention.causal (false) must be true".into())?;
        ensure_config(d.cross_attention, || "decoder cross_attention (false) must be true".into())?;
        ensure_config(e.vocab_size == d.vocab_size, || {
            format!("encoder vocab_size ({}) must equal decoder vocab_size ({})", e.vocab_size, d.vocab_size)
        })?;
        ensure_config(e.d_model == d.d_model, || {
            format!("encoder d_model ({}) must equal decoder d_model ({})", e.d_model, d.d_model)
        })?;
        ensure_config(e.precision == d.precision, || {
            format!("encoder precision ({:?}) must equal decoder precision ({:?})", e.precision, d.precision)
        })?;
        if self.share_embeddings {
            ensure_config(e.embedding_width() == d.embedding_width(), || {
                format!(
                    "shared embeddings need equal widths, but the encoder's is {} and the decoder's {}",
                    e.embedding_width(),
                    d.embedding_width()
                )
            })?;
        }
        Ok(())
    }

    /// Parameter counts of both stacks (a shared embedding counted once).
    pub fn param_counts(&self) -> ParamCounts {
        let (e, d) = (self.encoder.param_counts(), self.decoder.param_counts());
        // The encoder has no head; a shared table is counted once.
        let encoder_head = if self.encoder.tie_embeddings { 0 } else { self.encoder.vocab_size * self.encoder.d_model };
        let shared = if self.share_embeddings { self.encoder.vocab_size * self.encoder.embedding_width() } else { 0 };
        let total = e.total + d.total - encoder_head - shared;
        ParamCounts {
            total,
            active_per_token: total - (e.total - e.active_per_token) - (d.total - d.active_per_token),
            expert: e.expert + d.expert,
            router: e.router + d.router,
            altup: e.altup + d.altup,
            residual: e.residual + d.residual,
            embedding: e.embedding + d.embedding - encoder_head - shared,
        }
    }
}

/// What [`Seq2SeqModel::forward_t`] returns.
#[derive(Debug)]
pub struct Seq2SeqOutput {
    /// Decoder logits `[B, T, V]`, f32.
    pub logits: Tensor,
    /// Encoder aux records.
    pub encoder_aux: ModelAux,
    /// Decoder aux records.
    pub decoder_aux: ModelAux,
}

/// Encoder-decoder transformer.
///
/// Parameters: `embed.weight` (shared) or `encoder.embed.weight` and `decoder.embed.weight`,
/// `encoder.*` and `decoder.*` stacks (decoder blocks add `cross_norm` and `cross_attn`),
/// `head.weight` unless the decoder ties its embeddings.
#[derive(Debug)]
pub struct Seq2SeqModel {
    config: Seq2SeqConfig,
    encoder: Stack,
    decoder: Stack,
    head: OutputHead,
    group: ProcessGroup,
}

impl Seq2SeqModel {
    /// Validates `config` and creates the model under `vb`'s path, with the initialisation the
    /// decoder config describes. In a process group that exchanges rows, this is the rank's part
    /// of an expert-parallel encoder-decoder, as [`crate::model::LanguageModel::new`] for both
    /// stacks (every parameter but the experts replicated; each MoE layer holds experts
    /// `r·E/R .. (r+1)·E/R`, initialised as in one process). Every rank must then run the same
    /// calls; train it with [`crate::train::Trainer`] and [`crate::train::SpanCorruptionTask`],
    /// which shard each batch over the ranks.
    ///
    /// # Errors
    /// [`Error::Config`] from [`Seq2SeqConfig::validate`]; in an expert-parallel group, if an MoE
    /// layer's `num_experts` is not a multiple of the ranks or its routing needs the whole batch
    /// in one place.
    pub fn new<'a>(vb: impl Into<VarBuilder<'a>>, config: &Seq2SeqConfig) -> Result<Self> {
        config.validate()?;
        let (e, d) = (&config.encoder, &config.decoder);
        let vb = vb.into().with_init(InitScheme::gpt2(d.init_std, e.num_layers + d.num_layers, d.init_seed));
        let shared = if config.share_embeddings {
            Some(Embedding::new(&vb / "embed", e.vocab_size, e.embedding_width())?)
        } else {
            None
        };
        let share = || shared.as_ref().map(Embedding::share);
        let encoder = Stack::new(&vb / "encoder", e, share())?;
        let decoder = Stack::new(&vb / "decoder", d, share())?;
        let head = OutputHead::new(&vb / "head", d.d_model, d.vocab_size, d.tie_embeddings, decoder.embedding())?;
        Ok(Self { config: config.clone(), encoder, decoder, head, group: vb.group().clone() })
    }

    /// The process group the model's MoE layers exchange tokens over (a group of one in one
    /// process).
    pub fn group(&self) -> &ProcessGroup {
        &self.group
    }

    /// The configuration.
    pub fn config(&self) -> &Seq2SeqConfig {
        &self.config
    }

    /// The encoder stack.
    pub fn encoder(&self) -> &Stack {
        &self.encoder
    }

    /// The decoder stack.
    pub fn decoder(&self) -> &Stack {
        &self.decoder
    }

    /// Sets the compute precision of both stacks (and their configs).
    pub fn set_precision(&mut self, precision: Precision) {
        self.encoder.set_precision(precision);
        self.decoder.set_precision(precision);
        self.config.encoder.precision = precision;
        self.config.decoder.precision = precision;
    }

    /// The compute precision.
    pub fn precision(&self) -> Precision {
        self.decoder.precision()
    }

    /// Encodes a source batch; the aux record's blocks are labelled as the encoder's.
    ///
    /// # Shapes
    /// `src`: `[B, S]`, `src_mask`: `[B, S]` → `[B, S, D]` and the encoder's aux record.
    ///
    /// # Errors
    /// As [`Stack::forward`] (a non-finite block is named as the encoder's).
    pub fn encode<'a>(
        &self,
        src: &Tensor,
        src_mask: Option<&Tensor>,
        options: impl Into<ForwardOptions<'a>>,
    ) -> Result<(Tensor, ModelAux)> {
        let options = ForwardOptions { mask: src_mask, ..options.into() };
        let (memory, aux) = self.encoder.forward(src, &options, None, None).map_err(|e| in_stack(e, "encoder"))?;
        Ok((memory, aux.in_stack(StackKind::Encoder)))
    }

    /// Teacher-forced forward pass: logits for the next target token at every decoder position.
    /// `options` gives the mode (a `bool` for a plain training/evaluation pass); its mask, if
    /// any, must be `None` (the source mask is `src_mask`; targets are never padded).
    ///
    /// # Shapes
    /// `src`: `[B, S]`, `src_mask`: `[B, S]` (true/non-zero = real), `tgt_in`: `[B, T]` →
    /// logits `[B, T, V]`.
    ///
    /// # Errors
    /// As [`Stack::forward`]; [`Error::Shape`] if the batch sizes differ; [`Error::Input`] for a
    /// target mask.
    pub fn forward_t<'a>(
        &self,
        src: &Tensor,
        src_mask: Option<&Tensor>,
        tgt_in: &Tensor,
        options: impl Into<ForwardOptions<'a>>,
    ) -> Result<Seq2SeqOutput> {
        let options = options.into();
        if options.mask.is_some() {
            return Err(Error::Input(
                "an encoder-decoder takes its source mask as src_mask; targets have no mask".into(),
            ));
        }
        check_tokens(src, src_mask, "source tokens")?;
        check_tokens(tgt_in, None, "target tokens")?;
        if src.size()[0] != tgt_in.size()[0] {
            return Err(Error::Shape(format!(
                "source batch ({}) and target batch ({}) differ",
                src.size()[0],
                tgt_in.size()[0]
            )));
        }
        let (memory, encoder_aux) = self.encode(src, src_mask, options)?;
        let memory = Memory { states: &memory, mask: src_mask };
        let (hidden, decoder_aux) =
            self.decoder.forward(tgt_in, &options, Some(memory), None).map_err(|e| in_stack(e, "decoder"))?;
        Ok(Seq2SeqOutput { logits: self.logits(&hidden)?, encoder_aux, decoder_aux })
    }

    /// One incremental decoder step (evaluation mode) over an encoded source; `cache` holds the
    /// earlier target tokens' keys and values and the encoder's cross-attention keys.
    ///
    /// # Shapes
    /// `memory`: `[B, S, D]`, `tgt`: `[B, T]` → logits `[B, T, V]`.
    ///
    /// # Errors
    /// As [`Stack::forward`].
    pub fn decode_cached(
        &self,
        memory: &Tensor,
        src_mask: Option<&Tensor>,
        tgt: &Tensor,
        cache: &mut StackCache,
    ) -> Result<Tensor> {
        let memory = Memory { states: memory, mask: src_mask };
        let (hidden, _) = self.decoder.forward(tgt, &ForwardOptions::eval(), Some(memory), Some(cache))?;
        self.logits(&hidden)
    }

    /// Generates up to `max_new_tokens` target tokens for one source sequence, starting from
    /// `start_token` and stopping early after `stop_token` (when given), with the decoder's
    /// key/value cache. Returns the generated tokens (without the start token).
    ///
    /// # Errors
    /// [`Error::Input`] for an empty source, bad ids, or more tokens than the decoder's
    /// `max_seq_len`; sampling errors as [`crate::model::LanguageModel::generate`].
    pub fn generate(
        &self,
        src: &[i64],
        start_token: i64,
        stop_token: Option<i64>,
        max_new_tokens: usize,
        sampling: Sampling,
        rng: &mut impl Rng,
    ) -> Result<Vec<i64>> {
        sampling.validate()?;
        // The decoder reads the start token and every generated token but the last.
        let limit = self.config.decoder.max_seq_len;
        if max_new_tokens > limit {
            return Err(Error::Input(format!(
                "max_new_tokens ({max_new_tokens}) exceeds the decoder's max_seq_len ({limit})"
            )));
        }
        let device = self.encoder.embedding().weight.device();
        tch::no_grad(|| {
            let src = Tensor::from_slice(src).f_view([1, -1])?.f_to_device(device)?;
            let (memory, _) = self.encode(&src, None, ForwardOptions::eval())?;
            let mut cache = self.decoder.new_cache();
            let mut out = Vec::new();
            let mut last = start_token;
            for _ in 0..max_new_tokens {
                let input = Tensor::from_slice(&[last]).f_view([1, 1])?.f_to_device(device)?;
                let logits = self.decode_cached(&memory, None, &input, &mut cache)?;
                last = sample(&logits.f_select(1, -1)?.f_squeeze_dim(0)?, sampling, rng)?;
                out.push(last);
                if Some(last) == stop_token {
                    break;
                }
            }
            Ok(out)
        })
    }

    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.head.forward(hidden)
    }
}

/// A non-finite block of one of the two stacks, named with its stack (`encoder output of block 2`).
fn in_stack(error: Error, stack: &str) -> Error {
    match error {
        Error::NonFinite { step, what } => Error::NonFinite { step, what: format!("{stack} {what}") },
        other => other,
    }
}
