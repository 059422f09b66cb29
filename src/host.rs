//! Reads of tensor values by the host — the one place the library copies values from a tensor
//! to Rust.
//!
//! On a GPU each such read is a blocking copy that waits for every queued kernel: a training
//! step that reads often leaves the GPU idle between reads. So every read goes through the
//! functions here, which count them ([`host_reads`]), and the training step is built not to read
//! at all on static shapes: its losses, gradient norm, statistics and non-finite guard stay on the
//! device and come back every `log_every` steps in one read
//! ([`crate::train::Trainer::read_stats`]). MoE layers whose row counts depend on the routing (a
//! capacity, a token mask, expert choice) or that run the per-expert loop read their group sizes
//! once per layer ([`crate::moe::GroupSizes`]). A test fails if a direct read appears anywhere
//! else in `src/`.

use crate::dtype::Cast;
use crate::error::Result;
use std::cell::Cell;
use tch::{Device, Kind, Tensor};

thread_local! {
    static READS: Cell<u64> = const { Cell::new(0) };
}

/// Number of host reads of tensor values made by the library on this thread so far (each copy
/// of a tensor's values to the host counts once, whatever its size). Compare two calls to count
/// the reads of the code in between; other threads' reads are not included.
pub fn host_reads() -> u64 {
    READS.with(Cell::get)
}

fn count() {
    READS.with(|r| r.set(r.get() + 1));
}

/// `t` on the host (one read; a CPU tensor is returned as it is, but still counted: on a GPU the
/// same call would wait for the device).
///
/// # Errors
/// [`crate::Error::Torch`] on libtorch failure.
pub(crate) fn to_cpu(t: &Tensor) -> Result<Tensor> {
    count();
    Ok(t.f_to_device(Device::Cpu)?)
}

/// All values of `t`, flattened, as i64 (one read).
///
/// # Errors
/// [`crate::Error::Torch`] on libtorch failure.
pub(crate) fn i64s(t: &Tensor) -> Result<Vec<i64>> {
    count();
    Ok(Vec::<i64>::try_from(&t.f_to_device(Device::Cpu)?.cast(Kind::Int64)?.f_reshape([-1])?)?)
}

/// All values of `t`, flattened, as f64 (one read).
///
/// # Errors
/// [`crate::Error::Torch`] on libtorch failure.
pub(crate) fn f64s(t: &Tensor) -> Result<Vec<f64>> {
    count();
    Ok(Vec::<f64>::try_from(&t.f_to_device(Device::Cpu)?.cast(Kind::Double)?.f_reshape([-1])?)?)
}

/// All values of `t`, flattened, as f32 (one read).
///
/// # Errors
/// [`crate::Error::Torch`] on libtorch failure.
pub(crate) fn f32s(t: &Tensor) -> Result<Vec<f32>> {
    count();
    Ok(Vec::<f32>::try_from(&t.f_to_device(Device::Cpu)?.cast(Kind::Float)?.f_reshape([-1])?)?)
}

/// The value of a one-element tensor as f64 (one read).
///
/// # Errors
/// [`crate::Error::Torch`] if `t` does not hold exactly one value.
pub(crate) fn f64_scalar(t: &Tensor) -> Result<f64> {
    count();
    Ok(t.cast(Kind::Double)?.f_reshape([-1])?.f_double_value(&[0])?)
}

/// The value of a one-element tensor as i64 (one read).
///
/// # Errors
/// [`crate::Error::Torch`] if `t` does not hold exactly one value.
pub(crate) fn i64_scalar(t: &Tensor) -> Result<i64> {
    count();
    Ok(t.cast(Kind::Int64)?.f_reshape([-1])?.f_int64_value(&[0])?)
}

/// The raw bytes of `t` in its own dtype, row-major (one read).
///
/// # Errors
/// [`crate::Error::Torch`] on libtorch failure.
pub(crate) fn bytes(t: &Tensor) -> Result<Vec<u8>> {
    count();
    let host = t.f_to_device(Device::Cpu)?.f_contiguous()?;
    let mut data = vec![0u8; host.numel() * host.kind().elt_size_in_bytes()];
    host.f_copy_data_u8(&mut data, host.numel())?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_read_counts_once_on_its_thread() {
        let t = Tensor::from_slice(&[1.5f32, -2.0, 3.0]);
        let before = host_reads();
        assert_eq!(f64s(&t).unwrap(), vec![1.5, -2.0, 3.0]);
        assert_eq!(i64s(&t.view([3, 1])).unwrap(), vec![1, -2, 3]);
        assert_eq!(f64_scalar(&t.sum(Kind::Float)).unwrap(), 2.5);
        assert_eq!(bytes(&Tensor::from_slice(&[258i16])).unwrap(), 258i16.to_ne_bytes());
        assert_eq!(host_reads() - before, 4);
        std::thread::spawn(|| assert_eq!(host_reads(), 0, "another thread counts its own")).join().unwrap();
    }
}
