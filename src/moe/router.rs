//! Token-choice top-k router (Switch Transformer, Fedus et al. 2021, arXiv 2101.03961, §2.1;
//! GShard, Lepikhin et al. 2020, arXiv 2006.16668, §2.2).
//!
//! Precision policy (DESIGN §8.9): the router runs in f32 whatever the activation dtype — the
//! input is cast, the logits, probabilities and gates are f32 (f64 inputs stay f64 for gradient
//! checks). Softmax comes before top-k. For `k = 1` the gate is the raw probability of the chosen
//! expert (never renormalised: a renormalised top-1 gate is constantly 1 and the router would get
//! no gradient from the task loss).

use crate::error::{ensure_config, Result};
use crate::nn::init::InitScheme;
use crate::shape::{accumulate_kind, expect_device, expect_float, expect_shape};
use tch::{nn, Tensor};

/// The router's decision for a batch of `N` tokens routed among `E` experts, `k` each.
#[derive(Debug)]
pub struct Routing {
    /// Router logits `h = x · W_rᵀ`, `[N, E]`, f32.
    pub logits: Tensor,
    /// Router probabilities `softmax(h)`, `[N, E]`, f32.
    pub probs: Tensor,
    /// Chosen experts, `[N, k]`, i64, column 0 the most probable.
    pub expert_index: Tensor,
    /// Gate weights of the chosen experts, `[N, k]`, f32 (raw probabilities, or renormalised to
    /// sum to 1 over the k choices when `normalize_gates` is set and `k > 1`).
    pub gate: Tensor,
}

/// Linear router with softmax and top-k selection.
///
/// Parameters: `weight` `[E, D]`.
#[derive(Debug)]
pub struct Router {
    /// Router weight `W_r`, `[E, D]`.
    pub weight: Tensor,
    num_experts: i64,
    top_k: i64,
    normalize_gates: bool,
}

impl Router {
    /// Creates `<path>.weight` `[num_experts, d_model]` drawn from `N(0, init.std²)`.
    ///
    /// # Errors
    /// [`crate::Error::Config`] if `num_experts` is 0 or `top_k` is not in `1..=num_experts`.
    pub fn new(
        path: &nn::Path,
        d_model: usize,
        num_experts: usize,
        top_k: usize,
        normalize_gates: bool,
        init: &InitScheme,
    ) -> Result<Self> {
        ensure_config(num_experts > 0, || "num_experts (0) must be positive".into())?;
        ensure_config(top_k >= 1 && top_k <= num_experts, || {
            format!("top_k ({top_k}) must be between 1 and num_experts ({num_experts})")
        })?;
        let weight = init.normal(path, "weight", &[num_experts as i64, d_model as i64], init.std)?;
        Ok(Self { weight, num_experts: num_experts as i64, top_k: top_k as i64, normalize_gates })
    }

    /// Routes each token to its top-k experts.
    ///
    /// # Shapes
    /// `x`: `[N, D]` (any float dtype) → [`Routing`] with `[N, E]` and `[N, k]` tensors.
    ///
    /// # Errors
    /// [`crate::Error::Shape`] if `x` is not `[N, D]`, not floating point, or on another device.
    pub fn route(&self, x: &Tensor) -> Result<Routing> {
        let d = self.weight.size()[1];
        expect_shape(x, "router input", "[N, D]", &[None, Some(d)])?;
        expect_float(x, "router input")?;
        expect_device(x, "router input", &self.weight)?;
        let acc = accumulate_kind(x);
        let logits = x.f_to_kind(acc)?.f_linear::<Tensor>(&self.weight.f_to_kind(acc)?, None)?;
        let probs = logits.f_softmax(-1, acc)?;
        let (mut gate, expert_index) = probs.f_topk(self.top_k, -1, true, true)?;
        if self.normalize_gates && self.top_k > 1 {
            gate = gate.f_div(&gate.f_sum_dim_intlist(-1, true, acc)?)?;
        }
        Ok(Routing { logits, probs, expert_index, gate })
    }

    /// Number of experts `E`.
    pub fn num_experts(&self) -> i64 {
        self.num_experts
    }

    /// Experts per token `k`.
    pub fn top_k(&self) -> i64 {
        self.top_k
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    const STD: InitScheme = InitScheme { std: 0.5, residual_std: 0.5, seed: 0 };

    #[test]
    fn top1_gate_is_the_raw_probability_and_gets_gradient() {
        let vs = nn::VarStore::new(Device::Cpu);
        let router = Router::new(&vs.root(), 4, 3, 1, true, &STD).unwrap();
        let x = Tensor::randn([5, 4], (Kind::Float, Device::Cpu));
        let r = router.route(&x).unwrap();
        let chosen = r.probs.gather(1, &r.expert_index, false);
        assert!(chosen.allclose(&r.gate, 0.0, 0.0, false));
        assert!(r.gate.lt(1.0).all().int64_value(&[]) == 1, "top-1 gate must not be renormalised to 1");
        r.gate.sum(Kind::Float).backward();
        assert!(router.weight.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    #[test]
    fn top2_gates_renormalise_when_asked() {
        let vs = nn::VarStore::new(Device::Cpu);
        let router = Router::new(&vs.root(), 4, 5, 2, true, &STD).unwrap();
        let r = router.route(&Tensor::randn([6, 4], (Kind::Float, Device::Cpu))).unwrap();
        let sums = r.gate.sum_dim_intlist(-1, false, Kind::Float);
        assert!(sums.allclose(&Tensor::ones([6], (Kind::Float, Device::Cpu)), 1e-6, 1e-6, false));
    }

    #[test]
    fn router_runs_in_f32_for_bf16_input() {
        let vs = nn::VarStore::new(Device::Cpu);
        let router = Router::new(&vs.root(), 8, 4, 1, false, &STD).unwrap();
        let x = Tensor::randn([3, 8], (Kind::BFloat16, Device::Cpu));
        let r = router.route(&x).unwrap();
        assert_eq!(r.logits.kind(), Kind::Float);
        assert_eq!(r.gate.kind(), Kind::Float);
    }

    #[test]
    fn invalid_top_k_is_named() {
        let vs = nn::VarStore::new(Device::Cpu);
        let err = Router::new(&vs.root(), 4, 2, 3, false, &STD).unwrap_err();
        assert_eq!(err.to_string(), "invalid config: top_k (3) must be between 1 and num_experts (2)");
    }
}
