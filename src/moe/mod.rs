//! Mixture-of-experts parts.
//!
//! # Shape legend
//! `N` tokens (a `[B, T]` batch flattened), `D` model width, `F` expert hidden width, `E` experts,
//! `k` experts per token, `M` kept token→expert assignments (`M ≤ k·N`), `C` expert capacity.
//!
//! # Data flow
//! [`Router::route`] (f32 logits, softmax, top-k) → [`TokenDispatcher::dispatch`] (stable sort by
//! expert, capacity) → [`Experts::forward`] (grouped matmul or per-expert loop on `[E, D, F]`
//! weights) → [`TokenDispatcher::combine`] (gate scaling in f32, deterministic sum over `k`).
//! [`MoeLayer`] ties them together and returns a per-layer [`MoeAux`].
//!
//! # Sources
//! Switch Transformer (Fedus et al. 2021, arXiv 2101.03961), GShard (Lepikhin et al. 2020,
//! arXiv 2006.16668), ST-MoE (Zoph et al. 2022, arXiv 2202.08906).

pub mod dispatch;
pub mod experts;
pub mod layer;
pub mod loss;
pub mod router;

pub use dispatch::{expert_capacity, DispatchPlan, SortDispatcher, TokenDispatcher};
pub use experts::{ExpertBackend, Experts};
pub use layer::{MoeAux, MoeConfig, MoeLayer};
pub use loss::{load_balancing_loss, router_entropy, router_z_loss};
pub use router::{Router, Routing};
