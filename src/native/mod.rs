//! The libtorch calls that tch 0.26 does not bind, reached through a small C++ shim
//! (`src/native/shim.cpp`, compiled by build.rs against the headers of the libtorch that
//! torch-sys links): the fused AdamW kernel (`at::_fused_adamw_`), multi-tensor (`_foreach_*`)
//! norm, scaling and zeroing, the determinism switch, and a counter of ATen operations
//! (libtorch's `RecordFunction` callbacks), and fused CPU kernels for RMSNorm and the rotary
//! embedding ([`fused`]). Every function returns libtorch's error as
//! [`crate::Error::Torch`] instead of letting a C++ exception cross into Rust.
//!
//! Source: PyTorch's `torch/optim/adamw.py` (`_fused_adamw`) and `torch/nn/utils/clip_grad.py`
//! (`_clip_grads_with_norm_`, foreach path) call the same operators.

pub(crate) mod cuda;
pub(crate) mod fused;

use crate::error::{Error, Result};
use std::ffi::{c_char, c_int, CStr};
use tch::{Kind, Tensor};
use torch_sys::C_tensor;

mod ffi {
    use super::*;
    extern "C" {
        pub fn amoe_free_error(error: *mut c_char);
        pub fn amoe_set_deterministic(enabled: bool);
        pub fn amoe_is_deterministic() -> bool;
        pub fn amoe_fused_adamw(
            params: *const *const C_tensor,
            grads: *const *const C_tensor,
            exp_avgs: *const *const C_tensor,
            exp_avg_sqs: *const *const C_tensor,
            n: usize,
            step: *const C_tensor,
            lr: *const C_tensor,
            beta1: f64,
            beta2: f64,
            weight_decay: f64,
            eps: f64,
            found_inf: *const C_tensor,
        ) -> *mut c_char;
        pub fn amoe_foreach_norm(
            tensors: *const *const C_tensor,
            n: usize,
            dtype: c_int,
            out: *mut *mut C_tensor,
        ) -> *mut c_char;
        pub fn amoe_foreach_mul_(tensors: *const *const C_tensor, n: usize, scale: *const C_tensor) -> *mut c_char;
        pub fn amoe_foreach_zero_(tensors: *const *const C_tensor, n: usize) -> *mut c_char;
        pub fn amoe_op_counter_start(timing: bool) -> *mut c_char;
        pub fn amoe_op_counter_stop() -> *mut c_char;
        pub fn amoe_op_counts(top_level: *mut i64, all: *mut i64);
        pub fn amoe_op_times() -> *mut c_char;
    }
}

/// Turns the shim's error message (null: success) into a `Result`, freeing the message.
fn check(error: *mut c_char) -> Result<()> {
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null result is a NUL-terminated string allocated by the shim, freed once here.
    let message = unsafe { CStr::from_ptr(error) }.to_string_lossy().into_owned();
    unsafe { ffi::amoe_free_error(error) };
    Err(Error::Torch(tch::TchError::Torch(message)))
}

/// The raw handles of `tensors` (valid while `tensors` lives).
fn handles<T: std::borrow::Borrow<Tensor>>(tensors: &[T]) -> Vec<*const C_tensor> {
    tensors.iter().map(|t| t.borrow().as_ptr()).collect()
}

/// `c10::ScalarType` codes of the dtypes the shim is asked for.
fn scalar_type(kind: Kind) -> c_int {
    match kind {
        Kind::Float => 6,
        Kind::Double => 7,
        other => unreachable!("no norm dtype {other:?} is requested"),
    }
}

/// Switches libtorch's deterministic-algorithms flag (`at::globalContext()`).
pub(crate) fn set_deterministic(enabled: bool) {
    // SAFETY: a call without pointers to a setter that does not throw.
    unsafe { ffi::amoe_set_deterministic(enabled) }
}

/// libtorch's deterministic-algorithms flag.
pub(crate) fn is_deterministic() -> bool {
    // SAFETY: a call without pointers to a getter that does not throw.
    unsafe { ffi::amoe_is_deterministic() }
}

/// AdamW's hyper-parameters besides the learning rate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamWCoefficients {
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    pub eps: f64,
}

/// The tensors of one fused AdamW call: parameters with their gradients and moments (one
/// device and dtype), equal in number by construction.
#[derive(Debug, Default)]
pub(crate) struct AdamWGroup {
    params: Vec<Tensor>,
    grads: Vec<Tensor>,
    exp_avgs: Vec<Tensor>,
    exp_avg_sqs: Vec<Tensor>,
}

impl AdamWGroup {
    /// Adds a parameter with its gradient and moments.
    pub(crate) fn push(&mut self, param: &Tensor, grad: Tensor, exp_avg: &Tensor, exp_avg_sq: &Tensor) {
        self.params.push(param.shallow_clone());
        self.grads.push(grad);
        self.exp_avgs.push(exp_avg.shallow_clone());
        self.exp_avg_sqs.push(exp_avg_sq.shallow_clone());
    }

    /// One AdamW step of the group with libtorch's fused kernel: `step` is the scalar f32 step
    /// count, advanced by the caller *before* the call, `lr` the scalar f32 learning rate on the
    /// device; when `found_inf` (scalar f32) holds 1, nothing changes.
    pub(crate) fn step(
        &self,
        step: &Tensor,
        lr: &Tensor,
        c: AdamWCoefficients,
        found_inf: Option<&Tensor>,
    ) -> Result<()> {
        let n = self.params.len();
        if n == 0 {
            return Ok(());
        }
        let (p, g) = (handles(&self.params), handles(&self.grads));
        let (m, v) = (handles(&self.exp_avgs), handles(&self.exp_avg_sqs));
        let found_inf = found_inf.map_or(std::ptr::null(), Tensor::as_ptr);
        // SAFETY: every handle belongs to a tensor borrowed for the duration of the call.
        check(unsafe {
            ffi::amoe_fused_adamw(
                p.as_ptr(),
                g.as_ptr(),
                m.as_ptr(),
                v.as_ptr(),
                n,
                step.as_ptr(),
                lr.as_ptr(),
                c.beta1,
                c.beta2,
                c.weight_decay,
                c.eps,
                found_inf,
            )
        })
    }
}

/// The L2 norm of each tensor, computed in `dtype` (`None`: each tensor's own), as one `[n]`
/// tensor (`_foreach_norm`, then `stack`); `tensors` must not be empty.
pub(crate) fn foreach_norm(tensors: &[Tensor], dtype: Option<Kind>) -> Result<Tensor> {
    let t = handles(tensors);
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: the handles are borrowed for the call; on success `out` is a new tensor we own.
    check(unsafe { ffi::amoe_foreach_norm(t.as_ptr(), t.len(), dtype.map_or(-1, scalar_type), &mut out) })?;
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// Multiplies every tensor in place by the scalar tensor `scale` (`_foreach_mul_`).
pub(crate) fn foreach_mul_(tensors: &[Tensor], scale: &Tensor) -> Result<()> {
    if tensors.is_empty() {
        return Ok(());
    }
    let t = handles(tensors);
    // SAFETY: the handles are borrowed for the call.
    check(unsafe { ffi::amoe_foreach_mul_(t.as_ptr(), t.len(), scale.as_ptr()) })
}

/// Zeroes every tensor in place (`_foreach_zero_`).
pub(crate) fn foreach_zero_(tensors: &[Tensor]) -> Result<()> {
    if tensors.is_empty() {
        return Ok(());
    }
    let t = handles(tensors);
    // SAFETY: the handles are borrowed for the call.
    check(unsafe { ffi::amoe_foreach_zero_(t.as_ptr(), t.len()) })
}

/// Starts counting ATen operations of this thread (and its autograd work), from zero; with
/// `timing`, the top-level operations are also timed per name.
pub(crate) fn op_counter_start(timing: bool) -> Result<()> {
    // SAFETY: a call without pointers.
    check(unsafe { ffi::amoe_op_counter_start(timing) })
}

/// Stops counting ATen operations.
pub(crate) fn op_counter_stop() -> Result<()> {
    // SAFETY: a call without pointers.
    check(unsafe { ffi::amoe_op_counter_stop() })
}

/// ATen operations counted since the start: `(top level, all)`.
pub(crate) fn op_counts() -> (i64, i64) {
    let (mut top, mut all) = (0, 0);
    // SAFETY: both outlive the call.
    unsafe { ffi::amoe_op_counts(&mut top, &mut all) };
    (top, all)
}

/// The timed operations: `(name, calls, seconds)`, by name.
pub(crate) fn op_times() -> Vec<(String, i64, f64)> {
    // SAFETY: the shim returns a NUL-terminated heap string (never null but on allocation
    // failure), freed here once.
    let text = unsafe {
        let raw = ffi::amoe_op_times();
        if raw.is_null() {
            return Vec::new();
        }
        let text = CStr::from_ptr(raw).to_string_lossy().into_owned();
        ffi::amoe_free_error(raw);
        text
    };
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split('\t');
            let name = parts.next()?.to_string();
            Some((name, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
        })
        .collect()
}
