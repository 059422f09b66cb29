//! Reading a trained model back: from a run folder, a `step-*` checkpoint or a
//! `model.safetensors` file with its `config.json` beside it — or, through [`load_model`], from
//! a Hugging Face Llama / Mixtral folder too.

use crate::data::TextTokenizer;
use crate::error::{Error, Result};
use crate::io::checkpoint::{find_checkpoint, run_folder_of};
use crate::io::tensors::load_weights;
use crate::model::{LanguageModel, ModelConfig, Seq2SeqConfig, Seq2SeqModel};
use std::path::{Path, PathBuf};
use tch::{nn::VarStore, Device};

/// A model read from disk with the variables it lives in.
#[derive(Debug)]
pub struct Loaded<M> {
    /// The variables, on the requested device.
    pub vs: VarStore,
    /// The model.
    pub model: M,
    /// The weights file that was read.
    pub weights: PathBuf,
    /// The tokenizer the model was trained with: the `tokenizer.json` beside the weights or in
    /// the run folder of a `step-*` checkpoint; bytes when there is none.
    pub tokenizer: TextTokenizer,
    /// The `tokenizer.json` that was read (`None` for bytes).
    pub tokenizer_file: Option<PathBuf>,
}

/// A model of either kind, as [`load_model`] finds it.
#[derive(Debug)]
pub enum AnyModel {
    /// A decoder-only language model (written by `train`, or a Hugging Face Llama / Mixtral).
    Decoder(Loaded<LanguageModel>),
    /// An encoder-decoder (written by `train_seq2seq`).
    EncoderDecoder(Loaded<Seq2SeqModel>),
}

impl AnyModel {
    /// The decoder-only model.
    ///
    /// # Errors
    /// [`Error::Config`] naming the weights when the model is an encoder-decoder.
    pub fn into_decoder(self) -> Result<Loaded<LanguageModel>> {
        match self {
            AnyModel::Decoder(loaded) => Ok(loaded),
            AnyModel::EncoderDecoder(loaded) => Err(Error::Config(format!(
                "{} is an encoder-decoder (train_seq2seq), not a decoder-only language model",
                loaded.weights.display()
            ))),
        }
    }
}

/// The `config.json` and weights file that `path` stands for: a `model.safetensors` file (its
/// `config.json` beside it), a folder holding both (a finished run or a `step-*` checkpoint), or
/// a run folder whose newest checkpoint is used.
///
/// # Errors
/// [`Error::Input`] for a file that is not `.safetensors` or a weights file without its config;
/// [`Error::Checkpoint`] when a folder holds no model.
pub fn model_files(path: &Path) -> Result<(PathBuf, PathBuf)> {
    if path.is_file() {
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            return Err(Error::Input(format!(
                "{} is not a .safetensors weights file; pass a run folder, a step-* checkpoint or a model.safetensors",
                path.display()
            )));
        }
        let config = path.parent().unwrap_or(Path::new(".")).join("config.json");
        if !config.is_file() {
            return Err(Error::Input(format!("{} has no config.json beside it", path.display())));
        }
        return Ok((config, path.to_path_buf()));
    }
    let (config, weights) = (path.join("config.json"), path.join("model.safetensors"));
    if weights.is_file() && config.is_file() {
        return Ok((config, weights));
    }
    if config.is_file() && !weights.is_file() && find_checkpoint(path).is_err() {
        return Err(Error::Input(format!(
            "{} holds config.json but no model.safetensors and no checkpoint: the weights are missing (a run \
             writes model.safetensors after its last step; pass one of its checkpoints/step-* folders instead)",
            path.display()
        )));
    }
    if weights.is_file() && !path.join("checkpoints").is_dir() {
        return Err(Error::Input(format!(
            "{} holds model.safetensors but no config.json beside it (the model config `train` writes)",
            path.display()
        )));
    }
    let dir = find_checkpoint(path)?;
    Ok((dir.join("config.json"), dir.join("model.safetensors")))
}

/// Whether `path` is a Hugging Face model folder: its `config.json` names a `model_type` (ours
/// never do).
fn is_hf_folder(path: &Path) -> bool {
    std::fs::read_to_string(path.join("config.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .is_some_and(|json| json.get("model_type").is_some())
}

/// Whether a `config.json` describes an encoder-decoder (it has both an `encoder` and a
/// `decoder` part, as [`Seq2SeqConfig`] writes).
fn is_encoder_decoder(config: &Path) -> Result<bool> {
    #[derive(serde::Deserialize)]
    struct Parts {
        encoder: Option<serde::de::IgnoredAny>,
        decoder: Option<serde::de::IgnoredAny>,
    }
    let text = std::fs::read_to_string(config).map_err(|e| Error::io(config, e))?;
    let parts: Parts =
        serde_json::from_str(&text).map_err(|source| Error::Json { context: config.display().to_string(), source })?;
    Ok(parts.encoder.is_some() && parts.decoder.is_some())
}

/// The tokenizer of the model whose weights are `weights` (see [`Loaded::tokenizer`]), checked
/// against the model's vocabulary of `vocab_size` ids, and the `tokenizer.json` it was read from.
pub(crate) fn tokenizer_of(weights: &Path, vocab_size: usize) -> Result<(TextTokenizer, Option<PathBuf>)> {
    let dir = weights.parent().unwrap_or(Path::new("."));
    // Beside the weights, else in the run folder of a step-* checkpoint.
    let folder = match dir.join(TextTokenizer::FILE).is_file() {
        true => dir.to_path_buf(),
        false => run_folder_of(dir),
    };
    let folder = folder.as_path();
    let tokenizer = TextTokenizer::from_folder(folder)?;
    if matches!(tokenizer, TextTokenizer::Bytes) {
        // A subword run without its tokenizer.json would decode its ids as bytes: refuse it here,
        // not after generating.
        let recorded = [dir, folder].iter().find_map(|d| recorded_tokenizer(&d.join("train_config.json")));
        if let Some(spec) = recorded.filter(|s| s != "bytes") {
            return Err(Error::Data(format!(
                "{} was trained with tokenizer {spec} but {} is missing: put the run's tokenizer.json back beside \
                 the weights",
                weights.display(),
                folder.join(TextTokenizer::FILE).display()
            )));
        }
    }
    if tokenizer.vocab_size() > vocab_size {
        return Err(Error::Data(format!(
            "the tokenizer next to {} has {} ids but the model's vocab_size is {vocab_size}",
            weights.display(),
            tokenizer.vocab_size()
        )));
    }
    let file = Some(folder.join(TextTokenizer::FILE)).filter(|_| !matches!(tokenizer, TextTokenizer::Bytes));
    Ok((tokenizer, file))
}

/// The `tokenizer` of a training config file (as `--tokenizer` spells it), if the file exists and
/// records one.
fn recorded_tokenizer(train_config: &Path) -> Option<String> {
    let text = std::fs::read_to_string(train_config).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let spec: crate::data::TokenizerSpec = serde_json::from_value(json.get("tokenizer")?.clone()).ok()?;
    Some(spec.to_string())
}

fn read_seq2seq_config(path: &Path) -> Result<Seq2SeqConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let config: Seq2SeqConfig =
        serde_json::from_str(&text).map_err(|source| Error::Json { context: path.display().to_string(), source })?;
    config.validate()?;
    Ok(config)
}

impl LanguageModel {
    /// Reads a decoder-only model (see [`model_files`] for what `path` may be) onto `device`.
    ///
    /// # Errors
    /// As [`model_files`]; [`Error::Config`] when the config describes an encoder-decoder (use
    /// [`Seq2SeqModel::load`] or [`load_model`]) or is invalid; [`Error::Checkpoint`] when the
    /// weights do not match the config (missing, unexpected or misshapen names).
    pub fn load(path: &Path, device: Device) -> Result<Loaded<Self>> {
        let (config_path, weights) = model_files(path)?;
        if is_encoder_decoder(&config_path)? {
            return Err(Error::Config(format!(
                "{} describes an encoder-decoder (train_seq2seq), not a decoder-only language model",
                config_path.display()
            )));
        }
        let config = ModelConfig::load(&config_path)?;
        let vs = VarStore::new(device);
        let model = LanguageModel::new(vs.root(), &config)?;
        load_weights(&vs, &weights)?;
        let (tokenizer, tokenizer_file) = tokenizer_of(&weights, config.vocab_size)?;
        Ok(Loaded { vs, model, weights, tokenizer, tokenizer_file })
    }
}

impl Seq2SeqModel {
    /// Reads an encoder-decoder (see [`model_files`] for what `path` may be) onto `device`.
    ///
    /// # Errors
    /// As [`LanguageModel::load`], with the kinds swapped.
    pub fn load(path: &Path, device: Device) -> Result<Loaded<Self>> {
        let (config_path, weights) = model_files(path)?;
        if !is_encoder_decoder(&config_path)? {
            return Err(Error::Config(format!(
                "{} describes a decoder-only language model (train), not an encoder-decoder",
                config_path.display()
            )));
        }
        let config = read_seq2seq_config(&config_path)?;
        let vs = VarStore::new(device);
        let model = Seq2SeqModel::new(vs.root(), &config)?;
        load_weights(&vs, &weights)?;
        let (tokenizer, tokenizer_file) = tokenizer_of(&weights, config.decoder.vocab_size)?;
        Ok(Loaded { vs, model, weights, tokenizer, tokenizer_file })
    }
}

/// Reads whichever model `path` holds onto `device`: a Hugging Face Llama / Mixtral folder (its
/// `config.json` names a `model_type`; [`LanguageModel::from_hf`]), or one of ours (see
/// [`model_files`]) — a decoder-only language model or an encoder-decoder, decided by its
/// `config.json`. The one function every program that opens a model calls.
///
/// # Errors
/// As [`LanguageModel::from_hf`], [`LanguageModel::load`] and [`Seq2SeqModel::load`].
pub fn load_model(path: &Path, device: Device) -> Result<AnyModel> {
    if is_hf_folder(path) {
        return LanguageModel::from_hf(path, device).map(AnyModel::Decoder);
    }
    let (config_path, _) = model_files(path)?;
    if is_encoder_decoder(&config_path)? {
        Seq2SeqModel::load(path, device).map(AnyModel::EncoderDecoder)
    } else {
        LanguageModel::load(path, device).map(AnyModel::Decoder)
    }
}
