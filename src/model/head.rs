//! The output head: hidden states to next-token logits, through its own projection or through
//! the (tied) embedding table, always in f32 (f64 for an f64 model).

use crate::dtype::Cast;
use crate::error::Result;
use crate::nn::{Embedding, Linear, VarBuilder};
use tch::Tensor;

/// Projection from width `D` to the vocabulary `V`.
///
/// Parameters: `head.weight` `[V, D]` unless tied to the embedding (`embed.weight`, shared).
#[derive(Debug)]
pub enum OutputHead {
    /// Its own projection.
    Separate(Linear),
    /// The embedding table, `logits = h · Eᵀ` (Press & Wolf 2017).
    Tied(Embedding),
}

impl OutputHead {
    /// The head of a model of width `d_model` and `vocab_size` ids: tied to `embedding` when
    /// `tie` (sharing its table), otherwise a new `<path>.weight` (the builder is the head's own
    /// path, `head` in a model).
    ///
    /// # Errors
    /// [`crate::Error::Torch`] if allocation fails.
    pub fn new<'a>(
        vb: impl Into<VarBuilder<'a>>,
        d_model: usize,
        vocab_size: usize,
        tie: bool,
        embedding: &Embedding,
    ) -> Result<Self> {
        let vb = vb.into();
        Ok(if tie {
            OutputHead::Tied(embedding.share())
        } else {
            OutputHead::Separate(Linear::new(&vb, d_model as i64, vocab_size as i64, vb.init().std)?)
        })
    }

    /// Next-token logits.
    ///
    /// # Shapes
    /// `hidden`: `[B, T, D]` (the final-normed stack output, f32) → `[B, T, V]` in f32 (f64 for
    /// f64 hidden states).
    ///
    /// # Errors
    /// [`crate::Error::Shape`] for a width other than `D`.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let logits = match self {
            OutputHead::Separate(head) => head.forward(hidden)?,
            OutputHead::Tied(embedding) => hidden.f_linear::<Tensor>(&embedding.weight.like(hidden)?, None)?,
        };
        logits.accumulated()
    }
}
