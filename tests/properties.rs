//! Property tests: any config either builds a working model or is rejected with a config error
//! naming a value; dispatch/combine invariants hold for any routing, capacity and mask.

mod common;

use altup_moe::altup::{AltUpConfig, SequenceAltUpConfig};
use altup_moe::moe::{plan_token_choice, MoeConfig, SortDispatcher, TokenDispatcher};
use altup_moe::{
    model::{LanguageModel, ModelConfig},
    Error,
};
use common::device;
use proptest::prelude::*;
use tch::{nn::VarStore, Kind, Tensor};

static BUILT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn capacity() -> impl Strategy<Value = Option<f64>> {
    prop_oneof![
        3 => Just(None),
        3 => Just(Some(1.25)),
        1 => Just(Some(0.5)),
        1 => Just(Some(-1.0)),
        1 => Just(Some(0.0)),
        1 => Just(Some(f64::NAN)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Every config is either rejected with `Error::Config` naming a value, or builds a model
    /// whose forward pass returns finite logits of the right shape.
    #[test]
    fn configs_build_or_fail_with_a_named_value(
        // Each parameter is usually valid and sometimes not, so that both outcomes are common.
        d_model in prop_oneof![4 => Just(16usize), 1 => 0usize..40],
        heads in prop_oneof![4 => Just(2usize), 1 => 0usize..5],
        layers in prop_oneof![4 => 1usize..3, 1 => Just(0usize)],
        experts in 0usize..5,
        top_k in prop_oneof![3 => Just(1usize), 1 => 0usize..5],
        cf in capacity(),
        altup_k in prop_oneof![3 => 1usize..3, 1 => 0usize..4],
        stride in prop_oneof![3 => Just(0usize), 1 => 0usize..3],
        tie in any::<bool>(),
        vocab in prop_oneof![4 => Just(12usize), 1 => 0usize..20],
    ) {
        let mut c = ModelConfig { d_model, num_layers: layers, vocab_size: vocab, max_seq_len: 8, tie_embeddings: tie, ..ModelConfig::default() };
        c.attention.num_heads = heads;
        c.ffn.d_ff = 8;
        if experts > 0 {
            c.moe = Some(MoeConfig { num_experts: experts, top_k, d_ff: 8, capacity_factor: cf, eval_capacity_factor: cf, min_capacity: 1, ..Default::default() });
            c.moe_layers = altup_moe::model::MoeLayers::Every { every: 1, offset: 0 };
        }
        if altup_k != 1 {
            c.altup = Some(AltUpConfig { num_blocks: altup_k, ..Default::default() });
        }
        if stride > 0 {
            c.sequence_altup = Some(SequenceAltUpConfig { stride });
        }
        let vs = VarStore::new(device());
        match LanguageModel::new(&vs.root(), &c) {
            Ok(model) => {
                BUILT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let tokens = Tensor::randint(vocab as i64, [2, 5], (Kind::Int64, device()));
                let out = model.forward_t(&tokens, true).unwrap();
                prop_assert_eq!(out.logits.size(), vec![2, 5, vocab as i64]);
                prop_assert!(out.logits.isfinite().all().int64_value(&[]) == 1);
            }
            Err(Error::Config(msg)) => {
                prop_assert!(msg.contains('(') && msg.contains(')'), "error names no value: {}", msg);
                prop_assert_eq!(vs.variables().len(), 0);
            }
            Err(other) => prop_assert!(false, "unexpected error kind: {}", other),
        }
    }

    /// For any routing, capacity and mask: with unit gates, combine(dispatch(x)) = x times the
    /// number of the token's kept assignments; masked tokens get zeros; no expert exceeds its
    /// capacity; counts before capacity equal the real tokens' choices.
    #[test]
    fn dispatch_combine_invariants(
        n in 1i64..24,
        e in 1i64..6,
        k_raw in 1i64..4,
        capacity in proptest::option::of(1i64..6),
        seed in any::<u64>(),
        mask_bits in any::<u32>(),
    ) {
        let k = k_raw.min(e);
        tch::manual_seed(seed as i64);
        // Distinct experts per token: top-k of random scores.
        let (_, index) = Tensor::rand([n, e], (Kind::Float, device())).topk(k, -1, true, true);
        let valid = Tensor::from_slice(&(0..n).map(|t| (mask_bits >> (t % 32)) & 1 == 1 || t % 3 == 0).collect::<Vec<bool>>()).to_device(device());
        let gates = Tensor::ones([n, k], (Kind::Float, device()));
        let plan = plan_token_choice(&index, &gates, e, Some(&valid), capacity, None).unwrap();
        let x = Tensor::randn([n, 4], (Kind::Float, device()));
        let y = SortDispatcher.combine(&SortDispatcher.dispatch(&x, &plan).unwrap(), &plan).unwrap();
        let kept_per_token = Tensor::zeros([n], (Kind::Float, device()))
            .index_add(0, &plan.tokens().unwrap(), &Tensor::ones([plan.num_kept()], (Kind::Float, device())));
        prop_assert!(y.allclose(&(&x * kept_per_token.unsqueeze(1)), 1e-6, 1e-6, false));
        let masked_rows = y.index_select(0, &valid.logical_not().nonzero().squeeze_dim(1));
        prop_assert!(masked_rows.numel() == 0 || masked_rows.abs().max().double_value(&[]) == 0.0);
        if let Some(c) = capacity {
            prop_assert!(plan.group_sizes.host().unwrap().iter().all(|&g| g <= c));
        }
        let real_choices = index.index_select(0, &valid.nonzero().squeeze_dim(1)).view([-1]).bincount::<Tensor>(None, e);
        prop_assert!(plan.routed_per_expert.equal(&real_choices));
        prop_assert_eq!(plan.group_sizes.host().unwrap().iter().sum::<i64>(), plan.num_kept());
    }
}

/// The config property above must exercise working models, not only rejections.
#[test]
fn config_property_builds_some_models() {
    configs_build_or_fail_with_a_named_value();
    assert!(BUILT.load(std::sync::atomic::Ordering::Relaxed) >= 8, "too few valid configs were generated");
}
