//! Precision as documented: with bf16 compute the final norm, the head and the logits stay f32;
//! with `bf16-mixed` the residual stream stays f32 and bf16 sublayer outputs are added to it
//! without rounding it.

mod common;

use altup_moe::model::residual_add;
use altup_moe::model::{Arch, LanguageModel};
use altup_moe::model::{ForwardOptions, Precision};
use tch::{nn::VarStore, Device, Kind, Tensor};

#[test]
fn a_bf16_update_is_added_to_an_f32_residual_without_rounding_it() {
    let device = common::device();
    let update = Tensor::full([1], 0.001, (Kind::BFloat16, device));
    let step = f64::from(update.to_kind(Kind::Float).double_value(&[0]) as f32);
    let (mut f32_residual, mut bf16_residual) =
        (Tensor::ones([1], (Kind::Float, device)), Tensor::ones([1], (Kind::BFloat16, device)));
    for _ in 0..100 {
        f32_residual = residual_add(&f32_residual, &update).unwrap();
        bf16_residual = residual_add(&bf16_residual, &update).unwrap();
    }
    assert_eq!(f32_residual.kind(), Kind::Float);
    let sum = f32_residual.double_value(&[0]);
    assert!((sum - (1.0 + 100.0 * step)).abs() < 1e-5 && (sum - 1.0999).abs() < 1e-3, "{sum}");
    // Rounded to bf16 at every addition, the same residual never moves.
    assert_eq!(bf16_residual.to_kind(Kind::Float).double_value(&[0]), 1.0);
}

/// Logits `100.25` and `100.0` with target 0 give a cross-entropy of `ln(1 + e^-0.25) = 0.5759`
/// in f32; computed in bf16 they would both round to 100 (`ln 2`). The head is set so that the
/// model produces exactly these logits at position 0, for every compute precision.
#[test]
fn the_loss_comes_from_f32_logits_under_bf16_compute() {
    for precision in [Precision::F32, Precision::Bf16, Precision::Bf16Mixed] {
        let mut config = common::tiny(Arch::Switch);
        config.tie_embeddings = false;
        let vs = VarStore::new(common::device());
        let mut model = LanguageModel::new(&vs.root(), &config).unwrap();
        model.set_precision(precision);
        let tokens = Tensor::from_slice(&[3i64, 7, 1]).view([1, 3]).to_device(vs.device());
        let (hidden, _) = model.stack().forward(&tokens, &ForwardOptions::eval(), None, None).unwrap();
        assert_eq!(hidden.kind(), Kind::Float, "{precision:?}: the final norm runs in f32");
        let h = hidden.get(0).get(0).to_kind(Kind::Double); // [D]
        let unit = &h / h.square().sum(Kind::Double);
        let head = vs.variables()["head.weight"].shallow_clone();
        tch::no_grad(|| {
            let _ = head.shallow_clone().zero_();
            head.get(0).copy_(&(&unit * 100.25));
            head.get(1).copy_(&(&unit * 100.0));
        });
        let logits = model.forward_t(&tokens, false).unwrap().logits;
        assert_eq!(logits.kind(), Kind::Float, "{precision:?}");
        let first = logits.get(0).get(0);
        let loss = first.unsqueeze(0).cross_entropy_for_logits(&Tensor::from_slice(&[0i64]).to_device(vs.device()));
        let loss = loss.double_value(&[]);
        assert!((loss - 0.5759).abs() < 1e-3, "{precision:?}: cross-entropy {loss} (ln 2 = 0.6931 in bf16)");
    }
}

#[test]
fn mixed_precision_trains_and_reports_its_name() {
    assert_eq!("bf16-mixed".parse::<Precision>().unwrap(), Precision::Bf16Mixed);
    assert_eq!(serde_json::to_string(&Precision::Bf16Mixed).unwrap(), "\"bf16-mixed\"");
    assert_eq!(Precision::Bf16Mixed.residual_kind(Kind::Float), Kind::Float);
    assert_eq!(Precision::Bf16.residual_kind(Kind::Float), Kind::BFloat16);
    let err = "f16".parse::<Precision>().unwrap_err().to_string();
    assert!(err.contains("expected f32, bf16 or bf16-mixed"), "{err}");
    // The AltUp + MoE model under bf16-mixed: a forward and backward in f32 masters with finite
    // gradients, close to the f32 model's logits.
    let config = common::tiny(Arch::AltUpMoe);
    let tokens = Tensor::from_slice(&[1i64, 5, 9, 2, 4, 4]).view([2, 3]).to_device(common::device());
    let logits = |precision: Precision| {
        let vs = VarStore::new(common::device());
        let mut model = LanguageModel::new(&vs.root(), &config).unwrap();
        model.set_precision(precision);
        let out = model.forward_t(&tokens, true).unwrap();
        out.logits.sum(Kind::Float).backward();
        let grads_finite = vs
            .trainable_variables()
            .iter()
            .all(|v| !v.grad().defined() || v.grad().isfinite().all().int64_value(&[]) != 0);
        assert!(grads_finite, "{precision:?}");
        out.logits.detach().to_device(Device::Cpu)
    };
    let (full, mixed) = (logits(Precision::F32), logits(Precision::Bf16Mixed));
    let scale = full.abs().max().double_value(&[]);
    let diff = (&full - &mixed).abs().max().double_value(&[]);
    assert!(diff > 0.0 && diff < 0.05 * scale.max(1.0), "bf16 sublayers differ from f32 by rounding only: {diff}");
}
