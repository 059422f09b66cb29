//! A transformer stack: embedding → (AltUp or residual-stream widen) → blocks → (collapse) →
//! final norm.
//! The decoder-only [`crate::model::LanguageModel`] is a stack plus an output head; an encoder-decoder
//! is two stacks.

use crate::altup::{AltUp, AltUpWidening, SequenceAltUp};
use crate::dtype::Cast;
use crate::error::{Error, Result};
use crate::host;
use crate::model::block::{Block, BlockCache, BlockContext, Ffn};
use crate::model::config::ModelConfig;
use crate::model::forward::{ForwardOptions, Memory};
use crate::model::output::{LayerAux, ModelAux, StackKind};
use crate::model::precision::Precision;
use crate::moe::{MoeAux, MoeLayer};
use crate::nn::{Embedding, RmsNorm, VarBuilder};
use crate::parallel::GraphCuts;
use crate::residual::{collapse_stream, widen_stream};
use crate::shape::is_mask_kind;
use tch::Tensor;

/// Whether every element of `t` is finite.
pub(crate) fn all_finite(t: &Tensor) -> Result<bool> {
    Ok(host::i64_scalar(&t.f_isfinite()?.f_all()?)? != 0)
}

/// Checks a token tensor `[B, T]` and its optional mask.
pub(crate) fn check_tokens(tokens: &Tensor, mask: Option<&Tensor>, what: &str) -> Result<()> {
    let size = tokens.size();
    if size.len() != 2 {
        return Err(Error::Shape(format!("{what} must have shape [B, T], got {size:?}")));
    }
    if size[0] == 0 || size[1] == 0 {
        return Err(Error::Input(format!("{what} must hold at least one sequence of one token, got shape {size:?}")));
    }
    if let Some(m) = mask {
        if m.size() != size || !is_mask_kind(m.kind()) {
            return Err(Error::Shape(format!(
                "the mask of {what} must be a bool or integer tensor of shape {size:?}, got {:?} {:?}",
                m.size(),
                m.kind()
            )));
        }
    }
    Ok(())
}

/// Incremental-decoding state of a stack: one cache per block and the number of tokens seen.
#[derive(Debug, Default)]
pub struct StackCache {
    /// Per-block caches.
    pub blocks: Vec<BlockCache>,
    /// Tokens processed so far (the position of the next token).
    pub len: i64,
}

/// A transformer stack built from a [`ModelConfig`] (its head settings are ignored).
///
/// Parameters under the stack's path: `embed.weight` (unless shared), `blocks.{l}.*`,
/// `blocks.{l}.altup.*`, `blocks.{l}.seq_altup.*`, `blocks.{l}.residual.*`, `collapse.weight`,
/// `widen.{i}.weight`, `unwiden.{i}.weight`, `final_norm.weight`.
#[derive(Debug)]
pub struct Stack {
    config: ModelConfig,
    embed: Embedding,
    blocks: Vec<Block>,
    altup: Vec<AltUp>,
    widening: Option<AltUpWidening>,
    sequence_altup: Vec<SequenceAltUp>,
    final_norm: RmsNorm,
    /// Backward segment boundaries (block inputs, the encoder memory) when the stack's MoE layers
    /// exchange tokens between ranks.
    cuts: GraphCuts,
}

impl Stack {
    /// Validates `config` and creates the stack under the builder's path, with its own embedding
    /// under `embed` or the given shared one. In a process group that exchanges rows, the stack's
    /// MoE layers are expert-parallel (this rank holds its slice of every MoE layer's experts; see
    /// [`crate::parallel::ProcessGroup`]) and a stack with MoE layers also cuts its graph at every
    /// block input and at the encoder memory, so that the segmented backward walks each block
    /// once ([`crate::parallel::ExchangeTape`]).
    ///
    /// # Errors
    /// [`Error::Config`] naming the first invalid value, or an MoE config expert parallelism does
    /// not support; [`Error::Shape`] if a shared embedding has another shape than the config needs.
    pub fn new<'a>(vb: impl Into<VarBuilder<'a>>, config: &ModelConfig, embed: Option<Embedding>) -> Result<Self> {
        config.validate()?;
        let vb = vb.into();
        let d = config.d_model;
        let embed = match embed {
            Some(e) => {
                let want = [config.vocab_size as i64, config.embedding_width() as i64];
                if e.weight.size() != want {
                    return Err(Error::Shape(format!(
                        "shared embedding has shape {:?}, the stack needs {want:?}",
                        e.weight.size()
                    )));
                }
                e
            }
            None => Embedding::new(&vb / "embed", config.vocab_size, config.embedding_width())?,
        };
        let mut blocks = Vec::with_capacity(config.num_layers);
        let (mut altup, mut sequence_altup) = (Vec::new(), Vec::new());
        for layer in 0..config.num_layers {
            let block_vb = &vb / "blocks" / layer;
            blocks.push(Block::new(&block_vb, d, &config.block_config(layer))?);
            if let Some(a) = &config.altup {
                altup.push(AltUp::new(&block_vb / "altup", d, a)?);
            }
            if let Some(s) = &config.sequence_altup {
                sequence_altup.push(SequenceAltUp::new(&block_vb / "seq_altup", s)?);
            }
        }
        let widening = config.altup.as_ref().map(|a| AltUpWidening::new(&vb, d, a)).transpose()?;
        let final_norm = RmsNorm::new(&vb / "final_norm", d as i64, config.norm_eps)?;
        // Exchanges cut the graph; cutting also at every block input keeps each backward
        // segment inside one block (see `parallel::ExchangeTape`).
        let cuts = if blocks.iter().any(Block::is_moe) { vb.group().cuts() } else { GraphCuts::none() };
        Ok(Self { config: config.clone(), embed, blocks, altup, widening, sequence_altup, final_norm, cuts })
    }

    /// The stack's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The embedding table.
    pub fn embedding(&self) -> &Embedding {
        &self.embed
    }

    /// The blocks, in order.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// The AltUp layers, one per block (empty without AltUp).
    pub fn altup_layers(&self) -> &[AltUp] {
        &self.altup
    }

    /// Sets the compute precision of the activations (the config's
    /// [`ModelConfig::precision`]).
    pub fn set_precision(&mut self, precision: Precision) {
        self.config.precision = precision;
    }

    /// The compute precision ([`ModelConfig::precision`]).
    pub fn precision(&self) -> Precision {
        self.config.precision
    }

    /// The MoE layers with their block indices, in order.
    pub fn moe_layers(&self) -> impl Iterator<Item = (usize, &MoeLayer)> {
        self.blocks.iter().enumerate().filter_map(|(l, b)| match &b.ffn {
            Ffn::Moe(moe) => Some((l, moe.as_ref())),
            Ffn::Dense(_) => None,
        })
    }

    /// A fresh cache for incremental decoding.
    pub fn new_cache(&self) -> StackCache {
        StackCache { blocks: self.blocks.iter().map(|_| BlockCache::default()).collect(), len: 0 }
    }

    /// Runs the stack on `tokens`, returning the final-normed hidden states and one aux record
    /// per block. With `cache`, the tokens continue the cached sequence (positions start at
    /// `cache.len`); Sequence-AltUp stacks cannot be cached. `tokens` and the masks of `ctx` may
    /// live on another device than the model (e.g. the host): they are moved to the model's.
    ///
    /// # Shapes
    /// `tokens`: `[B, T]` integer ids in `0..V` with `cache.len + T ≤ max_seq_len` →
    /// `[B, T, D]` in the compute dtype.
    ///
    /// # Errors
    /// [`Error::Input`] for an empty batch, a too-long sequence, bad ids, or a cached
    /// Sequence-AltUp stack; [`Error::Shape`] for bad shapes; [`Error::NonFinite`] with
    /// `check_finite`.
    pub fn forward(
        &self,
        tokens: &Tensor,
        options: &ForwardOptions,
        memory: Option<Memory>,
        mut cache: Option<&mut StackCache>,
    ) -> Result<(Tensor, ModelAux)> {
        check_tokens(tokens, options.mask, "tokens")?;
        let past = cache.as_ref().map_or(0, |c| c.len);
        let t = tokens.size()[1];
        if past + t > self.config.max_seq_len as i64 {
            return Err(Error::Input(format!(
                "sequence length {} exceeds max_seq_len ({})",
                past + t,
                self.config.max_seq_len
            )));
        }
        if cache.is_some() && !self.sequence_altup.is_empty() {
            return Err(Error::Input("cached decoding does not support Sequence-AltUp stacks".into()));
        }
        let mut embedded = if options.ids_validated {
            self.embed.forward_prevalidated(tokens)?
        } else {
            self.embed.forward(tokens)?
        };
        let residual = self.precision().residual_kind(embedded.kind());
        if residual != embedded.kind() {
            embedded = embedded.cast(residual)?;
        }
        let check = |layer: usize, y: &Tensor, moe: &Option<MoeAux>| -> Result<()> {
            if !options.check_finite {
                return Ok(());
            }
            let what = match moe {
                Some(m) if !all_finite(&m.z_loss)? => format!("router of block {layer}"),
                _ if !all_finite(y)? => format!("output of block {layer}"),
                _ => return Ok(()),
            };
            Err(Error::NonFinite { step: 0, what })
        };
        let states = memory.map(|m| self.cuts.cut(m.states)).transpose()?;
        // Caller-provided masks may live on another device than the model (the host).
        let to_model = |m: &Tensor| m.f_to_device(embedded.device());
        let mask = options.mask.map(to_model).transpose()?;
        let memory_mask = memory.and_then(|m| m.mask).map(to_model).transpose()?;
        let memory = states.as_ref().map(|states| Memory { states, mask: memory_mask.as_ref() });
        let ctx = &BlockContext {
            mask: mask.as_ref(),
            positions: None,
            memory,
            train: options.train,
            compute: self.precision().sublayer_kind(),
        };
        let mut layers = Vec::with_capacity(self.blocks.len());
        let hidden = match (&self.config.altup, &self.widening) {
            (Some(altup_config), Some(widening)) => {
                let k = altup_config.num_blocks;
                let mut x = widening.widen(&embedded)?;
                for (layer, altup) in self.altup.iter().enumerate() {
                    x = self.cuts.cut(&x)?;
                    let active = altup_config.selection.active_block(layer, k);
                    let block_cache = cache.as_deref_mut().map(|c| &mut c.blocks[layer]);
                    let (y, moe) =
                        altup.forward_t(&x, active, ctx.train, |a| self.run_block(layer, a, ctx, block_cache))?;
                    check(layer, &y, &moe)?;
                    layers.push(LayerAux { stack: StackKind::Decoder, layer, moe });
                    x = y;
                }
                widening.collapse(&x.accumulated()?)?
            }
            _ => {
                let mut x = widen_stream(&self.config.residual, &embedded)?;
                for layer in 0..self.blocks.len() {
                    x = self.cuts.cut(&x)?;
                    let block_cache = cache.as_deref_mut().map(|c| &mut c.blocks[layer]);
                    let (y, moe) = self.run_block(layer, &x, ctx, block_cache)?;
                    check(layer, &y, &moe)?;
                    layers.push(LayerAux { stack: StackKind::Decoder, layer, moe });
                    x = y;
                }
                collapse_stream(&self.config.residual, &x)?
            }
        };
        // The final norm, the head and the logits run in f32 (f64 for an f64 model) whatever the
        // compute precision.
        let hidden = hidden.accumulated()?;
        if let Some(c) = cache {
            c.len += t;
        }
        Ok((self.final_norm.forward(&hidden)?, ModelAux { layers }))
    }

    /// Block `layer` on `[B, T, D]`, through Sequence-AltUp when configured.
    fn run_block(
        &self,
        layer: usize,
        x: &Tensor,
        ctx: &BlockContext,
        cache: Option<&mut BlockCache>,
    ) -> Result<(Tensor, Option<MoeAux>)> {
        let block = &self.blocks[layer];
        let block_ctx = *ctx;
        match self.sequence_altup.get(layer) {
            Some(seq) => seq.forward(x, ctx.mask, |anchors, positions, anchor_mask| {
                block.forward(
                    anchors,
                    &BlockContext { mask: anchor_mask, positions: Some(positions), ..block_ctx },
                    None,
                )
            }),
            None => block.forward(x, &block_ctx, cache),
        }
    }
}
