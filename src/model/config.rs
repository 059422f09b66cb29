//! The serde model configuration, validated once when the model is built.

use crate::altup::{AltUpConfig, SequenceAltUpConfig};
use crate::error::{ensure_config, Error, Result};
use crate::model::block::{BlockConfig, FfnConfig};
use crate::model::precision::Precision;
use crate::moe::MoeConfig;
use crate::nn::{AttentionConfig, FeedForwardConfig};
use crate::residual::ResidualConfig;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Which blocks get an MoE FFN (when [`ModelConfig::moe`] is set).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum MoeLayers {
    /// Blocks `offset, offset + every, offset + 2·every, ...` (Switch: every other block,
    /// `every = 2, offset = 1`).
    Every {
        /// Period (≥ 1).
        every: usize,
        /// First MoE block.
        offset: usize,
    },
    /// An explicit list of block indices.
    List {
        /// Block indices, each `< num_layers`.
        layers: Vec<usize>,
    },
}

impl Default for MoeLayers {
    fn default() -> Self {
        MoeLayers::Every { every: 2, offset: 1 }
    }
}

impl MoeLayers {
    /// Whether block `layer` is an MoE block.
    pub fn contains(&self, layer: usize) -> bool {
        match self {
            MoeLayers::Every { every, offset } => layer >= *offset && (layer - offset) % (*every).max(1) == 0,
            MoeLayers::List { layers } => layers.contains(&layer),
        }
    }
}

/// Configuration of a transformer stack: token ids → embedding → (AltUp widening) →
/// `num_layers` pre-norm blocks → (AltUp collapse) → final RMSNorm (→ head). A decoder-only
/// [`crate::model::LanguageModel`] is one stack; an encoder-decoder ([`crate::model::Seq2SeqConfig`]) has
/// two (a bidirectional encoder and a cross-attending decoder).
///
/// Build one from a preset ([`ModelConfig::preset`]) and adjust fields; [`ModelConfig::validate`]
/// runs when the model is built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Vocabulary size `V` (256 for bytes).
    pub vocab_size: usize,
    /// Model width `D`.
    pub d_model: usize,
    /// Number of transformer blocks.
    pub num_layers: usize,
    /// Longest sequence the model accepts (the training context length).
    pub max_seq_len: usize,
    /// Self-attention.
    pub attention: AttentionConfig,
    /// Dense FFN (every block that is not an MoE block).
    pub ffn: FeedForwardConfig,
    /// Mixture of experts; `None` = a dense model.
    pub moe: Option<MoeConfig>,
    /// Which blocks are MoE blocks.
    pub moe_layers: MoeLayers,
    /// AltUp widening; `None` = a plain stack.
    pub altup: Option<AltUpConfig>,
    /// Sequence-AltUp on every block (each block runs on every `stride`-th token); `None` = off.
    pub sequence_altup: Option<SequenceAltUpConfig>,
    /// How the sublayers connect to the residual stream: plain, or an `n`-stream method
    /// (Hyper-Connections, mHC). Written to `config.json` only when it is not plain.
    #[serde(skip_serializing_if = "ResidualConfig::is_plain")]
    pub residual: ResidualConfig,
    /// Blocks cross-attend to an encoder's output (the decoder of an encoder-decoder).
    pub cross_attention: bool,
    /// RMSNorm epsilon.
    pub norm_eps: f64,
    /// Share the embedding table with the output head (only when the embedding is `D` wide).
    pub tie_embeddings: bool,
    /// Std of the normal initialisation (GPT-2 scheme, see [`crate::nn::InitScheme`]).
    pub init_std: f64,
    /// Seed of the initial weights: each parameter's values depend only on this seed and its
    /// name (not on the device or the global libtorch generator).
    pub init_seed: u64,
    /// The dtype the activations are computed in (parameters stay f32). Written to `config.json`
    /// only when it is not f32, so a checkpoint restores it with the model.
    #[serde(skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

impl Default for ModelConfig {
    /// A small dense byte-level model (see [`ModelConfig::preset`] for the others).
    fn default() -> Self {
        Self {
            vocab_size: 256,
            d_model: 128,
            num_layers: 4,
            max_seq_len: 256,
            attention: AttentionConfig::default(),
            ffn: FeedForwardConfig { d_ff: 512, ..Default::default() },
            moe: None,
            moe_layers: MoeLayers::default(),
            altup: None,
            sequence_altup: None,
            residual: ResidualConfig::Plain,
            cross_attention: false,
            norm_eps: 1e-6,
            tie_embeddings: false,
            init_std: 0.02,
            init_seed: 0,
            precision: Precision::F32,
        }
    }
}

impl ModelConfig {
    /// Checks every field and their combinations.
    ///
    /// # Errors
    /// [`Error::Config`] naming the offending value, e.g. `"num_heads (3) must divide d_model (128)"`,
    /// `"top_k (3) must be between 1 and num_experts (2)"`, `"altup num_blocks (K = 0) must be positive"`,
    /// `"capacity_factor (0) must be positive and finite"`, `"num_layers (0) must be positive"`.
    pub fn validate(&self) -> Result<()> {
        ensure_config(self.vocab_size > 0, || "vocab_size (0) must be positive".into())?;
        ensure_config(self.d_model > 0, || "d_model (0) must be positive".into())?;
        ensure_config(self.num_layers > 0, || "num_layers (0) must be positive".into())?;
        ensure_config(self.max_seq_len > 0, || "max_seq_len (0) must be positive".into())?;
        ensure_config(self.norm_eps > 0.0 && self.norm_eps.is_finite(), || {
            format!("norm_eps ({}) must be positive and finite", self.norm_eps)
        })?;
        ensure_config(self.init_std > 0.0 && self.init_std.is_finite(), || {
            format!("init_std ({}) must be positive and finite", self.init_std)
        })?;
        self.attention.validate(self.d_model)?;
        self.ffn.validate()?;
        if let Some(moe) = &self.moe {
            moe.validate()?;
            match &self.moe_layers {
                MoeLayers::Every { every, offset } => {
                    ensure_config(*every > 0, || "moe_layers.every (0) must be positive".into())?;
                    ensure_config(*offset < self.num_layers, || {
                        format!("moe_layers.offset ({offset}) must be < num_layers ({})", self.num_layers)
                    })?;
                }
                MoeLayers::List { layers } => {
                    if let Some(bad) = layers.iter().find(|&&l| l >= self.num_layers) {
                        return Err(Error::Config(format!(
                            "moe_layers entry ({bad}) must be < num_layers ({})",
                            self.num_layers
                        )));
                    }
                    ensure_config(!layers.is_empty(), || "moe_layers list is empty but moe is configured".into())?;
                }
            }
        }
        if let Some(altup) = &self.altup {
            altup.validate()?;
        }
        if let Some(seq) = &self.sequence_altup {
            seq.validate()?;
            ensure_config(seq.stride <= self.max_seq_len, || {
                format!("sequence_altup stride ({}) must be <= max_seq_len ({})", seq.stride, self.max_seq_len)
            })?;
        }
        self.residual.validate()?;
        if self.residual.streams().is_some() {
            ensure_config(self.altup.is_none() && self.sequence_altup.is_none(), || {
                format!(
                    "residual {} keeps several streams and cannot be combined with AltUp or Sequence-AltUp, which \
                     widen the stream their own way (LAuReL without previous activations can)",
                    self.residual
                )
            })?;
        }
        if self.tie_embeddings {
            let width = self.embedding_width();
            ensure_config(width == self.d_model, || {
                format!(
                    "tie_embeddings needs an embedding as wide as d_model ({}), but the AltUp wide embedding makes it K·d = {width}; set tie_embeddings to false or use recycled/projected widening",
                    self.d_model
                )
            })?;
        }
        Ok(())
    }

    /// Number of AltUp blocks `K` (1 without AltUp).
    pub fn altup_blocks(&self) -> usize {
        self.altup.as_ref().map_or(1, |a| a.num_blocks)
    }

    /// Width of the embedding table: `K·D` with an AltUp wide embedding, `D` otherwise.
    pub fn embedding_width(&self) -> usize {
        self.altup.as_ref().map_or(self.d_model, |a| a.embedding_width(self.d_model))
    }

    /// Whether block `layer` has an MoE FFN.
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        self.moe.is_some() && self.moe_layers.contains(layer)
    }

    /// Why cached decoding ([`crate::model::LanguageModel::forward_cached`]) of this model can
    /// give other logits than a full forward pass over the same tokens — empty when it cannot.
    /// [`crate::model::LanguageModel::generate`] recomputes instead of caching when this is not
    /// empty. The reasons: Sequence-AltUp (its strided streams need the whole sequence),
    /// expert-choice routing (an expert picks among every token of the window), and an
    /// evaluation capacity factor (the capacity grows with the tokens routed together, so a
    /// token routed alone may keep an expert the full pass drops it from).
    pub fn cache_blockers(&self) -> Vec<String> {
        let mut blockers = Vec::new();
        if self.sequence_altup.is_some() {
            blockers.push("Sequence-AltUp (its strided streams need the whole sequence)".to_string());
        }
        let moe = self.moe.as_ref().filter(|_| (0..self.num_layers).any(|l| self.moe_layers.contains(l)));
        if let Some(moe) = moe {
            if moe.router == crate::moe::RouterKind::ExpertChoice {
                blockers.push("expert-choice routing (an expert picks among every token of the window)".to_string());
            } else if let Some(cf) = moe.eval_capacity_factor {
                blockers.push(format!(
                    "an evaluation capacity limit (eval_capacity_factor {cf}: a token's expert depends on how many \
                     tokens are routed with it)"
                ));
            }
        }
        blockers
    }

    /// The configuration of block `layer`.
    pub fn block_config(&self, layer: usize) -> BlockConfig {
        let ffn = match &self.moe {
            Some(moe) if self.moe_layers.contains(layer) => FfnConfig::Moe(moe.clone()),
            _ => FfnConfig::Dense(self.ffn.clone()),
        };
        BlockConfig {
            attention: self.attention.clone(),
            cross_attention: self.cross_attention,
            ffn,
            norm_eps: self.norm_eps,
            residual: self.residual,
            index: layer,
        }
    }

    /// Serialises to pretty JSON.
    ///
    /// # Errors
    /// [`Error::Json`] (does not happen for valid configs).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|source| Error::Json { context: "model config".into(), source })
    }

    /// Parses JSON and validates the result.
    ///
    /// # Errors
    /// [`Error::Json`] for malformed JSON or unknown fields; [`Error::Config`] for invalid values.
    pub fn from_json(json: &str) -> Result<Self> {
        let config: Self =
            serde_json::from_str(json).map_err(|source| Error::Json { context: "model config".into(), source })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a `config.json`.
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::Json`], [`Error::Config`].
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text).map_err(|e| match e {
            Error::Json { source, .. } => Error::Json { context: path.display().to_string(), source },
            other => other,
        })
    }
}
