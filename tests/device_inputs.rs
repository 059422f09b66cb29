//! Token ids and masks given by the caller may live on the host while the model lives on the test
//! device: the public forward passes move them to the model's device, and the output equals the
//! same call with inputs already there.
//!
//! On the CPU (the default test device) the host *is* the model's device, so these tests only
//! check that nothing changes; they are meant for GPU runs (`ALTUP_MOE_TEST_DEVICE=cuda`), where
//! an input left on the host would reach a CUDA kernel and fail.

mod common;

use altup_moe::altup::SequenceAltUpConfig;
use altup_moe::model::{Arch, ForwardOptions, LanguageModel, ModelConfig};
use altup_moe::model::{Seq2SeqConfig, Seq2SeqModel};
use common::{device, tiny};
use tch::{nn::VarStore, Device, Kind, Tensor};

/// Token ids `[2, 9]` in `0..vocab` and a bool mask whose second row ends in three padding
/// tokens, both on the host (the CPU, whatever the test device).
fn host_inputs(vocab: i64) -> (Tensor, Tensor) {
    let tokens = Tensor::randint(vocab, [2, 9], (Kind::Int64, Device::Cpu));
    let mask = Tensor::from_slice(&(0..18).map(|i| i < 15).collect::<Vec<bool>>()).view([2, 9]);
    (tokens, mask)
}

/// `from_host` (computed from host inputs) is on the model's device and equals `reference`
/// (computed from inputs on the model's device). Within 1e-6 rather than bitwise: two identical
/// calls on a GPU need not be bitwise equal.
fn assert_same(from_host: &Tensor, reference: &Tensor, what: &str) {
    assert_eq!(from_host.device(), device(), "{what}: the output is on the model's device");
    let diff = (from_host - reference).abs().max().double_value(&[]);
    assert!(diff <= 1e-6, "{what}: host inputs change the output by {diff}");
}

/// `LanguageModel::forward_t` with a mask (and the cached decoding path) with host token ids and a
/// host bool mask, for a plain MoE stack, AltUp + MoE and Sequence-AltUp (whose anchors select
/// from the mask).
#[test]
fn language_model_accepts_host_tokens_and_mask() {
    let mut sequence = tiny(Arch::Switch);
    sequence.sequence_altup = Some(SequenceAltUpConfig { stride: 2 });
    let configs: [(&str, ModelConfig); 3] =
        [("switch", tiny(Arch::Switch)), ("altup-moe", tiny(Arch::AltUpMoe)), ("sequence-altup switch", sequence)];
    for (name, config) in configs {
        let vs = VarStore::new(device());
        let model = LanguageModel::new(&vs.root(), &config).unwrap();
        let (tokens, mask) = host_inputs(config.vocab_size as i64);
        let (tokens_d, mask_d) = (tokens.to_device(device()), mask.to_device(device()));
        let from_host = model.forward_t(&tokens, ForwardOptions::eval().with_mask(&mask)).unwrap().logits;
        let reference = model.forward_t(&tokens_d, ForwardOptions::eval().with_mask(&mask_d)).unwrap().logits;
        assert_same(&from_host, &reference, name);
        if config.sequence_altup.is_none() {
            let (mut host_cache, mut device_cache) = (model.new_cache(), model.new_cache());
            for t in 0..3 {
                let from_host = model.forward_cached(&tokens.narrow(1, t, 1), &mut host_cache).unwrap().logits;
                let reference = model.forward_cached(&tokens_d.narrow(1, t, 1), &mut device_cache).unwrap().logits;
                assert_same(&from_host, &reference, &format!("{name}, cached step {t}"));
            }
        }
    }
}

/// `Seq2SeqModel::forward_t` with host source ids, a host bool source mask (used by the encoder's
/// self-attention and MoE and by the decoder's cross-attention) and host target ids.
#[test]
fn seq2seq_model_accepts_host_tokens_and_mask() {
    let mut config = Seq2SeqConfig::preset(Arch::Switch, 300);
    for stack in [&mut config.encoder, &mut config.decoder] {
        let base = tiny(Arch::Switch);
        (stack.d_model, stack.num_layers) = (base.d_model, 2);
        stack.attention.num_heads = base.attention.num_heads;
        (stack.ffn, stack.moe) = (base.ffn.clone(), base.moe.clone());
    }
    let vs = VarStore::new(device());
    let model = Seq2SeqModel::new(&vs.root(), &config).unwrap();
    let (src, src_mask) = host_inputs(300);
    let tgt = Tensor::randint(300, [2, 5], (Kind::Int64, Device::Cpu));
    let from_host = model.forward_t(&src, Some(&src_mask), &tgt, false).unwrap().logits;
    let reference = model
        .forward_t(&src.to_device(device()), Some(&src_mask.to_device(device())), &tgt.to_device(device()), false)
        .unwrap()
        .logits;
    assert_same(&from_host, &reference, "encoder-decoder");
}
