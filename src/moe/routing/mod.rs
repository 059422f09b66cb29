//! Routing policies: from the router's scores to a [`DispatchPlan`] — who goes to which expert,
//! with which gate, within which capacity.
//!
//! A policy sees the scores of this pass's tokens and asks the dispatcher for the whole batch's
//! counts ([`crate::moe::TokenDispatcher::count_batch`]), so the same policy runs in one process
//! and under expert parallelism. [`RouterKind::policy`](crate::moe::RouterKind::policy) maps the
//! configured family to its policy.
//!
//! # Adding a routing family
//! Write one file here with a unit struct implementing [`RoutingPolicy`], declare it below, and
//! add one arm to [`crate::moe::RouterKind`] (with its serde name, which the `train` example's
//! `--router` flag and configs use) and to the `match` in `RouterKind::policy`; the compiler
//! points at that match. Validation, parameter accounting, the expert-parallel check and the
//! default capacity factor all come from the trait.

mod expert_choice;
mod token_choice;

pub use expert_choice::ExpertChoice;
pub use token_choice::{select_top_k, TokenChoice};

use crate::error::Result;
use crate::moe::batch::BatchCounts;
use crate::moe::dispatch::TokenDispatcher;
use crate::moe::plan::DispatchPlan;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

/// Who chooses: tokens choose experts, or experts choose tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouterKind {
    /// Each token picks its top-k experts (Switch k = 1, GShard/Mixtral k = 2).
    #[default]
    TokenChoice,
    /// Each expert picks its top-`C` tokens, `C = ceil(capacity_factor · N / E)` (Zhou et al. 2022,
    /// "Mixture-of-Experts with Expert Choice Routing", arXiv 2202.09368). A token may get 0..E
    /// experts. The choice looks at every token of the batch, so in a causal language model a
    /// token's routing depends on *later* tokens of the batch window: it is natural in encoders
    /// (bidirectional, every token visible anyway) and elsewhere only where that leak is acceptable.
    ExpertChoice,
}

/// Which assignments win when an expert's capacity is exceeded (token choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapacityPriority {
    /// Earlier tokens first, all first choices before any second choice (Switch, GShard).
    #[default]
    Position,
    /// Batch prioritized routing (Riquelme et al. 2021, "Scaling Vision with Sparse Mixture of
    /// Experts", arXiv 2106.05974, §4.1): tokens with the highest top-1 router probability first.
    /// A later, more confident token can then push an earlier one out of an expert, so in a causal
    /// decoder this leaks future information when capacity binds; it is natural in encoders.
    /// (Position priority never lets a later token displace an earlier one.)
    Confidence,
}

impl RouterKind {
    /// The routing policy of this family (see the module docs for adding one).
    pub fn policy(self) -> &'static dyn RoutingPolicy {
        match self {
            RouterKind::TokenChoice => &TokenChoice,
            RouterKind::ExpertChoice => &ExpertChoice,
        }
    }
}

/// The options of an MoE layer that routing reads ([`crate::moe::MoeConfig::routing_options`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoutingOptions {
    /// Experts `E`.
    pub num_experts: usize,
    /// Experts per token `k` (token choice).
    pub top_k: usize,
    /// Renormalise the k gates to sum to 1.
    pub normalize_gates: bool,
    /// Capacity factor in training (`None` = dropless).
    pub capacity_factor: Option<f64>,
    /// Capacity factor in evaluation (`None` = dropless).
    pub eval_capacity_factor: Option<f64>,
    /// Lower bound on each expert's capacity.
    pub min_capacity: usize,
    /// Order in which capacity is filled (token choice).
    pub priority: CapacityPriority,
}

impl RoutingOptions {
    /// The capacity factor for training or evaluation.
    pub fn capacity_factor_for(&self, train: bool) -> Option<f64> {
        if train {
            self.capacity_factor
        } else {
            self.eval_capacity_factor
        }
    }
}

/// Router logits and probabilities for `N` tokens over `E` experts.
#[derive(Debug)]
pub struct RouterScores {
    /// Logits `h = x · W_rᵀ`, `[N, E]`, f32 (the z-loss is computed on these).
    pub logits: Tensor,
    /// `softmax(h)`, `[N, E]`, f32.
    pub probs: Tensor,
}

/// What a policy plans from.
#[derive(Debug, Clone, Copy)]
pub struct RoutingInput<'a> {
    /// Router logits and probabilities of this pass's tokens, `[N, E]` f32.
    pub scores: &'a RouterScores,
    /// Token mask `[N]` bool (true = real), `None` = all real.
    pub valid: Option<&'a Tensor>,
    /// The aux-loss-free selection bias `[E]`, when the layer uses it.
    pub expert_bias: Option<&'a Tensor>,
    /// The layer's routing options.
    pub options: RoutingOptions,
    /// Training mode (which capacity factor applies).
    pub train: bool,
    /// Whether the pass records autograd (every rank must agree).
    pub needs_grad: bool,
    /// The dispatcher, which knows the whole batch ([`TokenDispatcher::count_batch`]).
    pub dispatcher: &'a dyn TokenDispatcher,
    /// The device the plan's tensors live on.
    pub device: Device,
}

/// A routing family: how scores become a dispatch plan.
pub trait RoutingPolicy: std::fmt::Debug + Send + Sync {
    /// Checks the options this family needs or ignores.
    ///
    /// # Errors
    /// [`crate::Error::Config`] naming the value.
    fn validate(&self, options: &RoutingOptions) -> Result<()>;

    /// Experts a token uses on average (parameter accounting: active parameters per token).
    fn active_experts(&self, options: &RoutingOptions) -> usize;

    /// The capacity factor a user gets when they set none (`None` = dropless).
    fn default_capacity_factor(&self) -> Option<f64> {
        None
    }

    /// Whether the family works with the batch split over expert-parallel ranks.
    ///
    /// # Errors
    /// [`crate::Error::Config`] saying why not.
    fn check_expert_parallel(&self, options: &RoutingOptions) -> Result<()>;

    /// The plan of this pass and the whole batch's counts (from the dispatcher).
    ///
    /// # Errors
    /// Shape errors of the scores; errors of the dispatcher.
    fn plan(&self, input: &RoutingInput) -> Result<(DispatchPlan, BatchCounts)>;
}
