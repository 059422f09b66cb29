//! Root-mean-square layer normalisation (Zhang & Sennrich 2019, arXiv 1910.07467).

use crate::dtype::{accumulate_kind, Cast};
use crate::error::Result;
use crate::native::fused;
use crate::nn::role::ParamRole;
use crate::nn::var_builder::VarBuilder;
use crate::shape::expect_float;
use tch::Tensor;

/// RMSNorm: `y = x / sqrt(mean(x²) + eps) · weight`, computed in f32 and returned in `x`'s dtype.
///
/// On the CPU, f32 and f64 inputs go through one fused kernel forward and one backward
/// (`crate::native::fused`); elsewhere through ATen's operations. The two agree to rounding.
///
/// Parameters: `weight` `[D]`, initialised to ones.
#[derive(Debug)]
pub struct RmsNorm {
    /// Per-channel gain, shape `[D]`.
    pub weight: Tensor,
    eps: f64,
    dim: i64,
}

impl RmsNorm {
    /// Creates `<path>.weight` of shape `[dim]` (ones).
    ///
    /// # Errors
    /// [`crate::Error::Config`] if `eps` is not positive and finite.
    pub fn new<'a>(vb: impl Into<VarBuilder<'a>>, dim: i64, eps: f64) -> Result<Self> {
        crate::error::ensure_config(eps > 0.0 && eps.is_finite(), || {
            format!("norm_eps ({eps}) must be positive and finite")
        })?;
        // A gain, not a projection: no weight decay.
        let weight = vb.into().with_role(ParamRole::NO_DECAY).path().f_ones("weight", &[dim])?;
        Ok(Self { weight, eps, dim })
    }

    /// Normalises over the last dimension.
    ///
    /// # Shapes
    /// `x`: `[..., D]` → `[..., D]`.
    ///
    /// # Errors
    /// [`crate::Error::Shape`] if the last dimension is not `D` or `x` is not floating point.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        expect_float(x, "RMSNorm input")?;
        if x.size().last().copied() != Some(self.dim) {
            return Err(crate::Error::Shape(format!(
                "RMSNorm input must have last dimension {}, got shape {:?}",
                self.dim,
                x.size()
            )));
        }
        if fused::applies(&[x, &self.weight]) {
            return fused::rms_norm(x, &self.weight, self.eps);
        }
        self.composite(x)
    }

    /// The formula in ATen operations (every device and dtype; the fused CPU kernel computes
    /// the same).
    fn composite(&self, x: &Tensor) -> Result<Tensor> {
        let acc = accumulate_kind(x);
        let x32 = x.cast(acc)?;
        let inv_rms = (x32.f_square()?.f_mean_dim(-1, true, acc)? + self.eps).f_rsqrt()?;
        let y = x32.f_mul(&inv_rms)?.f_mul(&self.weight.cast(acc)?)?;
        y.like(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn;
    use tch::{Device, Kind};

    #[test]
    fn unit_rms_rows_are_unchanged_and_scale_is_removed() {
        let vs = nn::VarStore::new(Device::Cpu);
        let norm = RmsNorm::new(&vs.root(), 4, 1e-12).unwrap();
        // Row with mean square 1: (1, -1, 1, -1). Scaling the row by 3 must not change the output.
        let x = Tensor::from_slice(&[1.0f32, -1.0, 1.0, -1.0, 3.0, -3.0, 3.0, -3.0]).view([2, 4]);
        let y = norm.forward(&x).unwrap();
        let expected = Tensor::from_slice(&[1.0f32, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0]).view([2, 4]);
        assert!(y.allclose(&expected, 1e-6, 1e-6, false));
        assert_eq!(y.kind(), Kind::Float);
    }

    /// The fused CPU kernel against the composite formula: values and both gradients, on a
    /// strided input of more rows than one block of the weight-gradient sum.
    #[test]
    fn fused_kernel_matches_the_composite_formula() {
        for (kind, tol) in [(Kind::Double, 1e-12), (Kind::Float, 2e-6)] {
            let vs = nn::VarStore::new(Device::Cpu);
            let norm = RmsNorm::new(&vs.root(), 24, 1e-6).unwrap();
            let w = Tensor::randn([24], (kind, Device::Cpu)).set_requires_grad(true);
            let norm = RmsNorm { weight: w, ..norm };
            // [150, 3, 24] seen through a transpose: 450 rows, not contiguous.
            let x = Tensor::randn([3, 150, 24], (kind, Device::Cpu)).transpose(0, 1).set_requires_grad(true);
            let cotangent = Tensor::randn([150, 3, 24], (kind, Device::Cpu));
            let run = |fused: bool| {
                let y = if fused { norm.forward(&x).unwrap() } else { norm.composite(&x).unwrap() };
                let grads = Tensor::run_backward(&[(&y * &cotangent).sum(kind)], &[&x, &norm.weight], false, false);
                (y, grads)
            };
            let ((y, g), (y_ref, g_ref)) = (run(true), run(false));
            assert_eq!(y.kind(), kind);
            assert!(y.allclose(&y_ref, tol, tol, false), "{kind:?} values");
            assert!(g[0].allclose(&g_ref[0], tol, tol, false), "{kind:?} input gradient");
            assert!(g[1].allclose(&g_ref[1], 10.0 * tol, 10.0 * tol, false), "{kind:?} weight gradient");
        }
    }

    /// The weight gradient is summed in fixed blocks of rows: one thread or two give the same bits.
    #[test]
    fn fused_weight_gradient_does_not_depend_on_the_thread_count() {
        let vs = nn::VarStore::new(Device::Cpu);
        let norm = RmsNorm::new(&vs.root(), 64, 1e-6).unwrap();
        let x = Tensor::randn([1000, 64], (Kind::Float, Device::Cpu));
        let grad_with = |threads| {
            tch::set_num_threads(threads);
            let y = norm.forward(&x).unwrap();
            Tensor::run_backward(&[y.sum(Kind::Float)], &[&norm.weight], false, false).remove(0)
        };
        let threads = tch::get_num_threads();
        let (one, two) = (grad_with(1), grad_with(2));
        tch::set_num_threads(threads);
        assert!(one.equal(&two));
    }

    #[test]
    fn rejects_wrong_width_and_bad_eps() {
        let vs = nn::VarStore::new(Device::Cpu);
        let norm = RmsNorm::new(&vs.root(), 4, 1e-6).unwrap();
        let err = norm.forward(&Tensor::zeros([2, 3], (Kind::Float, Device::Cpu))).unwrap_err();
        assert!(err.to_string().contains("last dimension 4"), "{err}");
        let err = RmsNorm::new(&vs.root().sub("b"), 4, 0.0).unwrap_err();
        assert!(err.to_string().contains("norm_eps (0)"), "{err}");
    }
}
