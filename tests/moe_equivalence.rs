//! Equivalence and invariant tests of the MoE layer.

mod common;

use altup_moe::moe::{ExpertBackend, MoeConfig, MoeLayer};
use altup_moe::nn::{Activation, FeedForward, FeedForwardConfig, InitScheme, VarBuilder};
use common::device;
use tch::{nn::VarStore, Kind, Tensor};

const INIT: InitScheme = InitScheme { std: 0.2, residual_std: 0.2, seed: 0 };

fn copy(dst: &Tensor, src: &Tensor) {
    tch::no_grad(|| dst.shallow_clone().copy_(src));
}

fn assert_close(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
    let diff = (a - b).abs().max().double_value(&[]);
    assert!(diff <= tol, "{what}: max abs difference {diff} > {tol}");
}

/// `assert_close` with the tolerance scaled by `max(1, max |a|)`: a few ulps of large sums
/// (gradients summed over rows in another order, as on CUDA) pass, nothing else.
fn assert_close_scaled(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
    let scale = a.abs().max().double_value(&[]).max(1.0);
    assert_close(a, b, tol * scale, what);
}

/// A 1-expert MoE (gate = softmax over one expert = 1) equals the dense FFN with the same
/// weights, in outputs and in gradients with respect to the input and the weights.
#[test]
fn one_expert_moe_equals_dense_ffn() {
    for activation in [Activation::Gelu, Activation::SwiGlu] {
        for backend in [ExpertBackend::Loop, ExpertBackend::GroupedMm] {
            let (d, f) = (8, 16);
            let dense_vs = VarStore::new(device());
            let dense = FeedForward::new(
                VarBuilder::new(&dense_vs.root()).with_init(INIT),
                d,
                &FeedForwardConfig { d_ff: f, activation },
            )
            .unwrap();
            let moe_vs = VarStore::new(device());
            let config = MoeConfig {
                num_experts: 1,
                top_k: 1,
                d_ff: f,
                activation,
                backend,
                capacity_factor: None,
                ..Default::default()
            };
            let moe = MoeLayer::new(VarBuilder::new(&moe_vs.root()).with_init(INIT), d, &config).unwrap();
            copy(&moe.experts.w_in, &dense.w_in.weight.tr().unsqueeze(0));
            copy(&moe.experts.w_out, &dense.w_out.weight.tr().unsqueeze(0));
            if let (Some(mg), Some(dg)) = (&moe.experts.w_gate, &dense.w_gate) {
                copy(mg, &dg.weight.tr().unsqueeze(0));
            }

            let x = Tensor::randn([2, 5, d as i64], (Kind::Float, device())).set_requires_grad(true);
            let x2 = x.detach().copy().set_requires_grad(true);
            let g = Tensor::randn([2, 5, d as i64], (Kind::Float, device()));
            let y_dense = dense.forward(&x).unwrap();
            let (y_moe, aux) = moe.forward_t(&x2, true).unwrap();
            assert_close_scaled(&y_dense, &y_moe, 1e-6, "outputs");
            assert_eq!(aux.dropped_fraction.double_value(&[]), 0.0);
            (&y_dense * &g).sum(Kind::Float).backward();
            (&y_moe * &g).sum(Kind::Float).backward();
            assert_close_scaled(&x.grad(), &x2.grad(), 1e-6, "input gradients");
            assert_close_scaled(
                &dense.w_in.weight.grad().tr(),
                &moe.experts.w_in.grad().squeeze_dim(0),
                1e-6,
                "w_in gradients",
            );
            assert_close_scaled(
                &dense.w_out.weight.grad().tr(),
                &moe.experts.w_out.grad().squeeze_dim(0),
                1e-6,
                "w_out gradients",
            );
            // The single expert's gate is exactly 1, so the router gets no gradient from the output.
            assert_eq!(moe.router.weight.grad().abs().sum(Kind::Float).double_value(&[]), 0.0);
        }
    }
}

/// The grouped-matmul path and the per-expert loop give the same outputs and gradients,
/// including experts that receive no tokens and capacity-limited routing.
#[test]
fn grouped_matmul_equals_per_expert_loop() {
    for (top_k, capacity_factor, activation) in [
        (1, None, Activation::Gelu),
        (1, Some(1.0), Activation::SwiGlu),
        (2, Some(1.25), Activation::Gelu),
        (2, None, Activation::SwiGlu),
    ] {
        let (d, f, e) = (8, 12, 6);
        let build = |backend| {
            let vs = VarStore::new(device());
            let config = MoeConfig {
                num_experts: e,
                top_k,
                d_ff: f,
                activation,
                backend,
                capacity_factor,
                min_capacity: 1,
                ..Default::default()
            };
            let layer = MoeLayer::new(VarBuilder::new(&vs.root()).with_init(INIT), d, &config).unwrap();
            (vs, layer)
        };
        let (_vs_loop, looped) = build(ExpertBackend::Loop);
        let (_vs_grouped, grouped) = build(ExpertBackend::GroupedMm);
        assert!(looped.experts.w_in.equal(&grouped.experts.w_in));
        // Push the router towards expert 0 so that some experts are empty and some overflow.
        tch::no_grad(|| {
            for r in [&looped.router.weight, &grouped.router.weight] {
                let _ = r.shallow_clone().get(0).fill_(0.5);
            }
        });
        let x = Tensor::rand([3, 7, d as i64], (Kind::Float, device()));
        let g = Tensor::randn([3, 7, d as i64], (Kind::Float, device()));
        let (y1, aux1) = looped.forward_t(&x, true).unwrap();
        let (y2, aux2) = grouped.forward_t(&x, true).unwrap();
        assert_close(&y1, &y2, 1e-5, "outputs");
        assert_eq!(aux1.dropped_fraction.double_value(&[]), aux2.dropped_fraction.double_value(&[]));
        assert!(aux1.assignments_per_expert.equal(&aux2.assignments_per_expert));
        let counts = Vec::<i64>::try_from(&aux1.assignments_per_expert).unwrap();
        assert!(counts.contains(&0), "the test must exercise an empty expert: {counts:?}");
        (&y1 * &g).sum(Kind::Float).backward();
        (&y2 * &g).sum(Kind::Float).backward();
        for (a, b, name) in [
            (&looped.experts.w_in, &grouped.experts.w_in, "w_in"),
            (&looped.experts.w_out, &grouped.experts.w_out, "w_out"),
            (&looped.router.weight, &grouped.router.weight, "router"),
        ] {
            assert_close(&a.grad(), &b.grad(), 1e-5, name);
        }
    }
}

/// Tokens past an expert's capacity get exactly zero MoE output; earlier tokens are kept.
#[test]
fn token_over_capacity_gets_exactly_zero_output() {
    let d = 4;
    let vs = VarStore::new(device());
    // N = 6 tokens, E = 2, cf = 0.5 -> C = ceil(0.5 * 6 / 2) = 2 (min_capacity 1).
    let config = MoeConfig {
        num_experts: 2,
        top_k: 1,
        d_ff: 8,
        capacity_factor: Some(0.5),
        min_capacity: 1,
        ..Default::default()
    };
    let moe = MoeLayer::new(VarBuilder::new(&vs.root()).with_init(INIT), d, &config).unwrap();
    tch::no_grad(|| {
        let mut w = moe.router.weight.shallow_clone();
        w.copy_(&Tensor::from_slice(&[5.0f32, 5.0, 5.0, 5.0, -5.0, -5.0, -5.0, -5.0]).view([2, 4]));
    });
    // Every token has positive entries, so all six choose expert 0.
    let x = Tensor::rand([1, 6, d as i64], (Kind::Float, device())) + 0.1;
    let (y, aux) = moe.forward_t(&x, true).unwrap();
    assert_eq!(aux.capacity, Some(2));
    assert_eq!(Vec::<i64>::try_from(&aux.assignments_per_expert).unwrap(), vec![6, 0]);
    assert!((aux.dropped_fraction.double_value(&[]) - 4.0 / 6.0).abs() < 1e-12);
    let row_norms = Vec::<f32>::try_from(y.squeeze_dim(0).abs().sum_dim_intlist(-1, false, Kind::Float)).unwrap();
    assert!(row_norms[0] > 0.0 && row_norms[1] > 0.0, "{row_norms:?}");
    assert_eq!(&row_norms[2..], &[0.0, 0.0, 0.0, 0.0]);
    // Evaluation is dropless here (no eval_capacity_factor), so every token is kept.
    let (_, eval_aux) = moe.forward_t(&x, false).unwrap();
    assert_eq!(eval_aux.dropped_fraction.double_value(&[]), 0.0);
}

/// bf16 activations: router and combine stay f32 inside, output comes back in bf16 and close to
/// the f32 result.
#[test]
fn bf16_activations_follow_the_precision_policy() {
    let vs = VarStore::new(device());
    let config = MoeConfig { num_experts: 4, d_ff: 16, capacity_factor: None, ..Default::default() };
    let moe = MoeLayer::new(VarBuilder::new(&vs.root()).with_init(INIT), 8, &config).unwrap();
    let x = Tensor::randn([2, 3, 8], (Kind::Float, device()));
    let (y32, _) = moe.forward_t(&x, true).unwrap();
    let (y16, aux) = moe.forward_t(&x.to_kind(Kind::BFloat16), true).unwrap();
    assert_eq!(y16.kind(), Kind::BFloat16);
    assert_eq!(aux.z_loss.kind(), Kind::Float);
    assert_close(&y16.to_kind(Kind::Float), &y32, 5e-2, "bf16 vs f32");
}

/// Input errors name the offending shape instead of panicking.
#[test]
fn wrong_width_is_a_shape_error() {
    let vs = VarStore::new(device());
    let moe = MoeLayer::new(VarBuilder::new(&vs.root()).with_init(INIT), 8, &MoeConfig::default()).unwrap();
    let err = moe.forward_t(&Tensor::zeros([2, 3, 7], (Kind::Float, device())), true).unwrap_err();
    assert_eq!(err.to_string(), "shape error: MoE input must have last dimension 8, got shape [2, 3, 7]");
    let err = moe.forward_t(&Tensor::zeros([2, 3, 8], (Kind::Int64, device())), true).unwrap_err();
    assert!(err.to_string().contains("floating-point"), "{err}");
}
