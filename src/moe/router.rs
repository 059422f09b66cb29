//! Router: f32 logits and probabilities (the selection from them is the routing family's, in
//! [`crate::moe::routing`]), optional jitter and the aux-loss-free selection bias.
//!
//! Sources: Switch Transformer (Fedus et al. 2021, arXiv 2101.03961, §2.1–2.2: f32 router,
//! top-1 gate = raw probability, multiplicative jitter); GShard (Lepikhin et al. 2020,
//! arXiv 2006.16668, §2.2: top-2); Mixtral (Jiang et al. 2024, arXiv 2401.04088: top-2 with
//! renormalised gates); DeepSeek-V3 (arXiv 2412.19437, §2.1.2: a per-expert bias added to the
//! scores for selection only, updated by `±γ` after each step).
//!
//! Precision policy: the router runs in f32 whatever the activation dtype (f64
//! stays f64 for gradient checks). Softmax comes before top-k, so gates are probabilities over
//! *all* experts. For `k = 1` the gate is the raw probability of the chosen expert, never
//! renormalised: a renormalised top-1 gate is constantly 1 and the router would get no gradient
//! from the task loss.

use crate::dtype::Cast;
use crate::error::{Error, Result};
use crate::moe::config::MoeConfig;
use crate::moe::routing::RouterScores;
use crate::nn::var_builder::VarBuilder;
use crate::shape::{expect_device, expect_float, expect_shape};
use tch::{Kind, Tensor};

/// Linear router.
///
/// Parameters: `weight` `[E, D]` (trainable); `expert_bias` `[E]` f32 (not trainable, only with
/// aux-loss-free balancing).
#[derive(Debug)]
pub struct Router {
    /// Router weight `W_r`, `[E, D]`.
    pub weight: Tensor,
    /// Selection bias `b` for aux-loss-free balancing, `[E]` f32.
    pub expert_bias: Option<Tensor>,
    jitter: f64,
}

impl Router {
    /// Creates `<path>.weight` `[E, D]` drawn from `N(0, init.std²)`, and `<path>.expert_bias`
    /// (zeros) when `config.balancing` is aux-loss-free.
    ///
    /// # Errors
    /// [`Error::Config`] from [`MoeConfig::validate`].
    pub fn new<'a>(vb: impl Into<VarBuilder<'a>>, d_model: usize, config: &MoeConfig) -> Result<Self> {
        config.validate()?;
        let (vb, e) = (vb.into(), config.num_experts as i64);
        let weight = vb.normal("weight", &[e, d_model as i64], vb.init().std)?;
        let expert_bias =
            if config.balancing.is_aux_free() { Some(vb.path().f_zeros_no_train("expert_bias", &[e])?) } else { None };
        Ok(Self { weight, expert_bias, jitter: config.jitter })
    }

    /// Number of experts `E`.
    pub fn num_experts(&self) -> i64 {
        self.weight.size()[0]
    }

    /// Router logits and probabilities. In training with `jitter = ε > 0`, a *copy* of the input
    /// is multiplied by noise drawn from `U(1 − ε, 1 + ε)` (Switch §2.2) — the experts still see
    /// the clean input.
    ///
    /// # Shapes
    /// `x`: `[N, D]`, any float dtype → `[N, E]` f32 logits and probabilities.
    ///
    /// # Errors
    /// [`Error::Shape`] if `x` is not `[N, D]`, not floating point, or on another device.
    pub fn scores(&self, x: &Tensor, train: bool) -> Result<RouterScores> {
        let d = self.weight.size()[1];
        expect_shape(x, "router input", "[N, D]", &[None, Some(d)])?;
        expect_float(x, "router input")?;
        expect_device(x, "router input", &self.weight)?;
        let mut input = x.accumulated()?;
        if train && self.jitter > 0.0 {
            let noise = input.f_rand_like()?.f_mul_scalar(2.0 * self.jitter)?.f_add_scalar(1.0 - self.jitter)?;
            input = input.f_mul(&noise)?;
        }
        let logits = input.f_linear::<Tensor>(&self.weight.accumulated_like(x)?, None)?;
        let probs = logits.f_softmax(-1, logits.kind())?;
        Ok(RouterScores { logits, probs })
    }

    /// Aux-loss-free balancing update (DeepSeek-V3 §2.1.2): `b_e += rate · sign(mean_e(c) − c_e)`
    /// from the assignment counts `c` of a whole optimizer step. No-op without a bias.
    ///
    /// # Shapes
    /// `counts`: `[E]` (any numeric dtype).
    ///
    /// # Errors
    /// [`Error::Shape`] if `counts` is not `[E]`.
    pub fn update_expert_bias(&self, counts: &Tensor, rate: f64) -> Result<()> {
        let Some(bias) = &self.expert_bias else { return Ok(()) };
        let e = self.num_experts();
        if counts.size() != [e] {
            return Err(Error::Shape(format!("expert counts must have shape [{e}], got {:?}", counts.size())));
        }
        let c = counts.cast(Kind::Float)?.f_to_device(bias.device())?;
        let step = c.f_mean(Kind::Float)?.f_sub(&c)?.f_sign()?.f_mul_scalar(rate)?;
        tch::no_grad(|| -> Result<()> {
            let _ = bias.shallow_clone().f_add_(&step)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moe::config::Balancing;
    use crate::moe::routing::{select_top_k, Choice, RoutingPolicy, TokenChoice};
    use crate::nn::InitScheme;
    use tch::nn;
    use tch::Device;

    const INIT: InitScheme = InitScheme { std: 0.5, residual_std: 0.5, seed: 0 };

    /// Scores, then token choice's selection (the path the layer takes).
    struct Routed {
        logits: Tensor,
        probs: Tensor,
        expert_index: Tensor,
        gate: Tensor,
    }

    fn route(router: &Router, config: &MoeConfig, x: &Tensor, train: bool) -> Routed {
        let scores = router.scores(x, train).unwrap();
        let selection =
            TokenChoice.select(&scores, None, router.expert_bias.as_ref(), &config.routing_options()).unwrap();
        let Choice::Tokens { expert_index, gate, .. } = selection.choice else { panic!("token choice") };
        Routed { logits: scores.logits, probs: scores.probs, expert_index, gate }
    }

    fn router(e: usize, k: usize, normalize: bool) -> (nn::VarStore, Router, MoeConfig) {
        let vs = nn::VarStore::new(Device::Cpu);
        let config = MoeConfig { num_experts: e, top_k: k, normalize_gates: normalize, ..Default::default() };
        let r = Router::new(VarBuilder::new(&vs.root()).with_init(INIT), 4, &config).unwrap();
        (vs, r, config)
    }

    #[test]
    fn top1_gate_is_the_raw_probability_and_gets_gradient() {
        let (_vs, router, config) = router(3, 1, true);
        let x = Tensor::randn([5, 4], (Kind::Float, Device::Cpu));
        let r = route(&router, &config, &x, true);
        let chosen = r.probs.gather(1, &r.expert_index, false);
        assert!(chosen.allclose(&r.gate, 0.0, 0.0, false));
        assert!(r.gate.lt(1.0).all().int64_value(&[]) == 1, "top-1 gate must not be renormalised to 1");
        r.gate.sum(Kind::Float).backward();
        assert!(router.weight.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    #[test]
    fn top2_gates_come_from_the_full_softmax_and_renormalise_only_when_asked() {
        let (_vs, raw, raw_config) = router(5, 2, false);
        let x = Tensor::randn([6, 4], (Kind::Float, Device::Cpu));
        let r = route(&raw, &raw_config, &x, false);
        // Softmax before top-k: the two gates are probabilities over all five experts.
        assert!(r.gate.allclose(&r.probs.gather(1, &r.expert_index, false), 0.0, 0.0, false));
        assert!(r.gate.sum_dim_intlist(-1, false, Kind::Float).lt(1.0).all().int64_value(&[]) == 1);
        let (_vs2, norm, norm_config) = router(5, 2, true);
        let r = route(&norm, &norm_config, &x, false);
        let sums = r.gate.sum_dim_intlist(-1, false, Kind::Float);
        assert!(sums.allclose(&Tensor::ones([6], (Kind::Float, Device::Cpu)), 1e-6, 1e-6, false));
    }

    #[test]
    fn router_runs_in_f32_for_bf16_input() {
        let (_vs, router, config) = router(4, 1, false);
        let r = route(&router, &config, &Tensor::randn([3, 4], (Kind::BFloat16, Device::Cpu)), true);
        assert_eq!(r.logits.kind(), Kind::Float);
        assert_eq!(r.gate.kind(), Kind::Float);
    }

    #[test]
    fn jitter_only_in_training_and_only_on_the_router_copy() {
        let vs = nn::VarStore::new(Device::Cpu);
        let config = MoeConfig { num_experts: 4, jitter: 0.5, ..Default::default() };
        let router = Router::new(VarBuilder::new(&vs.root()).with_init(INIT), 4, &config).unwrap();
        let x = Tensor::randn([8, 4], (Kind::Float, Device::Cpu));
        let before = x.copy();
        let eval1 = router.scores(&x, false).unwrap().logits;
        let eval2 = router.scores(&x, false).unwrap().logits;
        assert!(eval1.equal(&eval2), "no jitter in evaluation");
        let train = router.scores(&x, true).unwrap().logits;
        assert!(!train.equal(&eval1), "jitter in training");
        assert!(x.equal(&before), "the input itself is never modified");
    }

    #[test]
    fn selection_bias_changes_the_choice_but_not_the_gate() {
        let probs = Tensor::from_slice(&[0.6f32, 0.4, 0.3, 0.7]).view([2, 2]);
        let bias = Tensor::from_slice(&[0.0f32, 0.5]);
        let (index, gate) = select_top_k(&probs, 1, false, Some(&bias)).unwrap();
        assert_eq!(Vec::<i64>::try_from(index.view([-1])).unwrap(), vec![1, 1]);
        assert_eq!(Vec::<f32>::try_from(gate.view([-1])).unwrap(), vec![0.4, 0.7]);
    }

    #[test]
    fn aux_free_bias_moves_towards_balance() {
        let vs = nn::VarStore::new(Device::Cpu);
        let config =
            MoeConfig { num_experts: 3, balancing: Balancing::AuxFree { bias_update_rate: 0.1 }, ..Default::default() };
        let router = Router::new(VarBuilder::new(&vs.root()).with_init(INIT), 4, &config).unwrap();
        router.update_expert_bias(&Tensor::from_slice(&[6i64, 3, 0]), 0.1).unwrap();
        let bias = Vec::<f32>::try_from(router.expert_bias.as_ref().unwrap()).unwrap();
        assert_eq!(bias, vec![-0.1, 0.0, 0.1]);
        assert!(!router.expert_bias.as_ref().unwrap().requires_grad());
    }
}
