//! The mixture-of-experts layer: router → plan → dispatch → experts → combine (+ shared
//! experts), with per-layer auxiliary losses and statistics (Switch Transformer,
//! arXiv 2101.03961; GShard, arXiv 2006.16668; Expert Choice, arXiv 2202.09368; DeepSeekMoE,
//! arXiv 2401.06066).

use crate::error::{Error, Result};
use crate::moe::config::{Balancing, CapacityPriority, MoeConfig, RouterKind};
use crate::moe::dispatch::{SortDispatcher, TokenDispatcher};
use crate::moe::experts::Experts;
use crate::moe::loss::{load_balancing_loss, router_entropy, router_z_loss};
use crate::moe::plan::{count_real, expert_capacity, plan_expert_choice, plan_token_choice, DispatchPlan};
use crate::moe::router::{select_top_k, Router};
use crate::nn::feed_forward::{FeedForward, FeedForwardConfig};
use crate::nn::init::InitScheme;
use crate::shape::expect_float;
use tch::{nn, Kind, Tensor};

/// Per-layer auxiliary record of an MoE forward pass (DESIGN §3: typed, no global lists).
#[derive(Debug)]
pub struct MoeAux {
    /// Unscaled load-balancing loss over real tokens (1.0 = balanced), scalar f32, differentiable.
    pub load_balancing_loss: Tensor,
    /// Unscaled router z-loss over real tokens, scalar f32, differentiable.
    pub z_loss: Tensor,
    /// Assignments per expert before capacity, real tokens only, `[E]` i64.
    pub tokens_per_expert: Tensor,
    /// Token choice: fraction of assignments dropped for lack of capacity; expert choice:
    /// fraction of real tokens no expert picked.
    pub dropped_fraction: f64,
    /// Mean router entropy per real token in nats, scalar f32, detached.
    pub router_entropy: Tensor,
    /// Capacity per expert used in this pass (`None` = dropless).
    pub capacity: Option<i64>,
    /// Number of real (unmasked) tokens.
    pub num_real_tokens: i64,
}

/// Mixture-of-experts feed-forward layer.
///
/// Parameters: `router.weight` `[E, D]` (and the buffer `router.expert_bias` `[E]` with
/// aux-loss-free balancing), `experts.w_in` `[E, D, F]`, `experts.w_gate` `[E, D, F]` (SwiGLU),
/// `experts.w_out` `[E, F, D]`, and `shared.{w_in,w_gate,w_out}.weight` with shared experts.
#[derive(Debug)]
pub struct MoeLayer {
    /// The router.
    pub router: Router,
    /// The routed experts.
    pub experts: Experts,
    /// Shared experts (one dense FFN of width `num_shared_experts · d_ff`).
    pub shared: Option<FeedForward>,
    dispatcher: Box<dyn TokenDispatcher>,
    config: MoeConfig,
}

impl MoeLayer {
    /// Builds the layer under `path` with the local [`SortDispatcher`].
    ///
    /// # Errors
    /// [`Error::Config`] from [`MoeConfig::validate`].
    pub fn new(path: &nn::Path, d_model: usize, config: &MoeConfig, init: &InitScheme) -> Result<Self> {
        config.validate()?;
        let router = Router::new(&(path / "router"), d_model, config, init)?;
        let experts = Experts::new(
            &(path / "experts"),
            config.num_experts,
            d_model,
            config.d_ff,
            config.activation,
            config.backend,
            init,
        )?;
        let shared = (config.num_shared_experts > 0)
            .then(|| {
                let ffn =
                    FeedForwardConfig { d_ff: config.num_shared_experts * config.d_ff, activation: config.activation };
                FeedForward::new(&(path / "shared"), d_model, &ffn, init)
            })
            .transpose()?;
        Ok(Self { router, experts, shared, dispatcher: Box::new(SortDispatcher), config: config.clone() })
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

    /// [`MoeLayer::forward_masked_t`] without a mask (every token is real).
    ///
    /// # Errors
    /// As [`MoeLayer::forward_masked_t`].
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<(Tensor, MoeAux)> {
        self.forward_masked_t(x, None, train)
    }

    /// Routes every real token, runs the experts, and returns the gate-weighted sum of their
    /// outputs plus the shared experts' output. Masked tokens (mask `false`/0) take no capacity,
    /// get an exact-zero output, and are left out of the losses and statistics. Tokens dropped by
    /// every chosen expert get a zero routed output (the block's residual carries them).
    ///
    /// `train` selects the capacity factor (`capacity_factor` / `eval_capacity_factor`) and
    /// enables router jitter.
    ///
    /// # Shapes
    /// `x`: `[..., D]` (e.g. `[B, T, D]`); `mask`: `x`'s shape without `D` (e.g. `[B, T]`), bool
    /// or integer → output of `x`'s shape and dtype, and a [`MoeAux`].
    ///
    /// # Errors
    /// [`Error::Shape`] if the last dimension is not `D`, `x` is not floating point or on another
    /// device, holds no tokens, or the mask's shape does not match.
    pub fn forward_masked_t(&self, x: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<(Tensor, MoeAux)> {
        expect_float(x, "MoE input")?;
        let size = x.size();
        let d = self.router.weight.size()[1];
        if size.last().copied() != Some(d) {
            return Err(Error::Shape(format!("MoE input must have last dimension {d}, got shape {size:?}")));
        }
        let tokens = x.f_reshape([-1, d])?;
        let n = tokens.size()[0];
        if n == 0 {
            return Err(Error::Shape(format!("MoE input holds no tokens (shape {size:?})")));
        }
        let valid = mask.map(|m| flat_mask(m, &size[..size.len() - 1], x.device())).transpose()?;
        let valid = valid.as_ref();
        let num_real = count_real(valid, n)?;

        let scores = self.router.scores(&tokens, train)?;
        let e = self.router.num_experts();
        let cf = self.config.capacity_factor_for(train);
        let min_capacity = self.config.min_capacity as i64;
        let plan = match self.config.router {
            RouterKind::TokenChoice => {
                let k = self.config.top_k as i64;
                let (index, gate) =
                    select_top_k(&scores.probs, k, self.config.normalize_gates, self.router.expert_bias.as_ref())?;
                let capacity = cf.map(|cf| expert_capacity(num_real, e, k, cf, min_capacity)).transpose()?;
                let priority = match self.config.priority {
                    CapacityPriority::Position => None,
                    CapacityPriority::Confidence => Some(scores.probs.f_amax(-1, false)?),
                };
                plan_token_choice(&index, &gate, e, valid, capacity, priority.as_ref())?
            }
            RouterKind::ExpertChoice => {
                let cf = cf.ok_or_else(|| Error::Config("expert_choice routing needs a capacity factor".into()))?;
                plan_expert_choice(&scores.probs, valid, expert_capacity(num_real, e, 1, cf, min_capacity)?)?
            }
        };
        let mut out = self.run_experts(&tokens, &plan)?;
        if let Some(shared) = &self.shared {
            let mut y = shared.forward(&tokens)?;
            if let Some(v) = valid {
                y = y.f_mul(&v.f_to_kind(y.kind())?.f_unsqueeze(1)?)?;
            }
            out = out.f_add(&y)?;
        }
        let aux = MoeAux {
            load_balancing_loss: load_balancing_loss(&scores.probs, &plan.routed_per_expert, valid)?,
            z_loss: router_z_loss(&scores.logits, valid)?,
            tokens_per_expert: plan.routed_per_expert.shallow_clone(),
            dropped_fraction: plan.dropped_fraction,
            router_entropy: router_entropy(&scores.probs, valid)?,
            capacity: plan.capacity,
            num_real_tokens: num_real,
        };
        Ok((out.f_view(size.as_slice())?, aux))
    }

    /// Dispatch → experts → combine for a plan.
    ///
    /// # Shapes
    /// `tokens`: `[N, D]` → `[N, D]`.
    fn run_experts(&self, tokens: &Tensor, plan: &DispatchPlan) -> Result<Tensor> {
        let rows = self.dispatcher.dispatch(tokens, plan)?;
        let expert_out = self.experts.forward(&rows, &plan.group_sizes)?;
        self.dispatcher.combine(&expert_out, plan)
    }

    /// Applies one aux-loss-free bias update from the assignment counts of a whole optimizer
    /// step (no-op unless `balancing` is aux-loss-free).
    ///
    /// # Shapes
    /// `counts`: `[E]`.
    ///
    /// # Errors
    /// [`Error::Shape`] if `counts` is not `[E]`.
    pub fn update_expert_bias(&self, counts: &Tensor) -> Result<()> {
        match self.config.balancing {
            Balancing::AuxFree { bias_update_rate } => self.router.update_expert_bias(counts, bias_update_rate),
            Balancing::AuxLoss => Ok(()),
        }
    }
}

/// Flattens a token mask to `[N]` bool after checking its shape.
fn flat_mask(mask: &Tensor, leading: &[i64], device: tch::Device) -> Result<Tensor> {
    if mask.size() != leading {
        return Err(Error::Shape(format!("token mask must have shape {leading:?}, got {:?}", mask.size())));
    }
    let bool_mask = match mask.kind() {
        Kind::Bool => mask.shallow_clone(),
        Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8 => mask.f_ne(0)?,
        other => return Err(Error::Shape(format!("token mask must be bool or integer, got dtype {other:?}"))),
    };
    Ok(bool_mask.f_reshape([-1])?.f_to_device(device)?)
}
