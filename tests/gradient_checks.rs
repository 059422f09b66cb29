//! Finite-difference gradient checks in f64: the autograd gradients of the router + MoE layer,
//! the AltUp layer (both coefficient modes) and a whole tiny model match central differences.

mod common;

use altup_moe::altup::{AltUp, AltUpConfig, Coefficients, ComputeInput, SequenceAltUpConfig};
use altup_moe::model::{Arch, LanguageModel, ModelConfig};
use altup_moe::moe::{MoeConfig, MoeLayer};
use altup_moe::nn::{Activation, InitScheme, VarBuilder};
use common::device;
use tch::{nn::VarStore, Kind, Tensor};

const H: f64 = 1e-6;

/// Compares autograd and central-difference gradients of `loss` for `samples` coordinates of
/// every variable of `vs` (and of `extra` tensors such as inputs).
fn check(vs: &VarStore, extra: &[(&str, &Tensor)], samples: i64, loss: impl Fn() -> Tensor) {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    vars.extend(extra.iter().map(|(n, t)| (n.to_string(), t.shallow_clone())));
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, v) in &vars {
        v.shallow_clone().zero_grad();
    }
    loss().backward();
    let mut checked = 0;
    for (name, var) in &vars {
        let grad = var.grad();
        assert!(grad.defined(), "{name} has no gradient");
        let flat = var.view([-1]);
        let n = flat.size()[0];
        for s in 0..samples.min(n) {
            let i = (s * 7919 + 13) % n;
            let original = flat.double_value(&[i]);
            let at = |value: f64| {
                tch::no_grad(|| {
                    let _ = flat.get(i).fill_(value);
                });
                tch::no_grad(&loss).double_value(&[])
            };
            let numeric = (at(original + H) - at(original - H)) / (2.0 * H);
            at(original);
            let analytic = grad.view([-1]).double_value(&[i]);
            let tol = 1e-5 + 1e-4 * numeric.abs().max(analytic.abs());
            assert!(
                (numeric - analytic).abs() <= tol,
                "{name}[{i}]: autograd {analytic:e} vs finite difference {numeric:e}"
            );
            checked += 1;
        }
    }
    assert!(checked > 0);
}

fn weights(shape: &[i64]) -> Tensor {
    Tensor::randn(shape, (Kind::Double, device()))
}

#[test]
fn router_and_moe_layer() {
    for (k, normalize, activation, shared) in
        [(1, false, Activation::Gelu, 0), (2, true, Activation::SwiGlu, 1), (2, false, Activation::Relu, 0)]
    {
        let mut vs = VarStore::new(device());
        let config = MoeConfig {
            num_experts: 4,
            top_k: k,
            normalize_gates: normalize,
            activation,
            d_ff: 6,
            num_shared_experts: shared,
            ..Default::default()
        };
        let moe = MoeLayer::new(
            VarBuilder::new(&vs.root()).with_init(InitScheme { std: 0.5, residual_std: 0.5, seed: 3 }),
            5,
            &config,
        )
        .unwrap();
        vs.double();
        let x = weights(&[2, 3, 5]).set_requires_grad(true);
        let g = weights(&[2, 3, 5]);
        check(&vs, &[("input", &x)], 6, || {
            let (y, aux) = moe.forward_t(&x, true).unwrap();
            (&y * &g).sum(Kind::Double) + aux.load_balancing_loss * 0.3 + aux.z_loss * 0.2
        });
    }
}

#[test]
fn altup_layer() {
    for coefficients in [Coefficients::Static, Coefficients::InputDependent { clip: None }] {
        for compute_on in [ComputeInput::Input, ComputeInput::Prediction] {
            let mut vs = VarStore::new(device());
            let config = AltUpConfig { num_blocks: 3, coefficients, compute_on, ..Default::default() };
            let altup = AltUp::new(
                VarBuilder::new(&vs.root()).with_init(InitScheme { std: 0.5, residual_std: 0.5, seed: 1 }),
                4,
                &config,
            )
            .unwrap();
            vs.double();
            // Move every coefficient away from its (identity) initialisation.
            tch::no_grad(|| {
                for (_, v) in vs.variables() {
                    v.shallow_clone().copy_(&(&v + weights(&v.size()) * 0.3));
                }
            });
            let x = weights(&[3, 2, 2, 4]).set_requires_grad(true);
            let w = weights(&[4, 4]) * 0.5;
            let g = weights(&[3, 2, 2, 4]);
            check(&vs, &[("input", &x)], 8, || {
                let (y, ()) = altup.forward_t(&x, 1, true, |a| Ok((a.matmul(&w).tanh(), ()))).unwrap();
                (&y * &g).sum(Kind::Double)
            });
        }
    }
}

#[test]
fn whole_tiny_model() {
    for (arch, altup, seq) in [
        (Arch::AltUp, None, None),
        (Arch::AltUpMoe, None, None),
        (Arch::AltUp, Some(AltUpConfig::gemma3n()), None),
        (Arch::Switch, None, Some(SequenceAltUpConfig { stride: 2 })),
    ] {
        let mut config = ModelConfig::preset(arch);
        config.d_model = 8;
        config.num_layers = 2;
        config.max_seq_len = 6;
        config.attention.num_heads = 2;
        config.ffn.d_ff = 8;
        config.vocab_size = 11;
        config.init_std = 0.3;
        if let Some(m) = &mut config.moe {
            m.d_ff = 8;
            m.num_experts = 3;
        }
        if altup.is_some() {
            config.altup = altup;
        }
        config.sequence_altup = seq;
        let mut vs = VarStore::new(device());
        let model = LanguageModel::new(&vs.root(), &config).unwrap();
        vs.double();
        tch::no_grad(|| {
            for (name, v) in vs.variables() {
                if name.contains("_coefs") || name.contains("seq_altup") {
                    v.shallow_clone().copy_(&(&v + weights(&v.size()) * 0.2));
                }
            }
        });
        let tokens = Tensor::from_slice(&[1i64, 5, 3, 9, 0, 2, 7, 7, 4, 10, 6, 1]).view([2, 6]).to_device(device());
        let targets = Tensor::from_slice(&[5i64, 3, 9, 0, 2, 8, 7, 4, 10, 6, 1, 3]).to_device(device());
        check(&vs, &[], 3, || {
            let out = model.forward_t(&tokens, true).unwrap();
            let lm = out
                .logits
                .view([-1, 11])
                .log_softmax(-1, Kind::Double)
                .gather(1, &targets.unsqueeze(1), false)
                .mean(Kind::Double)
                .neg();
            match out.aux.load_balancing_loss().unwrap() {
                Some(lb) => lm + lb.to_kind(Kind::Double) * 0.1,
                None => lm,
            }
        });
    }
}
