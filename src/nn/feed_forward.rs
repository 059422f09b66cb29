//! Position-wise feed-forward network: GELU (Hendrycks & Gimpel 2016) or SwiGLU
//! (Shazeer 2020, "GLU Variants Improve Transformer", arXiv 2002.05202).

use crate::error::{ensure_config, Result};
use crate::nn::linear::Linear;
use crate::nn::var_builder::VarBuilder;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Non-linearity of a feed-forward network or expert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `w_out · gelu(w_in · x)` (exact, erf-based GELU).
    #[default]
    Gelu,
    /// `w_out · relu(w_in · x)` (the original Transformer and Switch Transformer experts).
    Relu,
    /// `w_out · (silu(w_gate · x) ⊙ (w_in · x))` (serialised as `"swiglu"`).
    #[serde(rename = "swiglu")]
    SwiGlu,
}

impl Activation {
    /// Whether this activation needs a gate projection.
    pub fn is_gated(self) -> bool {
        matches!(self, Activation::SwiGlu)
    }

    /// Applies the non-linearity to the up-projection `h` (and the gate projection for SwiGLU).
    ///
    /// # Shapes
    /// `h`, `gate`: `[..., F]` → `[..., F]`.
    pub(crate) fn apply(self, h: &Tensor, gate: Option<&Tensor>) -> Result<Tensor> {
        Ok(match (self, gate) {
            (Activation::Gelu, _) => h.f_gelu("none")?,
            (Activation::Relu, _) => h.f_relu()?,
            (Activation::SwiGlu, Some(g)) => g.f_silu()?.f_mul(h)?,
            (Activation::SwiGlu, None) => return Err(crate::Error::Config("SwiGLU needs a gate projection".into())),
        })
    }
}

/// Configuration of a dense [`FeedForward`] network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedForwardConfig {
    /// Hidden width `F`.
    pub d_ff: usize,
    /// Non-linearity.
    pub activation: Activation,
}

impl Default for FeedForwardConfig {
    fn default() -> Self {
        Self { d_ff: 512, activation: Activation::Gelu }
    }
}

impl FeedForwardConfig {
    /// # Errors
    /// [`crate::Error::Config`] if `d_ff` is zero.
    pub fn validate(&self) -> Result<()> {
        ensure_config(self.d_ff > 0, || "d_ff (0) must be positive".into())
    }

    /// Number of parameters for model width `d_model`.
    pub fn num_params(&self, d_model: usize) -> usize {
        let matrices = if self.activation.is_gated() { 3 } else { 2 };
        matrices * d_model * self.d_ff
    }
}

/// Dense feed-forward network.
///
/// Parameters: `w_in.weight` `[F, D]`, `w_gate.weight` `[F, D]` (SwiGLU only), `w_out.weight` `[D, F]`.
#[derive(Debug)]
pub struct FeedForward {
    /// Up-projection, `[F, D]`.
    pub w_in: Linear,
    /// Gate projection for SwiGLU, `[F, D]`.
    pub w_gate: Option<Linear>,
    /// Down-projection, `[D, F]`.
    pub w_out: Linear,
    activation: Activation,
}

impl FeedForward {
    /// Builds the network under `path`.
    ///
    /// # Errors
    /// [`crate::Error::Config`] from [`FeedForwardConfig::validate`].
    pub fn new<'a>(vb: impl Into<VarBuilder<'a>>, d_model: usize, config: &FeedForwardConfig) -> Result<Self> {
        config.validate()?;
        let vb = vb.into();
        let (d, f, init) = (d_model as i64, config.d_ff as i64, *vb.init());
        let w_in = Linear::new(&vb / "w_in", d, f, init.std)?;
        let w_gate =
            if config.activation.is_gated() { Some(Linear::new(&vb / "w_gate", d, f, init.std)?) } else { None };
        let w_out = Linear::new(&vb / "w_out", f, d, init.residual_std)?;
        Ok(Self { w_in, w_gate, w_out, activation: config.activation })
    }

    /// # Shapes
    /// `x`: `[..., D]` → `[..., D]`.
    ///
    /// # Errors
    /// [`crate::Error::Shape`] if the last dimension of `x` is not `D`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.w_in.forward(x)?;
        let gate = self.w_gate.as_ref().map(|g| g.forward(x)).transpose()?;
        self.w_out.forward(&self.activation.apply(&h, gate.as_ref())?)
    }
}

crate::names::kebab_case_names!(Activation, "activation");
