//! Cached incremental decoding equals full recomputation, for every stack.

mod common;

use altup_moe::altup::AltUpConfig;
use altup_moe::model::Sampling;
use altup_moe::model::{Arch, LanguageModel, ModelConfig};
use common::{device, tiny};
use rand::SeedableRng;
use tch::{nn::VarStore, Kind, Tensor};

fn configs() -> Vec<(String, ModelConfig)> {
    let mut out: Vec<(String, ModelConfig)> = Arch::ALL.iter().map(|&a| (a.to_string(), tiny(a))).collect();
    let mut gemma = tiny(Arch::AltUpMoe);
    gemma.altup = Some(AltUpConfig::gemma3n());
    out.push(("altup-moe (gemma3n coefficients)".into(), gemma));
    let mut recycled = tiny(Arch::AltUp);
    recycled.altup = Some(AltUpConfig::recycled(3));
    out.push(("altup (recycled)".into(), recycled));
    out
}

/// Prefill then one token at a time: the logits equal a full forward pass within 1e-5.
#[test]
fn cached_decoding_equals_full_recomputation() {
    for (name, config) in configs() {
        let vs = VarStore::new(device());
        let model = LanguageModel::new(&vs.root(), &config).unwrap();
        let tokens = Tensor::randint(256, [2, 11], (Kind::Int64, device()));
        let full = model.forward_t(&tokens, false).unwrap().logits;
        let mut cache = model.new_cache();
        let mut pieces = vec![model.forward_cached(&tokens.narrow(1, 0, 4), &mut cache).unwrap().logits];
        for t in 4..11 {
            pieces.push(model.forward_cached(&tokens.narrow(1, t, 1), &mut cache).unwrap().logits);
        }
        let cached = Tensor::cat(&pieces, 1);
        let diff = (&cached - &full).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{name}: max difference {diff}");
        // The cache is full: one more token is a clear error.
        let err = model.forward_cached(&tokens.narrow(1, 0, 2), &mut cache).unwrap_err().to_string();
        assert!(err.contains("sequence length 13 exceeds max_seq_len (12)"), "{err}");
    }
}

/// Greedy generation with the cache gives the same tokens as recomputing every prefix.
#[test]
fn cached_generation_matches_uncached() {
    let mut config = tiny(Arch::AltUpMoe);
    config.max_seq_len = 40;
    let vs = VarStore::new(device());
    let model = LanguageModel::new(&vs.root(), &config).unwrap();
    let prompt = [72i64, 101, 108, 108, 111];
    let greedy = Sampling { temperature: 0.0, top_k: None, top_p: None };
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let cached = model.generate(&prompt, 30, greedy, &mut rng).unwrap();
    let mut tokens = prompt.to_vec();
    for _ in 0..30 {
        let input = Tensor::from_slice(&tokens).view([1, -1]).to_device(device());
        let logits = model.forward_t(&input, false).unwrap().logits.select(1, -1);
        tokens.push(logits.argmax(-1, false).int64_value(&[0]));
    }
    assert_eq!(cached, tokens);
    let uncached = model.generate_uncached(&prompt, 30, greedy, &mut rng).unwrap();
    assert_eq!(uncached, tokens);
    // Beyond max_seq_len generation continues on a sliding window.
    let long = model.generate(&prompt, 50, greedy, &mut rng).unwrap();
    assert_eq!(long.len(), 55);
    assert_eq!(&long[..35], &tokens[..]);
}

/// Sequence-AltUp models cannot be cached; generation falls back to recomputation.
#[test]
fn sequence_altup_generation_recomputes() {
    let mut config = tiny(Arch::Dense);
    config.sequence_altup = Some(altup_moe::altup::SequenceAltUpConfig { stride: 2 });
    let vs = VarStore::new(device());
    let model = LanguageModel::new(&vs.root(), &config).unwrap();
    let mut cache = model.new_cache();
    let err = model.forward_cached(&Tensor::zeros([1, 2], (Kind::Int64, device())), &mut cache).unwrap_err();
    assert_eq!(err.to_string(), "invalid input: cached decoding does not support Sequence-AltUp stacks");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let out = model.generate(&[1, 2, 3], 5, Sampling::default(), &mut rng).unwrap();
    assert_eq!(out.len(), 8);
}
