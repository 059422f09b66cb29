//! Widening to `K` blocks at the input and collapsing them at the output.

use crate::altup::config::OutputReduction;
use crate::error::{Error, Result};
use crate::shape::cast_like;
use tch::{nn, Kind, Tensor};

/// Splits a `K·D`-wide embedding into `K` blocks.
///
/// # Shapes
/// `wide`: `[B, T, K·D]` → `[K, B, T, D]` (block `i` is channels `i·D .. (i+1)·D`).
///
/// # Errors
/// [`Error::Shape`] if the last dimension is not divisible by `num_blocks`.
pub fn split_blocks(wide: &Tensor, num_blocks: i64) -> Result<Tensor> {
    let size = wide.size();
    if size.len() != 3 || num_blocks <= 0 || size[2] % num_blocks != 0 {
        return Err(Error::Shape(format!(
            "cannot split shape {size:?} into {num_blocks} blocks along the last dimension"
        )));
    }
    let d = size[2] / num_blocks;
    Ok(wide.f_view([size[0], size[1], num_blocks, d])?.f_permute([2, 0, 1, 3])?)
}

/// Reduces the `K` blocks to one `D`-wide representation ([`OutputReduction`]).
///
/// Parameters: `weight` `[D, K·D]` for [`OutputReduction::Projection`] only, initialised to
/// `[I/K, ..., I/K]` so that it starts as the mean.
#[derive(Debug)]
pub struct Collapse {
    /// Projection weight `[D, K·D]` (projection reduction only).
    pub weight: Option<Tensor>,
    reduction: OutputReduction,
    num_blocks: i64,
}

impl Collapse {
    /// Creates the reduction (and `<path>.weight` for a projection).
    ///
    /// # Errors
    /// [`Error::Config`] if a chosen block index is `>= K`.
    pub fn new(path: &nn::Path, reduction: OutputReduction, num_blocks: usize, d_model: usize) -> Result<Self> {
        let (k, d) = (num_blocks as i64, d_model as i64);
        if let OutputReduction::Block(b) = reduction {
            crate::error::ensure_config(b < num_blocks, || {
                format!("altup output block ({b}) must be < num_blocks ({num_blocks})")
            })?;
        }
        let weight = match reduction {
            OutputReduction::Projection => {
                let eye = Tensor::f_eye(d, (Kind::Float, path.device()))?.f_div_scalar(k as f64)?;
                let blocks: Vec<&Tensor> = std::iter::repeat_n(&eye, num_blocks).collect();
                let init = Tensor::f_cat(&blocks, 1)?;
                Some(path.f_var_copy("weight", &init)?)
            }
            _ => None,
        };
        Ok(Self { weight, reduction, num_blocks: k })
    }

    /// # Shapes
    /// `x`: `[K, B, T, D]` → `[B, T, D]`.
    ///
    /// # Errors
    /// [`Error::Shape`] if `x` is not `[K, B, T, D]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let size = x.size();
        if size.len() != 4 || size[0] != self.num_blocks {
            return Err(Error::Shape(format!(
                "collapse input must be [K = {}, B, T, D], got {size:?}",
                self.num_blocks
            )));
        }
        Ok(match (self.reduction, &self.weight) {
            (OutputReduction::Sum, _) => x.f_sum_dim_intlist(0, false, x.kind())?,
            (OutputReduction::Mean, _) => x.f_mean_dim(0, false, x.kind())?,
            (OutputReduction::Block(b), _) => x.f_select(0, b as i64)?,
            (OutputReduction::Projection, Some(w)) => {
                let concat = x.f_permute([1, 2, 0, 3])?.f_reshape([size[1], size[2], size[0] * size[3]])?;
                concat.f_linear::<Tensor>(&cast_like(w, x)?, None)?
            }
            (OutputReduction::Projection, None) => unreachable!("projection weight is created in Collapse::new"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn split_then_projection_at_init_is_the_mean() {
        let vs = nn::VarStore::new(Device::Cpu);
        let wide = Tensor::randn([2, 3, 8], (Kind::Float, Device::Cpu));
        let blocks = split_blocks(&wide, 2).unwrap();
        assert!(blocks.get(1).allclose(&wide.narrow(2, 4, 4), 0.0, 0.0, false));
        let proj = Collapse::new(&vs.root(), OutputReduction::Projection, 2, 4).unwrap();
        let mean = Collapse::new(&vs.root(), OutputReduction::Mean, 2, 4).unwrap();
        assert!(proj.forward(&blocks).unwrap().allclose(&mean.forward(&blocks).unwrap(), 1e-6, 1e-6, false));
        let sum = Collapse::new(&vs.root(), OutputReduction::Sum, 2, 4).unwrap();
        assert!(sum.forward(&blocks).unwrap().allclose(
            &(wide.narrow(2, 0, 4) + wide.narrow(2, 4, 4)),
            1e-6,
            1e-6,
            false
        ));
    }
}
