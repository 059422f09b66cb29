//! Pre-norm transformer block: `x + attn(norm(x))`, then (in an encoder-decoder's decoder)
//! `x + cross_attn(norm(x), memory)`, then `x + ffn(norm(x))`, where the FFN is dense or a mixture
//! of experts (GPT-2 / Llama layout; T5 for cross-attention; Switch Transformer swaps the FFN for
//! an MoE layer, arXiv 2101.03961 §2). Each `x + …` is the block's residual-stream method
//! ([`crate::residual::SublayerConnection`]): the plain residual, or Hyper-Connections, mHC or
//! LAuReL, whose stream may hold several copies (`[B, T, n, D]`).

use crate::dtype::Cast;
use crate::error::Result;
use crate::model::forward::Memory;
use crate::moe::{MoeAux, MoeConfig, MoeLayer};
use crate::nn::{
    AttentionConfig, CrossAttention, FeedForward, FeedForwardConfig, KvCache, RmsNorm, SelfAttention, VarBuilder,
};
use crate::parallel::GraphCuts;
pub use crate::residual::residual_add;
use crate::residual::{connection, ResidualConfig, SublayerConnection};
use crate::shape::expect_shape;
use tch::{Kind, Tensor};

/// The feed-forward sublayer of a block.
#[derive(Debug, Clone, PartialEq)]
pub enum FfnConfig {
    /// A dense FFN (parameters under `ffn`).
    Dense(FeedForwardConfig),
    /// A mixture of experts (parameters under `moe`).
    Moe(MoeConfig),
}

/// Configuration of one [`Block`].
#[derive(Debug, Clone, PartialEq)]
pub struct BlockConfig {
    /// Self-attention (causal or bidirectional).
    pub attention: AttentionConfig,
    /// Whether the block cross-attends to an encoder's output (parameters under `cross_attn`).
    pub cross_attention: bool,
    /// Dense FFN or MoE.
    pub ffn: FfnConfig,
    /// RMSNorm epsilon.
    pub norm_eps: f64,
    /// How the sublayers connect to the residual stream (parameters under `residual`).
    pub residual: ResidualConfig,
    /// The block's index in its stack (Hyper-Connections' initial read stream depends on it).
    pub index: usize,
}

/// Dense or MoE feed-forward sublayer.
#[derive(Debug)]
pub enum Ffn {
    /// Dense FFN.
    Dense(FeedForward),
    /// Mixture of experts.
    Moe(Box<MoeLayer>),
}

/// What a block needs besides its input.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlockContext<'a> {
    /// Token mask of the input, `[B, T]` (true/non-zero = real): padded tokens are not attended
    /// to, take no expert capacity and stay out of the MoE losses.
    pub mask: Option<&'a Tensor>,
    /// Rotary positions of the input tokens, `[T]` (default: after the cached ones, from 0).
    pub positions: Option<&'a Tensor>,
    /// Encoder output for cross-attention (`[B, S, D]`, with its source mask).
    pub memory: Option<Memory<'a>>,
    /// Training mode (MoE capacity factor, router jitter).
    pub train: bool,
    /// The dtype the sublayers compute in when it differs from the residual stream's (bf16
    /// sublayers on an f32 residual stream, [`crate::model::Precision::Bf16Mixed`]); `None`: the
    /// input's dtype.
    pub compute: Option<Kind>,
}

/// Incremental-decoding state of one block.
#[derive(Debug, Default)]
pub struct BlockCache {
    /// Self-attention keys and values.
    pub self_attn: KvCache,
    /// Cross-attention keys and values of the encoder output.
    pub cross_attn: KvCache,
}

/// Pre-norm transformer block.
///
/// Parameters: `attn_norm.weight`, `attn.*`, (`cross_norm.weight`, `cross_attn.*`),
/// `ffn_norm.weight`, `ffn.*` (dense) or `moe.*`, and a residual-stream method's
/// `residual.{attn, cross_attn, ffn}.*`.
#[derive(Debug)]
pub struct Block {
    /// Norm before attention.
    pub attn_norm: RmsNorm,
    /// Self-attention.
    pub attn: SelfAttention,
    /// Norm and cross-attention (decoder of an encoder-decoder).
    pub cross: Option<(RmsNorm, CrossAttention)>,
    /// Norm before the FFN.
    pub ffn_norm: RmsNorm,
    /// Dense FFN or MoE.
    pub ffn: Ffn,
    /// How attention, cross-attention (when present) and the FFN read from and write to the
    /// residual stream, in that order.
    pub residual: Vec<Box<dyn SublayerConnection>>,
    /// Backward segment boundary before the FFN sublayer of an expert-parallel MoE block.
    cuts: GraphCuts,
    d_model: i64,
    /// The residual streams `n` of an `n`-stream method (`[B, T, n, D]`); `None`: the plain
    /// `[B, T, D]` stream.
    streams: Option<i64>,
}

impl Block {
    /// Builds the block under the builder's path. In a process group that exchanges rows, an
    /// MoE FFN is this rank's part of an expert-parallel layer ([`MoeLayer::new`]) and the block
    /// cuts its graph before the FFN sublayer: the residual's gradient arrives there in parts (see
    /// [`crate::parallel::ExchangeTape`]).
    ///
    /// # Errors
    /// [`crate::Error::Config`] from the sublayer configs, or an MoE config expert parallelism
    /// does not support.
    pub fn new<'a>(vb: impl Into<VarBuilder<'a>>, d_model: usize, config: &BlockConfig) -> Result<Self> {
        let vb = vb.into();
        let (ffn, cuts) = match &config.ffn {
            FfnConfig::Dense(c) => (Ffn::Dense(FeedForward::new(&vb / "ffn", d_model, c)?), GraphCuts::none()),
            FfnConfig::Moe(c) => (Ffn::Moe(Box::new(MoeLayer::new(&vb / "moe", d_model, c)?)), vb.group().cuts()),
        };
        // One connection per sublayer; Hyper-Connections number them over the whole stack.
        let sublayers: &[&str] = if config.cross_attention { &["attn", "cross_attn", "ffn"] } else { &["attn", "ffn"] };
        let residual = sublayers
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let index = config.index * sublayers.len() + i;
                connection(&vb / "residual" / *name, d_model, &config.residual, index, config.norm_eps)
            })
            .collect::<Result<Vec<_>>>()?;
        let cross = if config.cross_attention {
            Some((
                RmsNorm::new(&vb / "cross_norm", d_model as i64, config.norm_eps)?,
                CrossAttention::new(&vb / "cross_attn", d_model, &config.attention)?,
            ))
        } else {
            None
        };
        Ok(Self {
            attn_norm: RmsNorm::new(&vb / "attn_norm", d_model as i64, config.norm_eps)?,
            attn: SelfAttention::new(&vb / "attn", d_model, &config.attention)?,
            cross,
            ffn_norm: RmsNorm::new(&vb / "ffn_norm", d_model as i64, config.norm_eps)?,
            ffn,
            residual,
            cuts,
            d_model: d_model as i64,
            streams: config.residual.streams().map(|n| n as i64),
        })
    }

    /// Whether the FFN is a mixture of experts.
    pub fn is_moe(&self) -> bool {
        matches!(self.ffn, Ffn::Moe(_))
    }

    /// [`Block::forward`] with only a token mask and the mode.
    ///
    /// # Errors
    /// As [`Block::forward`].
    pub fn forward_t(&self, x: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<(Tensor, Option<MoeAux>)> {
        self.forward(x, &BlockContext { mask, train, ..Default::default() }, None)
    }

    /// The block on `x`. With `cache`, self-attention also sees the cached keys of earlier calls
    /// and appends the new ones (incremental decoding), and cross-attention reuses the encoder
    /// keys computed on the first call.
    ///
    /// # Shapes
    /// `x`: `[B, T, D]` → `[B, T, D]` (`[B, T, n, D]` → `[B, T, n, D]` with an `n`-slot
    /// residual-stream method), and the MoE layer's aux record when the FFN is an MoE.
    ///
    /// # Errors
    /// [`crate::Error::Shape`] if `x` is not the stream's shape, a mask or the memory do not
    /// match, or a cross-attending block gets no memory.
    pub fn forward(
        &self,
        x: &Tensor,
        ctx: &BlockContext,
        mut cache: Option<&mut BlockCache>,
    ) -> Result<(Tensor, Option<MoeAux>)> {
        match self.streams {
            None => expect_shape(x, "block input", "[B, T, D]", &[None, None, Some(self.d_model)])?,
            Some(n) => expect_shape(x, "block input", "[B, T, n, D]", &[None, None, Some(n), Some(self.d_model)])?,
        }
        // A sublayer's input: the normed residual, in the sublayer's compute dtype.
        let sublayer_input = |norm: &RmsNorm, x: &Tensor| -> Result<Tensor> {
            let h = norm.forward(x)?;
            Ok(match ctx.compute {
                Some(kind) if kind != h.kind() => h.cast(kind)?,
                _ => h,
            })
        };
        let mut connections = self.residual.iter();
        let mut next = || connections.next().expect("a connection per sublayer");
        let x = next().apply(x, &mut |h: &Tensor| {
            let input = sublayer_input(&self.attn_norm, h)?;
            self.attn.forward(&input, ctx.positions, ctx.mask, cache.as_deref_mut().map(|c| &mut c.self_attn))
        })?;
        let x = match &self.cross {
            Some((norm, cross)) => {
                let memory = ctx
                    .memory
                    .ok_or_else(|| crate::Error::Shape("a cross-attending block needs the encoder output".into()))?;
                next().apply(&x, &mut |h: &Tensor| {
                    let query = sublayer_input(norm, h)?;
                    let states = memory.states.like(&query)?;
                    cross.forward(&query, &states, memory.mask, cache.as_deref_mut().map(|c| &mut c.cross_attn))
                })?
            }
            None => x,
        };
        let x = self.cuts.cut(&x)?;
        let mut aux = None;
        let x = next().apply(&x, &mut |h: &Tensor| {
            let h = sublayer_input(&self.ffn_norm, h)?;
            match &self.ffn {
                Ffn::Dense(ffn) => ffn.forward(&h),
                Ffn::Moe(moe) => {
                    let (y, moe_aux) = moe.forward_masked_t(&h, ctx.mask, ctx.train)?;
                    aux = Some(moe_aux);
                    Ok(y)
                }
            }
        })?;
        Ok((x, aux))
    }
}
