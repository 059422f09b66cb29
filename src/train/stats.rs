//! What a training step and an evaluation measure.

use crate::model::StackKind;
use serde::{Deserialize, Serialize};

/// What one training step measured.
#[derive(Debug, Clone, PartialEq)]
pub struct StepStats {
    /// Optimizer steps completed (1-based).
    pub step: u64,
    /// LM loss of the step's batches, nats per byte.
    pub loss: f64,
    /// Unscaled load-balancing loss averaged over MoE layers (and micro-batches).
    pub load_balancing_loss: Option<f64>,
    /// Unscaled z-loss averaged over MoE layers (and micro-batches).
    pub z_loss: Option<f64>,
    /// Dropped-assignment fraction averaged over MoE layers (and micro-batches).
    pub dropped_fraction: Option<f64>,
    /// Per-MoE-layer statistics of the last micro-batch.
    pub moe_layers: Vec<MoeLayerMetrics>,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens in the step (all micro-batches).
    pub tokens: usize,
}

/// Result of an evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalStats {
    /// Mean LM loss, nats per byte.
    pub loss: f64,
    /// Bits per byte (`loss / ln 2`).
    pub bits_per_byte: f64,
}

/// Per-MoE-layer statistics of the last training step before an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoeLayerMetrics {
    /// The stack: `decoder` (a language model's only stack) or `encoder`.
    pub stack: StackKind,
    /// Block index within the stack.
    pub layer: usize,
    /// Unscaled load-balancing loss (1.0 = balanced).
    pub load_balancing_loss: f64,
    /// Unscaled router z-loss.
    pub z_loss: f64,
    /// Fraction of assignments dropped for lack of capacity.
    #[serde(alias = "dropped_frac")]
    pub dropped_fraction: f64,
    /// Mean router entropy in nats.
    pub router_entropy: f64,
    /// Assignments per expert before capacity.
    #[serde(alias = "tokens_per_expert")]
    pub assignments_per_expert: Vec<i64>,
    /// Most loaded expert's assignments over the mean (1 = perfectly balanced).
    pub max_load: f64,
}
