//! Expansion of the embedding into `n` residual streams and their reduction before the final
//! norm (Hyper-Connections, arXiv 2409.19606 §2: the input is copied `n` times, the last hidden
//! matrix is summed row-wise). We average instead of summing: the final RMS norm makes the two
//! the same up to its ε, and with the mean a model at initialisation (every stream the plain
//! residual) gives exactly the plain model's logits.

use crate::error::{Error, Result};
use crate::shape::expect_shape;
use tch::Tensor;

/// `[B, T, D]` → `[B, T, n, D]`: `n` copies of the embedding.
///
/// # Errors
/// [`Error::Shape`] if `embedded` is not `[B, T, D]`; [`Error::Config`] for `n = 0`.
pub fn expand_streams(embedded: &Tensor, n: usize) -> Result<Tensor> {
    expect_shape(embedded, "embedding", "[B, T, D]", &[None, None, None])?;
    if n == 0 {
        return Err(Error::Config("residual streams (0) must be at least 1".into()));
    }
    let [b, t, d] = [embedded.size()[0], embedded.size()[1], embedded.size()[2]];
    Ok(embedded.f_unsqueeze(2)?.f_expand([b, t, n as i64, d], false)?.f_contiguous()?)
}

/// `[B, T, n, D]` → `[B, T, D]`: the mean of the streams.
///
/// # Errors
/// [`Error::Shape`] if `streams` is not `[B, T, n, D]`.
pub fn reduce_streams(streams: &Tensor) -> Result<Tensor> {
    expect_shape(streams, "residual streams", "[B, T, n, D]", &[None, None, None, None])?;
    Ok(streams.f_mean_dim([2i64].as_slice(), false, None)?)
}
