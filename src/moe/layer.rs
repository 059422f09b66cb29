//! The mixture-of-experts layer: router → plan → dispatch → experts → combine (+ shared
//! experts), with per-layer auxiliary losses and statistics (Switch Transformer,
//! arXiv 2101.03961; GShard, arXiv 2006.16668; Expert Choice, arXiv 2202.09368; DeepSeekMoE,
//! arXiv 2401.06066).

use crate::error::{Error, Result};
use crate::moe::config::{Balancing, CapacityPriority, MoeConfig, RouterKind};
use crate::moe::dispatch::{SortDispatcher, TokenDispatcher};
use crate::moe::experts::Experts;
use crate::moe::loss::{load_balancing_loss, load_balancing_loss_partial, router_entropy, router_z_loss};
use crate::moe::parallel::{all_reduce_tensor, Collectives, ExchangeTape, ExpertParallelDispatcher};
use crate::moe::plan::{count_real, expert_capacity, plan_expert_choice, plan_token_choice, plan_token_choice_limited};
use crate::moe::router::{select_top_k, Router};
use crate::nn::feed_forward::{FeedForward, FeedForwardConfig};
use crate::nn::init::InitScheme;
use crate::shape::expect_float;
use tch::{nn, Kind, Tensor};

/// Per-layer auxiliary record of an MoE forward pass (typed, no global lists).
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
        Self::new_with_experts(path, d_model, config, init, 0..config.num_experts)
    }

    fn new_with_experts(
        path: &nn::Path,
        d_model: usize,
        config: &MoeConfig,
        init: &InitScheme,
        owned: std::ops::Range<usize>,
    ) -> Result<Self> {
        let router = Router::new(&(path / "router"), d_model, config, init)?;
        let experts = Experts::new_slice(
            &(path / "experts"),
            config.num_experts,
            owned,
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

    /// Builds this rank's part of an expert-parallel layer: the router (and shared experts) are
    /// replicated, the experts are this rank's slice `r·E/R .. (r+1)·E/R`, initialised exactly as
    /// in the full layer, and tokens travel over `comm` ([`ExpertParallelDispatcher`]).
    /// Capacity and the layer's statistics are global (see [`crate::moe::parallel`]); each rank's
    /// auxiliary losses in [`MoeAux`] are its share, which add up over ranks to the whole batch's.
    ///
    /// # Errors
    /// [`Error::Config`] if `E` is not a multiple of the ranks, or for expert-choice routing and
    /// batch-prioritized capacity, which need every token of the batch in one place.
    pub fn new_expert_parallel(
        path: &nn::Path,
        d_model: usize,
        config: &MoeConfig,
        init: &InitScheme,
        comm: std::sync::Arc<dyn Collectives>,
        tape: ExchangeTape,
    ) -> Result<Self> {
        config.validate()?;
        if config.router != RouterKind::TokenChoice || config.priority != CapacityPriority::Position {
            return Err(Error::Config(
                "expert parallelism supports token-choice routing with positional capacity priority".into(),
            ));
        }
        let dispatcher = ExpertParallelDispatcher::new(comm, tape, config.num_experts)?;
        let mut layer = Self::new_with_experts(path, d_model, config, init, dispatcher.owned())?;
        layer.dispatcher = Box::new(dispatcher);
        Ok(layer)
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
        // With expert parallelism a rank may hold no tokens; it still takes part in the exchanges.
        if n == 0 && self.dispatcher.collectives().is_none() {
            return Err(Error::Shape(format!("MoE input holds no tokens (shape {size:?})")));
        }
        let valid = mask.map(|m| flat_mask(m, &size[..size.len() - 1], x.device())).transpose()?;
        let valid = valid.as_ref();
        let comm = self.dispatcher.collectives();
        let local_real = count_real(valid, n)?;
        let num_real = match comm {
            Some(c) => {
                let mut v = [local_real as f64];
                c.all_reduce_sum_f64(&mut v)?;
                v[0] as i64
            }
            None => local_real,
        };

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
                match (comm, capacity) {
                    (Some(c), Some(capacity)) => {
                        let limits = rank_limits(c, &index, valid, e, capacity)?;
                        plan_token_choice_limited(&index, &gate, e, valid, Some(capacity), Some(&limits), None)?
                    }
                    _ => plan_token_choice(&index, &gate, e, valid, capacity, priority.as_ref())?,
                }
            }
            RouterKind::ExpertChoice => {
                let cf = cf.ok_or_else(|| Error::Config("expert_choice routing needs a capacity factor".into()))?;
                plan_expert_choice(&scores.probs, valid, expert_capacity(num_real, e, 1, cf, min_capacity)?)?
            }
        };
        let mut out = self.dispatcher.run(&tokens, &plan, &self.experts)?;
        if let Some(shared) = &self.shared {
            let mut y = shared.forward(&tokens)?;
            if let Some(v) = valid {
                y = y.f_mul(&v.f_to_kind(y.kind())?.f_unsqueeze(1)?)?;
            }
            out = out.f_add(&y)?;
        }
        let aux = match comm {
            None => MoeAux {
                load_balancing_loss: load_balancing_loss(&scores.probs, &plan.routed_per_expert, valid)?,
                z_loss: router_z_loss(&scores.logits, valid)?,
                tokens_per_expert: plan.routed_per_expert.shallow_clone(),
                dropped_fraction: plan.dropped_fraction,
                router_entropy: router_entropy(&scores.probs, valid)?,
                capacity: plan.capacity,
                num_real_tokens: num_real,
            },
            Some(c) => {
                let routed = all_reduce_tensor(c, &plan.routed_per_expert)?;
                let mut kept = [plan.num_kept() as f64];
                c.all_reduce_sum_f64(&mut kept)?;
                let total = (routed.f_sum(Kind::Int64)?.f_int64_value(&[])?).max(1) as f64;
                let n_global = num_real.max(1) as f64;
                let share = local_real as f64 / n_global;
                let (load_balancing_loss, z_loss, router_entropy) = if local_real == 0 {
                    let zero = || Tensor::f_zeros([], (scores.logits.kind(), scores.logits.device()));
                    (zero()?, zero()?, zero()?)
                } else {
                    (
                        load_balancing_loss_partial(&scores.probs, &routed, valid, n_global)?,
                        router_z_loss(&scores.logits, valid)?.f_mul_scalar(share)?,
                        router_entropy(&scores.probs, valid)?.f_mul_scalar(share)?,
                    )
                };
                MoeAux {
                    load_balancing_loss,
                    z_loss,
                    tokens_per_expert: routed,
                    dropped_fraction: 1.0 - kept[0] / total,
                    router_entropy,
                    capacity: plan.capacity,
                    num_real_tokens: num_real,
                }
            }
        };
        Ok((out.f_view(size.as_slice())?, aux))
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

/// Capacity limits `[k, E]` of this rank's assignments with expert parallelism: the positional
/// priority of one rank holding the whole batch (first choices of every rank before any second
/// choice; ranks in order), so that the kept set equals the single-process one.
fn rank_limits(
    comm: &dyn Collectives,
    index: &Tensor,
    valid: Option<&Tensor>,
    e: i64,
    capacity: i64,
) -> Result<Tensor> {
    let (_, k) = index.size2()?;
    let device = index.device();
    let mut experts = index.shallow_clone();
    if let Some(v) = valid {
        experts = experts.f_where_self(&v.f_unsqueeze(1)?, &Tensor::f_full([1], e, (Kind::Int64, device))?)?;
    }
    // Routed assignments per (choice, expert) on this rank.
    let local =
        experts.f_transpose(0, 1)?.f_one_hot(e + 1)?.f_sum_dim_intlist(1, false, Kind::Int64)?.f_narrow(1, 0, e)?;
    let local = Vec::<i64>::try_from(&local.f_to_device(tch::Device::Cpu)?.f_flatten(0, -1)?)?;
    let all = comm.all_gather_i64(&local)?; // [R, k, E]
    let (ranks, me) = (comm.world_size(), comm.rank());
    let (k, e) = (k as usize, e as usize);
    let at = |r: usize, c: usize, x: usize| all[(r * k + c) * e + x];
    let mut limits = Vec::with_capacity(k * e);
    for c in 0..k {
        for x in 0..e {
            let earlier_choices: i64 = (0..c).map(|c2| (0..ranks).map(|r| at(r, c2, x)).sum::<i64>()).sum();
            let earlier_ranks: i64 = (0..me).map(|r| at(r, c, x)).sum();
            limits.push((capacity - earlier_choices - earlier_ranks).max(0));
        }
    }
    Ok(Tensor::from_slice(&limits).f_view([k as i64, e as i64])?.f_to_device(device)?)
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
