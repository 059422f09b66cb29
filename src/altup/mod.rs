//! Alternating Updates (Baykal et al., "Alternating Updates for Efficient Transformers",
//! NeurIPS 2023, arXiv 2301.13310), with Recycled-AltUp, Sequence-AltUp and Gemma 3n's
//! input-dependent coefficients.
//!
//! AltUp widens each token's representation to `K` blocks of the model width `D` (`K·D` in all)
//! while every transformer layer still runs at width `D`: per layer one *activated* block is
//! computed, and a cheap learned predictor/corrector updates all `K` blocks.
//!
//! # Shape legend
//! `K` blocks, `B` batch, `T` sequence length, `D` model width, `s` Sequence-AltUp stride. The
//! widened representation is `[K, B, T, D]`.
//!
//! # Data flow
//! embedding → [`AltUpWidening::widen`] (wide table split, Recycled replication, or Gemma
//! projections) → per layer [`AltUp::forward_t`] (predict, compute the activated block chosen by
//! [`BlockSelection`], correct) → [`AltUpWidening::collapse`] → `[B, T, D]`.
//! [`SequenceAltUp`] wraps a layer along the sequence instead (or as well).
//!
//! # Options and sources
//! | option | source |
//! |---|---|
//! | static predictor/corrector, alternating or same block, wide embedding | paper §3.1, Algorithm 1 |
//! | Recycled-AltUp | paper §3.2 |
//! | Sequence-AltUp | paper §3.3 (causal equations of our own, see [`SequenceAltUp`]) |
//! | input-dependent coefficients, compute on the prediction, projected widening | Gemma 3n, Hugging Face `Gemma3nTextAltUp` / `Gemma3nTextModel` |

pub(crate) mod config;
pub(crate) mod layer;
pub(crate) mod sequence;
pub(crate) mod widening;

pub use config::{
    AltUpConfig, BlockSelection, Coefficients, ComputeInput, OutputReduction, SequenceAltUpConfig, Widening,
};
pub use layer::{AltUp, AltUpCoefficients};
pub use sequence::{AnchorPlan, SequenceAltUp};
pub use widening::{split_blocks, AltUpWidening};
