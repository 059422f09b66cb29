//! Router auxiliary losses and statistics, computed per MoE layer (DESIGN §5).
//!
//! The functions return *unscaled* values; the trainer multiplies them by its coefficients
//! (α ≈ 1e-2 for load balancing, β ≈ 1e-3 for the z-loss) and averages them over layers.

use crate::error::{Error, Result};
use crate::shape::accumulate_kind;
use tch::Tensor;

/// Switch load-balancing loss `E · Σ_e f_e · P_e` (Fedus et al. 2021, arXiv 2101.03961, eq. 4–6).
///
/// `f_e = routed_per_expert[e] / (k · N)` is the fraction of the `k·N` assignments that chose
/// expert `e` *before* capacity (not differentiable); `P_e` is the mean router probability of
/// expert `e` over the `N` tokens (differentiable). A perfectly balanced router scores exactly 1
/// for any `k`; a router sending everything to one expert with probability 1 scores `E`.
///
/// # Shapes
/// `probs`: `[N, E]`; `routed_per_expert`: `[E]` (integer) → scalar in `probs`' dtype.
///
/// # Errors
/// [`Error::Shape`] if the shapes disagree or `N = 0`.
pub fn load_balancing_loss(probs: &Tensor, routed_per_expert: &Tensor, top_k: i64) -> Result<Tensor> {
    let (n, e) = probs.size2()?;
    if routed_per_expert.size() != [e] || n == 0 || top_k < 1 {
        return Err(Error::Shape(format!(
            "load_balancing_loss needs probs [N>0, E] and counts [E] with top_k >= 1, got {:?}, {:?}, top_k {top_k}",
            probs.size(),
            routed_per_expert.size()
        )));
    }
    let acc = accumulate_kind(probs);
    let fraction = routed_per_expert.f_to_kind(acc)?.f_div_scalar((top_k * n) as f64)?;
    let mean_prob = probs.f_mean_dim(0, false, acc)?;
    Ok(fraction.f_mul(&mean_prob)?.f_sum(acc)?.f_mul_scalar(e as f64)?)
}

/// Router z-loss `mean_t (logsumexp_e h_{t,e})²` on the router logits (Zoph et al. 2022,
/// "ST-MoE", arXiv 2202.08906, eq. 5). Keeps logits small, which keeps the f32 softmax exact.
///
/// # Shapes
/// `logits`: `[N, E]` → scalar.
///
/// # Errors
/// [`Error::Shape`] if `logits` is not 2-D with `N > 0`.
pub fn router_z_loss(logits: &Tensor) -> Result<Tensor> {
    let (n, _) = logits.size2()?;
    if n == 0 {
        return Err(Error::Shape("router_z_loss needs at least one token".into()));
    }
    let acc = accumulate_kind(logits);
    Ok(logits.f_to_kind(acc)?.f_logsumexp(-1, false)?.f_square()?.f_mean(acc)?)
}

/// Mean entropy of the router distribution per token, in nats (`ln E` for a uniform router,
/// 0 for a one-hot one). Detached: a metric, not a loss.
///
/// # Shapes
/// `probs`: `[N, E]` → scalar.
///
/// # Errors
/// [`Error::Torch`] on libtorch failure.
pub fn router_entropy(probs: &Tensor) -> Result<Tensor> {
    let acc = accumulate_kind(probs);
    let p = probs.f_detach()?.f_to_kind(acc)?;
    let plogp = p.f_mul(&p.f_clamp_min(1e-30)?.f_log()?)?;
    Ok(plogp.f_sum_dim_intlist(-1, false, acc)?.f_neg()?.f_mean(acc)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn t(v: &[f64], shape: &[i64]) -> Tensor {
        Tensor::from_slice(v).view(shape)
    }

    #[test]
    fn load_balancing_by_hand() {
        // N=2 tokens, E=2 experts. probs rows (0.9, 0.1), (0.2, 0.8); both tokens routed to
        // expert 0 -> f = (1, 0), P = (0.55, 0.45) -> loss = 2 * (1*0.55 + 0*0.45) = 1.1.
        let probs = t(&[0.9, 0.1, 0.2, 0.8], &[2, 2]);
        let counts = Tensor::from_slice(&[2i64, 0]);
        let loss = load_balancing_loss(&probs, &counts, 1).unwrap();
        assert!((loss.double_value(&[]) - 1.1).abs() < 1e-12);
    }

    #[test]
    fn balanced_router_scores_one_for_any_k() {
        for k in [1i64, 2, 4] {
            let (n, e) = (8, 4);
            let probs = Tensor::full([n, e], 1.0 / e as f64, (Kind::Double, Device::Cpu));
            let counts = Tensor::full([e], k * n / e, (Kind::Int64, Device::Cpu));
            let loss = load_balancing_loss(&probs, &counts, k).unwrap();
            assert!((loss.double_value(&[]) - 1.0).abs() < 1e-12, "k={k}");
        }
    }

    #[test]
    fn z_loss_by_hand() {
        // logsumexp(0, 0) = ln 2; logsumexp(ln 3, 0) = ln 4. mean of squares.
        let logits = t(&[0.0, 0.0, 3f64.ln(), 0.0], &[2, 2]);
        let expected = (2f64.ln().powi(2) + 4f64.ln().powi(2)) / 2.0;
        assert!((router_z_loss(&logits).unwrap().double_value(&[]) - expected).abs() < 1e-12);
    }

    #[test]
    fn entropy_of_uniform_and_one_hot() {
        let uniform = Tensor::full([3, 4], 0.25, (Kind::Double, Device::Cpu));
        assert!((router_entropy(&uniform).unwrap().double_value(&[]) - 4f64.ln()).abs() < 1e-12);
        let one_hot = t(&[1.0, 0.0, 0.0, 1.0], &[2, 2]);
        assert!(router_entropy(&one_hot).unwrap().double_value(&[]).abs() < 1e-12);
    }
}
