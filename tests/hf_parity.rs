//! Parity with Hugging Face transformers: identical weights and inputs give the same results
//! (f32, within 1e-5). Fixtures are written by `tests/python/hf_fixtures.py` (run by
//! `make test`, or `make fixtures`).

mod common;

use altup_moe::moe::{load_balancing_loss, router_z_loss, MoeConfig, MoeLayer};
use altup_moe::nn::Activation;
use altup_moe::testing::route;
use common::device;
use std::collections::HashMap;
use std::path::PathBuf;
use tch::{nn::VarStore, Kind, Tensor};

/// The tensors of fixture `name`, read from its file and moved to the test device.
fn fixture(name: &str) -> HashMap<String, Tensor> {
    let dir = std::env::var_os("ALTUP_MOE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/hf-fixtures"));
    let path = dir.join(format!("{name}.safetensors"));
    assert!(
        path.is_file(),
        "missing fixture {}: run `make fixtures` (python tests/python/hf_fixtures.py target/hf-fixtures)",
        path.display()
    );
    Tensor::read_safetensors(&path).unwrap().into_iter().map(|(n, t)| (n, t.to_device(device()))).collect()
}

fn load_layer(f: &HashMap<String, Tensor>, config: MoeConfig) -> (VarStore, MoeLayer) {
    let vs = VarStore::new(device());
    let d = f["x"].size()[2] as usize;
    let layer = MoeLayer::new(&vs.root(), d, &config).unwrap();
    tch::no_grad(|| {
        layer.router.weight.shallow_clone().copy_(&f["router.weight"]);
        layer.experts.w_in.shallow_clone().copy_(&f["experts.w_in"]);
        layer.experts.w_out.shallow_clone().copy_(&f["experts.w_out"]);
        if let Some(w) = &layer.experts.w_gate {
            w.shallow_clone().copy_(&f["experts.w_gate"]);
        }
    });
    (vs, layer)
}

fn assert_close(ours: &Tensor, theirs: &Tensor, what: &str) {
    assert_eq!(ours.size(), theirs.size(), "{what}: shapes");
    let diff = (ours.to_kind(Kind::Float) - theirs.to_kind(Kind::Float)).abs().max().double_value(&[]);
    assert!(diff <= 1e-5, "{what}: max abs difference {diff}");
}

/// `SwitchTransformersTop1Router` + `SwitchTransformersSparseMLP` (capacity not binding), the
/// Switch z-loss and a single sequence's balancing loss.
#[test]
fn switch_router_outputs_and_losses_match_hugging_face() {
    let f = fixture("switch");
    let (e, d_ff) = (f["experts.w_in"].size()[0] as usize, f["experts.w_in"].size()[2] as usize);
    let config = MoeConfig { num_experts: e, d_ff, activation: Activation::Gelu, ..Default::default() };
    let (_vs, layer) = load_layer(&f, config);
    let x = &f["x"];
    let (b, t, d) = x.size3().unwrap();
    let flat = x.view([b * t, d]);
    let routing = route(&layer, &flat, false).unwrap();
    assert_close(&routing.logits, &f["logits"].view([b * t, -1]), "router logits");
    assert_close(&routing.probs, &f["probs"].view([b * t, -1]), "router probabilities");
    assert!(routing.expert_index.view([b, t]).equal(&f["expert_index"]), "chosen experts");
    let (y, aux) = layer.forward_t(x, false).unwrap();
    assert_close(&y, &f["y"], "layer output");
    assert_close(&aux.z_loss.view([1]), &f["z_loss"], "z-loss");
    // Balancing loss of the first sequence (Hugging Face groups by sequence).
    let first = x.narrow(0, 0, 1);
    let (_, aux_first) = layer.forward_t(&first, false).unwrap();
    assert_close(&aux_first.load_balancing_loss.view([1]), &f["balance_loss_first_sequence"], "balancing loss");
    // The free functions agree too.
    let probs_first = routing.probs.narrow(0, 0, t);
    let counts = routing.expert_index.narrow(0, 0, t).view([-1]).bincount::<Tensor>(None, e as i64);
    assert_close(
        &load_balancing_loss(&probs_first, &counts, None).unwrap().view([1]),
        &f["balance_loss_first_sequence"],
        "load_balancing_loss()",
    );
    assert_close(&router_z_loss(&routing.logits, None).unwrap().view([1]), &f["z_loss"], "router_z_loss()");
}

/// `MixtralSparseMoeBlock`: top-2, renormalised gates, SwiGLU experts.
#[test]
fn mixtral_top2_block_matches_hugging_face() {
    let f = fixture("mixtral");
    let (e, d_ff) = (f["experts.w_in"].size()[0] as usize, f["experts.w_in"].size()[2] as usize);
    let (_vs, layer) = load_layer(&f, MoeConfig::mixtral(e, d_ff));
    let (y, _) = layer.forward_t(&f["x"], false).unwrap();
    assert_close(&y, &f["y"], "Mixtral block output");
}

/// `Gemma3nTextAltUp` (K = 4, batch 2, sequence 3): predict and correct, in evaluation and in
/// training (where the coefficient clip binds), for active block 0 and 2.
#[test]
fn gemma3n_altup_predict_and_correct_match_hugging_face() {
    use altup_moe::altup::{AltUp, AltUpCoefficients, AltUpConfig, Coefficients, ComputeInput};
    for name in ["gemma3n_altup_active0", "gemma3n_altup_active2"] {
        let f = fixture(name);
        let x = &f["x"];
        let (k, d) = (x.size()[0] as usize, x.size()[3] as usize);
        let clip = f["clip"].double_value(&[0]);
        let active = f["active"].int64_value(&[0]) as usize;
        let vs = VarStore::new(device());
        let config = AltUpConfig {
            num_blocks: k,
            coefficients: Coefficients::InputDependent { clip: Some(clip) },
            compute_on: ComputeInput::Prediction,
            ..Default::default()
        };
        let altup = AltUp::new(&vs.root(), d, &config).unwrap();
        let AltUpCoefficients::InputDependent {
            modality_norm,
            modality_router,
            prediction_coefs,
            correction_coefs,
            ..
        } = &altup.coefficients
        else {
            unreachable!()
        };
        tch::no_grad(|| {
            modality_norm.weight.shallow_clone().copy_(&f["router_norm.weight"]);
            modality_router.shallow_clone().copy_(&f["router.weight"]);
            prediction_coefs.shallow_clone().copy_(&f["prediction_coefs.weight"]);
            correction_coefs.shallow_clone().copy_(&f["correction_coefs.weight"]);
        });
        for (train, tag) in [(false, "eval"), (true, "train")] {
            let predicted = altup.predict(x, active, train).unwrap();
            assert_close(&predicted, &f[&format!("predict_{tag}")], &format!("{name} predict ({tag})"));
            let corrected = altup.correct(&f[&format!("predict_{tag}")], &f["activated"], active, train).unwrap();
            assert_close(&corrected, &f[&format!("correct_{tag}")], &format!("{name} correct ({tag})"));
        }
        assert!(
            prediction_coefs.equal(&f["prediction_coefs.weight"]),
            "clipping must not modify the parameters (Hugging Face clamps them in place)"
        );
    }
}

/// Rotary angles equal transformers' `LlamaRotaryEmbedding` to the bit in f32 (θ = 500,000,
/// positions up to 131,071): rotating `[1, …, 1, 0, …, 0]` gives `[cos, sin]`.
#[test]
fn rotary_angles_equal_transformers_at_long_positions() {
    let f = fixture("rope");
    let positions = &f["positions"];
    let rope = altup_moe::nn::Rope::new(64, 500_000.0).unwrap();
    let p = positions.size()[0];
    let x = Tensor::cat(
        &[Tensor::ones([1, 1, p, 32], (Kind::Float, device())), Tensor::zeros([1, 1, p, 32], (Kind::Float, device()))],
        -1,
    );
    let y = rope.apply(&x, Some(&positions.to_device(device()))).unwrap().to_device(tch::Device::Cpu).squeeze();
    let (cos, sin) = (y.narrow(-1, 0, 32), y.narrow(-1, 32, 32));
    let cos_diff = (&cos - f["cos"].narrow(-1, 0, 32)).abs().max().double_value(&[]);
    let sin_diff = (&sin - f["sin"].narrow(-1, 0, 32)).abs().max().double_value(&[]);
    // On the CPU bit for bit; a GPU's sin/cos may differ in the last place.
    let tolerance = if device().is_cuda() { 1e-6 } else { 0.0 };
    assert!(cos_diff <= tolerance && sin_diff <= tolerance, "cos {cos_diff:e}, sin {sin_diff:e}");
}
