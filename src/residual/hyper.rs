//! Hyper-Connections (Zhu et al., "Hyper-Connections", ICLR 2025, arXiv 2409.19606), static and
//! dynamic, around one sublayer.
//!
//! Per token, with the `n` streams `H = [h_0; …; h_{n-1}]` (`[n, D]`), the paper's matrix
//! `HC = [[0, B], [A_m, A_r]]` holds the read weights `A_m` (`[n]`), the stream-mixing weights
//! `A_r` (`[n, n]`) and the write weights `B` (`[n]`); we keep `[A_m | A_r]` as one `[n, n+1]`
//! matrix `α` and `B` as `β`, as the reference implementation (the `hyper-connections` package,
//! `HyperConnections`) does:
//!
//! ```text
//! x      = Σ_s α[s, 0] · h_s                              (eq. 3, the sublayer's input)
//! out_u  = β[u] · f(x) + Σ_s α[s, 1+u] · h_s               (eq. 5)
//! ```
//!
//! Dynamic (eq. 10–13) adds input-dependent terms from each stream normed on its own,
//! `h̄_s = h_s·√D / ‖h_s‖ · (1 + γ)`:
//! `α[s, :] += s_α · tanh(h̄_s · W_α)`, `β[s] += s_β · tanh(h̄_s · w_β)`, with `W_α` (`[D, n+1]`),
//! `w_β` (`[D]`) and `γ` (`[D]`) zero and `s_α = s_β = 0.01` at initialisation (the package uses
//! this RMS norm where the paper writes LayerNorm).
//!
//! Initialisation (eq. 14): sublayer `k` reads stream `k mod n` (`α[:, 0] = e_{k mod n}`), the
//! streams do not mix (`α[:, 1:] = I`) and every stream receives the output (`β = 1`). With every
//! stream a copy of the embedding, each stream then equals the plain residual `x + f(x)` of a
//! pre-norm model, and so does their mean (the final reduction): the model starts as the plain
//! model.

use crate::dtype::Cast;
use crate::error::Result;
use crate::nn::{ParamRole, VarBuilder};
use crate::residual::connection::{Sublayer, SublayerConnection};
use tch::{Kind, Tensor};

/// The input-dependent part of dynamic Hyper-Connections.
#[derive(Debug)]
struct Dynamic {
    /// `γ`, `[D]`: the gain of the per-stream norm is `1 + γ`.
    norm_gamma: Tensor,
    /// `W_α`, `[D, n+1]`.
    alpha_fn: Tensor,
    /// `s_α`, a scalar (`[]`).
    alpha_scale: Tensor,
    /// `w_β`, `[D]`.
    beta_fn: Tensor,
    /// `s_β`, a scalar (`[]`).
    beta_scale: Tensor,
}

/// Hyper-Connections around one sublayer (see the module docs).
///
/// Parameters (no weight decay, the paper's §3.3): `static_alpha` `[n, n+1]`, `static_beta`
/// `[n]`, and with `dynamic` `dynamic_alpha_fn` `[D, n+1]`, `dynamic_alpha_scale` `[]`,
/// `dynamic_beta_fn` `[D]`, `dynamic_beta_scale` `[]`, `norm.gamma` `[D]` — the reference
/// package's names.
#[derive(Debug)]
pub struct HyperConnection {
    static_alpha: Tensor,
    static_beta: Tensor,
    dynamic: Option<Dynamic>,
    d_model: i64,
}

impl HyperConnection {
    /// Creates the connection of sublayer `index` (counted over the whole stack: it reads stream
    /// `index mod n` at initialisation) for `streams` streams of width `d_model`.
    ///
    /// # Errors
    /// [`crate::Error::Config`] for no streams; [`crate::Error::Torch`] if allocation fails.
    pub fn new<'a>(
        vb: impl Into<VarBuilder<'a>>,
        d_model: usize,
        streams: usize,
        dynamic: bool,
        index: usize,
    ) -> Result<Self> {
        if streams == 0 {
            return Err(crate::Error::Config("residual streams (0) must be at least 1".into()));
        }
        let vb = vb.into().with_role(ParamRole::NO_DECAY);
        let path = vb.path();
        let (n, d) = (streams as i64, d_model as i64);
        let options = (Kind::Float, path.device());
        let read = Tensor::f_zeros([n, 1], options)?;
        let _ = read.f_narrow(0, (index % streams) as i64, 1)?.f_fill_(1.0)?;
        let init = Tensor::f_cat(&[read, Tensor::f_eye(n, options)?], 1)?;
        let static_alpha = path.f_var_copy("static_alpha", &init)?;
        let static_beta = path.f_ones("static_beta", &[n])?;
        let dynamic = if dynamic {
            Some(Dynamic {
                norm_gamma: (path / "norm").f_zeros("gamma", &[d])?,
                alpha_fn: path.f_zeros("dynamic_alpha_fn", &[d, n + 1])?,
                alpha_scale: path.f_var_copy("dynamic_alpha_scale", &Tensor::from(0.01f32).to_device(path.device()))?,
                beta_fn: path.f_zeros("dynamic_beta_fn", &[d])?,
                beta_scale: path.f_var_copy("dynamic_beta_scale", &Tensor::from(0.01f32).to_device(path.device()))?,
            })
        } else {
            None
        };
        Ok(Self { static_alpha, static_beta, dynamic, d_model: d })
    }

    /// The read/mix weights `α` (`[n, n+1]`, or `[B, T, n, n+1]` when dynamic) and the write
    /// weights `β` (`[n]`, or `[B, T, n]`) for the streams `h` (`[B, T, n, D]`), in `h`'s dtype.
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on a shape mismatch.
    pub fn weights(&self, h: &Tensor) -> Result<(Tensor, Tensor)> {
        let alpha = self.static_alpha.like(h)?;
        let beta = self.static_beta.like(h)?;
        let Some(dynamic) = &self.dynamic else { return Ok((alpha, beta)) };
        // Each stream normed on its own: h·√D / max(‖h‖, 1e-12) · (1 + γ).
        let norm = h.f_square()?.f_sum_dim_intlist(-1, true, None::<Kind>)?.f_sqrt()?.f_clamp_min(1e-12)?;
        let gain = dynamic.norm_gamma.like(h)?.f_add_scalar(1.0)?;
        let normed = h.f_div(&norm)?.f_mul_scalar((self.d_model as f64).sqrt())?.f_mul(&gain)?;
        let alpha_dyn = normed.f_matmul(&dynamic.alpha_fn.like(h)?)?.f_tanh()?;
        let beta_dyn = normed.f_matmul(&dynamic.beta_fn.like(h)?)?.f_tanh()?;
        let alpha = alpha_dyn.f_mul(&dynamic.alpha_scale.like(h)?)?.f_add(&alpha)?;
        let beta = beta_dyn.f_mul(&dynamic.beta_scale.like(h)?)?.f_add(&beta)?;
        Ok((alpha, beta))
    }
}

impl SublayerConnection for HyperConnection {
    fn apply(&self, streams: &Tensor, sublayer: &mut Sublayer) -> Result<Tensor> {
        let (alpha, beta) = self.weights(streams)?;
        // [.., n, n+1]ᵀ @ [B, T, n, D] → [B, T, n+1, D]: row 0 the sublayer's input, rows 1.. the mixed streams.
        let mixed = alpha.f_transpose(-1, -2)?.f_matmul(streams)?;
        let input = mixed.f_select(2, 0)?;
        let carried = mixed.f_narrow(2, 1, streams.size()[2])?;
        let output = sublayer(&input)?.like(streams)?;
        // β[u] · f(x) for every stream u.
        let written = beta.f_unsqueeze(-1)?.f_mul(&output.f_unsqueeze(2)?)?;
        Ok(carried.f_add(&written)?)
    }
}
