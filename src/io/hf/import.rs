//! Reading a Hugging Face Llama or Mixtral folder (`config.json` and `model.safetensors`, or
//! shards listed by `model.safetensors.index.json`) into a [`LanguageModel`].

use crate::error::{Error, Result};
use crate::io::hf::config::from_hf_config;
use crate::io::hf::tensors::from_hf_tensors;
use crate::io::load::{tokenizer_of, Loaded};
use crate::io::tensors::{load_named_weights, read_tensors};
use crate::model::LanguageModel;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tch::{nn::VarStore, Device, Tensor};

/// The index of a sharded checkpoint (`model.safetensors.index.json`).
#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// Every tensor of the folder's weights: `model.safetensors`, or the shards its
/// `model.safetensors.index.json` lists (each tensor checked to be in the shard the index names).
/// Returns the tensors and the file that was read first (the weights or the index).
fn read_hf_weights(dir: &Path) -> Result<(BTreeMap<String, Tensor>, PathBuf)> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok((read_tensors(&single)?, single));
    }
    let index_path = dir.join("model.safetensors.index.json");
    if !index_path.is_file() {
        let hint = if dir.join("pytorch_model.bin").is_file() {
            " (pytorch_model.bin is not read: save the model with safe_serialization)"
        } else {
            ""
        };
        return Err(Error::Checkpoint(format!(
            "{} holds neither model.safetensors nor model.safetensors.index.json{hint}",
            dir.display()
        )));
    }
    let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
    let index: ShardIndex = serde_json::from_str(&text)
        .map_err(|source| Error::Json { context: index_path.display().to_string(), source })?;
    let mut tensors = BTreeMap::new();
    let shards: BTreeSet<&String> = index.weight_map.values().collect();
    for shard in shards {
        if Path::new(shard).components().count() != 1 {
            return Err(Error::Checkpoint(format!(
                "{}: shard '{shard}' must be a file name in the same folder",
                index_path.display()
            )));
        }
        let path = dir.join(shard);
        for (name, tensor) in read_tensors(&path)? {
            if index.weight_map.get(&name) != Some(shard) {
                return Err(Error::Checkpoint(format!(
                    "{} holds '{name}', which {} places in {}",
                    path.display(),
                    index_path.display(),
                    index.weight_map.get(&name).map_or("no shard".to_string(), |s| format!("'{s}'"))
                )));
            }
            tensors.insert(name, tensor);
        }
    }
    if let Some(absent) = index.weight_map.keys().find(|n| !tensors.contains_key(*n)) {
        return Err(Error::Checkpoint(format!(
            "'{absent}' is not in {}, where {} places it",
            index.weight_map[absent],
            index_path.display()
        )));
    }
    Ok((tensors, index_path))
}

impl LanguageModel {
    /// Reads a Hugging Face `LlamaForCausalLM` or `MixtralForCausalLM` folder (what
    /// `save_pretrained` writes: `config.json` and `model.safetensors`, or shards listed by
    /// `model.safetensors.index.json`) onto `device`, for inference or further training.
    /// Mixtral's experts may be stored one tensor per expert (`block_sparse_moe.experts.{e}.w1`,
    /// what `save_pretrained` writes by default) or fused as transformers 5 holds them
    /// (`mlp.experts.gate_up_proj` / `down_proj`, see the `io::hf` module docs); a published
    /// `config.json` is read as it is (see [`crate::io::from_hf_config`] for the keys accepted).
    /// The weights become f32 masters whatever their dtype in the files; the folder's
    /// `tokenizer.json`, when there is one, becomes [`Loaded::tokenizer`] (bytes otherwise).
    ///
    /// Logits equal transformers' within float rounding (tests/hf_interop.rs checks 1e-4 in
    /// f32 on models with grouped-query attention, a non-default rotary θ and RMSNorm ε, an
    /// untied head and, for Mixtral, top-2 renormalised routing in both expert layouts;
    /// tests/hf_configs.rs on small random models of public configs). Source: transformers 5.24
    /// `models/llama/modeling_llama.py`, `models/mixtral/modeling_mixtral.py`.
    ///
    /// ```no_run
    /// use altup_moe::model::LanguageModel;
    /// use tch::{Device, Kind, Tensor};
    /// let loaded = LanguageModel::from_hf(std::path::Path::new("my-llama"), Device::Cpu)?;
    /// let tokens = Tensor::from_slice(&[1i64, 2, 3]).view([1, 3]);
    /// let logits = loaded.model.forward_t(&tokens, false)?.logits; // [1, 3, V]
    /// # Ok::<(), altup_moe::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::Json`] for an unreadable `config.json`; [`Error::Config`] naming
    /// every field the model cannot reproduce (see [`crate::io::from_hf_config`]: sliding
    /// window, attention or MLP biases, rope scaling, another `hidden_act`, ...);
    /// [`Error::Checkpoint`] for missing weights files, missing or unexpected tensor names, or
    /// shapes that do not match the config; [`Error::Data`] for a tokenizer larger than the
    /// vocabulary.
    pub fn from_hf(dir: &Path, device: Device) -> Result<Loaded<Self>> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|source| Error::Json { context: config_path.display().to_string(), source })?;
        let (config, format) = from_hf_config(&json).map_err(|e| match e {
            Error::Config(msg) => Error::Config(format!("{}: {msg}", config_path.display())),
            other => other,
        })?;
        let (hf, weights) = read_hf_weights(dir)?;
        let ours = from_hf_tensors(&config, format, hf, &dir.display().to_string())?;
        let vs = VarStore::new(device);
        let model = LanguageModel::new(vs.root(), &config)?;
        load_named_weights(&vs, &ours, &weights)?;
        let (tokenizer, tokenizer_file) = tokenizer_of(&dir.join("config.json"), config.vocab_size)?;
        Ok(Loaded { vs, model, weights, tokenizer, tokenizer_file })
    }
}
