//! Builder, config and whole-model invariants.

mod common;

use altup_moe::altup::{AltUpConfig, OutputReduction};
use altup_moe::io::named_variables;
use altup_moe::model::MoeLayers;
use altup_moe::model::{Arch, LanguageModel, ModelConfig};
use common::{copy_shared, device, tiny};
use tch::{nn::VarStore, Kind, Tensor};

fn tokens(b: i64, t: i64) -> Tensor {
    Tensor::randint(256, [b, t], (Kind::Int64, device()))
}

/// Parameter counts from the formulas equal the number of elements actually allocated, and
/// parameter names mirror the module tree without de-duplication suffixes.
#[test]
fn param_counts_match_the_var_store_and_names_are_unique() {
    let mut configs: Vec<ModelConfig> = Arch::ALL.iter().map(|&a| tiny(a)).collect();
    let mut projection = tiny(Arch::AltUpMoe);
    projection.altup = Some(AltUpConfig { num_blocks: 3, output: OutputReduction::Projection, ..Default::default() });
    projection.ffn.activation = altup_moe::nn::Activation::SwiGlu;
    projection.moe.as_mut().unwrap().activation = altup_moe::nn::Activation::SwiGlu;
    projection.moe.as_mut().unwrap().top_k = 2;
    configs.push(projection);
    let mut tied = tiny(Arch::Switch);
    tied.tie_embeddings = true;
    configs.push(tied);
    // Grouped-query attention (2 key/value heads for 8 query heads) in the Llama and Mixtral presets.
    configs.push(ModelConfig::llama());
    configs.push(ModelConfig::mixtral());
    for config in configs {
        let vs = VarStore::new(device());
        let model = LanguageModel::new(&vs.root(), &config).unwrap();
        let vars = named_variables(&vs).unwrap();
        let numel: usize = vars.values().map(|t| t.numel()).sum();
        let counts = model.param_counts();
        assert_eq!(counts.total, numel, "{config:?}");
        let expert_numel: usize = vars.iter().filter(|(n, _)| n.contains(".experts.")).map(|(_, t)| t.numel()).sum();
        assert_eq!(counts.expert, expert_numel);
        let router_numel: usize = vars.iter().filter(|(n, _)| n.contains(".router.")).map(|(_, t)| t.numel()).sum();
        assert_eq!(counts.router, router_numel);
        if let Some(moe) = &config.moe {
            let moe_layers = (0..config.num_layers).filter(|&l| config.is_moe_layer(l)).count();
            let inactive = moe_layers * (moe.num_experts - moe.top_k) * moe.params_per_expert(config.d_model);
            assert_eq!(counts.active_per_token, numel - inactive);
        } else {
            assert_eq!(counts.active_per_token, numel);
        }
    }
    let vs = VarStore::new(device());
    let _ = LanguageModel::new(&vs.root(), &tiny(Arch::AltUpMoe)).unwrap();
    let names: Vec<String> = named_variables(&vs).unwrap().into_keys().collect();
    for expected in [
        "embed.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.0.ffn.w_in.weight",
        "blocks.1.moe.router.weight",
        "blocks.1.moe.experts.w_in",
        "blocks.1.moe.experts.w_out",
        "blocks.2.altup.predictor",
        "blocks.2.altup.corrector",
        "final_norm.weight",
        "head.weight",
    ] {
        assert!(names.iter().any(|n| n == expected), "missing {expected} in {names:?}");
    }
}

/// AltUp with K = 1 (identity predictor, unit gain) equals the plain stack with the same weights,
/// for dense and MoE blocks.
#[test]
fn altup_with_one_block_equals_the_plain_stack() {
    for (plain_arch, altup_arch) in [(Arch::Dense, Arch::AltUp), (Arch::Switch, Arch::AltUpMoe)] {
        let plain_vs = VarStore::new(device());
        let plain = LanguageModel::new(&plain_vs.root(), &tiny(plain_arch)).unwrap();
        let mut config = tiny(altup_arch);
        config.altup = Some(AltUpConfig { num_blocks: 1, ..Default::default() });
        let altup_vs = VarStore::new(device());
        let altup = LanguageModel::new(&altup_vs.root(), &config).unwrap();
        let unmatched = copy_shared(&plain_vs, &altup_vs);
        assert!(unmatched.iter().all(|n| n.contains(".altup.")), "{unmatched:?}");
        let x = tokens(2, 12);
        for train in [true, false] {
            let a = plain.forward_t(&x, train).unwrap();
            let b = altup.forward_t(&x, train).unwrap();
            let diff = (&a.logits - &b.logits).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "{plain_arch} vs {altup_arch} (train={train}): {diff}");
            let dropped =
                |o: &altup_moe::model::ModelOutput| o.aux.dropped_fraction().unwrap().map(|t| t.double_value(&[]));
            assert_eq!(dropped(&a), dropped(&b));
        }
    }
}

/// AltUp with K > 1 changes the representation but keeps the layer cost: the layer sees `[B, T, D]`.
#[test]
fn altup_models_produce_logits_and_aux_for_every_block() {
    for arch in Arch::ALL {
        let vs = VarStore::new(device());
        let model = LanguageModel::new(&vs.root(), &tiny(arch)).unwrap();
        let out = model.forward_t(&tokens(3, 7), true).unwrap();
        assert_eq!(out.logits.size(), vec![3, 7, 256]);
        assert_eq!(out.logits.kind(), Kind::Float);
        assert_eq!(out.aux.layers.len(), 3);
        assert_eq!(out.aux.moe_layers().count(), if arch.has_moe() { 1 } else { 0 });
        assert_eq!(out.aux.load_balancing_loss().unwrap().is_some(), arch.has_moe());
    }
}

/// Causality of the whole model: changing a later token never changes earlier logits,
/// including through AltUp and (dropless) MoE routing.
#[test]
fn later_tokens_do_not_change_earlier_logits() {
    for arch in Arch::ALL {
        let mut config = tiny(arch);
        if let Some(m) = &mut config.moe {
            m.capacity_factor = None; // capacity couples tokens by position order; dropless does not
        }
        let vs = VarStore::new(device());
        let model = LanguageModel::new(&vs.root(), &config).unwrap();
        let x = tokens(2, 10);
        let y = x.copy();
        let _ = y.narrow(1, 6, 4).fill_(7);
        let a = model.forward_t(&x, true).unwrap().logits.narrow(1, 0, 6);
        let b = model.forward_t(&y, true).unwrap().logits.narrow(1, 0, 6);
        assert!(a.allclose(&b, 1e-5, 1e-5, false), "{arch}");
    }
}

#[test]
fn config_json_round_trip() {
    for arch in Arch::ALL {
        let mut config = ModelConfig::preset(arch);
        config.moe_layers = MoeLayers::List { layers: vec![0, 2] };
        let json = config.to_json().unwrap();
        assert_eq!(ModelConfig::from_json(&json).unwrap(), config, "{json}");
    }
    let err = ModelConfig::from_json(r#"{"d_model": 64, "dmodel": 3}"#).unwrap_err().to_string();
    assert!(err.contains("unknown field `dmodel`"), "{err}");
}

#[test]
fn each_invalid_config_returns_its_error() {
    type Mutation = Box<dyn Fn(&mut ModelConfig)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (Box::new(|c| c.attention.num_heads = 3), "num_heads (3) must divide d_model (16)"),
        (Box::new(|c| c.attention.num_heads = 0), "num_heads (0) must be positive"),
        (Box::new(|c| c.moe.as_mut().unwrap().top_k = 5), "top_k (5) must be between 1 and num_experts (4)"),
        (Box::new(|c| c.moe.as_mut().unwrap().num_experts = 0), "num_experts (0) must be positive"),
        (Box::new(|c| c.altup.as_mut().unwrap().num_blocks = 0), "altup num_blocks (K = 0) must be positive"),
        (Box::new(|c| c.moe.as_mut().unwrap().capacity_factor = Some(0.0)), "capacity_factor (0) must be positive and finite"),
        (Box::new(|c| c.moe.as_mut().unwrap().eval_capacity_factor = Some(-1.0)), "eval_capacity_factor (-1) must be positive and finite"),
        (Box::new(|c| c.num_layers = 0), "num_layers (0) must be positive"),
        (Box::new(|c| c.d_model = 0), "d_model (0) must be positive"),
        (Box::new(|c| c.vocab_size = 0), "vocab_size (0) must be positive"),
        (Box::new(|c| c.ffn.d_ff = 0), "d_ff (0) must be positive"),
        (Box::new(|c| c.moe_layers = MoeLayers::List { layers: vec![1, 9] }), "moe_layers entry (9) must be < num_layers (3)"),
        (Box::new(|c| c.moe_layers = MoeLayers::Every { every: 0, offset: 0 }), "moe_layers.every (0) must be positive"),
        (Box::new(|c| c.tie_embeddings = true), "tie_embeddings needs an embedding as wide as d_model (16), but the AltUp wide embedding makes it K·d = 32; set tie_embeddings to false or use recycled/projected widening"),
        (Box::new(|c| c.attention.num_heads = 16), "head dimension (1) must be even for rotary embeddings"),
        (Box::new(|c| c.norm_eps = 0.0), "norm_eps (0) must be positive and finite"),
        (Box::new(|c| c.altup.as_mut().unwrap().output = OutputReduction::Block(2)), "altup output block (2) must be < num_blocks (2)"),
        (
            Box::new(|c| c.sequence_altup = Some(altup_moe::altup::SequenceAltUpConfig { stride: 13 })),
            "sequence_altup stride (13) must be <= max_seq_len (12)",
        ),
        (
            Box::new(|c| {
                let a = c.altup.as_mut().unwrap();
                a.widening = altup_moe::altup::Widening::Recycled;
                a.output = OutputReduction::Block(1);
            }),
            "altup output Block(1) only applies to the wide-embedding widening (Recycled has its own collapse)",
        ),
        (
            Box::new(|c| {
                let m = c.moe.as_mut().unwrap();
                m.router = altup_moe::moe::RouterKind::ExpertChoice;
                m.capacity_factor = Some(2.0);
                m.eval_capacity_factor = Some(2.0);
                m.top_k = 2;
            }),
            "top_k (2) is not used by expert_choice routing (experts pick C = cf·N/E tokens); leave it at 1",
        ),
    ];
    for (mutate, expected) in cases {
        let mut config = tiny(Arch::AltUpMoe);
        mutate(&mut config);
        let vs = VarStore::new(device());
        let err = LanguageModel::new(&vs.root(), &config).unwrap_err().to_string();
        assert_eq!(err, format!("invalid config: {expected}"));
        assert_eq!(vs.variables().len(), 0, "a failed build must not leave parameters behind ({expected})");
    }
}

#[test]
fn bad_token_inputs_are_errors_naming_the_value() {
    let vs = VarStore::new(device());
    let model = LanguageModel::new(&vs.root(), &tiny(Arch::AltUpMoe)).unwrap();
    let cases: Vec<(Tensor, &str)> = vec![
        (
            Tensor::from_slice(&[1i64, 300]).view([1, 2]).to_device(device()),
            "invalid input: token id 300 at flat position 1 is outside the vocabulary 0..256",
        ),
        (Tensor::zeros([1, 13], (Kind::Int64, device())), "invalid input: sequence length 13 exceeds max_seq_len (12)"),
        (
            Tensor::zeros([0, 4], (Kind::Int64, device())),
            "invalid input: tokens must hold at least one sequence of one token, got shape [0, 4]",
        ),
        (Tensor::zeros([4], (Kind::Int64, device())), "shape error: tokens must have shape [B, T], got [4]"),
        (
            Tensor::zeros([1, 4], (Kind::Float, device())),
            "invalid input: token ids must be an integer tensor, got dtype Float",
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(model.forward_t(&input, true).unwrap_err().to_string(), expected);
    }
}
