//! Differentiable row exchanges without custom autograd: record every exchange of a forward pass
//! and run the backward in segments.

use super::Collectives;
use crate::error::{Error, Result};
use std::sync::{Arc, Mutex};
use tch::{Kind, Tensor};

/// One recorded exchange: `sent` left this rank (still attached to this rank's graph) with
/// `send_rows[r]` rows for rank `r`; `received` (a fresh leaf) arrived with `recv_rows[r]` rows
/// from rank `r`.
#[derive(Debug)]
struct Exchange {
    sent: Tensor,
    received: Tensor,
    send_rows: Vec<usize>,
    recv_rows: Vec<usize>,
}

/// The exchanges of the current forward pass, in order, shared by every MoE layer of a model.
#[derive(Debug, Clone, Default)]
pub struct ExchangeTape {
    records: Arc<Mutex<Vec<Exchange>>>,
}

/// `loss.backward()` keeping the graph (tch's `backward` always frees it).
fn backward_keep_graph(loss: &Tensor) -> Result<()> {
    // SAFETY: `loss` is a valid tensor for the duration of the call; the error string, if any,
    // is owned by us and freed after copying.
    unsafe {
        torch_sys::at_backward(loss.as_ptr() as *mut torch_sys::C_tensor, 1, 0);
        let err = torch_sys::get_and_reset_last_err();
        if !err.is_null() {
            let message = std::ffi::CStr::from_ptr(err).to_string_lossy().into_owned();
            libc::free(err as *mut libc::c_void);
            return Err(Error::Torch(tch::TchError::Torch(message)));
        }
    }
    Ok(())
}

/// Sends `rows` (`[Σ send_rows, D]`) to the other ranks and returns what arrives
/// (`[Σ recv_rows, D]`, same dtype and device). Not differentiable.
pub(crate) fn transfer(
    comm: &dyn Collectives,
    rows: &Tensor,
    send_rows: &[usize],
    recv_rows: &[usize],
) -> Result<Tensor> {
    let d = rows.size().get(1).copied().unwrap_or(0);
    let data = Vec::<f32>::try_from(
        &rows.f_detach()?.f_to_kind(Kind::Float)?.f_to_device(tch::Device::Cpu)?.f_contiguous()?.f_flatten(0, -1)?,
    )?;
    let width = d as usize;
    let send: Vec<usize> = send_rows.iter().map(|r| r * width).collect();
    let recv: Vec<usize> = recv_rows.iter().map(|r| r * width).collect();
    let got = comm.all_to_all_f32(&data, &send, &recv)?;
    let n: usize = recv_rows.iter().sum();
    Ok(Tensor::from_slice(&got).f_view([n as i64, d])?.f_to_kind(rows.kind())?.f_to_device(rows.device())?)
}

impl ExchangeTape {
    /// An empty tape.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of recorded exchanges.
    pub fn len(&self) -> usize {
        self.records.lock().map_or(0, |r| r.len())
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every recorded exchange (e.g. after an evaluation pass with gradients).
    pub fn clear(&self) {
        if let Ok(mut r) = self.records.lock() {
            r.clear();
        }
    }

    /// Exchanges rows and, when `sent` takes part in autograd, records the exchange and returns a
    /// leaf that requires gradients.
    ///
    /// # Errors
    /// Transport errors.
    pub(crate) fn exchange(
        &self,
        comm: &dyn Collectives,
        sent: &Tensor,
        send_rows: &[usize],
        recv_rows: &[usize],
    ) -> Result<Tensor> {
        let received = transfer(comm, sent, send_rows, recv_rows)?;
        if !sent.requires_grad() {
            return Ok(received);
        }
        let received = received.set_requires_grad(true);
        let mut records = self.records.lock().map_err(|_| Error::Input("exchange tape poisoned".into()))?;
        records.push(Exchange {
            sent: sent.shallow_clone(),
            received: received.shallow_clone(),
            send_rows: send_rows.to_vec(),
            recv_rows: recv_rows.to_vec(),
        });
        Ok(received)
    }

    /// Backward of `loss` through the recorded exchanges: the ordinary backward first (keeping the
    /// graph), then, from the last exchange to the first, the gradient that reached each received
    /// leaf goes back to its sender (splits swapped), which continues with
    /// `(sent · grad).sum().backward()`. Gradients accumulate into the parameters' `.grad` as one
    /// backward over an unbroken graph would. Every rank must call this with its own loss; the
    /// tape is emptied.
    ///
    /// # Errors
    /// Transport errors; libtorch errors.
    pub fn backward(&self, comm: &dyn Collectives, loss: &Tensor) -> Result<()> {
        let records: Vec<Exchange> =
            std::mem::take(&mut *self.records.lock().map_err(|_| Error::Input("exchange tape poisoned".into()))?);
        if records.is_empty() {
            return Ok(loss.f_backward()?);
        }
        backward_keep_graph(loss)?;
        for record in records.iter().rev() {
            let grad = record.received.grad();
            let grad = if grad.defined() { grad } else { record.received.f_zeros_like()? };
            let back = transfer(comm, &grad, &record.recv_rows, &record.send_rows)?;
            if record.sent.numel() > 0 {
                backward_keep_graph(&record.sent.f_mul(&back.f_to_kind(record.sent.kind())?)?.f_sum(Kind::Float)?)?;
            }
        }
        Ok(())
    }
}
