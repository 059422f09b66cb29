//! A parameter's roles (weight decay, sharded over expert-parallel ranks) are set where the
//! parameter is created, whatever its path: an AltUp layer built at the root of a `VarStore`
//! gets no weight decay although nothing in its names says "altup" below a block.

mod common;

use altup_moe::altup::{AltUp, AltUpConfig, Coefficients};
use altup_moe::model::{Arch, LanguageModel};
use altup_moe::nn::{roles, ParamRole};
use altup_moe::train::{AdamW, AdamWConfig};
use tch::nn::VarStore;

#[test]
fn an_altup_layer_at_the_root_is_not_decayed() {
    for coefficients in [Coefficients::Static, Coefficients::InputDependent { clip: None }] {
        let vs = VarStore::new(common::device());
        let config = AltUpConfig { num_blocks: 2, coefficients, ..Default::default() };
        let _altup = AltUp::new(&(vs.root() / "altup"), 8, &config).unwrap();
        let optimizer = AdamW::new(&vs, AdamWConfig::default()).unwrap();
        assert!(optimizer.decayed_parameters().is_empty(), "{coefficients:?}: {:?}", optimizer.decayed_parameters());
        // Same without any sub-path at all.
        let vs = VarStore::new(common::device());
        let _altup = AltUp::new(&vs.root(), 8, &config).unwrap();
        assert!(AdamW::new(&vs, AdamWConfig::default()).unwrap().decayed_parameters().is_empty());
    }
}

/// In a whole AltUp + MoE model: projections, embeddings, routers and experts are decayed;
/// norms and AltUp coefficients are not; exactly the experts are sharded.
#[test]
fn a_models_roles_come_from_its_layers() {
    let mut config = common::tiny(Arch::AltUpMoe);
    config.altup.as_mut().unwrap().coefficients = Coefficients::InputDependent { clip: None };
    let vs = VarStore::new(common::device());
    let _model = LanguageModel::new(&vs.root(), &config).unwrap();
    let roles = roles(&vs);
    assert_eq!(roles.len(), vs.trainable_variables().len(), "every trainable parameter has a role");
    for (name, role) in &roles {
        let is_expert = name.contains(".experts.");
        let no_decay = name.contains("norm") || name.contains(".altup.");
        let want = match (is_expert, no_decay) {
            (true, _) => ParamRole::EXPERT,
            (false, true) => ParamRole::NO_DECAY,
            (false, false) => ParamRole::DECAYED,
        };
        assert_eq!(*role, want, "{name}");
    }
    let optimizer = AdamW::new(&vs, AdamWConfig::default()).unwrap();
    let decayed = optimizer.decayed_parameters();
    assert!(decayed.iter().any(|n| n.ends_with("router.weight")) && decayed.iter().any(|n| n.contains("attn.")));
}
