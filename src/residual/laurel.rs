//! LAuReL, the learned augmented residual layer (Menghani et al., "LAuReL: Learned Augmented
//! Residual Layer", ICML 2025, arXiv 2411.07501, §2), around one sublayer.
//!
//! The residual `x' = f(x) + x` (eq. 1) becomes `x' = α·f(x) + g(x, x_{-1}, …)` (eq. 2), with any
//! combination of:
//!
//! * **RW** (learned weights): `α = 2σ(a)`, `β = 2σ(b)` multiply the sublayer's output and the
//!   residual path, bounded by the sigmoid as the paper advises; `a = b = 0` at initialisation, so
//!   `α = β = 1` (the factor 2 is ours: with it RW starts as the plain residual);
//! * **LR** (low rank, eq. 3): the residual path `x + B A x` with `A` (`linear_left`, `[r, D]`)
//!   initialised "column orthogonal" (`A[j, i] = 1/√(rD)` where `i mod r = j`, §3.3) and `B`
//!   (`linear_right`, `[D, r]`) zero, so LR starts as the plain residual; or Gemma 3n's form
//!   (`post_norm`, transformers' `Gemma3nTextLaurelBlock`): `x + RMSNorm(B A x)` with a gain
//!   (`post_laurel_norm.weight`, ones) and both factors `N(0, init_std²)`, which does not start
//!   as the plain residual;
//! * **PA** (previous activations, eq. 4): `+ Σ_{j=1}^{k−1} γ_j · x_{−j}`, the inputs of the `k − 1`
//!   sublayers before this one, with `h = identity` (the paper's low-rank `h` is LR's job here)
//!   and `γ` zero at initialisation. The stream then holds `k` slots `[B, T, k, D]`: slot 0 the
//!   residual, slot `j` the residual `j` sublayers ago (zero before the first sublayer); the
//!   final reduction keeps slot 0.
//!
//! RW+LR is eq. 5: `x' = α·f(x) + β·(x + B A x)`.

use crate::dtype::Cast;
use crate::error::{Error, Result};
use crate::nn::{ParamRole, RmsNorm, VarBuilder};
use crate::residual::connection::{Sublayer, SublayerConnection};
use tch::{Kind, Tensor};

/// LR's low-rank path `B A x` (with Gemma 3n's post-norm when configured).
#[derive(Debug)]
struct LowRank {
    /// `A`, `[r, D]`.
    left: Tensor,
    /// `B`, `[D, r]`.
    right: Tensor,
    post_norm: Option<RmsNorm>,
}

/// LAuReL around one sublayer (see the module docs).
///
/// Parameters: RW `alpha`, `beta` (scalars `[]`, the logits `a`, `b`; no weight decay); LR
/// `linear_left.weight` `[r, D]`, `linear_right.weight` `[D, r]` and with the post-norm
/// `post_laurel_norm.weight` `[D]` (transformers' names); PA `gamma` `[k − 1]` (no weight decay).
#[derive(Debug)]
pub struct Laurel {
    weights: Option<(Tensor, Tensor)>,
    low_rank: Option<LowRank>,
    gamma: Option<Tensor>,
}

impl Laurel {
    /// Creates the connection at width `d_model`: RW when `rw`, LR of rank `rank` (0: off; Gemma
    /// 3n's form with `post_norm`, whose norm uses `norm_eps`), PA over `previous` activations
    /// (`k`; 0 or 1: off).
    ///
    /// # Errors
    /// [`Error::Config`] for a rank above `d_model`, or a post-norm without LR;
    /// [`Error::Torch`] if allocation fails.
    pub fn new<'a>(
        vb: impl Into<VarBuilder<'a>>,
        d_model: usize,
        rw: bool,
        (rank, post_norm): (usize, bool),
        previous: usize,
        norm_eps: f64,
    ) -> Result<Self> {
        let vb = vb.into();
        if rank > d_model {
            return Err(Error::Config(format!("LAuReL rank ({rank}) must be at most d_model ({d_model})")));
        }
        if post_norm && rank == 0 {
            return Err(Error::Config("LAuReL post_norm needs the low-rank path (rank > 0)".into()));
        }
        let fixed = vb.with_role(ParamRole::NO_DECAY);
        let path = fixed.path();
        let weights = if rw { Some((path.f_zeros("alpha", &[])?, path.f_zeros("beta", &[])?)) } else { None };
        let gamma = if previous > 1 { Some(path.f_zeros("gamma", &[previous as i64 - 1])?) } else { None };
        let low_rank = if rank > 0 {
            let (r, d) = (rank as i64, d_model as i64);
            let std = vb.init().std;
            let (left, right, post_norm) = if post_norm {
                let left = (&vb / "linear_left").normal("weight", &[r, d], std)?;
                let right = (&vb / "linear_right").normal("weight", &[d, r], std)?;
                (left, right, Some(RmsNorm::new(&vb / "post_laurel_norm", d, norm_eps)?))
            } else {
                // A[j, i] = 1/√(rD) where i mod r = j; B = 0.
                let options = (Kind::Float, vb.path().device());
                let columns = Tensor::f_arange(d, options)?.f_remainder(r)?;
                let rows = Tensor::f_arange(r, options)?.f_unsqueeze(1)?;
                let pattern = columns.f_unsqueeze(0)?.f_eq_tensor(&rows)?.cast(Kind::Float)?;
                let left = (vb.path() / "linear_left")
                    .f_var_copy("weight", &pattern.f_mul_scalar(1.0 / ((r * d) as f64).sqrt())?)?;
                let right = (vb.path() / "linear_right").f_zeros("weight", &[d, r])?;
                (left, right, None)
            };
            Some(LowRank { left, right, post_norm })
        } else {
            None
        };
        Ok(Self { weights, low_rank, gamma })
    }

    /// `g(x)` without the previous activations: `x + B A x` (LR), or `x`.
    ///
    /// # Shapes
    /// `x`: `[B, T, D]` → `[B, T, D]`.
    ///
    /// # Errors
    /// [`Error::Torch`] on a shape mismatch.
    pub fn augment(&self, x: &Tensor) -> Result<Tensor> {
        let Some(lr) = &self.low_rank else { return Ok(x.shallow_clone()) };
        let z = x.f_matmul(&lr.left.like(x)?.f_tr()?)?.f_matmul(&lr.right.like(x)?.f_tr()?)?;
        let z = match &lr.post_norm {
            Some(norm) => norm.forward(&z)?,
            None => z,
        };
        Ok(x.f_add(&z)?)
    }
}

impl SublayerConnection for Laurel {
    fn apply(&self, stream: &Tensor, sublayer: &mut Sublayer) -> Result<Tensor> {
        // Slot 0 is the residual; with PA, slots 1.. hold the residuals of earlier sublayers.
        let slots = self.gamma.as_ref().map(|_| stream.size()[2]);
        let x = match slots {
            Some(_) => stream.f_select(2, 0)?,
            None => stream.shallow_clone(),
        };
        let output = sublayer(&x)?.like(&x)?;
        let mut residual = self.augment(&x)?;
        if let (Some(gamma), Some(k)) = (&self.gamma, slots) {
            // Σ_j γ_j · x_{−j}: [k−1] @ [B, T, k−1, D] → [B, T, D].
            let previous = stream.f_narrow(2, 1, k - 1)?;
            residual = residual.f_add(&gamma.like(&x)?.f_unsqueeze(0)?.f_matmul(&previous)?.f_squeeze_dim(-2)?)?;
        }
        let next = match &self.weights {
            Some((a, b)) => {
                let alpha = a.like(&x)?.f_sigmoid()?.f_mul_scalar(2.0)?;
                let beta = b.like(&x)?.f_sigmoid()?.f_mul_scalar(2.0)?;
                output.f_mul(&alpha)?.f_add(&residual.f_mul(&beta)?)?
            }
            None => output.f_add(&residual)?,
        };
        match slots {
            // Shift: the new residual in slot 0, slot j ← slot j − 1, the oldest dropped.
            Some(k) => Ok(Tensor::f_cat(&[next.f_unsqueeze(2)?, stream.f_narrow(2, 0, k - 1)?], 2)?),
            None => Ok(next),
        }
    }
}
