//! Alternating Updates (Baykal et al., "Alternating Updates for Efficient Transformers",
//! NeurIPS 2023, arXiv 2301.13310).
//!
//! AltUp widens each token's representation to `K` blocks of the model width `D` (`K·D` in all)
//! while every transformer layer still runs at width `D`: per layer one *activated* block is
//! computed, and a cheap learned predictor/corrector updates all `K` blocks.
//!
//! # Shape legend
//! `K` blocks, `B` batch, `T` sequence length, `D` model width. The widened representation is
//! `[K, B, T, D]`.
//!
//! # Data flow
//! `K·D`-wide embedding → [`split_blocks`] → per layer [`AltUp::forward_t`] (predict, compute the
//! activated block chosen by [`BlockSelection`], correct) → [`Collapse`] to `[B, T, D]`.

pub mod collapse;
pub mod config;
pub mod layer;

pub use collapse::{split_blocks, Collapse};
pub use config::{AltUpConfig, BlockSelection, OutputReduction};
pub use layer::AltUp;
