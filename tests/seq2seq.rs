//! The encoder-decoder: bidirectional encoder, padding, MoE equivalence, cached decoding,
//! parameter accounting and span-corruption training.

mod common;

use altup_moe::data::SpanCorruption;
use altup_moe::model::Arch;
use altup_moe::model::{Seq2SeqConfig, Seq2SeqModel};
use altup_moe::moe::MoeConfig;
use altup_moe::nn::FeedForwardConfig;
use altup_moe::train::{SpanCorruptionTask, Trainer};
use common::{copy_shared, device};
use tch::{nn::VarStore, Kind, Tensor};

fn tiny(arch: Arch, vocab: usize) -> Seq2SeqConfig {
    let mut c = Seq2SeqConfig::preset(arch, vocab);
    for stack in [&mut c.encoder, &mut c.decoder] {
        let base = common::tiny(arch);
        stack.d_model = base.d_model;
        stack.num_layers = 2;
        stack.max_seq_len = 40;
        stack.attention.num_heads = base.attention.num_heads;
        stack.ffn = base.ffn.clone();
        stack.moe = base.moe.clone();
        stack.moe_layers = base.moe_layers.clone();
    }
    c
}

fn build(config: &Seq2SeqConfig) -> (VarStore, Seq2SeqModel) {
    let vs = VarStore::new(device());
    let model = Seq2SeqModel::new(&vs.root(), config).unwrap();
    (vs, model)
}

fn ids(b: i64, t: i64, vocab: i64) -> Tensor {
    Tensor::randint(vocab, [b, t], (Kind::Int64, device()))
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// The encoder is bidirectional: a later source token changes earlier encoder outputs.
#[test]
fn encoder_sees_the_whole_source() {
    let (_vs, model) = build(&tiny(Arch::Dense, 300));
    let src = ids(2, 8, 256);
    let changed = src.copy();
    let _ = changed.select(1, 7).fill_(3);
    let (a, _) = model.encode(&src, None, false).unwrap();
    let (b, _) = model.encode(&changed, None, false).unwrap();
    assert!(max_diff(&a.narrow(1, 0, 7), &b.narrow(1, 0, 7)) > 1e-4, "position 0..7 must see token 7");
}

/// Padded source positions affect neither the real encoder outputs nor the decoder's logits.
#[test]
fn source_padding_does_not_affect_real_positions() {
    for arch in Arch::ALL {
        let (_vs, model) = build(&tiny(arch, 300));
        let src = ids(2, 9, 256);
        let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1])
            .view([2, 9])
            .to_device(device());
        let tgt = ids(2, 5, 300);
        let repadded = src.copy();
        let _ = repadded.get(0).narrow(0, 6, 3).fill_(200);
        let a = model.forward_t(&src, Some(&mask), &tgt, false).unwrap();
        let b = model.forward_t(&repadded, Some(&mask), &tgt, false).unwrap();
        assert!(max_diff(&a.logits, &b.logits) < 1e-5, "{arch}");
        let (ea, _) = model.encode(&src, Some(&mask), false).unwrap();
        let (eb, _) = model.encode(&repadded, Some(&mask), false).unwrap();
        assert!(max_diff(&ea.get(0).narrow(0, 0, 6), &eb.get(0).narrow(0, 0, 6)) < 1e-5, "{arch}");
    }
}

/// An encoder-decoder whose FFNs are 1-expert MoEs equals the dense one with the same weights.
#[test]
fn one_expert_moe_equals_dense() {
    let dense_config = tiny(Arch::Dense, 300);
    let mut moe_config = dense_config.clone();
    for stack in [&mut moe_config.encoder, &mut moe_config.decoder] {
        let FeedForwardConfig { d_ff, activation } = stack.ffn.clone();
        stack.moe = Some(MoeConfig { num_experts: 1, d_ff, activation, ..Default::default() });
        stack.moe_layers = altup_moe::model::MoeLayers::Every { every: 1, offset: 0 };
    }
    let (dense_vs, dense) = build(&dense_config);
    let (moe_vs, moe) = build(&moe_config);
    copy_shared(&dense_vs, &moe_vs);
    let dense_vars = dense_vs.variables();
    tch::no_grad(|| {
        for (name, var) in moe_vs.variables() {
            if let Some(prefix) = name.strip_suffix(".moe.experts.w_in").or(name.strip_suffix(".moe.experts.w_out")) {
                let which = if name.ends_with("w_in") { "w_in" } else { "w_out" };
                let w = &dense_vars[&format!("{prefix}.ffn.{which}.weight")];
                var.shallow_clone().copy_(&w.tr().unsqueeze(0));
            }
        }
    });
    let (src, tgt) = (ids(2, 7, 256), ids(2, 6, 300));
    let a = dense.forward_t(&src, None, &tgt, true).unwrap();
    let b = moe.forward_t(&src, None, &tgt, true).unwrap();
    assert!(max_diff(&a.logits, &b.logits) < 1e-5, "{}", max_diff(&a.logits, &b.logits));
}

/// Cached step-by-step decoding over an encoded source equals the teacher-forced pass.
#[test]
fn cached_decoder_equals_full_pass() {
    for arch in Arch::ALL {
        let (_vs, model) = build(&tiny(arch, 300));
        let (src, tgt) = (ids(2, 9, 256), ids(2, 7, 300));
        let full = model.forward_t(&src, None, &tgt, false).unwrap().logits;
        let (memory, _) = model.encode(&src, None, false).unwrap();
        let mut cache = model.decoder().new_cache();
        let steps: Vec<Tensor> =
            (0..7).map(|t| model.decode_cached(&memory, None, &tgt.narrow(1, t, 1), &mut cache).unwrap()).collect();
        let cached = Tensor::cat(&steps, 1);
        assert!(max_diff(&cached, &full) < 1e-5, "{arch}: {}", max_diff(&cached, &full));
    }
}

/// Generation fills the decoder's window exactly and names the limit when asked for more.
#[test]
fn generation_stops_at_the_decoder_window() {
    let (_vs, model) = build(&tiny(Arch::Dense, 300));
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    let greedy = altup_moe::model::Sampling { temperature: 0.0, top_k: None, top_p: None };
    let out = model.generate(&[104, 105], 299, None, 40, greedy, &mut rng).unwrap();
    assert_eq!(out.len(), 40);
    let err = model.generate(&[104, 105], 299, None, 41, greedy, &mut rng).unwrap_err();
    assert_eq!(err.to_string(), "invalid input: max_new_tokens (41) exceeds the decoder's max_seq_len (40)");
}

/// Parameter counts match the allocated parameters, shared or separate embeddings, tied or not.
#[test]
fn parameter_counts_match() {
    for (share, tie) in [(true, false), (false, false), (true, true)] {
        let mut config = tiny(Arch::AltUpMoe, 300);
        config.share_embeddings = share;
        config.decoder.tie_embeddings = tie;
        if tie {
            for stack in [&mut config.encoder, &mut config.decoder] {
                stack.altup = Some(altup_moe::altup::AltUpConfig::recycled(2));
            }
        }
        let (vs, model) = build(&config);
        let numel: usize = vs.variables().values().map(|t| t.numel()).sum();
        assert_eq!(model.config().param_counts().total, numel, "share={share} tie={tie}");
        assert!(vs.variables().keys().all(|n| !n.contains("__")));
    }
}

#[test]
fn inconsistent_configs_are_named() {
    let mut c = tiny(Arch::Dense, 300);
    c.encoder.attention.causal = true;
    let vs = VarStore::new(device());
    let err = Seq2SeqModel::new(&vs.root(), &c).unwrap_err().to_string();
    assert_eq!(err, "invalid config: encoder attention.causal (true) must be false");
    let mut c = tiny(Arch::Dense, 300);
    c.decoder.vocab_size = 299;
    let err = Seq2SeqModel::new(&vs.root(), &c).unwrap_err().to_string();
    assert_eq!(err, "invalid config: encoder vocab_size (300) must equal decoder vocab_size (299)");
    let mut c = tiny(Arch::Dense, 300);
    c.decoder.cross_attention = false;
    let err = Seq2SeqModel::new(&vs.root(), &c).unwrap_err().to_string();
    assert_eq!(err, "invalid config: decoder cross_attention (false) must be true");
    assert_eq!(vs.variables().len(), 0);
    // A decoder config cannot be built as a language model.
    let err =
        altup_moe::model::LanguageModel::new(&vs.root(), &tiny(Arch::Dense, 300).decoder).unwrap_err().to_string();
    assert!(err.contains("cross_attention (true) needs an encoder"), "{err}");
}

/// Span-corruption pre-training through the generic trainer: the loss falls, generation works.
#[test]
fn span_corruption_training_learns() {
    let corruption = SpanCorruption::default();
    let (train, val) = common::text_splits("All the world's a stage, and all the men and women merely players. ", 60);
    for arch in [Arch::Dense, Arch::AltUpMoe] {
        let (vs, model) = build(&tiny(arch, corruption.vocab_size()));
        let task = SpanCorruptionTask { model: &model, corruption: corruption.clone(), eval_seed: 0 };
        let config = common::short_schedule();
        let mut trainer = Trainer::new(&vs, &task, &train, &val, config).unwrap();
        let before = trainer.evaluate().unwrap().loss;
        let stats: Vec<_> = (0..25).map(|_| trainer.step().unwrap()).collect();
        let after = trainer.evaluate().unwrap().loss;
        assert!(after < before - 1.5, "{arch}: validation loss {before:.3} -> {after:.3}");
        assert_eq!(stats[0].tokens, 8 * corruption.lengths(32).unwrap().1);
        assert_eq!(
            stats[0].moe_layers.iter().filter(|m| m.stack == altup_moe::model::StackKind::Encoder).count(),
            if arch.has_moe() { 1 } else { 0 }
        );
        let out = model
            .generate(
                &[104, 101, 108, 108, 111],
                corruption.decoder_start(),
                None,
                6,
                altup_moe::model::Sampling::default(),
                &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0),
            )
            .unwrap();
        assert_eq!(out.len(), 6);
    }
}

/// Undoes span corruption: each sentinel of the input is replaced by the tokens that follow the
/// same sentinel in the target.
fn uncorrupt(input: &[i64], target: &[i64], corruption: &SpanCorruption) -> Vec<i64> {
    let mut out = Vec::new();
    for &t in input {
        if !corruption.is_sentinel(t) {
            out.push(t);
            continue;
        }
        let at = target.iter().position(|&x| x == t).expect("every input sentinel is in the target");
        out.extend(target[at + 1..].iter().take_while(|&&x| !corruption.is_sentinel(x)));
    }
    out
}

/// Span corruption on subword ids: the sentinels follow the tokenizer's ids, every window is
/// restored exactly by putting the target's spans back, a model learns, and data of a larger
/// tokenizer than `text_vocab` is refused naming both sizes.
#[test]
fn span_corruption_on_subword_ids() {
    use altup_moe::data::TextTokenizer;
    use rand::SeedableRng;
    let text = "All the world's a stage, and all the men and women merely players; they have their exits \
                and their entrances, and one man in his time plays many parts.\n"
        .repeat(40);
    let tokenizer = TextTokenizer::train_bpe(&text, 300).unwrap();
    let (train_text, val_text) = text.as_bytes().split_at(text.len() * 9 / 10);
    let (train, val) = (tokenizer.dataset(train_text).unwrap(), tokenizer.dataset(val_text).unwrap());
    let corruption = SpanCorruption { text_vocab: tokenizer.vocab_size(), ..Default::default() };
    assert_eq!(corruption.sentinel(0), 300);

    // Every window comes back from its corrupted input and target.
    let window = 24;
    let windows = val.spread_windows(6, window).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let batches = corruption.eval_batches(&val, 3, window, 2, &mut rng, tch::Device::Cpu).unwrap();
    let (s, t) = corruption.lengths(window).unwrap();
    let mut restored = Vec::new();
    for batch in &batches {
        let src = Vec::<i64>::try_from(batch.src.flatten(0, -1)).unwrap();
        let tgt = Vec::<i64>::try_from(batch.tgt_out.flatten(0, -1)).unwrap();
        for (input, target) in src.chunks(s).zip(tgt.chunks(t)) {
            assert!(target.iter().filter(|&&x| corruption.is_sentinel(x)).count() >= 2);
            restored.push(uncorrupt(input, target, &corruption));
        }
    }
    assert_eq!(restored, windows);
    assert!(windows.iter().flatten().any(|&id| id >= 256), "the BPE merges pieces into ids past the bytes");

    // Training on subword ids through the generic trainer lowers the loss.
    let (vs, model) = build(&tiny(Arch::Dense, corruption.vocab_size()));
    let task = SpanCorruptionTask { model: &model, corruption: corruption.clone(), eval_seed: 0 };
    let config = common::short_schedule();
    let mut trainer = Trainer::new(&vs, &task, &train, &val, config.clone()).unwrap();
    let before = trainer.evaluate().unwrap().loss;
    for _ in 0..25 {
        trainer.step().unwrap();
    }
    let after = trainer.evaluate().unwrap().loss;
    assert!(after < before - 1.5, "validation loss {before:.3} -> {after:.3}");

    // Sentinels at the bytes' end would collide with the tokenizer's ids.
    let byte_task = SpanCorruptionTask { model: &model, corruption: SpanCorruption::default(), eval_seed: 0 };
    let err = Trainer::new(&vs, &byte_task, &train, &val, config).unwrap_err().to_string();
    assert!(err.contains("300-id tokenizer") && err.contains("text_vocab = 256"), "{err}");
}
