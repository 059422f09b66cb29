//! Manifold-constrained Hyper-Connections (Xie et al., DeepSeek, "mHC: Manifold-Constrained
//! Hyper-Connections", arXiv 2512.24880, §4.2) around one sublayer.
//!
//! Per token, with the `n` streams `x` (`[n, D]`) and `x̃ = RMSNorm(vec(x))` (`[nD]`, no gain):
//!
//! ```text
//! H̃_pre  = α_pre  · (x̃ φ_pre)  + b_pre          [n]      (eq. 7)
//! H̃_post = α_post · (x̃ φ_post) + b_post         [n]
//! H̃_res  = α_res  · mat(x̃ φ_res) + b_res        [n, n]
//! H_pre = σ(H̃_pre), H_post = 2σ(H̃_post), H_res = SinkhornKnopp(H̃_res)    (eq. 8)
//! x' = H_res x + H_postᵀ f(H_pre x)                                        (eq. 3)
//! ```
//!
//! Sinkhorn–Knopp (eq. 9): `M = exp(H̃_res)`, then `sinkhorn_iters` times a column
//! normalisation followed by a row normalisation: rows sum to 1 exactly, columns to 1 within the
//! iteration's convergence, so the mixing is (close to) doubly stochastic and the identity
//! mapping's norm is kept through depth. `H_pre` and `H_post` are non-negative.
//!
//! Initialisation (ours; the paper fixes none that we could read): `φ = 0`, `α = 0.01`, `b_pre =
//! −ln(n − 1)` (each stream read with weight `1/n`), `b_post = 0` (each stream written with weight
//! 1) and `b_res` 0 on the diagonal and −4 off it (a mixing close to the identity). With every
//! stream a copy of the embedding each stream then equals the plain residual `x + f(x)` (rows of
//! `H_res` sum to 1), so the model starts as the plain model, as with Hyper-Connections.

use crate::dtype::Cast;
use crate::error::{Error, Result};
use crate::nn::{ParamRole, VarBuilder};
use crate::residual::connection::{Sublayer, SublayerConnection};
use tch::{Kind, Tensor};

/// The logit of the off-diagonal stream-mixing entries at initialisation.
const OFF_DIAGONAL_INIT: f64 = -4.0;

/// mHC around one sublayer (see the module docs).
///
/// Parameters (no weight decay): `phi_pre` `[nD, n]`, `phi_post` `[nD, n]`, `phi_res`
/// `[nD, n²]`, `b_pre` `[n]`, `b_post` `[n]`, `b_res` `[n, n]`, `alpha_pre`, `alpha_post`,
/// `alpha_res` (scalars, `[]`) — the paper's symbols.
#[derive(Debug)]
pub struct ManifoldHyperConnection {
    phi_pre: Tensor,
    phi_post: Tensor,
    phi_res: Tensor,
    b_pre: Tensor,
    b_post: Tensor,
    b_res: Tensor,
    alpha_pre: Tensor,
    alpha_post: Tensor,
    alpha_res: Tensor,
    sinkhorn_iters: usize,
    norm_eps: f64,
    streams: i64,
}

/// The stream-mixing maps of one call, each per token.
#[derive(Debug)]
pub struct MhcMaps {
    /// `H_pre`, `[B, T, n]`: the read weights.
    pub pre: Tensor,
    /// `H_post`, `[B, T, n]`: the write weights.
    pub post: Tensor,
    /// `H_res`, `[B, T, n, n]`: `out[i] += H_res[i, j] · x[j]`.
    pub res: Tensor,
}

/// Sinkhorn–Knopp on the last two dimensions (`[.., n, n]` logits): `exp`, then `iters` times
/// columns then rows normalised to sum 1 (arXiv 2512.24880 eq. 9). The largest logit of each
/// matrix is subtracted first (it cancels in the first normalisation; it only keeps `exp` finite).
///
/// # Errors
/// [`Error::Torch`] on libtorch failure.
pub fn sinkhorn_knopp(logits: &Tensor, iters: usize) -> Result<Tensor> {
    let dims = [-2i64, -1].as_slice();
    let top = logits.f_amax(dims, true)?.f_detach()?;
    let mut m = logits.f_sub(&top)?.f_exp()?;
    for _ in 0..iters {
        m = m.f_div(&m.f_sum_dim_intlist(-2, true, None::<Kind>)?)?;
        m = m.f_div(&m.f_sum_dim_intlist(-1, true, None::<Kind>)?)?;
    }
    Ok(m)
}

impl ManifoldHyperConnection {
    /// Creates the connection for `streams` (at least 2) streams of width `d_model`, with
    /// `sinkhorn_iters` iterations and the RMS norm's `norm_eps`.
    ///
    /// # Errors
    /// [`Error::Config`] for fewer than 2 streams or no iterations; [`Error::Torch`] if
    /// allocation fails.
    pub fn new<'a>(
        vb: impl Into<VarBuilder<'a>>,
        d_model: usize,
        streams: usize,
        sinkhorn_iters: usize,
        norm_eps: f64,
    ) -> Result<Self> {
        if streams < 2 {
            return Err(Error::Config(format!("mHC needs at least 2 residual streams, got {streams}")));
        }
        if sinkhorn_iters == 0 {
            return Err(Error::Config("residual sinkhorn_iters (0) must be at least 1".into()));
        }
        let vb = vb.into().with_role(ParamRole::NO_DECAY);
        let path = vb.path();
        let (n, d) = (streams as i64, d_model as i64);
        let options = (Kind::Float, path.device());
        let scalar = |name: &str| path.f_var_copy(name, &Tensor::f_full([], 0.01, options)?);
        let off_diagonal = Tensor::f_ones([n, n], options)?.f_sub(&Tensor::f_eye(n, options)?)?;
        Ok(Self {
            phi_pre: path.f_zeros("phi_pre", &[n * d, n])?,
            phi_post: path.f_zeros("phi_post", &[n * d, n])?,
            phi_res: path.f_zeros("phi_res", &[n * d, n * n])?,
            b_pre: path.f_var_copy("b_pre", &Tensor::f_full([n], -((n - 1) as f64).ln(), options)?)?,
            b_post: path.f_zeros("b_post", &[n])?,
            b_res: path.f_var_copy("b_res", &off_diagonal.f_mul_scalar(OFF_DIAGONAL_INIT)?)?,
            alpha_pre: scalar("alpha_pre")?,
            alpha_post: scalar("alpha_post")?,
            alpha_res: scalar("alpha_res")?,
            sinkhorn_iters,
            norm_eps,
            streams: n,
        })
    }

    /// The maps `H_pre`, `H_post`, `H_res` for the streams `x` (`[B, T, n, D]`), in `x`'s dtype.
    ///
    /// # Errors
    /// [`Error::Torch`] on a shape mismatch.
    pub fn maps(&self, x: &Tensor) -> Result<MhcMaps> {
        let n = self.streams;
        let flat = x.f_flatten(-2, -1)?;
        let mean_square = flat.f_square()?.f_mean_dim([-1i64].as_slice(), true, None::<Kind>)?;
        let normed = flat.f_mul(&mean_square.f_add_scalar(self.norm_eps)?.f_rsqrt()?)?;
        let project = |phi: &Tensor, alpha: &Tensor, b: &Tensor| -> Result<Tensor> {
            Ok(normed.f_matmul(&phi.like(x)?)?.f_mul(&alpha.like(x)?)?.f_add(&b.like(x)?.f_flatten(0, -1)?)?)
        };
        let pre = project(&self.phi_pre, &self.alpha_pre, &self.b_pre)?.f_sigmoid()?;
        let post = project(&self.phi_post, &self.alpha_post, &self.b_post)?.f_sigmoid()?.f_mul_scalar(2.0)?;
        let res_logits = project(&self.phi_res, &self.alpha_res, &self.b_res)?.f_unflatten(-1, [n, n])?;
        Ok(MhcMaps { pre, post, res: sinkhorn_knopp(&res_logits, self.sinkhorn_iters)? })
    }
}

impl SublayerConnection for ManifoldHyperConnection {
    fn apply(&self, streams: &Tensor, sublayer: &mut Sublayer) -> Result<Tensor> {
        let maps = self.maps(streams)?;
        // H_pre x: [B, T, 1, n] @ [B, T, n, D] → [B, T, D].
        let input = maps.pre.f_unsqueeze(-2)?.f_matmul(streams)?.f_squeeze_dim(-2)?;
        let output = sublayer(&input)?.like(streams)?;
        let written = maps.post.f_unsqueeze(-1)?.f_mul(&output.f_unsqueeze(-2)?)?;
        Ok(maps.res.f_matmul(streams)?.f_add(&written)?)
    }
}
