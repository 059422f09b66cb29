//! The expert-parallel backward (graph cut at every exchange, block input and MoE sublayer, the
//! segments run once each from the last to the first) gives the gradients of one ordinary
//! backward for every kind of stack — and, with a strict tape that frees each segment's graph as
//! it is walked, shows that no segment reaches into another one's graph: the backward costs one
//! backward whatever the depth.

mod common;

use altup_moe::altup::{Coefficients, ComputeInput, SequenceAltUpConfig, Widening};
use altup_moe::io::named_variables;
use altup_moe::model::{Arch, ForwardOptions, LanguageModel, ModelConfig};
use altup_moe::model::{ModelAux, MoeLayers, Seq2SeqConfig, Seq2SeqModel};
use altup_moe::nn::VarBuilder;
use altup_moe::parallel::{ExchangeTape, ProcessGroup, SingleProcess};
use common::device;
use std::sync::Arc;
use tch::{nn::VarStore, Kind, Tensor};

/// A model variant, and whether its cuts isolate every block completely (a strict tape passes).
/// The input-dependent AltUp prediction and Sequence-AltUp's anchors feed both the layer and
/// their correction: that small subgraph is walked twice (kept until its second walk).
fn variants() -> Vec<(&'static str, ModelConfig, bool)> {
    let mut out = Vec::new();
    let switch = common::tiny(Arch::Switch);
    out.push(("switch", switch.clone(), true));
    let mut deep = switch.clone();
    deep.num_layers = 8;
    out.push(("switch, 8 blocks", deep, true));
    let mut every = switch.clone();
    every.moe_layers = MoeLayers::Every { every: 1, offset: 0 };
    if let Some(m) = &mut every.moe {
        (m.top_k, m.capacity_factor, m.num_shared_experts) = (2, Some(1.0), 1);
    }
    out.push(("top-2 capacity, shared expert, every block", every, true));
    let altup_moe = common::tiny(Arch::AltUpMoe);
    out.push(("altup-moe", altup_moe.clone(), true));
    let mut prediction = altup_moe.clone();
    prediction.altup.as_mut().unwrap().compute_on = ComputeInput::Prediction;
    out.push(("altup-moe, computing on the prediction", prediction.clone(), true));
    let mut recycled = altup_moe.clone();
    recycled.altup.as_mut().unwrap().widening = Widening::Recycled;
    out.push(("recycled altup-moe", recycled, true));
    let mut gemma = prediction;
    gemma.altup.as_mut().unwrap().coefficients = Coefficients::InputDependent { clip: Some(120.0) };
    out.push(("input-dependent altup-moe", gemma, false));
    let mut sequence = switch;
    sequence.sequence_altup = Some(SequenceAltUpConfig { stride: 2 });
    out.push(("sequence-altup switch", sequence, false));
    out
}

/// `(logits · g).sum() + 0.3 Σ balance + 0.2 Σ z` over every stack's MoE layers.
fn objective(logits: &Tensor, g: &Tensor, aux: &[&ModelAux]) -> Tensor {
    let mut total = (logits * g).sum(Kind::Float);
    for (_, m) in aux.iter().flat_map(|a| a.moe_layers()) {
        total = total + &m.load_balancing_loss * 0.3 + &m.z_loss * 0.2;
    }
    total
}

/// Every gradient of `b` equals `a`'s within `tol` (relative to the gradient's scale).
fn assert_same_grads(a: &VarStore, b: &VarStore, tol: f64, what: &str) {
    let (ga, gb) = (named_variables(a).unwrap(), named_variables(b).unwrap());
    assert_eq!(ga.keys().collect::<Vec<_>>(), gb.keys().collect::<Vec<_>>(), "{what}: names");
    for (name, va) in &ga {
        let (x, y) = (va.grad(), gb[name].grad());
        assert_eq!(x.defined(), y.defined(), "{what}: {name} has a gradient on one side only");
        if !x.defined() {
            continue;
        }
        let scale = x.abs().max().double_value(&[]).max(1.0);
        let diff = (&x - &y).abs().max().double_value(&[]);
        assert!(diff <= tol * scale, "{what}: {name} differs by {diff} (scale {scale})");
    }
}

fn moe_blocks(c: &ModelConfig) -> usize {
    (0..c.num_layers).filter(|&l| c.is_moe_layer(l)).count()
}

#[test]
fn one_rank_with_cuts_equals_one_ordinary_backward_for_every_stack() {
    for (name, config, isolated) in variants() {
        for tape in [ExchangeTape::new(), ExchangeTape::strict()] {
            tch::manual_seed(7);
            let tokens = Tensor::randint(config.vocab_size as i64, [2, 12], (Kind::Int64, device()));
            let g = Tensor::randn([2, 12, config.vocab_size as i64], (Kind::Float, device()));
            // The second sequence ends in 3 padding tokens.
            let mask =
                Tensor::from_slice(&(0..24).map(|i| i < 21).collect::<Vec<bool>>()).view([2, 12]).to_device(device());
            let plain_vs = VarStore::new(device());
            let plain = LanguageModel::new(&plain_vs.root(), &config).unwrap();
            let out = plain.forward_t(&tokens, ForwardOptions::train().with_mask(&mask)).unwrap();
            objective(&out.logits, &g, &[&out.aux]).backward();

            let ep_vs = VarStore::new(device());
            let group = ProcessGroup::with_tape(Arc::new(SingleProcess), tape.clone());
            let ep = LanguageModel::new(VarBuilder::new(&ep_vs.root()).with_group(group), &config).unwrap();
            let ep_out = ep.forward_t(&tokens, ForwardOptions::train().with_mask(&mask)).unwrap();
            assert!(out.logits.allclose(&ep_out.logits, 1e-5, 1e-5, false), "{name}: logits");
            let moe = moe_blocks(&config);
            assert_eq!(tape.exchanges(), 2 * moe, "{name}: rows out and back per MoE layer");
            // One cut per block input, and two per MoE block (FFN residual, MoE input).
            assert_eq!(tape.len(), 2 * moe + config.num_layers + 2 * moe, "{name}: cuts");
            let strict = tape.is_strict();
            match tape.backward(&SingleProcess, &objective(&ep_out.logits, &g, &[&ep_out.aux])) {
                Ok(()) => {
                    assert!(isolated || !strict, "{name}: a strict tape should have caught the shared subgraph");
                    assert_same_grads(&plain_vs, &ep_vs, 1e-5, name);
                }
                // The strict tape detects a part of the graph walked twice.
                Err(e) if strict && !isolated => assert!(e.to_string().contains("second time"), "{name}: {e}"),
                Err(e) => panic!("{name} (strict {strict}): {e}"),
            }
            assert!(tape.is_empty());
        }
    }
}

/// The encoder-decoder: the decoder cuts the encoder's output (every decoder block reads it),
/// so the encoder is walked once, after every decoder block has added its gradient.
#[test]
fn encoder_decoder_with_cuts_equals_one_ordinary_backward() {
    let mut config = Seq2SeqConfig::preset(Arch::AltUpMoe, 300);
    for stack in [&mut config.encoder, &mut config.decoder] {
        let base = common::tiny(Arch::AltUpMoe);
        (stack.d_model, stack.num_layers, stack.max_seq_len) = (base.d_model, 4, 16);
        stack.attention.num_heads = base.attention.num_heads;
        (stack.ffn, stack.moe, stack.moe_layers) = (base.ffn.clone(), base.moe.clone(), base.moe_layers.clone());
    }
    tch::manual_seed(3);
    let src = Tensor::randint(300, [2, 10], (Kind::Int64, device()));
    let src_mask =
        Tensor::from_slice(&(0..20).map(|i| i < 18).collect::<Vec<bool>>()).view([2, 10]).to_device(device());
    let tgt = Tensor::randint(300, [2, 7], (Kind::Int64, device()));
    let g = Tensor::randn([2, 7, 300], (Kind::Float, device()));
    let plain_vs = VarStore::new(device());
    let plain = Seq2SeqModel::new(&plain_vs.root(), &config).unwrap();
    let out = plain.forward_t(&src, Some(&src_mask), &tgt, true).unwrap();
    objective(&out.logits, &g, &[&out.encoder_aux, &out.decoder_aux]).backward();
    let tape = ExchangeTape::strict();
    let ep_vs = VarStore::new(device());
    let group = ProcessGroup::with_tape(Arc::new(SingleProcess), tape.clone());
    let ep = Seq2SeqModel::new(VarBuilder::new(&ep_vs.root()).with_group(group), &config).unwrap();
    let ep_out = ep.forward_t(&src, Some(&src_mask), &tgt, true).unwrap();
    assert_eq!(tape.exchanges(), 2 * 2 * 2, "two MoE layers per stack, rows out and back");
    assert_eq!(tape.len(), 8 + 1 + 2 * 8, "block inputs, the memory, exchanges and MoE sublayer cuts");
    tape.backward(&SingleProcess, &objective(&ep_out.logits, &g, &[&ep_out.encoder_aux, &ep_out.decoder_aux])).unwrap();
    assert_same_grads(&plain_vs, &ep_vs, 1e-5, "encoder-decoder");
}

/// Gradient accumulation through the cuts: two micro-batches, each with its own segmented
/// backward of half the loss, equal one batch twice as large (dropless routing, so that capacity
/// does not depend on the batch; the LM loss is a mean over tokens).
#[test]
fn accumulated_micro_batches_equal_one_batch_twice_as_large() {
    let config = common::tiny(Arch::AltUpMoe);
    tch::manual_seed(11);
    let tokens = Tensor::randint(config.vocab_size as i64, [4, 12], (Kind::Int64, device()));
    let targets = Tensor::randint(config.vocab_size as i64, [4, 12], (Kind::Int64, device()));
    let loss = |model: &LanguageModel, rows: std::ops::Range<i64>| {
        let logits = model.forward_t(&tokens.narrow(0, rows.start, rows.end - rows.start), true).unwrap().logits;
        logits
            .view([-1, config.vocab_size as i64])
            .cross_entropy_for_logits(&targets.narrow(0, rows.start, rows.end - rows.start).view([-1]))
    };
    let whole_vs = VarStore::new(device());
    let whole = LanguageModel::new(&whole_vs.root(), &config).unwrap();
    loss(&whole, 0..4).backward();
    let tape = ExchangeTape::strict();
    let ep_vs = VarStore::new(device());
    let group = ProcessGroup::with_tape(Arc::new(SingleProcess), tape.clone());
    let ep = LanguageModel::new(VarBuilder::new(&ep_vs.root()).with_group(group), &config).unwrap();
    for half in [0..2, 2..4] {
        tape.backward(&SingleProcess, &(loss(&ep, half) * 0.5)).unwrap();
    }
    assert_same_grads(&whole_vs, &ep_vs, 1e-6, "grad-accum 2");
}
