//! The seam between a block's sublayers and the residual stream.

use crate::dtype::Cast;
use crate::error::Result;
use tch::Tensor;

/// A sublayer's function: its input `[B, T, D]` (already read from the stream) → its output
/// `[B, T, D]` (normalisation included: pre-norm sublayers norm their own input).
pub type Sublayer<'s> = dyn FnMut(&Tensor) -> Result<Tensor> + 's;

/// How one sublayer (attention, cross-attention, FFN/MoE of one block) reads its input from the
/// residual stream and writes its output back.
///
/// The stream is `[B, T, D]` for the plain residual and `[B, T, n, D]` for an `n`-stream method;
/// a connection returns the stream after the sublayer, in the stream's dtype (a lower-precision
/// sublayer output is converted up before it is added, as [`residual_add`] does).
pub trait SublayerConnection: std::fmt::Debug + Send {
    /// Runs `sublayer` on what this connection reads from `stream` and returns the new stream.
    ///
    /// # Errors
    /// The sublayer's errors; [`crate::Error::Torch`] on a shape mismatch.
    fn apply(&self, stream: &Tensor, sublayer: &mut Sublayer) -> Result<Tensor>;
}

/// `residual + update` in the residual's dtype: a lower-precision update (a bf16 sublayer's
/// output) is converted up before the addition, so the residual is never rounded to the
/// update's precision.
///
/// # Shapes
/// `residual`, `update`: the same shape → that shape, in `residual`'s dtype.
///
/// # Errors
/// [`crate::Error::Torch`] on a shape mismatch.
pub fn residual_add(residual: &Tensor, update: &Tensor) -> Result<Tensor> {
    Ok(residual.f_add(&update.like(residual)?)?)
}

/// The pre-norm residual: `x + f(x)` (the sublayer norms its own input).
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainResidual;

impl SublayerConnection for PlainResidual {
    fn apply(&self, stream: &Tensor, sublayer: &mut Sublayer) -> Result<Tensor> {
        residual_add(stream, &sublayer(stream)?)
    }
}
