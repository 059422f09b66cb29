//! Compute precision of the activations.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::Kind;

/// The dtype activations are computed in. Parameters (and optimizer state) stay in their own
/// dtype (f32 masters); routers, AltUp mixing, the final norm, the output head and the logits
/// stay in f32 regardless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Precision {
    /// Activations in the parameters' dtype (f32; f64 for an f64 model).
    #[default]
    #[serde(rename = "f32")]
    F32,
    /// Activations in bfloat16, the residual stream between blocks included; matmuls run in
    /// bf16 with the f32 weights cast in forward.
    #[serde(rename = "bf16")]
    Bf16,
    /// Mixed precision as autocast does it: every sublayer (attention, FFN, MoE) computes in
    /// bf16, while the residual stream between them (and AltUp's blocks) stays f32 — a sublayer's
    /// bf16 output is added to the f32 residual without rounding the residual.
    #[serde(rename = "bf16-mixed")]
    Bf16Mixed,
}

impl Precision {
    /// Whether this is [`Precision::F32`] (the default, not written to configs).
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    /// The dtype of the residual stream for parameters of dtype `param` (f32 masters).
    pub fn residual_kind(self, param: Kind) -> Kind {
        match self {
            Precision::Bf16 => Kind::BFloat16,
            Precision::F32 | Precision::Bf16Mixed => param,
        }
    }

    /// The dtype the sublayers compute in, when it differs from the residual stream's.
    pub fn sublayer_kind(self) -> Option<Kind> {
        match self {
            Precision::Bf16Mixed => Some(Kind::BFloat16),
            Precision::F32 | Precision::Bf16 => None,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::names::show_unit(self))
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "bf16-mixed" => Ok(Precision::Bf16Mixed),
            other => Err(Error::Config(format!("unknown precision '{other}' (expected f32, bf16 or bf16-mixed)"))),
        }
    }
}
