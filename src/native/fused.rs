//! Fused CPU kernels (`src/native/fused.cpp`) for the elementwise chains every block runs:
//! RMSNorm, the rotary embedding, and attention's split of its fused projection into rotated
//! queries and keys and values; each one pass over the activations forward and one backward
//! instead of ATen's five to ten small operations (and as many backward nodes), as libtorch
//! autograd functions. They take f32 and f64 tensors on the CPU ([`applies`]); callers
//! use their composite formula everywhere else (other devices, bf16), and the tests hold the two
//! equal (src/nn/norm.rs, src/nn/rope.rs).
//!
//! Rounding follows the composite formulas operation by operation (no multiply-add
//! contraction): the rotary embedding forward equals the composite one bit for bit, RMSNorm
//! differs only in the order of its sum of squares. RMSNorm's weight gradient is summed over
//! fixed blocks of rows, then over the blocks in order: the result does not depend on the number
//! of threads.

use super::check;
use crate::error::Result;
use std::ffi::c_char;
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

mod ffi {
    use super::*;
    extern "C" {
        pub fn amoe_fused_rms_norm(
            x: *const C_tensor,
            weight: *const C_tensor,
            eps: f64,
            out: *mut *mut C_tensor,
        ) -> *mut c_char;
        pub fn amoe_fused_rope(
            x: *const C_tensor,
            cos: *const C_tensor,
            sin: *const C_tensor,
            out: *mut *mut C_tensor,
        ) -> *mut c_char;
        pub fn amoe_fused_qkv_rope(
            qkv: *const C_tensor,
            cos: *const C_tensor,
            sin: *const C_tensor,
            heads: i64,
            kv_heads: i64,
            out: *mut *mut C_tensor,
        ) -> *mut c_char;
    }
}

/// Whether the fused kernels take these tensors: all on the CPU, all f32 or all f64.
pub(crate) fn applies(tensors: &[&Tensor]) -> bool {
    let Some(first) = tensors.first() else { return false };
    matches!(first.kind(), Kind::Float | Kind::Double)
        && tensors.iter().all(|t| t.device() == Device::Cpu && t.kind() == first.kind())
}

/// RMSNorm over the last dimension: `y = (x · r) · weight`, `r = 1 / sqrt(mean(x²) + eps)` per
/// row, differentiable in `x` and `weight`.
///
/// Shapes: `x` `[..., D]`, `weight` `[D]` → `[..., D]`; the caller checks them and [`applies`].
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: the handles are borrowed for the call; on success `out` is a new tensor we own.
    check(unsafe { ffi::amoe_fused_rms_norm(x.as_ptr(), weight.as_ptr(), eps, &mut out) })?;
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// The rotary embedding ("rotate half" pairing): channel `i < half` and `i + half` rotated by
/// the angle whose cosine and sine are `cos[t, i]`, `sin[t, i]`; differentiable in `x`.
///
/// Shapes: `x` `[B, H, T, 2·half]` (any strides), `cos`, `sin` `[T, half]` → `[B, H, T, 2·half]`
/// (contiguous); the caller checks them and [`applies`].
pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: the handles are borrowed for the call; on success `out` is a new tensor we own.
    check(unsafe { ffi::amoe_fused_rope(x.as_ptr(), cos.as_ptr(), sin.as_ptr(), &mut out) })?;
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// Attention's fused projection split into heads-first queries, keys and values, the queries
/// and keys rotated ([`rope`]'s rotation), in one pass; differentiable in `qkv`.
///
/// Shapes: `qkv` `[B, T, (H + 2·H_kv)·hd]` (rows of queries, keys, values; any strides), `cos`,
/// `sin` `[T, hd/2]` → queries `[B, H, T, hd]`, keys and values `[B, H_kv, T, hd]`, contiguous;
/// the caller checks them and [`applies`].
pub(crate) fn qkv_rope(qkv: &Tensor, cos: &Tensor, sin: &Tensor, heads: i64, kv_heads: i64) -> Result<[Tensor; 3]> {
    let mut out: [*mut C_tensor; 3] = [std::ptr::null_mut(); 3];
    // SAFETY: the handles are borrowed for the call; on success `out` holds three new tensors
    // we own.
    check(unsafe {
        ffi::amoe_fused_qkv_rope(qkv.as_ptr(), cos.as_ptr(), sin.as_ptr(), heads, kv_heads, out.as_mut_ptr())
    })?;
    Ok(out.map(|t| unsafe { Tensor::from_ptr(t) }))
}
