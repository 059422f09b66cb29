//! How a residual-stream method widens the embedding into its stream and collapses the stream
//! before the final norm.
//!
//! Hyper-Connections and mHC copy the embedding into each of the `n` streams (arXiv 2409.19606
//! §2) and the paper sums the streams at the end; we average them: the final RMS norm makes the
//! two the same up to its ε, and with the mean a model at initialisation (every stream the plain
//! residual) gives exactly the plain model's logits. LAuReL with previous activations puts the
//! embedding in slot 0 (the residual) and zeros in the slots of the sublayers before the first,
//! and keeps slot 0 at the end.

use crate::error::{Error, Result};
use crate::residual::config::ResidualConfig;
use crate::shape::expect_shape;
use tch::Tensor;

/// The stream of `config` for the embedding: `[B, T, D]` → `[B, T, n, D]` for a method with `n`
/// slots ([`ResidualConfig::streams`]), else the embedding itself.
///
/// # Errors
/// [`Error::Shape`] if `embedded` is not `[B, T, D]`; [`Error::Config`] for `n = 0`.
pub fn widen_stream(config: &ResidualConfig, embedded: &Tensor) -> Result<Tensor> {
    let Some(n) = config.streams() else { return Ok(embedded.shallow_clone()) };
    expect_shape(embedded, "embedding", "[B, T, D]", &[None, None, None])?;
    if n == 0 {
        return Err(Error::Config("residual streams (0) must be at least 1".into()));
    }
    let [b, t, d] = [embedded.size()[0], embedded.size()[1], embedded.size()[2]];
    let copies = embedded.f_unsqueeze(2)?.f_expand([b, t, n as i64, d], false)?;
    Ok(match config {
        ResidualConfig::Laurel { .. } => {
            Tensor::f_cat(&[embedded.f_unsqueeze(2)?, copies.f_narrow(2, 1, n as i64 - 1)?.f_zeros_like()?], 2)?
        }
        _ => copies.f_contiguous()?,
    })
}

/// The stream of `config` collapsed to `[B, T, D]`: the mean of the streams (Hyper-Connections,
/// mHC), slot 0 (LAuReL with previous activations), or the stream itself.
///
/// # Errors
/// [`Error::Shape`] if the stream is not `[B, T, n, D]` for a method with `n` slots.
pub fn collapse_stream(config: &ResidualConfig, stream: &Tensor) -> Result<Tensor> {
    let Some(n) = config.streams() else { return Ok(stream.shallow_clone()) };
    expect_shape(stream, "residual streams", "[B, T, n, D]", &[None, None, Some(n as i64), None])?;
    Ok(match config {
        ResidualConfig::Laurel { .. } => stream.f_select(2, 0)?,
        _ => stream.f_mean_dim([2i64].as_slice(), false, None)?,
    })
}
