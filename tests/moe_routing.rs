//! Routing families, masks, and one test per known MoE failure class (issue: "immune to the
//! known failure classes").

mod common;

use altup_moe::model::{LayerAux, ModelAux, StackKind};
use altup_moe::moe::{
    load_balancing_loss, Balancing, CapacityPriority, ExpertBackend, Experts, MoeConfig, MoeLayer, RouterKind,
};
use altup_moe::nn::{Activation, InitScheme, VarBuilder};
use altup_moe::testing::{one_hot_moe, route};
use common::device;
use tch::{nn::VarStore, Kind, Tensor};

const INIT: InitScheme = InitScheme { std: 0.3, residual_std: 0.3, seed: 5 };
const D: i64 = 8;

fn layer(config: MoeConfig) -> (VarStore, MoeLayer) {
    let vs = VarStore::new(device());
    let layer = MoeLayer::new(VarBuilder::new(&vs.root()).with_init(INIT), D as usize, &config).unwrap();
    (vs, layer)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Expert `e`'s output on one token row, computed with plain matmuls from the batched weights.
fn expert_by_hand(experts: &Experts, e: i64, x: &Tensor, activation: Activation) -> Tensor {
    let h = x.matmul(&experts.w_in.get(e));
    let a = match activation {
        Activation::Gelu => h.gelu("none"),
        Activation::Relu => h.relu(),
        Activation::SwiGlu => x.matmul(&experts.w_gate.as_ref().unwrap().get(e)).silu() * &h,
    };
    a.matmul(&experts.w_out.get(e))
}

/// Each token's output equals the gated sum of its top-k experts computed one by one, with gates
/// taken from the softmax over *all* experts (top-k after softmax), renormalised only if asked.
#[test]
fn output_is_the_gated_sum_of_the_chosen_experts() {
    for (k, normalize, activation) in [
        (1, false, Activation::Gelu),
        (2, false, Activation::SwiGlu),
        (2, true, Activation::Relu),
        (3, false, Activation::Gelu),
    ] {
        let config = MoeConfig {
            num_experts: 5,
            top_k: k,
            normalize_gates: normalize,
            activation,
            d_ff: 12,
            ..Default::default()
        };
        let (_vs, moe) = layer(config);
        let x = Tensor::randn([6, D], (Kind::Float, device()));
        let (y, _) = moe.forward_t(&x, true).unwrap();
        let probs = x.linear::<Tensor>(&moe.router.weight, None).softmax(-1, Kind::Float);
        let (top, index) = probs.topk(k as i64, -1, true, true);
        for t in 0..6 {
            let xt = x.get(t).unsqueeze(0);
            let denom = if normalize { top.get(t).sum(Kind::Float).double_value(&[]) } else { 1.0 };
            let mut expected = Tensor::zeros([1, D], (Kind::Float, device()));
            for c in 0..k as i64 {
                let e = index.int64_value(&[t, c]);
                let g = top.double_value(&[t, c]) / denom;
                expected += expert_by_hand(&moe.experts, e, &xt, activation) * g;
            }
            assert!(max_diff(&y.get(t).unsqueeze(0), &expected) < 1e-5, "k={k} token {t}");
        }
    }
}

/// Sort-based dispatch equals the one-hot einsum reference, with and without capacity drops,
/// for k = 1 and 2, with and without a padding mask.
#[test]
fn sort_dispatch_equals_one_hot_reference() {
    for (k, cf) in [(1, None), (1, Some(0.75)), (2, None), (2, Some(1.0))] {
        for masked in [false, true] {
            let config = MoeConfig {
                num_experts: 4,
                top_k: k,
                capacity_factor: cf,
                min_capacity: 1,
                d_ff: 16,
                ..Default::default()
            };
            let (_vs, moe) = layer(config);
            let x = Tensor::randn([13, D], (Kind::Float, device()));
            let mask = Tensor::from_slice(&[1i64, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1]).to_device(device()).ne(0);
            let mask = masked.then_some(mask);
            let (y, aux) = moe.forward_masked_t(&x, mask.as_ref(), true).unwrap();
            let routing = route(&moe, &x, true).unwrap();
            let reference = one_hot_moe(&x, &routing, &moe.experts, aux.capacity, mask.as_ref()).unwrap();
            assert!(max_diff(&y, &reference) < 1e-5, "k={k} cf={cf:?} masked={masked}: {}", max_diff(&y, &reference));
        }
    }
}

/// Statistics pooled across layers would hide each layer's imbalance: two layers that send every
/// token to *different* single experts look balanced when their counts are pooled, while the
/// per-layer losses (averaged by `ModelAux`) report both layers as fully imbalanced.
#[test]
fn per_layer_losses_are_not_pooled_across_layers() {
    let x = Tensor::zeros([6, D], (Kind::Float, device()));
    let _ = x.select(1, 0).fill_(4.0);
    let mut layers = Vec::new();
    let mut probs = Vec::new();
    for (index, hot) in [(0usize, 0i64), (1, 1)] {
        let (_vs, moe) = layer(MoeConfig { num_experts: 2, d_ff: 8, ..Default::default() });
        tch::no_grad(|| {
            let mut w = moe.router.weight.shallow_clone();
            let _ = w.zero_();
            let _ = w.get(hot).get(0).fill_(1.0); // logit 4 for expert `hot`, 0 for the other
        });
        let (_, aux) = moe.forward_t(&x, true).unwrap();
        probs.push(moe.router.scores(&x, true).unwrap().probs);
        layers.push(LayerAux { stack: StackKind::Decoder, layer: index, moe: Some(aux) });
    }
    let aux = ModelAux { layers };
    let per_layer: Vec<f64> = aux.moe_layers().map(|(_, m)| m.load_balancing_loss.double_value(&[])).collect();
    // Each layer: f = (1, 0), P_hot = sigmoid(4) ≈ 0.982 -> 2 · 0.982 ≈ 1.96.
    let expected = 2.0 / (1.0 + (-4f64).exp());
    for l in &per_layer {
        assert!((l - expected).abs() < 1e-5, "{per_layer:?}");
    }
    let mean = aux.load_balancing_loss().unwrap().unwrap().double_value(&[]);
    assert!((mean - expected).abs() < 1e-5);
    // What pooling would have reported: counts (6, 6) and mean probabilities (0.5, 0.5) -> 1.0.
    let pooled_counts = Tensor::from_slice(&[6i64, 6]).to_device(device());
    let pooled = load_balancing_loss(&Tensor::cat(&probs, 0), &pooled_counts, None).unwrap().double_value(&[]);
    assert!((pooled - 1.0).abs() < 1e-5, "pooled statistics look balanced: {pooled}");
}

/// With top-1 the gate is the raw probability even when `normalize_gates` is on, so the task loss
/// alone (no auxiliary loss) gives the router a gradient.
#[test]
fn top1_router_gets_gradient_from_the_task_loss_alone() {
    let (_vs, moe) =
        layer(MoeConfig { num_experts: 4, top_k: 1, normalize_gates: true, d_ff: 16, ..Default::default() });
    let x = Tensor::randn([2, 5, D], (Kind::Float, device()));
    let (y, _) = moe.forward_t(&x, true).unwrap();
    (y * Tensor::randn([2, 5, D], (Kind::Float, device()))).sum(Kind::Float).backward();
    let g = moe.router.weight.grad().abs().sum(Kind::Float).double_value(&[]);
    assert!(g > 1e-6, "router gradient from the task loss is {g}");
}

/// Padding takes no capacity, gets an exact-zero output, and is left out of every loss and
/// statistic: a masked batch gives exactly what the real tokens alone give.
#[test]
fn padding_is_not_counted_in_losses_or_capacity() {
    for router in [RouterKind::TokenChoice, RouterKind::ExpertChoice] {
        let config = MoeConfig {
            num_experts: 4,
            top_k: if router == RouterKind::TokenChoice { 2 } else { 1 },
            router,
            capacity_factor: Some(1.0),
            eval_capacity_factor: Some(1.0),
            min_capacity: 1,
            d_ff: 16,
            num_shared_experts: 1,
            ..Default::default()
        };
        let (_vs, moe) = layer(config);
        let x = Tensor::randn([2, 6, D], (Kind::Float, device()));
        let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0]).view([2, 6]).to_device(device());
        let (y, aux) = moe.forward_masked_t(&x, Some(&mask), true).unwrap();
        let real_index = Tensor::from_slice(&[0i64, 1, 2, 3, 6, 7, 8]).to_device(device());
        let real = x.view([12, D]).index_select(0, &real_index);
        let (y_real, aux_real) = moe.forward_t(&real, true).unwrap();
        let y_flat = y.view([12, D]);
        assert!(max_diff(&y_flat.index_select(0, &real_index), &y_real) < 1e-6, "{router:?}");
        let pad_index = Tensor::from_slice(&[4i64, 5, 9, 10, 11]).to_device(device());
        assert_eq!(y_flat.index_select(0, &pad_index).abs().max().double_value(&[]), 0.0, "{router:?}: padding output");
        assert_eq!(aux.capacity, aux_real.capacity, "{router:?}");
        assert_eq!(aux.num_real_tokens, 7);
        assert!(aux.assignments_per_expert.equal(&aux_real.assignments_per_expert), "{router:?}");
        assert_eq!(aux.dropped_fraction.double_value(&[]), aux_real.dropped_fraction.double_value(&[]));
        for (a, b, what) in [
            (&aux.load_balancing_loss, &aux_real.load_balancing_loss, "balance"),
            (&aux.z_loss, &aux_real.z_loss, "z-loss"),
            (&aux.router_entropy, &aux_real.router_entropy, "entropy"),
        ] {
            assert!((a.double_value(&[]) - b.double_value(&[])).abs() < 1e-6, "{router:?} {what}");
        }
    }
}

/// The z-loss is computed on the router logits, not on the probabilities.
#[test]
fn z_loss_uses_logits() {
    let (_vs, moe) = layer(MoeConfig { num_experts: 3, d_ff: 8, ..Default::default() });
    let x = Tensor::randn([7, D], (Kind::Float, device())) * 5.0;
    let (_, aux) = moe.forward_t(&x, false).unwrap();
    let logits = x.linear::<Tensor>(&moe.router.weight, None);
    let on_logits = logits.logsumexp([-1], false).square().mean(Kind::Float).double_value(&[]);
    let on_probs = logits.softmax(-1, Kind::Float).logsumexp([-1], false).square().mean(Kind::Float).double_value(&[]);
    let z = aux.z_loss.double_value(&[]);
    assert!((z - on_logits).abs() < 1e-5 * on_logits.max(1.0), "{z} vs {on_logits}");
    assert!((z - on_probs).abs() > 1e-3, "z-loss must not be computed on probabilities");
}

/// Two runs of the same layer on the same input are bitwise equal (deterministic combine, k = 2,
/// duplicate tokens across experts).
#[test]
fn combine_is_deterministic() {
    for router in [RouterKind::TokenChoice, RouterKind::ExpertChoice] {
        let (_vs, moe) = layer(MoeConfig {
            num_experts: 4,
            top_k: if router == RouterKind::TokenChoice { 2 } else { 1 },
            router,
            capacity_factor: Some(1.5),
            eval_capacity_factor: Some(1.5),
            d_ff: 16,
            ..Default::default()
        });
        let x = Tensor::randn([3, 9, D], (Kind::Float, device()));
        let g = Tensor::randn([3, 9, D], (Kind::Float, device()));
        let run = || {
            let xg = x.detach().copy().set_requires_grad(true);
            let (y, _) = moe.forward_t(&xg, true).unwrap();
            (&y * &g).sum(Kind::Float).backward();
            (y.detach(), xg.grad())
        };
        let (y1, g1) = run();
        let (y2, g2) = run();
        assert!(y1.equal(&y2) && g1.equal(&g2), "{router:?}");
    }
}

/// `C = ceil(cf·k·T/E)`: with 10 tokens, 4 experts and cf = 1, C = ceil(2.5) = 3, so three
/// tokens on one expert are all kept (flooring to 2 would drop one).
#[test]
fn capacity_rounding_does_not_drop_tokens() {
    let (_vs, moe) =
        layer(MoeConfig { num_experts: 4, capacity_factor: Some(1.0), min_capacity: 1, d_ff: 8, ..Default::default() });
    tch::no_grad(|| {
        let mut w = moe.router.weight.shallow_clone();
        let _ = w.zero_();
        for e in 0..4 {
            let _ = w.get(e).get(e).fill_(20.0);
        }
    });
    // Tokens are unit vectors: tokens 0-2 -> expert 0, 3-5 -> 1, 6-8 -> 2, 9 -> 3.
    let experts = [0i64, 0, 0, 1, 1, 1, 2, 2, 2, 3];
    let x = Tensor::from_slice(&experts).to_device(device()).one_hot(D).to_kind(Kind::Float);
    let (_, aux) = moe.forward_t(&x, true).unwrap();
    assert_eq!(aux.capacity, Some(3));
    assert_eq!(Vec::<i64>::try_from(&aux.assignments_per_expert).unwrap(), vec![3, 3, 3, 1]);
    assert_eq!(aux.dropped_fraction.double_value(&[]), 0.0);
}

/// Expert choice: every expert takes exactly C tokens, gated by its probability; a token's output
/// is the sum over the experts that picked it.
#[test]
fn expert_choice_output_by_hand() {
    let config = MoeConfig { num_experts: 3, d_ff: 8, ..MoeConfig::expert_choice(3, 8) };
    let (_vs, moe) = layer(config);
    let x = Tensor::randn([6, D], (Kind::Float, device()));
    let (y, aux) = moe.forward_t(&x, true).unwrap();
    let c = 4; // ceil(2 · 6 / 3)
    assert_eq!(aux.capacity, Some(c));
    assert_eq!(Vec::<i64>::try_from(&aux.assignments_per_expert).unwrap(), vec![c, c, c]);
    let probs = x.linear::<Tensor>(&moe.router.weight, None).softmax(-1, Kind::Float);
    let (_, picked) = probs.transpose(0, 1).topk(c, -1, true, true);
    let expected = Tensor::zeros([6, D], (Kind::Float, device()));
    for e in 0..3 {
        for j in 0..c {
            let t = picked.int64_value(&[e, j]);
            let contribution =
                expert_by_hand(&moe.experts, e, &x.get(t).unsqueeze(0), Activation::Gelu) * probs.double_value(&[t, e]);
            let mut row = expected.get(t);
            row += contribution.squeeze_dim(0);
        }
    }
    assert!(max_diff(&y, &expected) < 1e-5);
}

/// Batch prioritized routing keeps the most confident tokens when capacity binds.
#[test]
fn batch_prioritized_routing_keeps_confident_tokens() {
    let (_vs, moe) = layer(MoeConfig {
        num_experts: 2,
        capacity_factor: Some(0.5),
        min_capacity: 1,
        priority: CapacityPriority::Confidence,
        d_ff: 8,
        ..Default::default()
    });
    tch::no_grad(|| {
        let mut w = moe.router.weight.shallow_clone();
        let _ = w.zero_();
        let _ = w.get(0).get(0).fill_(1.0);
    });
    // All tokens prefer expert 0 (positive channel 0), with increasing confidence; C = ceil(0.5·6/2) = 2.
    let strength = Tensor::from_slice(&[0.5f32, 3.0, 1.0, 4.0, 2.0, 0.7]).to_device(device());
    let x = Tensor::zeros([6, D], (Kind::Float, device()));
    x.select(1, 0).copy_(&strength);
    let (y, aux) = moe.forward_t(&x, true).unwrap();
    assert_eq!(aux.capacity, Some(2));
    let served: Vec<bool> = (0..6).map(|t| y.get(t).abs().sum(Kind::Float).double_value(&[]) > 0.0).collect();
    assert_eq!(served, vec![false, true, false, true, false, false]);
}

/// Shared experts are added to the routed output for every token.
#[test]
fn shared_experts_add_to_the_routed_output() {
    let config = MoeConfig { num_experts: 4, num_shared_experts: 2, d_ff: 8, ..Default::default() };
    let (_vs, moe) = layer(config);
    let shared = moe.shared.as_ref().unwrap();
    assert_eq!(shared.w_in.weight.size(), vec![16, D]);
    let x = Tensor::randn([5, D], (Kind::Float, device()));
    let (y, _) = moe.forward_t(&x, true).unwrap();
    let routing = route(&moe, &x, true).unwrap();
    let routed = one_hot_moe(&x, &routing, &moe.experts, None, None).unwrap();
    assert!(max_diff(&y, &(routed + shared.forward(&x).unwrap())) < 1e-5);
}

/// Aux-loss-free balancing: the bias moves against the load after a step and only affects selection.
#[test]
fn aux_free_bias_balances_selection() {
    let config = MoeConfig {
        num_experts: 2,
        balancing: Balancing::AuxFree { bias_update_rate: 0.6 },
        d_ff: 8,
        ..Default::default()
    };
    let (vs, moe) = layer(config);
    tch::no_grad(|| {
        let mut w = moe.router.weight.shallow_clone();
        let _ = w.zero_();
        let _ = w.get(0).get(0).fill_(1.0);
    });
    let x = Tensor::zeros([4, D], (Kind::Float, device()));
    let _ = x.select(1, 0).fill_(0.5); // p(expert 0) = sigmoid(0.5) ≈ 0.62 for every token
    let (_, aux) = moe.forward_t(&x, true).unwrap();
    assert_eq!(Vec::<i64>::try_from(&aux.assignments_per_expert).unwrap(), vec![4, 0]);
    moe.update_expert_bias(&aux.assignments_per_expert).unwrap();
    let (y, aux) = moe.forward_t(&x, true).unwrap();
    assert_eq!(
        Vec::<i64>::try_from(&aux.assignments_per_expert).unwrap(),
        vec![0, 4],
        "bias +0.6 on expert 1 flips the choice"
    );
    // The gate is still the unbiased probability of expert 1 (≈ 0.38).
    let routing = route(&moe, &x, true).unwrap();
    assert!((routing.gate.double_value(&[0, 0]) - (1.0 / (1.0 + 0.5f64.exp()))).abs() < 1e-6);
    assert!(y.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    assert!(vs.variables().contains_key("router.expert_bias"), "the bias is part of the checkpoint");
    assert!(!vs.trainable_variables().iter().any(|t| t.size() == [2]), "the bias is not trained by the optimizer");
}

/// Expert-choice configs need a capacity factor; invalid MoE options are named.
#[test]
fn invalid_moe_options_are_named() {
    let cases = [
        (
            MoeConfig { router: RouterKind::ExpertChoice, ..Default::default() },
            "expert_choice routing needs a capacity_factor",
        ),
        (MoeConfig { jitter: 1.5, ..Default::default() }, "jitter (1.5) must be in [0, 1)"),
        (
            MoeConfig { balancing: Balancing::AuxFree { bias_update_rate: 0.0 }, ..Default::default() },
            "bias_update_rate (0) must be positive and finite",
        ),
    ];
    for (config, expected) in cases {
        let vs = VarStore::new(device());
        let err = MoeLayer::new(VarBuilder::new(&vs.root()).with_init(INIT), 8, &config).unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
    }
    let (_vs, moe) = layer(MoeConfig::default());
    let err = moe
        .forward_masked_t(
            &Tensor::zeros([2, 3, D], (Kind::Float, device())),
            Some(&Tensor::ones([3, 2], (Kind::Int64, device()))),
            true,
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "shape error: token mask must have shape [2, 3], got [3, 2]");
    for router in [RouterKind::TokenChoice, RouterKind::ExpertChoice] {
        let cf = Some(2.0);
        let (_vs, moe) =
            layer(MoeConfig { router, capacity_factor: cf, eval_capacity_factor: cf, ..Default::default() });
        let err = moe.forward_t(&Tensor::zeros([0, 4, D], (Kind::Float, device())), true).unwrap_err();
        assert_eq!(err.to_string(), "shape error: MoE input holds no tokens (shape [0, 4, 8])", "{router:?}");
    }
}

/// Fine-grained experts: many small experts, grouped matmul and loop agree.
#[test]
fn fine_grained_experts_grouped_equals_loop() {
    let make = |backend| {
        layer(MoeConfig { num_experts: 64, top_k: 4, d_ff: 4, backend, num_shared_experts: 2, ..Default::default() })
    };
    let (_a, grouped) = make(ExpertBackend::GroupedMm);
    let (_b, looped) = make(ExpertBackend::Loop);
    let x = Tensor::randn([4, 16, D], (Kind::Float, device()));
    let (y1, _) = grouped.forward_t(&x, true).unwrap();
    let (y2, _) = looped.forward_t(&x, true).unwrap();
    assert!(max_diff(&y1, &y2) < 1e-5);
}
