//! Routing policies: from the router's scores to a [`DispatchPlan`] — who goes to which expert,
//! with which gate, within which capacity — in three steps that read in a straight line:
//!
//! 1. [`RoutingPolicy::select`]: the router's scores → a [`Selection`] (token choice: each token's
//!    top-k experts and gates; expert choice: the scores every expert picks from);
//! 2. [`crate::moe::TokenDispatcher::count_batch`]: the whole batch's counts of that selection
//!    ([`BatchCounts`]: this pass's tokens in one process, every rank's with expert parallelism);
//! 3. [`RoutingPolicy::plan`]: selection and counts → the [`DispatchPlan`] (capacity, priority,
//!    mask), which the dispatcher then runs.
//!
//! [`RouterKind::policy`](crate::moe::RouterKind::policy) maps the configured family to its
//! policy; each family's selection and planning live in its own file.
//!
//! # Adding a routing family
//! Write one file here with a unit struct implementing [`RoutingPolicy`], declare it below, and
//! add one arm to [`crate::moe::RouterKind`] (with its serde name, which the `train` example's
//! `--router` flag and configs use) and to the `match` in `RouterKind::policy`; the compiler
//! points at that match. Validation, parameter accounting, the expert-parallel check and the
//! default capacity factor all come from the trait.

mod expert_choice;
mod token_choice;

pub use expert_choice::{plan_expert_choice, ExpertChoice};
pub use token_choice::{plan_token_choice, select_top_k, TokenChoice};

use crate::error::Result;
use crate::moe::counts::BatchCounts;
use crate::moe::plan::DispatchPlan;
use serde::{Deserialize, Serialize};
use tch::Tensor;

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

/// What a routing family selected for one pass's tokens, before capacity: the input of
/// [`crate::moe::TokenDispatcher::count_batch`] and of [`RoutingPolicy::plan`].
#[derive(Debug)]
pub struct Selection {
    /// Token rows `N` of this pass (real and masked).
    pub num_tokens: i64,
    /// Experts `E`.
    pub num_experts: i64,
    /// Token mask `[N]` bool (true = real); `None` = all real.
    pub valid: Option<Tensor>,
    /// Whether the pass records autograd (gradient mode on; every rank must agree).
    pub needs_grad: bool,
    /// What was chosen.
    pub choice: Choice,
}

/// Who chose what.
#[derive(Debug)]
pub enum Choice {
    /// Each token's top-k experts, best first.
    Tokens {
        /// Expert indices `[N, k]` i64.
        expert_index: Tensor,
        /// Gate weights `[N, k]` f32 (unbiased probabilities, renormalised when asked).
        gate: Tensor,
        /// Capacity priority `[N]` (higher first; batch prioritized routing), `None` = by position.
        priority: Option<Tensor>,
    },
    /// The experts choose: the probabilities `[N, E]` each expert ranks the tokens by.
    Experts {
        /// Router probabilities `[N, E]` f32.
        probs: Tensor,
    },
}

impl Selection {
    /// Token-choice expert indices `[N, k]` (`None` for expert choice).
    pub fn expert_index(&self) -> Option<&Tensor> {
        match &self.choice {
            Choice::Tokens { expert_index, .. } => Some(expert_index),
            Choice::Experts { .. } => None,
        }
    }
}

/// A routing family: how scores become a selection, and a selection a dispatch plan.
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

    /// The selection of this pass's tokens from the router's scores. `valid` is the token mask
    /// `[N]` bool; `expert_bias` the aux-loss-free selection bias `[E]`, when the layer has one.
    ///
    /// # Errors
    /// [`crate::Error::Shape`] for scores that do not fit the options.
    fn select(
        &self,
        scores: &RouterScores,
        valid: Option<&Tensor>,
        expert_bias: Option<&Tensor>,
        options: &RoutingOptions,
    ) -> Result<Selection>;

    /// The dispatch plan of this pass from its selection and the whole batch's counts, with the
    /// training or evaluation capacity factor.
    ///
    /// # Errors
    /// [`crate::Error::Config`] for a capacity the family cannot use; shape errors.
    fn plan(
        &self,
        selection: &Selection,
        counts: &BatchCounts,
        options: &RoutingOptions,
        train: bool,
    ) -> Result<DispatchPlan>;
}

crate::names::kebab_case_names!(RouterKind, "router");
crate::names::kebab_case_names!(CapacityPriority, "capacity priority");
