//! Causal multi-head self-attention with rotary position embeddings
//! (Vaswani et al. 2017, §3.2; RoPE from Su et al. 2021).
//!
//! The attention itself is libtorch's `scaled_dot_product_attention`, which picks a fused kernel
//! (flash / memory-efficient) where one exists for the device and dtype.

use crate::error::{ensure_config, Result};
use crate::nn::init::InitScheme;
use crate::nn::linear::Linear;
use crate::nn::rope::{Rope, DEFAULT_ROPE_THETA};
use crate::shape::expect_shape;
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

/// Configuration of [`SelfAttention`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttentionConfig {
    /// Number of heads `H`; must divide `d_model`, and `d_model / H` must be even (RoPE).
    pub num_heads: usize,
    /// RoPE base frequency θ.
    pub rope_theta: f64,
}

impl Default for AttentionConfig {
    fn default() -> Self {
        Self { num_heads: 4, rope_theta: DEFAULT_ROPE_THETA }
    }
}

impl AttentionConfig {
    /// Checks the config against the model width.
    ///
    /// # Errors
    /// [`crate::Error::Config`] naming the value: zero heads, heads not dividing `d_model`,
    /// an odd head dimension, or a bad `rope_theta`.
    pub fn validate(&self, d_model: usize) -> Result<()> {
        ensure_config(self.num_heads > 0, || "num_heads (0) must be positive".into())?;
        ensure_config(d_model % self.num_heads == 0, || {
            format!("num_heads ({}) must divide d_model ({d_model})", self.num_heads)
        })?;
        Rope::new((d_model / self.num_heads) as i64, self.rope_theta)?;
        Ok(())
    }
}

/// Causal multi-head self-attention.
///
/// Parameters: `qkv.weight` `[3·D, D]` (queries, keys, values stacked in that order),
/// `out.weight` `[D, D]`.
#[derive(Debug)]
pub struct SelfAttention {
    qkv: Linear,
    out: Linear,
    rope: Rope,
    num_heads: i64,
    head_dim: i64,
}

impl SelfAttention {
    /// Builds the layer under `path`.
    ///
    /// # Errors
    /// [`crate::Error::Config`] from [`AttentionConfig::validate`].
    pub fn new(path: &nn::Path, d_model: usize, config: &AttentionConfig, init: &InitScheme) -> Result<Self> {
        config.validate(d_model)?;
        let d = d_model as i64;
        let num_heads = config.num_heads as i64;
        let head_dim = d / num_heads;
        Ok(Self {
            qkv: Linear::new(&(path / "qkv"), d, 3 * d, init.std, init)?,
            out: Linear::new(&(path / "out"), d, d, init.residual_std, init)?,
            rope: Rope::new(head_dim, config.rope_theta)?,
            num_heads,
            head_dim,
        })
    }

    /// Causal self-attention: token `t` attends to tokens `0..=t` of the same sequence. Rotary
    /// angles use `positions` (`[T]`, e.g. the strided anchors of Sequence-AltUp) or `0..T`.
    ///
    /// # Shapes
    /// `x`: `[B, T, D]`, `positions`: `[T]` → `[B, T, D]`.
    ///
    /// # Errors
    /// [`crate::Error::Shape`] if `x` is not `[B, T, D]` or `positions` is not `[T]`.
    pub fn forward(&self, x: &Tensor, positions: Option<&Tensor>) -> Result<Tensor> {
        let d = self.num_heads * self.head_dim;
        expect_shape(x, "attention input", "[B, T, D]", &[None, None, Some(d)])?;
        let (b, t) = (x.size()[0], x.size()[1]);
        let qkv = self.qkv.forward(x)?.f_view([b, t, 3, self.num_heads, self.head_dim])?.f_permute([2, 0, 3, 1, 4])?; // [3, B, H, T, hd]
        let q = self.rope.apply(&qkv.f_select(0, 0)?, positions)?;
        let k = self.rope.apply(&qkv.f_select(0, 1)?, positions)?;
        let v = qkv.f_select(0, 2)?;
        let y = Tensor::f_scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, 0.0, true, None, false)?;
        let y = y.f_transpose(1, 2)?.f_contiguous()?.f_view([b, t, d])?;
        self.out.forward(&y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn future_tokens_do_not_change_the_past() {
        let vs = nn::VarStore::new(Device::Cpu);
        let attn = SelfAttention::new(&vs.root(), 16, &AttentionConfig::default(), &InitScheme::default()).unwrap();
        let x = Tensor::randn([2, 6, 16], (Kind::Float, Device::Cpu));
        let x2 = x.copy();
        let _ = x2.narrow(1, 4, 2).fill_(3.0);
        let (y, y2) = (attn.forward(&x, None).unwrap(), attn.forward(&x2, None).unwrap());
        assert!(y.narrow(1, 0, 4).allclose(&y2.narrow(1, 0, 4), 1e-6, 1e-6, false));
        assert!(!y.narrow(1, 4, 2).allclose(&y2.narrow(1, 4, 2), 1e-3, 1e-3, false));
    }

    #[test]
    fn heads_must_divide_width() {
        let err = AttentionConfig { num_heads: 3, ..Default::default() }.validate(16).unwrap_err();
        assert_eq!(err.to_string(), "invalid config: num_heads (3) must divide d_model (16)");
    }
}
