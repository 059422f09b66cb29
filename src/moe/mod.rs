//! Mixture-of-experts parts.
//!
//! # Shape legend
//! `N` tokens (a `[B, T]` batch flattened), `D` model width, `F` expert hidden width, `E` experts,
//! `k` experts per token, `M` kept token→expert assignments, `C` expert capacity.
//!
//! # Data flow
//! [`Router::scores`] (f32 logits, jitter, softmax) → [`RoutingPolicy::select`] (a [`Selection`]:
//! [`select_top_k`] for token choice, with the optional aux-loss-free bias; the scores experts
//! pick from for expert choice) → [`TokenDispatcher::count_batch`] (the whole batch's
//! [`BatchCounts`]) → [`RoutingPolicy::plan`] (a [`DispatchPlan`]: capacity, priority, mask) →
//! [`TokenDispatcher::run`]: dispatch → [`Experts::forward`] (grouped matmul or per-expert loop on
//! `[E, D, F]` weights) → combine (gates in f32, deterministic) → plus shared experts.
//! [`MoeLayer`] ties them together and returns a per-layer [`MoeAux`].
//!
//! # Options and sources
//! | option | source |
//! |---|---|
//! | token choice top-1, raw-probability gate, capacity factor, jitter | Switch Transformer, arXiv 2101.03961 |
//! | top-2, first choices before second choices | GShard, arXiv 2006.16668 |
//! | top-k with renormalised gates | Mixtral, arXiv 2401.04088 |
//! | expert choice | Zhou et al., arXiv 2202.09368 |
//! | batch prioritized routing | V-MoE, arXiv 2106.05974 |
//! | router z-loss | ST-MoE, arXiv 2202.08906 |
//! | shared and fine-grained experts | DeepSeekMoE, arXiv 2401.06066 |
//! | aux-loss-free bias balancing | DeepSeek-V3, arXiv 2412.19437 |
//! | dropless grouped-matmul dispatch | MegaBlocks, arXiv 2211.15841 |

pub(crate) mod config;
pub(crate) mod counts;
pub(crate) mod dispatch;
pub(crate) mod experts;
pub mod kernel;
pub(crate) mod layer;
pub(crate) mod loss;
pub(crate) mod plan;
pub(crate) mod router;
pub(crate) mod routing;

pub use config::{Balancing, MoeConfig};
pub use counts::{BatchCounts, PartCounts};
pub use dispatch::{dispatcher_for, ExpertParallelDispatcher, SortDispatcher, TokenDispatcher};
pub use experts::Experts;
pub use kernel::{ExpertBackend, LOOP_MIN_ROWS_PER_EXPERT};
pub use layer::{MoeAux, MoeLayer};
pub use loss::{load_balancing_loss, router_entropy, router_z_loss};
pub use plan::{expert_capacity, DispatchPlan, GroupSizes};
pub use router::Router;
pub use routing::{
    plan_expert_choice, plan_token_choice, select_top_k, CapacityPriority, Choice, ExpertChoice, RouterKind,
    RouterScores, RoutingOptions, RoutingPolicy, Selection, TokenChoice,
};
