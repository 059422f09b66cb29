//! Writing a [`LanguageModel`] as a Hugging Face Llama or Mixtral folder that
//! `transformers.AutoModelForCausalLM.from_pretrained` (5.x and 4.x), `AutoTokenizer` and
//! `pipeline("text-generation")` load.

use crate::data::{SpecialTokens, TextTokenizer};
use crate::error::{Error, Result};
use crate::fs::{save_json, write_atomic};
use crate::host;
use crate::io::hf::config::{to_hf_config, HfFormat, TRANSFORMERS_VERSION};
use crate::io::hf::tensors::to_hf_tensors;
use crate::io::tensors::{named_variables, write_tensors_with_metadata};
use crate::model::LanguageModel;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use tch::nn::VarStore;

/// The `generation_config.json` of an export: greedy decoding by default (`do_sample` false,
/// one beam) and the special ids — `eos_token_id` and `pad_token_id` the end-of-text id when the
/// tokenizer has one (generation stops there and pads with it), null otherwise (a byte-level
/// model has no end-of-text id, so generation runs to its length); `bos_token_id` null (our
/// models start without one).
pub(crate) fn generation_config(special: &SpecialTokens) -> Value {
    let eos = match special.eos.as_slice() {
        [] => Value::Null,
        [one] => json!(one),
        many => json!(many),
    };
    json!({
        "bos_token_id": special.bos,
        "eos_token_id": eos,
        "pad_token_id": special.pad.or(special.eos.first().copied()),
        "do_sample": false,
        "num_beams": 1,
        "transformers_version": TRANSFORMERS_VERSION,
    })
}

/// The `tokenizer_config.json` of a subword export beside its `tokenizer.json`: the generic
/// fast tokenizer (`PreTrainedTokenizerFast`, so that `AutoTokenizer` does not pick the
/// Llama tokenizer of the config's `model_type`, which adds a beginning-of-sequence id our
/// vocabulary may not have; a BOS is added only by the tokenizer's own template, as here),
/// `bos_token` / `eos_token` the tokenizer's special tokens, `model_max_length` our maximum
/// positions, and no clean-up of spaces on decoding (decoding gives back the text exactly).
pub(crate) fn tokenizer_config(bos_token: Option<String>, eos_token: Option<String>, max_positions: usize) -> Value {
    json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos_token,
        "eos_token": eos_token,
        "pad_token": eos_token,
        "add_bos_token": false,
        "add_eos_token": false,
        "model_max_length": max_positions,
        "clean_up_tokenization_spaces": false,
    })
}

/// Writes `model` (its parameters live in `vs`) to the folder `dir` as a Hugging Face checkpoint
/// of `format`. The folder is created when absent; each file is written atomically (existing
/// files of those names are replaced):
///
/// * `config.json` ([`crate::io::to_hf_config`]: transformers 5's keys and the top-level ones
///   4.x reads — `rope_theta`, `rope_scaling` null, `torch_dtype` — so both give our logits);
/// * `model.safetensors`: f32, Hugging Face names and layouts (see the `io::hf` module docs;
///   Mixtral's experts one tensor per expert, `block_sparse_moe.experts.{e}.w1/w2/w3`, as
///   `save_pretrained` writes them), with `__metadata__` `{"format": "pt"}`, which transformers
///   4.x requires;
/// * `generation_config.json`: greedy by default; `eos_token_id` the tokenizer's end-of-sequence
///   ids ([`TextTokenizer::special_tokens`]: [`END_OF_TEXT`](crate::data::END_OF_TEXT) of a BPE trained here, the ETX byte
///   3 of byte-level models), `pad_token_id` its padding id or else the first of those, its BOS;
/// * for a subword tokenizer, `tokenizer.json` and `tokenizer_config.json`
///   (`PreTrainedTokenizerFast`, `bos_token` / `eos_token` the tokenizer's, `model_max_length` =
///   `max_seq_len`), so that `AutoTokenizer` encodes exactly as we do.
///
/// Byte-level models export with their vocabulary of 256 and no tokenizer files (ids are bytes);
/// `config.json` carries the same `eos_token_id` / `bos_token_id` as `generation_config.json`.
///
/// ```no_run
/// use altup_moe::io::{export_hf, HfFormat};
/// use altup_moe::model::LanguageModel;
/// use tch::Device;
/// let run = LanguageModel::load(std::path::Path::new("runs/latest"), Device::Cpu)?;
/// export_hf(&run.model, &run.vs, &run.tokenizer, HfFormat::Llama, std::path::Path::new("out/llama"))?;
/// # Ok::<(), altup_moe::Error>(())
/// ```
///
/// # Errors
/// [`Error::Config`] listing everything in the model's config that `format` cannot express
/// ([`crate::io::export_blockers`]: AltUp, expert choice, shared experts, capacity limits,
/// Sequence-AltUp, GELU FFNs or experts, ...), or for an expert-parallel model (export a model
/// loaded in one process); [`Error::Data`] for a tokenizer with more ids than the model's
/// vocabulary; [`Error::Checkpoint`] when `vs` does not hold the model's parameters;
/// [`Error::Io`] / [`Error::Torch`] on write errors.
pub fn export_hf(
    model: &LanguageModel,
    vs: &VarStore,
    tokenizer: &TextTokenizer,
    format: HfFormat,
    dir: &Path,
) -> Result<()> {
    if model.group().world_size() > 1 {
        return Err(Error::Config(
            "an expert-parallel model holds only its rank's experts: export a model loaded in one process".into(),
        ));
    }
    let config = model.config();
    let mut hf_config = to_hf_config(config, format)?;
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(Error::Data(format!(
            "the tokenizer has {} ids but the model's vocabulary has {} (vocab_size)",
            tokenizer.vocab_size(),
            config.vocab_size
        )));
    }
    let special = tokenizer.special_tokens();
    let eos = special.eos.first().copied();
    hf_config["eos_token_id"] = match special.eos.as_slice() {
        [] => Value::Null,
        [one] => json!(one),
        many => json!(many),
    };
    hf_config["bos_token_id"] = json!(special.bos);
    let ours = named_variables(vs)?.into_iter().map(|(n, t)| Ok((n, host::to_cpu(&t)?))).collect::<Result<_>>()?;
    let tensors = to_hf_tensors(config, format, &ours)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    write_atomic(&dir.join("model.safetensors"), |tmp| write_tensors_with_metadata(tmp, &tensors, &metadata))?;
    save_json(&dir.join("config.json"), &hf_config)?;
    save_json(&dir.join("generation_config.json"), &generation_config(&special))?;
    tokenizer.save_to_folder(dir)?;
    if let Some(hf) = tokenizer.hf() {
        let name = |id: Option<u32>| id.and_then(|i| hf.id_to_token(i));
        let config = tokenizer_config(name(special.bos), name(eos), config.max_seq_len);
        save_json(&dir.join("tokenizer_config.json"), &config)?;
    }
    Ok(())
}
