//! Parameter roles, fixed where a parameter is created — never guessed from its name or shape
//! later: whether the optimizer applies weight decay to it, and whether expert parallelism
//! shards it over ranks (each rank holding a slice along dimension 0) or replicates it.
//!
//! A role is recorded as the tch variable group of the path the parameter is created under
//! ([`ParamRole::on`]); [`roles`] reads them back for the optimizer and the expert-parallel
//! group. Parameters created on a plain path get the default role: decayed, replicated.

use std::collections::BTreeMap;
use tch::nn::{Path, VarStore};

/// What the optimizer and expert parallelism need to know about a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamRole {
    /// AdamW applies its decoupled weight decay (matrices of projections, embeddings,
    /// experts); `false` for norms, scalars and mixing coefficients.
    pub weight_decay: bool,
    /// Sharded over expert-parallel ranks along dimension 0 (the experts); `false`: every rank
    /// holds a replica.
    pub sharded: bool,
}

impl Default for ParamRole {
    fn default() -> Self {
        Self::DECAYED
    }
}

const NO_DECAY_BIT: usize = 1;
const SHARDED_BIT: usize = 2;

impl ParamRole {
    /// Decayed and replicated: projection matrices, embeddings, routers (the default).
    pub const DECAYED: ParamRole = ParamRole { weight_decay: true, sharded: false };
    /// Neither decayed nor sharded: norm gains, AltUp and Sequence-AltUp coefficients.
    pub const NO_DECAY: ParamRole = ParamRole { weight_decay: false, sharded: false };
    /// Decayed and sharded over expert-parallel ranks: the experts' batched weights.
    pub const EXPERT: ParamRole = ParamRole { weight_decay: true, sharded: true };

    fn group(self) -> usize {
        (if self.weight_decay { 0 } else { NO_DECAY_BIT }) | (if self.sharded { SHARDED_BIT } else { 0 })
    }

    fn from_group(group: usize) -> Self {
        Self { weight_decay: group & NO_DECAY_BIT == 0, sharded: group & SHARDED_BIT != 0 }
    }

    /// `path`, whose parameters (and those of its sub-paths) are created with this role.
    pub fn on<'a>(self, path: &Path<'a>) -> Path<'a> {
        path.set_group(self.group())
    }
}

/// The role of every trainable variable of `vs`, by name.
pub fn roles(vs: &VarStore) -> BTreeMap<String, ParamRole> {
    let Ok(variables) = vs.variables_.lock() else { return BTreeMap::new() };
    let by_storage: Vec<(usize, Vec<i64>, usize)> = variables
        .trainable_variables
        .iter()
        .map(|v| (v.tensor.data_ptr() as usize, v.tensor.size(), v.group))
        .collect();
    variables
        .named_variables
        .iter()
        .filter_map(|(name, t)| {
            let (ptr, size) = (t.data_ptr() as usize, t.size());
            let group = by_storage.iter().find(|(p, s, _)| *p == ptr && *s == size && ptr != 0).map(|(_, _, g)| *g)?;
            Some((name.clone(), ParamRole::from_group(group)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn roles_follow_the_path_a_parameter_was_created_on_not_its_name() {
        let vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let _ = root.f_zeros("altup_looking_matrix", &[2, 2]).unwrap();
        let _ = ParamRole::NO_DECAY.on(&(&root / "blocks")).f_zeros("weight", &[2, 2]).unwrap();
        let experts = ParamRole::EXPERT.on(&(&root / "moe"));
        let _ = (&experts / "experts").f_zeros("w_in", &[4, 2, 2]).unwrap();
        let _ = root.f_zeros_no_train("buffer", &[2]).unwrap();
        let roles = roles(&vs);
        assert_eq!(roles["altup_looking_matrix"], ParamRole::DECAYED);
        assert_eq!(roles["blocks.weight"], ParamRole::NO_DECAY);
        assert_eq!(roles["moe.experts.w_in"], ParamRole::EXPERT, "sub-paths keep the role");
        assert!(!roles.contains_key("buffer"), "buffers are not trainable");
        for role in [ParamRole::DECAYED, ParamRole::NO_DECAY, ParamRole::EXPERT] {
            assert_eq!(ParamRole::from_group(role.group()), role);
        }
    }
}
