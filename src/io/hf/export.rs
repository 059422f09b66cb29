//! Writing a [`LanguageModel`] as a Hugging Face Llama or Mixtral folder that
//! `transformers.AutoModelForCausalLM.from_pretrained` loads.

use crate::data::{TextTokenizer, END_OF_TEXT};
use crate::error::{Error, Result};
use crate::fs::{save_json, write_atomic};
use crate::host;
use crate::io::hf::config::{to_hf_config, HfFormat};
use crate::io::hf::tensors::to_hf_tensors;
use crate::io::tensors::{named_variables, write_tensors};
use crate::model::LanguageModel;
use std::path::Path;
use tch::nn::VarStore;

/// Writes `model` (its parameters live in `vs`) to the folder `dir` as a Hugging Face checkpoint
/// of `format`: `config.json`, `model.safetensors` (f32, Hugging Face names and layouts, see the
/// `io::hf` module docs) and, for a subword tokenizer, `tokenizer.json`. The folder is created when
/// absent; each file is written atomically (existing files of those names are replaced).
///
/// Byte-level models export with their vocabulary of 256 and no special token ids; with a
/// subword tokenizer holding [`END_OF_TEXT`], that id becomes `eos_token_id`.
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
/// loaded in one process); [`Error::Checkpoint`] when `vs` does not hold the model's
/// parameters; [`Error::Io`] / [`Error::Torch`] on write errors.
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
            "the tokenizer has {} ids but the model's vocab_size is {}",
            tokenizer.vocab_size(),
            config.vocab_size
        )));
    }
    if let Some(id) = tokenizer.hf().and_then(|t| t.token_to_id(END_OF_TEXT)) {
        hf_config["eos_token_id"] = serde_json::json!(id);
    }
    let ours = named_variables(vs)?.into_iter().map(|(n, t)| Ok((n, host::to_cpu(&t)?))).collect::<Result<_>>()?;
    let tensors = to_hf_tensors(config, format, &ours)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write_atomic(&dir.join("model.safetensors"), |tmp| write_tensors(tmp, &tensors))?;
    save_json(&dir.join("config.json"), &hf_config)?;
    tokenizer.save_to_folder(dir)
}
