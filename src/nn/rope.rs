//! Rotary position embedding (Su et al. 2021, "RoFormer", arXiv 2104.09864, §3.4).
//!
//! Uses the "rotate half" pairing of Hugging Face's Llama (`apply_rotary_pos_emb`): channel `i` of
//! the first half is rotated together with channel `i + head_dim/2`, with frequency
//! `1 / θ^(2i/head_dim)` computed as transformers' `_compute_default_rope_parameters` does — in
//! f32 (f64 for an f64 model) on the CPU, then moved to the activations' device once — so the
//! angles equal transformers' to the bit at every position.

use crate::dtype::{accumulate_kind, Cast};
use crate::error::{Error, Result};
use crate::native::fused;
use tch::Tensor;

/// Rotary position embedding for one head width.
///
/// On the CPU, f32 and f64 inputs are rotated by one fused kernel forward and one backward
/// (`crate::native::fused`); elsewhere by ATen's operations, with the same result.
#[derive(Debug, Clone)]
pub struct Rope {
    head_dim: i64,
    theta: f64,
    /// The inverse frequencies `[head_dim / 2]` per (device, dtype), made on first use (before a
    /// CUDA graph is captured: the capture then only reads them).
    inv_freq: std::sync::Arc<std::sync::Mutex<Vec<(tch::Device, tch::Kind, Tensor)>>>,
}

impl Rope {
    /// # Errors
    /// [`Error::Config`] if `head_dim` is odd or `theta <= 1`.
    pub fn new(head_dim: i64, theta: f64) -> Result<Self> {
        crate::error::ensure_config(head_dim > 0 && head_dim % 2 == 0, || {
            format!("head dimension ({head_dim}) must be even for rotary embeddings")
        })?;
        crate::error::ensure_config(theta > 1.0 && theta.is_finite(), || {
            format!("rope_theta ({theta}) must be finite and > 1")
        })?;
        Ok(Self { head_dim, theta, inv_freq: Default::default() })
    }

    /// `1 / θ^(arange(0, head_dim, 2) / head_dim)` in `kind`, computed on the CPU (as
    /// transformers' Llama does at initialisation) and kept on `device`.
    fn inverse_frequencies(&self, kind: tch::Kind, device: tch::Device) -> Result<Tensor> {
        let mut cache = self.inv_freq.lock().map_err(|_| Error::Config("rotary cache poisoned".into()))?;
        if let Some((_, _, t)) = cache.iter().find(|(d, k, _)| *d == device && *k == kind) {
            return Ok(t.shallow_clone());
        }
        let exponents = Tensor::f_arange_start_step(0, self.head_dim, 2, (tch::Kind::Int64, tch::Device::Cpu))?
            .f_to_kind(kind)?
            .f_div_scalar(self.head_dim as f64)?;
        let inv_freq = Tensor::f_pow_scalar(self.theta, &exponents)?.f_reciprocal()?.f_to_device(device)?;
        cache.push((device, kind, inv_freq.shallow_clone()));
        Ok(inv_freq)
    }

    /// Rotates queries or keys by their absolute positions: `positions` (`[T]`, integer or
    /// float), or `0 .. T` when `None`.
    ///
    /// # Shapes
    /// `x`: `[B, H, T, head_dim]` → same shape and dtype. The angles are computed in f32.
    ///
    /// # Errors
    /// [`Error::Shape`] if the last dimension is not `head_dim`, `x` is not 4-D, or `positions`
    /// does not have `T` entries.
    pub fn apply(&self, x: &Tensor, positions: Option<&Tensor>) -> Result<Tensor> {
        let size = x.size();
        if size.len() != 4 || size[3] != self.head_dim {
            return Err(Error::Shape(format!(
                "rotary input must have shape [B, H, T, {}], got {size:?}",
                self.head_dim
            )));
        }
        let (cos, sin) = self.cos_sin(size[2], positions, accumulate_kind(x), x.device())?;
        Self::rotate(x, &cos, &sin)
    }

    /// Rotates `x` `[B, H, T, head_dim]` by the angles whose cosines and sines are `cos`, `sin`
    /// `[T, head_dim / 2]` ([`Rope::cos_sin`]): the fused CPU kernel where it applies, else
    /// the composite formula.
    pub(crate) fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        if fused::applies(&[x, cos, sin]) {
            return fused::rope(x, cos, sin);
        }
        Self::composite(x, cos, sin)
    }

    /// The cosines and sines `[T, head_dim / 2]` (in `acc`, on `device`) of the angles at
    /// `positions` (`[T]`, integer or float), or at `0 .. T` when `None`.
    ///
    /// # Errors
    /// [`Error::Shape`] if `positions` does not have `T` entries.
    pub(crate) fn cos_sin(
        &self,
        t: i64,
        positions: Option<&Tensor>,
        acc: tch::Kind,
        device: tch::Device,
    ) -> Result<(Tensor, Tensor)> {
        let inv_freq = self.inverse_frequencies(acc, device)?;
        let positions = match positions {
            Some(p) if p.size() == [t] => p.cast(acc)?.f_to_device(device)?,
            Some(p) => return Err(Error::Shape(format!("rotary positions must have shape [{t}], got {:?}", p.size()))),
            None => Tensor::f_arange(t, (acc, device))?,
        };
        let angles = positions.f_outer(&inv_freq)?; // [T, half]
        Ok((angles.f_cos()?, angles.f_sin()?))
    }

    /// The rotation in ATen operations (every device and dtype; the fused CPU kernel computes
    /// the same, bit for bit): `x` `[B, H, T, head_dim]`, `cos`, `sin` `[T, head_dim / 2]` in the
    /// accumulation dtype.
    fn composite(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let half = cos.size()[1];
        let x32 = x.cast(cos.kind())?;
        let x1 = x32.f_narrow(-1, 0, half)?;
        let x2 = x32.f_narrow(-1, half, half)?;
        let r1 = x1.f_mul(cos)?.f_sub(&x2.f_mul(sin)?)?;
        let r2 = x2.f_mul(cos)?.f_add(&x1.f_mul(sin)?)?;
        Tensor::f_cat(&[r1, r2], -1)?.like(x)
    }
}

/// Default RoPE base frequency (RoFormer, Llama).
pub const DEFAULT_ROPE_THETA: f64 = 10_000.0;

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn rotation_preserves_norm_and_position_zero_is_identity() {
        let rope = Rope::new(8, 10_000.0).unwrap();
        let x = Tensor::randn([2, 3, 5, 8], (Kind::Float, Device::Cpu));
        let y = rope.apply(&x, None).unwrap();
        let norms_x = x.square().sum_dim_intlist(-1, false, Kind::Float);
        let norms_y = y.square().sum_dim_intlist(-1, false, Kind::Float);
        assert!(norms_x.allclose(&norms_y, 1e-5, 1e-5, false));
        assert!(y.narrow(2, 0, 1).allclose(&x.narrow(2, 0, 1), 1e-6, 1e-6, false));
    }

    /// Positions are integers: in bf16, 1857 would round to 1856. The angles come from the
    /// positions in f32 (f64 for f64 inputs), whatever the activations' dtype.
    #[test]
    fn rotary_angles_use_exact_positions_under_bf16() {
        let rope = Rope::new(8, 10_000.0).unwrap();
        let x = Tensor::randn([1, 1, 1, 8], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        let at = |p: i64| Tensor::from_slice(&[p]);
        let y = rope.apply(&x, Some(&at(1857))).unwrap().to_kind(Kind::Float);
        let exact = rope.apply(&x.to_kind(Kind::Float), Some(&at(1857))).unwrap();
        let rounded = rope.apply(&x.to_kind(Kind::Float), Some(&at(1856))).unwrap();
        let err = |a: &Tensor| (&y - a).abs().max().double_value(&[]);
        assert!(err(&exact) < 2e-2, "one bf16 rounding of the output: {}", err(&exact));
        assert!(err(&rounded) > 5.0 * err(&exact), "{} vs {}", err(&rounded), err(&exact));
    }

    #[test]
    fn dot_products_depend_only_on_relative_position() {
        // <R(m) q, R(n) k> = <R(m+s) q, R(n+s) k> for any shift s.
        let rope = Rope::new(8, 10_000.0).unwrap();
        let q = Tensor::randn([1, 1, 4, 8], (Kind::Double, Device::Cpu));
        let k = Tensor::randn([1, 1, 4, 8], (Kind::Double, Device::Cpu));
        let scores = |off: i64| {
            let p = Tensor::arange_start(off, off + 4, (Kind::Int64, Device::Cpu));
            rope.apply(&q, Some(&p)).unwrap().matmul(&rope.apply(&k, Some(&p)).unwrap().transpose(-1, -2))
        };
        assert!(scores(0).allclose(&scores(37), 1e-9, 1e-9, false));
    }

    /// The fused CPU kernel against the composite rotation, on queries split from a fused
    /// projection (strided, as attention passes them): the same bits forward, the same gradient.
    #[test]
    fn fused_kernel_matches_the_composite_rotation() {
        let rope = Rope::new(16, 10_000.0).unwrap();
        for (kind, tol) in [(Kind::Double, 1e-12), (Kind::Float, 1e-6)] {
            // [B, T, 3, H, hd] → the queries [B, H, T, hd], a strided view.
            let qkv = Tensor::randn([2, 7, 3, 4, 16], (kind, Device::Cpu)).set_requires_grad(true);
            let q = qkv.select(2, 0).permute([0, 2, 1, 3]);
            let positions = Tensor::arange_start(5, 12, (Kind::Int64, Device::Cpu));
            let angles = positions.to_kind(kind).outer(&rope.inverse_frequencies(kind, Device::Cpu).unwrap());
            let (cos, sin) = (angles.cos(), angles.sin());
            let cotangent = Tensor::randn([2, 4, 7, 16], (kind, Device::Cpu));
            let run = |fused: bool| {
                let y = if fused {
                    rope.apply(&q, Some(&positions)).unwrap()
                } else {
                    Rope::composite(&q, &cos, &sin).unwrap()
                };
                let grad = Tensor::run_backward(&[(&y * &cotangent).sum(kind)], &[&qkv], false, false).remove(0);
                (y, grad)
            };
            let ((y, g), (y_ref, g_ref)) = (run(true), run(false));
            assert!(y.equal(&y_ref), "{kind:?}: forward differs from the composite rotation");
            assert!(g.allclose(&g_ref, tol, tol, false), "{kind:?} gradient");
        }
    }

    #[test]
    fn rejects_odd_head_dim() {
        assert!(Rope::new(7, 10_000.0).unwrap_err().to_string().contains("(7)"));
    }
}
