//! Small checks shared by every forward: shapes, dtypes, devices and masks (crate-internal).

use crate::error::{Error, Result};
use tch::{Kind, Tensor};

/// Checks that `x` has `dims.len()` dimensions and that each `Some(n)` matches.
/// `what` names the tensor in the error, `layout` spells the expected shape, e.g. `"[B, T, D]"`.
pub(crate) fn expect_shape(x: &Tensor, what: &str, layout: &str, dims: &[Option<i64>]) -> Result<()> {
    let size = x.size();
    let ok = size.len() == dims.len() && size.iter().zip(dims).all(|(s, d)| d.is_none_or(|d| d == *s));
    if ok {
        Ok(())
    } else {
        let want: Vec<String> = dims.iter().map(|d| d.map_or_else(|| "_".to_string(), |d| d.to_string())).collect();
        Err(Error::Shape(format!("{what} must have shape {layout} = [{}], got {size:?}", want.join(", "))))
    }
}

/// Checks that `x` is a floating-point tensor (f16, bf16, f32 or f64).
pub(crate) fn expect_float(x: &Tensor, what: &str) -> Result<()> {
    match x.kind() {
        Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double => Ok(()),
        other => Err(Error::Shape(format!("{what} must be a floating-point tensor, got dtype {other:?}"))),
    }
}

/// Whether `kind` is an integer dtype (token ids).
pub(crate) fn is_integer(kind: Kind) -> bool {
    matches!(kind, Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8)
}

/// Whether a token mask may have dtype `kind`: bool, or integer (non-zero = real token).
pub(crate) fn is_mask_kind(kind: Kind) -> bool {
    kind == Kind::Bool || is_integer(kind)
}

/// `mask` as a bool tensor (non-zero = real) — the one mask dtype check of the crate.
///
/// # Errors
/// [`Error::Shape`] naming `what` and the dtype for a floating-point mask.
pub(crate) fn mask_to_bool(mask: &Tensor, what: &str) -> Result<Tensor> {
    match mask.kind() {
        Kind::Bool => Ok(mask.shallow_clone()),
        kind if is_integer(kind) => Ok(mask.f_ne(0)?),
        other => Err(Error::Shape(format!("{what} must be bool or integer, got dtype {other:?}"))),
    }
}

/// Checks that `x` lives on the same device as the module parameter `param`.
pub(crate) fn expect_device(x: &Tensor, what: &str, param: &Tensor) -> Result<()> {
    if x.device() == param.device() {
        Ok(())
    } else {
        Err(Error::Shape(format!(
            "{what} is on {:?} but the module's parameters are on {:?}",
            x.device(),
            param.device()
        )))
    }
}
