//! The precision seam: every dtype conversion of the crate goes through [`Cast`], and the two
//! rules of the precision policy live here (DESIGN §8.9):
//!
//! * parameters are f32 masters; a matmul casts its weight to the activation dtype at the point
//!   of use ([`Cast::like`]: `w.like(x)`), so bf16 compute never rounds the masters;
//! * the arithmetic that must stay in f32 — routers, norms, AltUp mixing, the gated combine,
//!   losses, rotary tables — runs in the accumulation dtype ([`accumulate_kind`]: f32, and f64
//!   for f64 inputs so that gradient checks keep their precision) and its result goes back to
//!   the input's dtype.
//!
//! A conversion to the dtype a tensor already has is a shallow clone, never a copy.

use crate::error::Result;
use tch::{Kind, Tensor};

/// The dtype for router, mixing, normalisation and loss arithmetic on `x`: f64 stays f64
/// (gradient checks), everything else is computed in f32.
pub(crate) fn accumulate_kind(x: &Tensor) -> Kind {
    if x.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

/// Dtype conversions (crate-internal).
pub(crate) trait Cast {
    /// The tensor in `kind` (a shallow clone when it already is).
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    fn cast(&self, kind: Kind) -> Result<Tensor>;

    /// The tensor in `x`'s dtype: a weight for a matmul on the activations `x`, or a result
    /// computed in f32 going back to its input's dtype.
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    fn like(&self, x: &Tensor) -> Result<Tensor>;

    /// The tensor in its accumulation dtype ([`accumulate_kind`]).
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    fn accumulated(&self) -> Result<Tensor>;

    /// The tensor in the accumulation dtype of `x` (a parameter mixed with the activations `x`).
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    fn accumulated_like(&self, x: &Tensor) -> Result<Tensor>;
}

impl Cast for Tensor {
    fn cast(&self, kind: Kind) -> Result<Tensor> {
        if self.kind() == kind {
            Ok(self.shallow_clone())
        } else {
            Ok(self.f_to_kind(kind)?)
        }
    }

    fn like(&self, x: &Tensor) -> Result<Tensor> {
        self.cast(x.kind())
    }

    fn accumulated(&self) -> Result<Tensor> {
        self.cast(accumulate_kind(self))
    }

    fn accumulated_like(&self, x: &Tensor) -> Result<Tensor> {
        self.cast(accumulate_kind(x))
    }
}
