//! Pre-norm transformer block: `x + attn(norm(x))`, then `x + ffn(norm(x))`, where the FFN is
//! dense or a mixture of experts (GPT-2 / Llama layout; Switch Transformer swaps the FFN for an
//! MoE layer, arXiv 2101.03961 §2).

use crate::error::Result;
use crate::moe::{MoeAux, MoeConfig, MoeLayer};
use crate::nn::attention::{AttentionConfig, SelfAttention};
use crate::nn::feed_forward::{FeedForward, FeedForwardConfig};
use crate::nn::init::InitScheme;
use crate::nn::norm::RmsNorm;
use crate::shape::expect_shape;
use tch::{nn, Tensor};

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
    /// Self-attention.
    pub attention: AttentionConfig,
    /// Dense FFN or MoE.
    pub ffn: FfnConfig,
    /// RMSNorm epsilon.
    pub norm_eps: f64,
}

/// Dense or MoE feed-forward sublayer.
#[derive(Debug)]
pub enum Ffn {
    /// Dense FFN.
    Dense(FeedForward),
    /// Mixture of experts.
    Moe(Box<MoeLayer>),
}

/// Pre-norm transformer block.
///
/// Parameters: `attn_norm.weight`, `attn.*`, `ffn_norm.weight`, and `ffn.*` (dense) or `moe.*`.
#[derive(Debug)]
pub struct Block {
    /// Norm before attention.
    pub attn_norm: RmsNorm,
    /// Causal self-attention.
    pub attn: SelfAttention,
    /// Norm before the FFN.
    pub ffn_norm: RmsNorm,
    /// Dense FFN or MoE.
    pub ffn: Ffn,
    d_model: i64,
}

impl Block {
    /// Builds the block under `path`.
    ///
    /// # Errors
    /// [`crate::Error::Config`] from the sublayer configs.
    pub fn new(path: &nn::Path, d_model: usize, config: &BlockConfig, init: &InitScheme) -> Result<Self> {
        let ffn = match &config.ffn {
            FfnConfig::Dense(c) => Ffn::Dense(FeedForward::new(&(path / "ffn"), d_model, c, init)?),
            FfnConfig::Moe(c) => Ffn::Moe(Box::new(MoeLayer::new(&(path / "moe"), d_model, c, init)?)),
        };
        Ok(Self {
            attn_norm: RmsNorm::new(&(path / "attn_norm"), d_model as i64, config.norm_eps)?,
            attn: SelfAttention::new(&(path / "attn"), d_model, &config.attention, init)?,
            ffn_norm: RmsNorm::new(&(path / "ffn_norm"), d_model as i64, config.norm_eps)?,
            ffn,
            d_model: d_model as i64,
        })
    }

    /// Whether the FFN is a mixture of experts.
    pub fn is_moe(&self) -> bool {
        matches!(self.ffn, Ffn::Moe(_))
    }

    /// `mask` (`[B, T]`, true/non-zero = real token) is passed to the MoE layer, where masked
    /// tokens take no capacity, get a zero FFN output and are left out of the losses.
    /// Attention is causal; with right padding no real token attends to a padded one.
    ///
    /// # Shapes
    /// `x`: `[B, T, D]`, `mask`: `[B, T]` → `[B, T, D]`, and the MoE layer's aux record when the
    /// FFN is an MoE.
    ///
    /// # Errors
    /// [`crate::Error::Shape`] if `x` is not `[B, T, D]` or the mask is not `[B, T]`.
    pub fn forward_t(&self, x: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<(Tensor, Option<MoeAux>)> {
        self.forward_at(x, mask, None, train)
    }

    /// [`Block::forward_t`] with explicit rotary positions `[T]` (default `0..T`), as used by
    /// Sequence-AltUp for its strided anchor tokens.
    ///
    /// # Errors
    /// As [`Block::forward_t`], plus [`crate::Error::Shape`] if `positions` is not `[T]`.
    pub fn forward_at(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        positions: Option<&Tensor>,
        train: bool,
    ) -> Result<(Tensor, Option<MoeAux>)> {
        expect_shape(x, "block input", "[B, T, D]", &[None, None, Some(self.d_model)])?;
        let x = x.f_add(&self.attn.forward(&self.attn_norm.forward(x)?, positions)?)?;
        let h = self.ffn_norm.forward(&x)?;
        let (y, aux) = match &self.ffn {
            Ffn::Dense(ffn) => (ffn.forward(&h)?, None),
            Ffn::Moe(moe) => {
                let (y, aux) = moe.forward_masked_t(&h, mask, train)?;
                (y, Some(aux))
            }
        };
        Ok((x.f_add(&y)?, aux))
    }
}
