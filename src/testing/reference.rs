//! The one-hot einsum formulation of token-choice dispatch (Mesh-TensorFlow / GShard style,
//! arXiv 2006.16668 Algorithm 1), kept as an independent reference for tests. Its memory grows as
//! `k·N·E·C`: never use it for training.

use crate::dtype::Cast;
use crate::error::{Error, Result};
use crate::moe::{Choice, Experts, GroupSizes, MoeLayer};
use tch::{Kind, Tensor};

/// A token-choice routing decision of an MoE layer, before capacity.
#[derive(Debug)]
pub struct Routed {
    /// Router logits, `[N, E]`, f32.
    pub logits: Tensor,
    /// Router probabilities, `[N, E]`, f32.
    pub probs: Tensor,
    /// Chosen experts, `[N, k]` i64; column 0 is the best choice.
    pub expert_index: Tensor,
    /// Gate weights of the chosen experts, `[N, k]` f32.
    pub gate: Tensor,
}

/// The routing `layer` gives the rows `x` `[N, D]`: its router's scores, then its routing
/// policy's selection (the path the layer's forward takes).
///
/// # Errors
/// [`Error::Config`] for an expert-choice layer; errors of the router and the policy.
pub fn route(layer: &MoeLayer, x: &Tensor, train: bool) -> Result<Routed> {
    let scores = layer.router.scores(x, train)?;
    let (config, bias) = (layer.config(), layer.router.expert_bias.as_ref());
    let selection = config.router.policy().select(&scores, None, bias, &config.routing_options())?;
    match selection.choice {
        Choice::Tokens { expert_index, gate, .. } => {
            Ok(Routed { logits: scores.logits, probs: scores.probs, expert_index, gate })
        }
        Choice::Experts { .. } => Err(Error::Config("the one-hot reference covers token choice only".into())),
    }
}

/// Token-choice MoE output computed with one-hot dispatch and combine tensors:
/// `position = cumsum(one_hot)` in choice-major order gives each assignment its place in the
/// expert's buffer; assignments at `position ≥ C` are dropped.
///
/// # Shapes
/// `x`: `[N, D]`; `routing`: `[N, E]`, `[N, k]`; `valid`: `[N]` bool → `[N, D]`.
///
/// # Errors
/// [`crate::Error::Torch`] on libtorch failure.
pub fn one_hot_moe(
    x: &Tensor,
    routing: &Routed,
    experts: &Experts,
    capacity: Option<i64>,
    valid: Option<&Tensor>,
) -> Result<Tensor> {
    let (n, k) = routing.expert_index.size2()?;
    let e = experts.num_experts();
    let kind = Kind::Float;
    // [k·N, E] one-hot assignments, choice-major.
    let mut one_hot = routing.expert_index.f_transpose(0, 1)?.f_reshape([-1])?.f_one_hot(e)?.cast(kind)?;
    if let Some(v) = valid {
        let v = v.cast(kind)?.f_repeat([k])?.f_unsqueeze(1)?;
        one_hot = one_hot.f_mul(&v)?;
    }
    let position = one_hot.f_cumsum(0, kind)?.f_sub_scalar(1.0)?.f_mul(&one_hot)?; // [k·N, E]
    let c = capacity.unwrap_or_else(|| k * n);
    let keep = one_hot.f_mul(&position.f_lt(c as f64)?.cast(kind)?)?;
    let slot = position.f_clamp(0.0, (c - 1) as f64)?.cast(Kind::Int64)?.f_one_hot(c)?.cast(kind)?;
    let dispatch = keep.f_unsqueeze(-1)?.f_mul(&slot)?; // [k·N, E, C]
    let gate = routing.gate.f_transpose(0, 1)?.f_reshape([-1])?.cast(kind)?;
    let combine = dispatch.f_mul(&gate.f_view([-1, 1, 1])?)?;
    let x_rep = x.cast(kind)?.f_repeat([k, 1])?; // [k·N, D]
    let expert_in = Tensor::f_einsum("aec,ad->ecd", &[&dispatch, &x_rep], None::<i64>)?; // [E, C, D]
    let d = x.size()[1];
    let expert_out = experts
        .forward(&expert_in.f_reshape([e * c, d])?, &GroupSizes::from_host(&vec![c; e as usize], expert_in.device())?)?
        .f_view([e, c, d])?;
    let out = Tensor::f_einsum("aec,ecd->ad", &[&combine, &expert_out], None::<i64>)?;
    Ok(out.f_view([k, n, d])?.f_sum_dim_intlist(0, false, kind)?)
}
