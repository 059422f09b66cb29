//! The mixture-of-experts layer: router → dispatch → experts → combine, plus per-layer
//! auxiliary losses and statistics (Switch Transformer, arXiv 2101.03961; GShard, arXiv 2006.16668).

use crate::error::{ensure_config, Result};
use crate::moe::dispatch::{expert_capacity, SortDispatcher, TokenDispatcher};
use crate::moe::experts::{ExpertBackend, Experts};
use crate::moe::loss::{load_balancing_loss, router_entropy, router_z_loss};
use crate::moe::router::Router;
use crate::nn::feed_forward::Activation;
use crate::nn::init::InitScheme;
use crate::shape::expect_float;
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

/// Configuration of a [`MoeLayer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MoeConfig {
    /// Number of experts `E`.
    pub num_experts: usize,
    /// Experts per token `k` (Switch: 1).
    pub top_k: usize,
    /// Hidden width `F` of each expert.
    pub d_ff: usize,
    /// Expert non-linearity.
    pub activation: Activation,
    /// Capacity factor in training; `None` = dropless (every assignment is computed).
    pub capacity_factor: Option<f64>,
    /// Capacity factor in evaluation; `None` = dropless.
    pub eval_capacity_factor: Option<f64>,
    /// Lower bound on the capacity of each expert.
    pub min_capacity: usize,
    /// Renormalise the k gate weights to sum to 1 (ignored for `k = 1`, whose gate is the raw
    /// probability).
    pub normalize_gates: bool,
    /// Expert kernel.
    pub backend: ExpertBackend,
}

impl Default for MoeConfig {
    /// Switch defaults: 8 experts, top-1, capacity factor 1.25 in training and 2.0 in evaluation
    /// (Fedus et al. 2021, Table 1 / §2.2).
    fn default() -> Self {
        Self {
            num_experts: 8,
            top_k: 1,
            d_ff: 512,
            activation: Activation::Gelu,
            capacity_factor: Some(1.25),
            eval_capacity_factor: Some(2.0),
            min_capacity: 4,
            normalize_gates: false,
            backend: ExpertBackend::Auto,
        }
    }
}

impl MoeConfig {
    /// # Errors
    /// [`crate::Error::Config`] naming the value: zero experts, `top_k` outside `1..=E`, zero
    /// `d_ff`, a capacity factor that is not positive and finite.
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
        Ok(())
    }

    /// Parameters of one expert.
    pub fn params_per_expert(&self, d_model: usize) -> usize {
        let matrices = if self.activation.is_gated() { 3 } else { 2 };
        matrices * d_model * self.d_ff
    }
}

/// Per-layer auxiliary record of an MoE forward pass (DESIGN §3: typed, no global lists).
#[derive(Debug)]
pub struct MoeAux {
    /// Unscaled load-balancing loss (1.0 when perfectly balanced), scalar f32, differentiable.
    pub load_balancing_loss: Tensor,
    /// Unscaled router z-loss, scalar f32, differentiable.
    pub z_loss: Tensor,
    /// Assignments per expert before capacity, `[E]` i64.
    pub tokens_per_expert: Tensor,
    /// Fraction of the `k·N` assignments dropped for lack of capacity.
    pub dropped_fraction: f64,
    /// Mean router entropy per token in nats, scalar f32, detached.
    pub router_entropy: Tensor,
    /// Capacity per expert used in this pass (`None` = dropless).
    pub capacity: Option<i64>,
}

/// Mixture-of-experts feed-forward layer.
///
/// Parameters: `router.weight` `[E, D]`, `experts.w_in` `[E, D, F]`, `experts.w_gate`
/// `[E, D, F]` (SwiGLU), `experts.w_out` `[E, F, D]`.
#[derive(Debug)]
pub struct MoeLayer {
    /// The router.
    pub router: Router,
    /// The experts.
    pub experts: Experts,
    dispatcher: Box<dyn TokenDispatcher>,
    config: MoeConfig,
}

impl MoeLayer {
    /// Builds the layer under `path` with the local [`SortDispatcher`].
    ///
    /// # Errors
    /// [`crate::Error::Config`] from [`MoeConfig::validate`].
    pub fn new(path: &nn::Path, d_model: usize, config: &MoeConfig, init: &InitScheme) -> Result<Self> {
        config.validate()?;
        let router =
            Router::new(&(path / "router"), d_model, config.num_experts, config.top_k, config.normalize_gates, init)?;
        let experts = Experts::new(
            &(path / "experts"),
            config.num_experts,
            d_model,
            config.d_ff,
            config.activation,
            config.backend,
            init,
        )?;
        Ok(Self { router, experts, dispatcher: Box::new(SortDispatcher), config: config.clone() })
    }

    /// Replaces the dispatcher (e.g. with an expert-parallel one).
    pub fn with_dispatcher(mut self, dispatcher: Box<dyn TokenDispatcher>) -> Self {
        self.dispatcher = dispatcher;
        self
    }

    /// The layer's configuration.
    pub fn config(&self) -> &MoeConfig {
        &self.config
    }

    /// Routes every token to its top-k experts and returns the gate-weighted sum of their outputs.
    /// Tokens dropped by every chosen expert get a zero output (the block's residual carries them).
    ///
    /// `train` selects the capacity factor (`capacity_factor` or `eval_capacity_factor`).
    ///
    /// # Shapes
    /// `x`: `[..., D]` (e.g. `[B, T, D]`) → output of the same shape and dtype, and a [`MoeAux`].
    ///
    /// # Errors
    /// [`crate::Error::Shape`] if the last dimension is not `D`, `x` is not floating point, on
    /// another device, or holds no tokens.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<(Tensor, MoeAux)> {
        expect_float(x, "MoE input")?;
        let size = x.size();
        let d = self.router.weight.size()[1];
        if size.last().copied() != Some(d) {
            return Err(crate::Error::Shape(format!("MoE input must have last dimension {d}, got shape {size:?}")));
        }
        let tokens = x.f_reshape([-1, d])?;
        let n = tokens.size()[0];
        if n == 0 {
            return Err(crate::Error::Shape(format!("MoE input holds no tokens (shape {size:?})")));
        }
        let routing = self.router.route(&tokens)?;
        let cf = if train { self.config.capacity_factor } else { self.config.eval_capacity_factor };
        let capacity = cf
            .map(|cf| {
                expert_capacity(n, self.router.num_experts(), self.router.top_k(), cf, self.config.min_capacity as i64)
            })
            .transpose()?;
        let (rows, plan) = self.dispatcher.dispatch(&tokens, &routing, capacity)?;
        let expert_out = self.experts.forward(&rows, &plan.group_sizes)?;
        let out = self.dispatcher.combine(&expert_out, &plan)?.f_view(size.as_slice())?;
        let aux = MoeAux {
            load_balancing_loss: load_balancing_loss(&routing.probs, &plan.routed_per_expert, plan.top_k)?,
            z_loss: router_z_loss(&routing.logits)?,
            tokens_per_expert: plan.routed_per_expert.shallow_clone(),
            dropped_fraction: plan.dropped_fraction(),
            router_entropy: router_entropy(&routing.probs)?,
            capacity,
        };
        Ok((out, aux))
    }
}
