//! Cached incremental decoding equals full recomputation, for every stack.

mod common;

use altup_moe::altup::AltUpConfig;
use altup_moe::model::{Arch, LanguageModel, ModelConfig};
use altup_moe::model::{Generation, Sampling};
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
    let cached = model.generate(&prompt, &Generation::new(30, greedy), &mut rng).unwrap();
    let mut tokens = prompt.to_vec();
    for _ in 0..30 {
        let input = Tensor::from_slice(&tokens).view([1, -1]).to_device(device());
        let logits = model.forward_t(&input, false).unwrap().logits.select(1, -1);
        tokens.push(logits.argmax(-1, false).int64_value(&[0]));
    }
    assert_eq!(cached, tokens);
    let uncached = model.generate_uncached(&prompt, &Generation::new(30, greedy), &mut rng).unwrap();
    assert_eq!(uncached, tokens);
    // Beyond max_seq_len generation continues on a sliding window.
    let long = model.generate(&prompt, &Generation::new(50, greedy), &mut rng).unwrap();
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
    let out = model.generate(&[1, 2, 3], &Generation::new(5, Sampling::default()), &mut rng).unwrap();
    assert_eq!(out.len(), 8);
}

/// Generation ends right after the first stop id drawn, with and without the cache, and the
/// streaming callback sees exactly the new tokens.
#[test]
fn generation_stops_at_a_stop_id() {
    let mut config = tiny(Arch::AltUpMoe);
    config.max_seq_len = 40;
    let vs = VarStore::new(device());
    let model = LanguageModel::new(&vs.root(), &config).unwrap();
    let prompt = [72i64, 101, 108];
    let greedy = Sampling { temperature: 0.0, top_k: None, top_p: None };
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let free = model.generate(&prompt, &Generation::new(20, greedy), &mut rng).unwrap();
    assert_eq!(free.len(), 23);
    // Stop at the token drawn fifth: generation ends at its first occurrence.
    let stop = free[3 + 4];
    let first = free[3..].iter().position(|&t| t == stop).unwrap();
    let request = Generation::new(20, greedy).stop_at([stop]);
    let stopped = model.generate(&prompt, &request, &mut rng).unwrap();
    assert_eq!(stopped, free[..3 + first + 1].to_vec());
    assert_eq!(model.generate_uncached(&prompt, &request, &mut rng).unwrap(), stopped);
    let mut seen = Vec::new();
    let streamed = model
        .generate_streaming(&prompt, &request, &mut rng, &mut |t| {
            seen.push(t);
            Ok(())
        })
        .unwrap();
    assert_eq!((streamed, seen), (stopped.clone(), stopped[3..].to_vec()));
    // A stop id that is never drawn changes nothing.
    let never = Generation::new(20, greedy).stop_at([i64::MAX]);
    assert_eq!(model.generate(&prompt, &never, &mut rng).unwrap(), free);
}

/// For every model whose cached step can route differently from the full pass, `generate`
/// recomputes: it gives `generate_uncached`'s tokens. The cached forward pass itself does
/// differ for an evaluation capacity limit (so the fallback is needed).
#[test]
fn generation_never_uses_a_cache_that_disagrees_with_the_full_pass() {
    use altup_moe::moe::RouterKind;
    let mut capacity = tiny(Arch::Switch);
    if let Some(m) = &mut capacity.moe {
        (m.eval_capacity_factor, m.min_capacity) = (Some(0.25), 1);
    }
    let mut expert_choice = tiny(Arch::Switch);
    if let Some(m) = &mut expert_choice.moe {
        (m.router, m.capacity_factor, m.eval_capacity_factor) = (RouterKind::ExpertChoice, Some(1.0), Some(1.0));
    }
    let mut sequence = tiny(Arch::Dense);
    sequence.sequence_altup = Some(altup_moe::altup::SequenceAltUpConfig { stride: 2 });
    let greedy = Sampling { temperature: 0.0, top_k: None, top_p: None };
    for (name, config, reason) in [
        ("eval capacity", capacity.clone(), "evaluation capacity limit"),
        ("expert choice", expert_choice, "expert-choice routing"),
        ("sequence-altup", sequence, "Sequence-AltUp"),
    ] {
        let blockers = config.cache_blockers();
        assert!(blockers.iter().any(|b| b.contains(reason)), "{name}: {blockers:?}");
        let vs = VarStore::new(device());
        let model = LanguageModel::new(&vs.root(), &config).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let request = Generation::new(9, greedy);
        let cached = model.generate(&[5, 6, 7], &request, &mut rng).unwrap();
        assert_eq!(cached, model.generate_uncached(&[5, 6, 7], &request, &mut rng).unwrap(), "{name}");
    }
    // Without the fallback the eval-capacity model's cached logits are not the full pass's.
    let vs = VarStore::new(device());
    let model = LanguageModel::new(&vs.root(), &capacity).unwrap();
    let tokens = Tensor::randint(256, [1, 11], (Kind::Int64, device()));
    let full = model.forward_t(&tokens, false).unwrap().logits;
    let mut cache = model.new_cache();
    let mut pieces = vec![model.forward_cached(&tokens.narrow(1, 0, 1), &mut cache).unwrap().logits];
    for t in 1..11 {
        pieces.push(model.forward_cached(&tokens.narrow(1, t, 1), &mut cache).unwrap().logits);
    }
    let diff = (Tensor::cat(&pieces, 1) - full).abs().max().double_value(&[]);
    assert!(diff > 1e-3, "capacity never bound: {diff}");
    // The presets cache.
    for arch in Arch::ALL {
        assert!(ModelConfig::preset(arch).cache_blockers().is_empty(), "{arch}");
    }
}
