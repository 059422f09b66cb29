//! The transport seam: the collective operations several ranks need, and the one-rank identity.

use crate::dtype::Cast;
use crate::error::{Error, Result};
use crate::host;
use tch::Tensor;

/// The collective operations expert parallelism needs. All ranks must call the same operations
/// in the same order.
pub trait Collectives: std::fmt::Debug + Send + Sync {
    /// This process's rank in `0..world_size`.
    fn rank(&self) -> usize;

    /// Number of ranks `R`.
    fn world_size(&self) -> usize;

    /// Fixed-size all-to-all: `send` holds `R` equal chunks, chunk `r` goes to rank `r`; returns
    /// the `R` chunks received, chunk `r` from rank `r`.
    ///
    /// # Errors
    /// [`Error::Input`] if `send` does not split into `R` chunks; transport errors.
    fn all_to_all_i64(&self, send: &[i64]) -> Result<Vec<i64>>;

    /// Variable all-to-all of raw bytes (token rows in their own dtype): `send_counts[r]` bytes
    /// go to rank `r` (in order), `recv_counts[r]` bytes arrive from rank `r`.
    ///
    /// # Errors
    /// [`Error::Input`] for inconsistent counts; transport errors.
    fn all_to_all_bytes(&self, send: &[u8], send_counts: &[usize], recv_counts: &[usize]) -> Result<Vec<u8>>;

    /// All-gather: every rank contributes `send` (same length everywhere); returns the
    /// concatenation over ranks in rank order.
    ///
    /// # Errors
    /// Transport errors.
    fn all_gather_i64(&self, send: &[i64]) -> Result<Vec<i64>>;

    /// All-gather of f32 values of equal length.
    ///
    /// # Errors
    /// Transport errors.
    fn all_gather_f32(&self, send: &[f32]) -> Result<Vec<f32>>;

    /// Element-wise sum over ranks, in place.
    ///
    /// # Errors
    /// Transport errors.
    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()>;

    /// Element-wise sum over ranks, in place.
    ///
    /// # Errors
    /// Transport errors.
    fn all_reduce_sum_f32(&self, values: &mut [f32]) -> Result<()>;
}

/// One process, one rank: every collective is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleProcess;

impl Collectives for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_to_all_i64(&self, send: &[i64]) -> Result<Vec<i64>> {
        Ok(send.to_vec())
    }
    fn all_to_all_bytes(&self, send: &[u8], send_counts: &[usize], recv_counts: &[usize]) -> Result<Vec<u8>> {
        if send_counts != recv_counts || send_counts.iter().sum::<usize>() != send.len() {
            return Err(Error::Input(format!("inconsistent counts {send_counts:?} / {recv_counts:?}")));
        }
        Ok(send.to_vec())
    }
    fn all_gather_i64(&self, send: &[i64]) -> Result<Vec<i64>> {
        Ok(send.to_vec())
    }
    fn all_gather_f32(&self, send: &[f32]) -> Result<Vec<f32>> {
        Ok(send.to_vec())
    }
    fn all_reduce_sum_f64(&self, _values: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f32(&self, _values: &mut [f32]) -> Result<()> {
        Ok(())
    }
}

/// Element-wise sum of a tensor over ranks (not differentiable; for statistics and gradients).
///
/// # Errors
/// Transport errors; [`Error::Torch`] on conversion errors.
pub fn all_reduce_tensor(comm: &dyn Collectives, t: &Tensor) -> Result<Tensor> {
    if comm.world_size() == 1 {
        return Ok(t.shallow_clone());
    }
    let size = t.size();
    let device = t.device();
    let kind = t.kind();
    let mut values = host::f64s(t)?;
    comm.all_reduce_sum_f64(&mut values)?;
    Ok(Tensor::from_slice(&values).f_view(size.as_slice())?.cast(kind)?.f_to_device(device)?)
}

/// Concatenates a tensor over ranks along dimension 0 (every rank must pass the same shape).
///
/// # Errors
/// Transport errors; [`Error::Torch`] on conversion errors.
pub fn all_gather_tensor(comm: &dyn Collectives, t: &Tensor) -> Result<Tensor> {
    if comm.world_size() == 1 {
        return Ok(t.shallow_clone());
    }
    let mut size = t.size();
    let (device, kind) = (t.device(), t.kind());
    let values = host::f32s(t)?;
    let gathered = comm.all_gather_f32(&values)?;
    size[0] *= comm.world_size() as i64;
    Ok(Tensor::from_slice(&gathered).f_view(size.as_slice())?.cast(kind)?.f_to_device(device)?)
}
