//! Bias-free linear projection with explicit normal initialisation.

use crate::dtype::Cast;
use crate::error::Result;
use crate::nn::var_builder::VarBuilder;
use crate::shape::{expect_device, expect_float};
use tch::Tensor;

/// `y = x · Wᵀ`, the weight stored as `[out, in]` (PyTorch's `nn.Linear` layout, so checkpoints
/// read naturally from Python).
///
/// Parameters: `weight` `[out, in]`, initialised `N(0, std²)`.
#[derive(Debug)]
pub struct Linear {
    /// Weight, shape `[out, in]`.
    pub weight: Tensor,
    in_dim: i64,
}

impl Linear {
    /// Creates the parameter `<path>.weight` of shape `[out_dim, in_dim]`, drawn from `N(0, std²)`
    /// with the builder's seed.
    ///
    /// # Errors
    /// [`crate::Error::Torch`] if libtorch cannot allocate the tensor.
    pub fn new<'a>(vb: impl Into<VarBuilder<'a>>, in_dim: i64, out_dim: i64, std: f64) -> Result<Self> {
        let weight = vb.into().normal("weight", &[out_dim, in_dim], std)?;
        Ok(Self { weight, in_dim })
    }

    /// Input width.
    pub fn in_dim(&self) -> i64 {
        self.in_dim
    }

    /// Applies the projection.
    ///
    /// # Shapes
    /// `x`: `[..., in]` → `[..., out]`, in `x`'s dtype (the f32 weight is cast to it).
    ///
    /// # Errors
    /// [`crate::Error::Shape`] if the last dimension of `x` is not `in`, `x` is not floating point,
    /// or `x` is on another device.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        expect_float(x, "linear input")?;
        expect_device(x, "linear input", &self.weight)?;
        let last = x.size().last().copied();
        if last != Some(self.in_dim) {
            return Err(crate::Error::Shape(format!(
                "linear input must have last dimension {}, got shape {:?}",
                self.in_dim,
                x.size()
            )));
        }
        Ok(x.f_linear::<Tensor>(&self.weight.like(x)?, None)?)
    }
}
