//! Sparse upcycling and AltUp upcycling: the upcycled model computes the dense model's logits at
//! step 0 (Komatsuzaki et al. 2022, arXiv 2212.05055), and training then lowers the loss.

mod common;

use altup_moe::altup::{AltUpConfig, Coefficients, ComputeInput, OutputReduction, Widening};
use altup_moe::model::{check_upcycle, upcycle, Arch, LanguageModel, ModelConfig, MoeLayers};
use altup_moe::moe::{MoeConfig, RouterKind};
use altup_moe::nn::Activation;
use altup_moe::train::{TrainConfig, Trainer};
use common::{device, seeded_normal};
use rand::{rngs::StdRng, Rng, SeedableRng};
use tch::{nn::VarStore, Kind, Tensor};

/// A dense model d = 32, 3 blocks, 4 heads, SwiGLU F = 64, with every parameter redrawn at a
/// scale where each FFN changes the logits by far more than the tolerances below. The values come
/// from a seeded generator of this test's own ([`seeded_normal`]): the model is the same on every
/// run.
fn dense() -> (VarStore, ModelConfig, LanguageModel) {
    let mut c = ModelConfig::preset(Arch::Dense);
    c.vocab_size = 64;
    c.d_model = 32;
    c.num_layers = 3;
    c.max_seq_len = 16;
    c.attention.num_heads = 4;
    c.ffn.d_ff = 64;
    c.ffn.activation = Activation::SwiGlu;
    let vs = VarStore::new(device());
    let model = LanguageModel::new(&vs.root(), &c).unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let mut variables: Vec<_> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (name, mut v) in variables {
            let noise = seeded_normal(&mut rng, &v.size());
            let value = if name.contains("norm") { noise * 0.3 + 1.0 } else { noise * 0.3 };
            v.copy_(&value);
        }
    });
    (vs, c, model)
}

fn moe(top_k: usize, normalize_gates: bool) -> MoeConfig {
    MoeConfig {
        num_experts: 4,
        top_k,
        d_ff: 64,
        activation: Activation::SwiGlu,
        normalize_gates,
        capacity_factor: None,
        eval_capacity_factor: None,
        ..MoeConfig::default()
    }
}

fn logits(model: &LanguageModel, ids: &Tensor) -> Tensor {
    model.forward_t(ids, false).unwrap().logits
}

/// Token ids drawn from a seeded generator (see [`dense`]), shape `[batch, seq]`.
fn ids(seed: u64, batch: i64, seq: i64) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let ids: Vec<i64> = (0..batch * seq).map(|_| rng.random_range(0..64)).collect();
    Tensor::from_slice(&ids).view([batch, seq]).to_device(device())
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// `max |a − reference|` in units of the reference's largest logit. The upcycled model computes
/// the same function in a different order (gates that sum to one times identical experts; K
/// streams averaged), so in f32 its logits differ by rounding: a few ulp of each hidden value,
/// carried through the blocks and the head. Over 40 seeds the largest such difference was
/// 1.6e-6 of the largest logit (≈ 10⁻⁵ absolute at logits of ≈ 7); an upcycling error (a dropped
/// token, a wrong gate, a missing stream) moves the logits by a sizeable fraction of their scale.
fn relative_diff(a: &Tensor, reference: &Tensor) -> f64 {
    max_diff(a, reference) / reference.abs().max().double_value(&[])
}

#[test]
fn upcycled_models_compute_the_dense_logits_at_step_0() {
    let (dense_vs, dense_config, dense_model) = dense();
    let ids = ids(1, 3, 16);
    let reference = logits(&dense_model, &ids);

    let altup = |widening, output| AltUpConfig { num_blocks: 2, widening, output, ..AltUpConfig::default() };
    let gemma_coefficients = AltUpConfig {
        num_blocks: 3,
        compute_on: ComputeInput::Prediction,
        coefficients: Coefficients::InputDependent { clip: Some(120.0) },
        ..AltUpConfig::default()
    };
    let every = MoeLayers::Every { every: 1, offset: 0 };
    let cases: Vec<(&str, Option<MoeConfig>, MoeLayers, Option<AltUpConfig>)> = vec![
        ("switch top-1, raw gate", Some(moe(1, false)), MoeLayers::default(), None),
        ("top-2, renormalised", Some(moe(2, true)), every.clone(), None),
        ("top-2, raw gates", Some(moe(2, false)), every.clone(), None),
        (
            "altup K=2, wide embedding, mean",
            None,
            every.clone(),
            Some(altup(Widening::WideEmbedding, OutputReduction::Mean)),
        ),
        (
            "altup K=2, projection collapse",
            None,
            every.clone(),
            Some(altup(Widening::WideEmbedding, OutputReduction::Projection)),
        ),
        ("recycled-altup K=2 (sum)", None, every.clone(), Some(AltUpConfig::recycled(2))),
        ("altup K=3, input-dependent coefficients", None, every.clone(), Some(gemma_coefficients)),
        (
            "altup K=2 + switch top-1",
            Some(moe(1, false)),
            MoeLayers::default(),
            Some(altup(Widening::WideEmbedding, OutputReduction::Mean)),
        ),
    ];
    for (name, moe_config, layers, altup_config) in cases {
        let mut target = dense_config.clone();
        target.moe = moe_config;
        target.moe_layers = layers;
        target.altup = altup_config;
        let vs = VarStore::new(device());
        let up = upcycle(&dense_vs, &dense_config, &target, &vs).unwrap_or_else(|e| panic!("{name}: {e}"));
        let diff = relative_diff(&logits(&up, &ids), &reference);
        assert!(diff < 1e-5, "{name}: upcycled logits differ from the dense model's by {diff:e} (relative)");
        // The same architecture from scratch is far from the dense model: the test can fail.
        let scratch = LanguageModel::new(&VarStore::new(device()).root(), &target).unwrap();
        let far = max_diff(&logits(&scratch, &ids), &reference);
        assert!(far > 1.0, "{name}: a fresh model is only {far} away; the comparison is too weak");
    }
}

/// Upcycling to a residual-stream method (with and without MoE) keeps the dense logits: every
/// method starts as the plain residual; Gemma 3n's normed LAuReL and a source that already has a
/// method are refused by name.
#[test]
fn residual_stream_methods_upcycle_with_the_dense_logits() {
    let (dense_vs, dense_config, dense_model) = dense();
    let ids = ids(1, 3, 16);
    let reference = logits(&dense_model, &ids);
    for (method, moe_config) in [
        ("static-hyper-connections:2", None),
        ("hyper-connections:4", Some(moe(1, false))),
        ("mhc:4", None),
        ("laurel:rw+lr=8+pa=3", Some(moe(2, true))),
    ] {
        let mut target = dense_config.clone();
        target.residual = method.parse().unwrap();
        target.moe = moe_config;
        let vs = VarStore::new(device());
        let up = upcycle(&dense_vs, &dense_config, &target, &vs).unwrap_or_else(|e| panic!("{method}: {e}"));
        let diff = relative_diff(&logits(&up, &ids), &reference);
        assert!(diff < 1e-5, "{method}: upcycled logits differ from the dense model's by {diff:e} (relative)");
        let scratch = LanguageModel::new(&VarStore::new(device()).root(), &target).unwrap();
        assert!(max_diff(&logits(&scratch, &ids), &reference) > 1.0, "{method}");
    }
    let gemma = ModelConfig { residual: "laurel:lr-norm=8".parse().unwrap(), ..dense_config.clone() };
    let err = upcycle(&dense_vs, &dense_config, &gemma, &VarStore::new(device())).err().unwrap().to_string();
    assert!(err.contains("lr-norm") && err.contains("not zero at initialisation"), "{err}");
    let source = ModelConfig { residual: "mhc:2".parse().unwrap(), ..dense_config.clone() };
    let err = altup_moe::model::check_upcycle(&source, &source).unwrap_err().to_string();
    assert!(err.contains("already uses a residual-stream method (mhc:2)"), "{err}");
}

#[test]
fn every_expert_is_the_dense_ffn_and_raw_gates_start_from_a_zero_router() {
    let (dense_vs, dense_config, _) = dense();
    let mut target = dense_config.clone();
    target.moe = Some(moe(1, false));
    let vs = VarStore::new(device());
    upcycle(&dense_vs, &dense_config, &target, &vs).unwrap();
    let (src, dst) = (dense_vs.variables(), vs.variables());
    let w_in = &dst["blocks.1.moe.experts.w_in"]; // [E, D, F]
    let w_out = &dst["blocks.1.moe.experts.w_out"]; // [E, F, D]
    for e in 0..4 {
        assert!(w_in.get(e).equal(&src["blocks.1.ffn.w_in.weight"].t_copy()), "expert {e} w_in");
        // Scaled by E/k = 4, the inverse of the gate 1/E every token gets from the zero router.
        assert!(w_out.get(e).equal(&(src["blocks.1.ffn.w_out.weight"].t_copy() * 4.0)), "expert {e} w_out");
    }
    assert_eq!(dst["blocks.1.moe.router.weight"].abs().sum(Kind::Float).double_value(&[]), 0.0);
    assert!(dst.keys().all(|k| !k.starts_with("blocks.1.ffn.")), "the MoE block has no dense FFN left");
}

#[test]
fn training_the_upcycled_model_lowers_the_loss() {
    let (dense_vs, dense_config, dense_model) = dense();
    let mut target = dense_config.clone();
    target.moe = Some(moe(2, true));
    target.altup = Some(AltUpConfig::default());
    let upcycled_vs = VarStore::new(device());
    upcycle(&dense_vs, &dense_config, &target, &upcycled_vs).unwrap();
    // A trainer of a freshly initialised model starts from the upcycled weights.
    let vs = VarStore::new(device());
    let model = LanguageModel::new(&vs.root(), &target).unwrap();
    let text: Vec<u8> =
        b"to be or not to be, that is the question. ".iter().map(|b| b % 64).cycle().take(4000).collect();
    let (train, val) = (
        altup_moe::data::TokenDataset::from_ids(text.iter().map(|&b| u32::from(b)).collect(), 64, 4000).unwrap(),
        altup_moe::data::TokenDataset::from_ids(text[..400].iter().map(|&b| u32::from(b)).collect(), 64, 400).unwrap(),
    );
    let config = TrainConfig {
        steps: 20,
        batch_size: 8,
        seq_len: 15,
        lr: 3e-3,
        warmup_steps: 2,
        eval_every: 20,
        eval_batches: 2,
        ..Default::default()
    };
    let mut trainer = Trainer::new(&vs, &model, &train, &val, config).unwrap();
    let origin = std::path::Path::new("upcycled");
    trainer.initialize_from(&upcycled_vs, origin).unwrap();
    let ids = ids(2, 2, 15);
    let diff = relative_diff(&logits(&model, &ids), &logits(&dense_model, &ids));
    assert!(
        diff < 1e-5,
        "the trainer's model starts from the upcycled weights: {diff:e} (relative) from the dense logits"
    );
    let before = trainer.evaluate().unwrap().loss;
    for _ in 0..20 {
        trainer.step().unwrap();
    }
    let after = trainer.evaluate().unwrap().loss;
    assert!(after < before - 0.5, "validation loss {before:.3} -> {after:.3}");
    // Initial weights come before the first step, and must be the model's.
    let err = trainer.initialize_from(&upcycled_vs, origin).unwrap_err().to_string();
    assert!(err.contains("before the first step (at step 20)"), "{err}");
    let (vs2, _, _) = dense();
    let mut fresh = Trainer::new(
        &vs,
        &model,
        &train,
        &val,
        TrainConfig { steps: 2, warmup_steps: 1, batch_size: 2, seq_len: 15, eval_batches: 1, ..Default::default() },
    )
    .unwrap();
    let err = fresh.initialize_from(&vs2, std::path::Path::new("dense")).unwrap_err().to_string();
    assert!(err.contains("does not match the model") && err.contains("missing"), "{err}");
}

#[test]
fn configs_that_cannot_keep_the_function_are_refused_with_every_reason() {
    let (_, dense_config, _) = dense();
    let mut target = dense_config.clone();
    target.d_model = 64;
    target.moe = Some(MoeConfig {
        router: RouterKind::ExpertChoice,
        num_shared_experts: 1,
        d_ff: 128,
        activation: Activation::Gelu,
        capacity_factor: Some(1.25),
        normalize_gates: false,
        ..moe(1, false)
    });
    target.altup = Some(AltUpConfig { widening: Widening::Projected, ..AltUpConfig::default() });
    let err = check_upcycle(&dense_config, &target).unwrap_err().to_string();
    for part in [
        "d_model differs from the dense model's (64 vs 32)",
        "expert choice",
        "num_shared_experts (1)",
        "expert d_ff (128) differs from the dense FFN's (64)",
        "expert activation Gelu differs from the dense FFN's SwiGlu",
        "capacity_factor 1.25",
        "projected widening",
    ] {
        assert!(err.contains(part), "missing {part:?} in: {err}");
    }
    // An MoE source cannot be upcycled again.
    let err = check_upcycle(&target, &target).unwrap_err().to_string();
    assert!(err.contains("already has MoE layers") && err.contains("already uses AltUp"), "{err}");
}

/// Every combination of the MoE options that matter at step 0 is either refused or gives the
/// dense logits — in evaluation and in training mode, at two batch shapes (capacities follow
/// the number of tokens).
#[test]
fn every_moe_option_is_refused_or_keeps_the_logits() {
    use altup_moe::moe::{Balancing, CapacityPriority};
    let (dense_vs, dense_config, dense_model) = dense();
    let batches = [ids(1, 3, 16), ids(3, 1, 5)];
    let reference: Vec<(Tensor, Tensor)> = batches
        .iter()
        .map(|ids| (logits(&dense_model, ids), dense_model.forward_t(ids, true).unwrap().logits))
        .collect();
    let (mut accepted, mut refused) = (0, 0);
    for top_k in [1, 2, 4] {
        for normalize_gates in [false, true] {
            for (capacity_factor, eval_capacity_factor) in
                [(None, None), (Some(1.25), None), (None, Some(2.0)), (Some(4.0), Some(4.0)), (Some(0.5), Some(0.5))]
            {
                for router in [RouterKind::TokenChoice, RouterKind::ExpertChoice] {
                    for (priority, jitter, balancing) in [
                        (CapacityPriority::Position, 0.0, Balancing::AuxLoss),
                        (CapacityPriority::Confidence, 0.01, Balancing::AuxFree { bias_update_rate: 1e-3 }),
                    ] {
                        let moe_config = MoeConfig {
                            top_k,
                            normalize_gates,
                            capacity_factor,
                            eval_capacity_factor,
                            router,
                            priority,
                            jitter,
                            balancing,
                            min_capacity: 1,
                            ..moe(1, false)
                        };
                        let mut target = dense_config.clone();
                        target.moe = Some(moe_config.clone());
                        target.moe_layers = MoeLayers::Every { every: 1, offset: 0 };
                        if target.validate().is_err() {
                            continue;
                        }
                        let vs = VarStore::new(device());
                        let Ok(up) = upcycle(&dense_vs, &dense_config, &target, &vs) else {
                            refused += 1;
                            continue;
                        };
                        accepted += 1;
                        for (ids, (eval_ref, train_ref)) in batches.iter().zip(&reference) {
                            let eval = relative_diff(&logits(&up, ids), eval_ref);
                            let train = relative_diff(&up.forward_t(ids, true).unwrap().logits, train_ref);
                            assert!(
                                eval < 1e-5 && train < 1e-5,
                                "{moe_config:?} was accepted but its logits differ from the dense model's at step 0 \
                                 by {eval:e} (evaluation) / {train:e} (training) of the largest logit, batch {:?}",
                                ids.size()
                            );
                        }
                    }
                }
            }
        }
    }
    // Both outcomes occur: the sweep tests something.
    assert!(accepted >= 6 && refused >= 20, "accepted {accepted}, refused {refused}");
}
