//! Configuration of an MoE layer: routing family, capacity, balancing, experts.

use crate::error::{ensure_config, Result};
use crate::moe::kernel::ExpertBackend;
use crate::moe::routing::{CapacityPriority, RouterKind, RoutingOptions};
use crate::nn::feed_forward::Activation;
use serde::{Deserialize, Serialize};

/// How expert load is balanced.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balancing {
    /// The auxiliary load-balancing loss (its coefficient is the trainer's).
    #[default]
    AuxLoss,
    /// Aux-loss-free balancing (DeepSeek-V3): a per-expert selection bias updated after each
    /// optimizer step by `±bias_update_rate` towards balance. A model whose MoE layers all
    /// balance this way trains without the load-balancing loss by default
    /// ([`crate::train::Objective::for_model`]: α = 0); set `TrainConfig::load_balancing_coef` to
    /// keep a small complementary one, as DeepSeek-V3 does.
    AuxFree {
        /// γ, the bias update step.
        bias_update_rate: f64,
    },
}

impl Balancing {
    /// DeepSeek-V3's bias update rate γ (§2.1.2; 0.001 in most of its training).
    pub const DEFAULT_BIAS_UPDATE_RATE: f64 = 1e-3;

    /// Whether this is aux-loss-free balancing.
    pub fn is_aux_free(&self) -> bool {
        matches!(self, Balancing::AuxFree { .. })
    }
}

/// Configuration of an [`crate::moe::MoeLayer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MoeConfig {
    /// Number of routed experts `E`. Fine-grained MoE (DeepSeekMoE) = many experts with a small
    /// `d_ff`, optionally with shared experts.
    pub num_experts: usize,
    /// Experts per token `k` (token choice; Switch: 1).
    pub top_k: usize,
    /// Hidden width `F` of each expert.
    pub d_ff: usize,
    /// Expert non-linearity.
    pub activation: Activation,
    /// Token choice or expert choice.
    pub router: RouterKind,
    /// Capacity factor in training; `None` = dropless (every assignment is computed). Expert
    /// choice needs one (Zhou et al. use 2).
    pub capacity_factor: Option<f64>,
    /// Capacity factor in evaluation; `None` = dropless.
    pub eval_capacity_factor: Option<f64>,
    /// Lower bound on each expert's capacity.
    pub min_capacity: usize,
    /// Order in which capacity is filled (token choice).
    pub priority: CapacityPriority,
    /// Renormalise the k gates to sum to 1 (ignored for `k = 1`).
    pub normalize_gates: bool,
    /// Multiplicative jitter ε on a copy of the router input in training (0 = off; Switch uses 0.01).
    pub jitter: f64,
    /// Load balancing method.
    pub balancing: Balancing,
    /// Shared experts every token passes through (DeepSeekMoE, arXiv 2401.06066), each `d_ff`
    /// wide; stored as one dense FFN of width `num_shared_experts · d_ff`.
    pub num_shared_experts: usize,
    /// Expert kernel.
    pub backend: ExpertBackend,
}

impl Default for MoeConfig {
    /// 8 experts, top-1 token choice, dropless, GELU, aux-loss balancing.
    fn default() -> Self {
        Self {
            num_experts: 8,
            top_k: 1,
            d_ff: 512,
            activation: Activation::Gelu,
            router: RouterKind::TokenChoice,
            capacity_factor: None,
            eval_capacity_factor: None,
            min_capacity: 4,
            priority: CapacityPriority::Position,
            normalize_gates: false,
            jitter: 0.0,
            balancing: Balancing::AuxLoss,
            num_shared_experts: 0,
            backend: ExpertBackend::Auto,
        }
    }
}

impl MoeConfig {
    /// Switch Transformer settings (Fedus et al. 2021, §2.2): top-1, capacity factor 1.25 in
    /// training and 2.0 in evaluation.
    pub fn switch(num_experts: usize, d_ff: usize) -> Self {
        Self { num_experts, d_ff, capacity_factor: Some(1.25), eval_capacity_factor: Some(2.0), ..Self::default() }
    }

    /// Mixtral-style settings: top-2 with renormalised gates, SwiGLU experts, dropless.
    pub fn mixtral(num_experts: usize, d_ff: usize) -> Self {
        Self { num_experts, d_ff, top_k: 2, normalize_gates: true, activation: Activation::SwiGlu, ..Self::default() }
    }

    /// Expert-choice settings (Zhou et al. 2022): capacity factor 2 in training and evaluation.
    pub fn expert_choice(num_experts: usize, d_ff: usize) -> Self {
        Self {
            num_experts,
            d_ff,
            router: RouterKind::ExpertChoice,
            capacity_factor: Some(2.0),
            eval_capacity_factor: Some(2.0),
            ..Self::default()
        }
    }

    /// # Errors
    /// [`crate::Error::Config`] naming the value: zero experts, `top_k` outside `1..=E`, zero
    /// `d_ff`, a capacity factor that is not positive and finite, expert choice without a
    /// capacity factor, jitter outside `[0, 1)`, a non-positive bias update rate.
    pub fn validate(&self) -> Result<()> {
        ensure_config(self.num_experts > 0, || "num_experts (0) must be positive".into())?;
        ensure_config(self.top_k >= 1 && self.top_k <= self.num_experts, || {
            format!("top_k ({}) must be between 1 and num_experts ({})", self.top_k, self.num_experts)
        })?;
        ensure_config(self.d_ff > 0, || "moe d_ff (0) must be positive".into())?;
        for (name, cf) in
            [("capacity_factor", self.capacity_factor), ("eval_capacity_factor", self.eval_capacity_factor)]
        {
            if let Some(cf) = cf {
                ensure_config(cf > 0.0 && cf.is_finite(), || format!("{name} ({cf}) must be positive and finite"))?;
            }
        }
        ensure_config((0.0..1.0).contains(&self.jitter), || format!("jitter ({}) must be in [0, 1)", self.jitter))?;
        self.router.policy().validate(&self.routing_options())?;
        if let Balancing::AuxFree { bias_update_rate } = self.balancing {
            ensure_config(bias_update_rate > 0.0 && bias_update_rate.is_finite(), || {
                format!("bias_update_rate ({bias_update_rate}) must be positive and finite")
            })?;
        }
        Ok(())
    }

    /// Parameters of one expert.
    pub fn params_per_expert(&self, d_model: usize) -> usize {
        let matrices = if self.activation.is_gated() { 3 } else { 2 };
        matrices * d_model * self.d_ff
    }

    /// The options the routing policy reads.
    pub fn routing_options(&self) -> RoutingOptions {
        RoutingOptions {
            num_experts: self.num_experts,
            top_k: self.top_k,
            normalize_gates: self.normalize_gates,
            capacity_factor: self.capacity_factor,
            eval_capacity_factor: self.eval_capacity_factor,
            min_capacity: self.min_capacity,
            priority: self.priority,
        }
    }

    /// The capacity factor for training or evaluation.
    pub fn capacity_factor_for(&self, train: bool) -> Option<f64> {
        if train {
            self.capacity_factor
        } else {
            self.eval_capacity_factor
        }
    }
}

/// `aux-loss`, or `aux-free[:RATE]` (the bias update rate γ; 1e-3 when left out).
impl std::str::FromStr for Balancing {
    type Err = crate::error::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.split_once(':') {
            None if s == "aux-loss" => Ok(Balancing::AuxLoss),
            None if s == "aux-free" => Ok(Balancing::AuxFree { bias_update_rate: Balancing::DEFAULT_BIAS_UPDATE_RATE }),
            Some(("aux-free", rate)) => {
                Ok(Balancing::AuxFree { bias_update_rate: crate::names::parse_number("bias update rate", rate)? })
            }
            _ => Err(crate::error::Error::Config(format!(
                "unknown balancing '{s}' (expected aux-loss or aux-free[:RATE])"
            ))),
        }
    }
}

impl std::fmt::Display for Balancing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Balancing::AuxLoss => f.write_str("aux-loss"),
            Balancing::AuxFree { bias_update_rate } => write!(f, "aux-free:{bias_update_rate}"),
        }
    }
}
