//! Compute precision of the activations.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// The dtype activations are computed in. Parameters (and optimizer state) stay in their own
/// dtype (f32 masters); routers, norms, AltUp mixing and the logits stay in f32 regardless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Activations in the parameters' dtype (f32; f64 for an f64 model).
    #[default]
    F32,
    /// Activations in bfloat16; matmuls run in bf16 with the f32 weights cast in forward.
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(Error::Config(format!("unknown precision '{other}' (expected f32 or bf16)"))),
        }
    }
}
