//! Router auxiliary losses and statistics, computed per MoE layer over real tokens only.
//!
//! The functions return *unscaled* values; the trainer multiplies them by its coefficients
//! (α ≈ 1e-2 for load balancing, β ≈ 1e-3 for the z-loss) and averages them over layers. A
//! `valid` mask `[N]` (true = real token) removes padding from every sum *and* every denominator.

use crate::dtype::{accumulate_kind, Cast};
use crate::error::{Error, Result};
use tch::{Kind, Tensor};

/// Mean over real tokens of a per-token value `[N]` (0 when no token is real).
fn masked_mean(values: &Tensor, valid: Option<&Tensor>) -> Result<Tensor> {
    let acc = values.kind();
    Ok(match valid {
        None => values.f_mean(acc)?,
        Some(v) => {
            let v = v.f_to_device(values.device())?.cast(acc)?;
            values.f_mul(&v)?.f_sum(acc)?.f_div(&v.f_sum(acc)?.f_clamp_min(1.0)?)?
        }
    })
}

fn check(probs_or_logits: &Tensor, valid: Option<&Tensor>, what: &str) -> Result<(i64, i64)> {
    let (n, e) = probs_or_logits.size2()?;
    if let Some(v) = valid {
        if v.size() != [n] || v.kind() != Kind::Bool {
            return Err(Error::Shape(format!(
                "{what}: mask must be a [{n}] bool tensor, got {:?} {:?}",
                v.size(),
                v.kind()
            )));
        }
    }
    Ok((n, e))
}

/// Switch load-balancing loss `E · Σ_e f_e · P_e` (Fedus et al. 2021, arXiv 2101.03961, eq. 4–6),
/// generalised to any k: `f_e = routed_e / Σ routed` is the fraction of real assignments that
/// chose expert `e` *before* capacity (not differentiable), `P_e` the mean router probability of
/// expert `e` over real tokens (differentiable). A perfectly balanced router scores exactly 1
/// for any k; everything on one expert with probability 1 scores `E`.
///
/// # Shapes
/// `probs`: `[N, E]`; `routed_per_expert`: `[E]` (integer); `valid`: `[N]` bool → scalar.
///
/// # Errors
/// [`Error::Shape`] if the shapes disagree.
pub fn load_balancing_loss(probs: &Tensor, routed_per_expert: &Tensor, valid: Option<&Tensor>) -> Result<Tensor> {
    let (_, e) = check(probs, valid, "load_balancing_loss")?;
    if routed_per_expert.size() != [e] {
        return Err(Error::Shape(format!(
            "load_balancing_loss needs counts of shape [{e}], got {:?}",
            routed_per_expert.size()
        )));
    }
    let acc = accumulate_kind(probs);
    let counts = routed_per_expert.f_to_device(probs.device())?.cast(acc)?;
    let fraction = counts.f_div(&counts.f_sum(acc)?.f_clamp_min(1.0)?)?;
    let mean_prob = match valid {
        None => probs.f_mean_dim(0, false, acc)?,
        Some(v) => {
            let v = v.f_to_device(probs.device())?.cast(acc)?;
            probs
                .f_mul(&v.f_unsqueeze(1)?)?
                .f_sum_dim_intlist(0, false, acc)?
                .f_div(&v.f_sum(acc)?.f_clamp_min(1.0)?)?
        }
    };
    Ok(fraction.f_mul(&mean_prob)?.f_sum(acc)?.f_mul_scalar(e as f64)?)
}

/// Router z-loss `mean_t (logsumexp_e h_{t,e})²` over real tokens, on the router *logits*
/// (Zoph et al. 2022, "ST-MoE", arXiv 2202.08906, eq. 5). Keeps logits small, which keeps the f32
/// softmax exact.
///
/// # Shapes
/// `logits`: `[N, E]`; `valid`: `[N]` bool → scalar.
///
/// # Errors
/// [`Error::Shape`] if `logits` is not 2-D or the mask does not match.
pub fn router_z_loss(logits: &Tensor, valid: Option<&Tensor>) -> Result<Tensor> {
    check(logits, valid, "router_z_loss")?;
    let acc = accumulate_kind(logits);
    let lse = logits.cast(acc)?.f_logsumexp(-1, false)?;
    masked_mean(&lse.f_square()?, valid)
}

/// Mean entropy of the router distribution over real tokens, in nats (`ln E` for a uniform
/// router, 0 for a one-hot one). Detached: a metric, not a loss.
///
/// # Shapes
/// `probs`: `[N, E]`; `valid`: `[N]` bool → scalar.
///
/// # Errors
/// [`Error::Shape`] if the mask does not match.
pub fn router_entropy(probs: &Tensor, valid: Option<&Tensor>) -> Result<Tensor> {
    check(probs, valid, "router_entropy")?;
    let acc = accumulate_kind(probs);
    let p = probs.f_detach()?.cast(acc)?;
    let plogp = p.f_mul(&p.f_clamp_min(1e-30)?.f_log()?)?;
    masked_mean(&plogp.f_sum_dim_intlist(-1, false, acc)?.f_neg()?, valid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn t(v: &[f64], shape: &[i64]) -> Tensor {
        Tensor::from_slice(v).view(shape)
    }

    #[test]
    fn load_balancing_by_hand() {
        // N=2, E=2. probs (0.9, 0.1), (0.2, 0.8); both tokens routed to expert 0:
        // f = (1, 0), P = (0.55, 0.45) -> 2 · (1·0.55 + 0·0.45) = 1.1.
        let probs = t(&[0.9, 0.1, 0.2, 0.8], &[2, 2]);
        let loss = load_balancing_loss(&probs, &Tensor::from_slice(&[2i64, 0]), None).unwrap();
        assert!((loss.double_value(&[]) - 1.1).abs() < 1e-12);
    }

    #[test]
    fn balanced_router_scores_one_for_any_k() {
        for k in [1i64, 2, 4] {
            let (n, e) = (8, 4);
            let probs = Tensor::full([n, e], 1.0 / e as f64, (Kind::Double, Device::Cpu));
            let counts = Tensor::full([e], k * n / e, (Kind::Int64, Device::Cpu));
            let loss = load_balancing_loss(&probs, &counts, None).unwrap();
            assert!((loss.double_value(&[]) - 1.0).abs() < 1e-12, "k={k}");
        }
    }

    #[test]
    fn padding_is_left_out_of_every_loss_and_denominator() {
        // Real tokens 0 and 2; token 1 is padding with an extreme distribution and logits.
        let probs = t(&[0.9, 0.1, 0.0, 1.0, 0.2, 0.8], &[3, 2]);
        let logits = t(&[1.0, 0.0, 50.0, -50.0, 0.0, 3.0], &[3, 2]);
        let valid = Tensor::from_slice(&[true, false, true]);
        let real = Tensor::from_slice(&[0i64, 2]);
        let (p_real, l_real) = (probs.index_select(0, &real), logits.index_select(0, &real));
        let counts = Tensor::from_slice(&[1i64, 1]); // real assignments only
        let masked = load_balancing_loss(&probs, &counts, Some(&valid)).unwrap().double_value(&[]);
        let unmasked = load_balancing_loss(&p_real, &counts, None).unwrap().double_value(&[]);
        assert!((masked - unmasked).abs() < 1e-12);
        let masked = router_z_loss(&logits, Some(&valid)).unwrap().double_value(&[]);
        assert!((masked - router_z_loss(&l_real, None).unwrap().double_value(&[])).abs() < 1e-12);
        let masked = router_entropy(&probs, Some(&valid)).unwrap().double_value(&[]);
        assert!((masked - router_entropy(&p_real, None).unwrap().double_value(&[])).abs() < 1e-12);
    }

    #[test]
    fn z_loss_is_on_logits_by_hand() {
        // logsumexp(0, 0) = ln 2; logsumexp(ln 3, 0) = ln 4. Mean of squares. On probabilities
        // (0.5, 0.5), (0.75, 0.25) it would be different.
        let logits = t(&[0.0, 0.0, 3f64.ln(), 0.0], &[2, 2]);
        let expected = (2f64.ln().powi(2) + 4f64.ln().powi(2)) / 2.0;
        assert!((router_z_loss(&logits, None).unwrap().double_value(&[]) - expected).abs() < 1e-12);
    }

    #[test]
    fn entropy_of_uniform_and_one_hot() {
        let uniform = Tensor::full([3, 4], 0.25, (Kind::Double, Device::Cpu));
        assert!((router_entropy(&uniform, None).unwrap().double_value(&[]) - 4f64.ln()).abs() < 1e-12);
        assert!(router_entropy(&t(&[1.0, 0.0, 0.0, 1.0], &[2, 2]), None).unwrap().double_value(&[]).abs() < 1e-12);
    }
}
