//! Differentiable row exchanges without custom autograd, and a backward that walks every part of
//! the graph once: the forward graph is cut into segments, recorded on a tape, and the backward
//! runs the segments once each, from the last to the first (as pipeline stages do).
//!
//! # Why cuts
//! An exchange cuts the graph (the received rows are a fresh leaf): the gradient reaching that
//! leaf must travel back to the sending rank, which continues the backward from the rows it
//! sent. Without further cuts, each such continuation walks everything below the MoE layer down
//! to the embedding, because the residual stream connects it all: the backward would cost
//! (MoE layers × depth) and keep every activation alive until the end. So the model also cuts
//! at the input of every block and, inside an MoE block, at the FFN sublayer's residual input and
//! at the MoE input (whose gradient arrives in two parts: the router's first, the dispatched
//! rows' only after the experts' backward). Each cut replaces a tensor by a detached leaf that
//! requires gradients; a segment then reaches from its input leaves to the sources of later cuts.
//!
//! # The backward
//! [`ExchangeTape::backward`] runs the loss's backward, then visits the cuts in reverse order of
//! recording. The gradient accumulated in a cut's leaf is complete by then (every segment that
//! reads the leaf was recorded after it), so the segment below continues with
//! `(source · grad).sum().backward()`; for an exchange the gradient is first sent back with the
//! split sizes swapped. Each record is dropped as soon as its segment is done, which frees that
//! segment's graph: cost one backward, peak memory that of the activations.
//!
//! Small subgraphs that two segments share (the router's probabilities feed both the gates and
//! the auxiliary losses; an input-dependent AltUp prediction feeds both the layer and the
//! correction) are kept until their last walk (`keep_graph`); a cut never lets a walk cross a
//! block. [`ExchangeTape::strict`] frees every cut's graph as it is walked, so that a segment
//! reaching into another one's graph fails instead of silently costing more — the tests use it
//! to check that the model's cuts isolate its blocks.

use super::Collectives;
use crate::dtype::{accumulate_kind, Cast};
use crate::error::{Error, Result};
use crate::host;
use std::sync::{Arc, Mutex, MutexGuard};
use tch::Tensor;

/// One recorded cut.
#[derive(Debug)]
enum Cut {
    /// A local cut: `leaf` is `source` detached, with `requires_grad`.
    Local { source: Tensor, leaf: Tensor },
    /// An exchange: `sent` left this rank (still attached to this rank's graph) with
    /// `send_rows[r]` rows for rank `r`; `received` (a fresh leaf) arrived with `recv_rows[r]`
    /// rows from rank `r`.
    Exchange { sent: Tensor, received: Tensor, send_rows: Vec<usize>, recv_rows: Vec<usize> },
}

#[derive(Debug, Default)]
struct Records {
    cuts: Vec<Cut>,
    strict: bool,
}

/// The graph cuts and exchanges of the current forward pass, in order, shared by every layer of
/// a model (see the module docs). Cloning shares the tape.
#[derive(Debug, Clone, Default)]
pub struct ExchangeTape {
    records: Arc<Mutex<Records>>,
}

/// `loss.backward()`, keeping the graph when asked (tch's `backward` always frees it).
fn run_backward(loss: &Tensor, keep_graph: bool) -> Result<()> {
    // SAFETY: `loss` is a valid tensor for the duration of the call; the error string, if any,
    // is owned by us and freed after copying.
    unsafe {
        torch_sys::at_backward(loss.as_ptr() as *mut torch_sys::C_tensor, keep_graph as i32, 0);
        let err = torch_sys::get_and_reset_last_err();
        if !err.is_null() {
            let message = std::ffi::CStr::from_ptr(err).to_string_lossy().into_owned();
            libc::free(err as *mut libc::c_void);
            return Err(Error::Torch(tch::TchError::Torch(message)));
        }
    }
    Ok(())
}

/// Whether this thread records autograd graphs (not inside `tch::no_grad`).
pub(crate) fn grad_mode_enabled() -> bool {
    // SAFETY: reads the thread's grad mode by setting it and restoring the previous value.
    unsafe {
        let previous = torch_sys::at_grad_set_enabled(1);
        torch_sys::at_grad_set_enabled(previous);
        previous != 0
    }
}

/// Continues the backward below a cut: the gradient `grad` of `source` flows into `source`'s graph.
fn continue_backward(source: &Tensor, grad: &Tensor, keep_graph: bool) -> Result<()> {
    if source.numel() == 0 || !source.requires_grad() {
        return Ok(());
    }
    let seed = source.f_mul(&grad.like(source)?)?.f_sum(accumulate_kind(source))?;
    run_backward(&seed, keep_graph)
}

/// Sends `rows` (`[Σ send_rows, D]`) to the other ranks and returns what arrives
/// (`[Σ recv_rows, D]`, same dtype and device): one contiguous buffer of the rows' own dtype
/// (2 bytes per value for bf16). With one rank the rows are returned as they are (detached).
/// Not differentiable.
///
/// # Errors
/// [`Error::Shape`] if `rows` is not 2-D or does not hold `Σ send_rows` rows; transport errors.
pub(crate) fn transfer(
    comm: &dyn Collectives,
    rows: &Tensor,
    send_rows: &[usize],
    recv_rows: &[usize],
) -> Result<Tensor> {
    let size = rows.size();
    let sent: usize = send_rows.iter().sum();
    if size.len() != 2 || size[0] as usize != sent {
        return Err(Error::Shape(format!("exchanged rows must be [{sent}, D], got {size:?}")));
    }
    if comm.world_size() == 1 {
        if send_rows != recv_rows {
            return Err(Error::Input(format!("one rank sends {send_rows:?} rows but expects {recv_rows:?}")));
        }
        return Ok(rows.f_detach()?);
    }
    let (kind, device, d) = (rows.kind(), rows.device(), size[1]);
    let row_bytes = d as usize * kind.elt_size_in_bytes();
    let data = host::bytes(&rows.f_detach()?)?;
    let bytes = |r: &[usize]| -> Vec<usize> { r.iter().map(|n| n * row_bytes).collect() };
    let got = comm.all_to_all_bytes(&data, &bytes(send_rows), &bytes(recv_rows))?;
    let n: usize = recv_rows.iter().sum();
    Ok(Tensor::f_from_data_size(&got, &[n as i64, d], kind)?.f_to_device(device)?)
}

impl ExchangeTape {
    /// An empty tape.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty tape whose backward frees each cut's graph as it is walked: a segment that
    /// reaches into another segment's graph fails ("backward through the graph a second time")
    /// instead of walking it again. For checking that a model's cuts isolate its blocks; the
    /// default tape keeps small shared subgraphs until their last walk.
    pub fn strict() -> Self {
        let tape = Self::default();
        if let Ok(mut r) = tape.records.lock() {
            r.strict = true;
        }
        tape
    }

    /// Whether this tape frees each cut's graph as it is walked ([`ExchangeTape::strict`]).
    pub fn is_strict(&self) -> bool {
        self.records.lock().is_ok_and(|r| r.strict)
    }

    fn lock(&self) -> Result<MutexGuard<'_, Records>> {
        self.records.lock().map_err(|_| Error::Input("exchange tape poisoned by a panicking thread".into()))
    }

    /// Number of recorded cuts and exchanges.
    pub fn len(&self) -> usize {
        self.records.lock().map_or(0, |r| r.cuts.len())
    }

    /// Number of recorded exchanges.
    pub fn exchanges(&self) -> usize {
        self.records.lock().map_or(0, |r| r.cuts.iter().filter(|c| matches!(c, Cut::Exchange { .. })).count())
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every record (e.g. after a forward pass with gradients that is not followed by
    /// [`ExchangeTape::backward`]).
    pub fn clear(&self) {
        if let Ok(mut r) = self.records.lock() {
            r.cuts.clear();
        }
    }

    /// Cuts the graph at `x`: returns a detached leaf that requires gradients (sharing `x`'s
    /// storage) and records the cut. A tensor that needs no gradient (a mask, token ids, rotary
    /// tables, anything under `no_grad`) is returned as it is and not recorded.
    ///
    /// # Shapes
    /// Any → the same.
    ///
    /// # Errors
    /// [`Error::Input`] if the tape is poisoned; [`Error::Torch`] on libtorch failure.
    pub fn cut(&self, x: &Tensor) -> Result<Tensor> {
        if !x.requires_grad() {
            return Ok(x.shallow_clone());
        }
        let leaf = x.f_detach()?.set_requires_grad(true);
        self.lock()?.cuts.push(Cut::Local { source: x.shallow_clone(), leaf: leaf.shallow_clone() });
        Ok(leaf)
    }

    /// Exchanges rows ([`transfer`]) and, when `needs_grad` (which every rank must agree on),
    /// records the exchange and returns a leaf that requires gradients.
    ///
    /// # Errors
    /// Transport errors.
    pub(crate) fn exchange(
        &self,
        comm: &dyn Collectives,
        sent: &Tensor,
        send_rows: &[usize],
        recv_rows: &[usize],
        needs_grad: bool,
    ) -> Result<Tensor> {
        let received = transfer(comm, sent, send_rows, recv_rows)?;
        if !needs_grad {
            return Ok(received);
        }
        let received = received.set_requires_grad(true);
        self.lock()?.cuts.push(Cut::Exchange {
            sent: sent.shallow_clone(),
            received: received.shallow_clone(),
            send_rows: send_rows.to_vec(),
            recv_rows: recv_rows.to_vec(),
        });
        Ok(received)
    }

    /// Backward of `loss` through the recorded cuts and exchanges (module docs): the loss's own
    /// backward, then every cut once, from the last recorded to the first, each continuing with
    /// the gradient its leaf received (exchanges: after sending it back to the rank the rows
    /// came from). Gradients accumulate into the parameters' `.grad` exactly as one backward
    /// over an unbroken graph would — a parameter used in several segments gets the sum. Every
    /// rank must call this with its own loss; the tape is emptied.
    ///
    /// # Errors
    /// Transport errors; libtorch errors (with a strict tape, a segment that reaches into
    /// another one's graph).
    pub fn backward(&self, comm: &dyn Collectives, loss: &Tensor) -> Result<()> {
        let (mut cuts, strict) = {
            let mut records = self.lock()?;
            (std::mem::take(&mut records.cuts), records.strict)
        };
        if cuts.is_empty() {
            return Ok(loss.f_backward()?);
        }
        // The loss's graph shares the routers with the gates (auxiliary losses): keep it.
        run_backward(loss, true)?;
        while let Some(cut) = cuts.pop() {
            match &cut {
                Cut::Local { source, leaf } => {
                    let grad = leaf.grad();
                    if grad.defined() {
                        continue_backward(source, &grad, !strict)?;
                    }
                }
                Cut::Exchange { sent, received, send_rows, recv_rows } => {
                    let grad = received.grad();
                    let grad = if grad.defined() { grad } else { received.f_zeros_like()? };
                    let back = transfer(comm, &grad, recv_rows, send_rows)?;
                    continue_backward(sent, &back, !strict)?;
                }
            }
            drop(cut); // frees this segment's graph
        }
        Ok(())
    }
}

/// Where a model may cut its forward graph into backward segments: a no-op in one process, the
/// shared [`ExchangeTape`] with expert parallelism. Layers call [`GraphCuts::cut`] at their
/// segment boundaries and read the same either way.
#[derive(Debug, Clone, Default)]
pub struct GraphCuts {
    tape: Option<ExchangeTape>,
}

impl GraphCuts {
    /// No cuts (one process, or a model without exchanges).
    pub fn none() -> Self {
        Self::default()
    }

    /// Cuts recorded on `tape`.
    pub fn on(tape: &ExchangeTape) -> Self {
        Self { tape: Some(tape.clone()) }
    }

    /// Whether cuts are recorded.
    pub fn is_active(&self) -> bool {
        self.tape.is_some()
    }

    /// [`ExchangeTape::cut`] when active; `x` itself otherwise.
    ///
    /// # Errors
    /// As [`ExchangeTape::cut`].
    pub fn cut(&self, x: &Tensor) -> Result<Tensor> {
        match &self.tape {
            Some(tape) => tape.cut(x),
            None => Ok(x.shallow_clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel::SingleProcess;
    use tch::{Device, Kind};

    fn leaf(values: &[f64]) -> Tensor {
        Tensor::from_slice(values).set_requires_grad(true)
    }

    /// f(w, x) = Σ (w·x)³ computed with a cut in the middle, against one unbroken backward.
    #[test]
    fn a_parameter_used_on_both_sides_of_a_cut_gets_the_sum_of_both_gradients() {
        for strict in [false, true] {
            let (w1, x1) = (leaf(&[0.5, -1.5, 2.0]), leaf(&[1.0, 2.0, -0.5]));
            let y = (&w1 * &x1 * &w1).pow_tensor_scalar(3).sum(Kind::Double);
            y.backward();
            let (w2, x2) = (leaf(&[0.5, -1.5, 2.0]), leaf(&[1.0, 2.0, -0.5]));
            let tape = if strict { ExchangeTape::strict() } else { ExchangeTape::new() };
            let h = tape.cut(&(&w2 * &x2)).unwrap(); // segment 0: w·x
            let y = (&h * &w2).pow_tensor_scalar(3).sum(Kind::Double); // segment 1 uses w again
            assert_eq!(tape.len(), 1);
            tape.backward(&SingleProcess, &y).unwrap();
            assert!(tape.is_empty());
            assert!(w1.grad().allclose(&w2.grad(), 1e-12, 1e-12, false), "strict {strict}");
            assert!(x1.grad().allclose(&x2.grad(), 1e-12, 1e-12, false), "strict {strict}");
        }
    }

    #[test]
    fn tensors_without_gradients_are_not_cut() {
        let tape = ExchangeTape::new();
        let mask = Tensor::from_slice(&[true, false]);
        let positions = Tensor::arange(4, (Kind::Int64, Device::Cpu));
        let x = Tensor::from_slice(&[1.0f32, 2.0]);
        for t in [&mask, &positions, &x] {
            let out = tape.cut(t).unwrap();
            assert!(!out.requires_grad());
            assert_eq!(out.data_ptr(), t.data_ptr(), "passed through, not copied");
        }
        let w = leaf(&[1.0]);
        tch::no_grad(|| assert!(!tape.cut(&(&w * 2.0)).unwrap().requires_grad()));
        assert!(tape.is_empty());
        let attached = GraphCuts::none().cut(&(&w * 2.0)).unwrap();
        assert!(attached.requires_grad() && !attached.is_leaf(), "no tape: the graph stays whole");
        let cut = GraphCuts::on(&tape).cut(&(&w * 2.0)).unwrap();
        assert!(cut.requires_grad() && cut.is_leaf());
        assert_eq!(tape.len(), 1);
    }

    /// A chain of cut segments, each walked once with a strict tape, equals the unbroken graph.
    #[test]
    fn chained_segments_are_walked_once_and_in_order() {
        let (w0, x0) = (leaf(&[0.3, -0.2, 0.9, 1.1]), leaf(&[1.0, 2.0, 3.0, 4.0]));
        let mut h = x0.shallow_clone();
        for _ in 0..5 {
            h = (&h * &w0).tanh() + &h;
        }
        h.sum(Kind::Double).backward();
        let (gw, gx) = (w0.grad(), x0.grad());
        let (w, x) = (leaf(&[0.3, -0.2, 0.9, 1.1]), leaf(&[1.0, 2.0, 3.0, 4.0]));
        let tape = ExchangeTape::strict();
        let mut h = x.shallow_clone();
        for _ in 0..5 {
            let input = tape.cut(&h).unwrap();
            h = (&input * &w).tanh() + &input;
        }
        tape.backward(&SingleProcess, &h.sum(Kind::Double)).unwrap();
        assert!(w.grad().allclose(&gw, 1e-12, 1e-12, false));
        assert!(x.grad().allclose(&gx, 1e-12, 1e-12, false));
    }
}
