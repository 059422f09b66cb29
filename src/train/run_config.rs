//! The one document that configures a language-model training run: the model and the training
//! settings, with the library's defaults ([`RunConfig::default`], what the `train` example does
//! with no flags), read from a JSON file, and changed field by field with `key=value`
//! assignments (`model.moe.top_k=2`, `train.lr=1e-3`; nanoGPT's configurator, over serde).

use crate::data::RunData;
use crate::error::{Error, Result};
use crate::model::{Arch, LanguageModel, ModelConfig};
use crate::nn::VarBuilder;
use crate::parallel::ProcessGroup;
use crate::train::config::TrainConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;
use tch::nn::VarStore;
use tch::Device;

/// A language-model training run's configuration: `{"model": …, "train": …}`.
///
/// ```
/// use altup_moe::train::RunConfig;
///
/// let mut run = RunConfig::default(); // AltUp + MoE, 1200 steps of 16 × 128 tokens
/// run.set("model.moe.top_k=2")?;
/// run.set("train.lr=1e-3")?;
/// run.set(r#"model.altup.selection={"same": 0}"#)?; // any JSON value; a bare word is a string
/// assert_eq!((run.model.moe.as_ref().unwrap().top_k, run.train.lr), (2, 1e-3));
/// let err = run.set("model.moe.top_kk=2").unwrap_err().to_string();
/// assert!(err.contains("model.moe has no field 'top_kk'"), "{err}");
/// # Ok::<(), altup_moe::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The model.
    pub model: ModelConfig,
    /// The training settings.
    pub train: TrainConfig,
}

impl Default for RunConfig {
    /// The main job: [`ModelConfig::preset`] of [`Arch::default`] (AltUp + MoE) with a context of
    /// [`TrainConfig::default`]'s `seq_len`, trained with [`TrainConfig::default`].
    fn default() -> Self {
        let train = TrainConfig::default();
        let model = ModelConfig { max_seq_len: train.seq_len, ..ModelConfig::preset(Arch::default()) };
        Self { model, train }
    }
}

impl RunConfig {
    /// Reads a run configuration from a JSON file (every field optional: missing ones keep
    /// their defaults, as in the serde configs themselves), or the `model` and `train` of a run
    /// record ([`crate::train::RunRecord`], a file with `evals`: retraining it reproduces the
    /// record).
    ///
    /// # Errors
    /// [`Error::Io`] for an unreadable file; [`Error::Json`] naming it for malformed contents or
    /// unknown fields.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        // A run record: its `model` and `train` (strictly), beside its name, seed and results.
        if let Ok(Value::Object(record)) = serde_json::from_str::<Value>(&text) {
            if record.contains_key("evals") {
                let run: serde_json::Map<String, Value> =
                    record.into_iter().filter(|(k, _)| k == "model" || k == "train").collect();
                return serde_json::from_value(Value::Object(run)).map_err(|e| json_error(path, e));
            }
        }
        let mut value = serde_json::to_value(Self::default()).map_err(|e| json_error(path, e))?;
        let given: Value = serde_json::from_str(&text).map_err(|e| json_error(path, e))?;
        merge(&mut value, given);
        serde_json::from_value(value).map_err(|e| json_error(path, e))
    }

    /// Applies one assignment `key=value`: `key` is a dotted path into the JSON form
    /// (`model.moe.top_k`, `train.optimizer.weight_decay`); `value` is JSON (`2`, `1e-3`, `true`,
    /// `null`, `"same:0"`, `{"kind": "every", "every": 2, "offset": 1}`), or else taken as a
    /// string. The result must still be a valid configuration of the right types.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key for a malformed assignment, a path that does not exist,
    /// or a value of the wrong type.
    pub fn set(&mut self, assignment: &str) -> Result<()> {
        let (key, raw) = assignment
            .split_once('=')
            .ok_or_else(|| Error::Config(format!("'{assignment}' is not a key=value assignment")))?;
        let (key, raw) = (key.trim(), raw.trim());
        let new: Value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
        let mut value = serde_json::to_value(&*self).map_err(|e| Error::Config(format!("{key}: {e}")))?;
        let mut slot = &mut value;
        let mut at = Vec::new();
        for part in key.split('.') {
            let here = if at.is_empty() { "the run configuration".to_string() } else { at.join(".") };
            slot = match slot {
                Value::Object(map) => {
                    if !map.contains_key(part) {
                        let fields: Vec<&String> = map.keys().collect();
                        return Err(Error::Config(format!("{here} has no field '{part}' (fields: {fields:?})")));
                    }
                    map.get_mut(part).expect("checked")
                }
                Value::Null => return Err(Error::Config(format!("{here} is null (e.g. a dense model has no moe)"))),
                _ => return Err(Error::Config(format!("{here} is a value, not a section with '{part}'"))),
            };
            at.push(part);
        }
        *slot = new;
        *self = serde_json::from_value(value)
            .map_err(|e| Error::Config(format!("{key}={raw}: {}", e.to_string().replace('_', "-"))))?;
        Ok(())
    }

    /// This run with `seed` for both the initialisation (`model.init_seed`) and the data order
    /// and router noise (`train.seed`), as `--seed` sets them.
    pub fn with_seed(mut self, seed: u64) -> Self {
        (self.model.init_seed, self.train.seed) = (seed, seed);
        self
    }

    /// The model of this run, built in a new [`VarStore`] on `device` by the ranks of `group`
    /// ([`ProcessGroup::single`] for one process): with [`RunConfig::on_data`], the builder that
    /// `train` and `reproduce` share.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid model configuration.
    pub fn build_model(&self, group: &ProcessGroup, device: Device) -> Result<(VarStore, LanguageModel)> {
        let vs = VarStore::new(device);
        let model = LanguageModel::new(VarBuilder::new(&vs.root()).with_group(group.clone()), &self.model)?;
        Ok((vs, model))
    }

    /// This run on `data`: the vocabulary is the tokenizer's, and the training settings record
    /// the corpus (its description and content hash) and the tokenizer. The one step from a
    /// configuration to a run that `train` and `reproduce` share, so that a run record retrained
    /// through either gives the same numbers.
    pub fn on_data(mut self, data: &RunData) -> Self {
        self.model.vocab_size = data.tokenizer.vocab_size();
        (self.train.data, self.train.data_hash, self.train.tokenizer) =
            (data.description.clone(), data.hash.clone(), data.spec.clone());
        self
    }
}

fn json_error(path: &Path, source: serde_json::Error) -> Error {
    Error::Json { context: path.display().to_string(), source }
}

/// Overlays `given` on `base`, object by object.
fn merge(base: &mut Value, given: Value) {
    match (base, given) {
        (Value::Object(b), Value::Object(g)) => {
            for (k, v) in g {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, g) => *b = g,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_overlay_the_defaults_and_assignments_reach_nested_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.json");
        std::fs::write(&path, r#"{"model": {"d_model": 64, "moe": {"num_experts": 4}}, "train": {"steps": 10}}"#)
            .unwrap();
        let run = RunConfig::from_file(&path).unwrap();
        let moe = run.model.moe.as_ref().unwrap();
        assert_eq!((run.model.d_model, moe.num_experts, run.train.steps), (64, 4, 10));
        assert_eq!(moe.top_k, RunConfig::default().model.moe.unwrap().top_k, "unset fields keep their defaults");
        std::fs::write(&path, r#"{"model": {"d_modle": 64}}"#).unwrap();
        assert!(RunConfig::from_file(&path).unwrap_err().to_string().contains("d_modle"));

        let mut run = RunConfig::default();
        run.set("model.altup.selection=same:1").unwrap_err(); // a unit variant name is a string, not `same:1`
        run.set("train.optimizer.weight_decay=0").unwrap();
        run.set("model.moe=null").unwrap();
        assert!(run.model.moe.is_none() && run.train.optimizer.weight_decay == 0.0);
        let err = run.set("model.moe.top_k=2").unwrap_err().to_string();
        assert!(err.contains("model.moe is null"), "{err}");
        let err = run.set("train.steps=many").unwrap_err().to_string();
        assert!(err.contains("train.steps=many"), "{err}");
        assert!(run.set("train.steps").is_err());
    }
}
