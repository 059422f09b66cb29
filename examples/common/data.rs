//! The training and validation data of a run: raw text (`--data` a file or folder, tokenized at
//! start) or a corpus prepared into memory-mapped shards by the `prepare` example.

use super::{data_description, human, load_corpus};
use altup_moe::data::{tokenizer_hash, PreparedCorpus, TextTokenizer, TokenDataset, TokenizerSpec};
use altup_moe::train::RunFolder;
use altup_moe::Error;
use std::path::Path;

/// What a run trains and validates on.
pub struct RunData {
    /// Where the data came from, for `train_config.json`.
    pub description: String,
    /// Content hash of the corpus (checked on resume).
    pub hash: String,
    /// The run's tokenizer, and how `--tokenizer` spells it (for `train_config.json`).
    pub tokenizer: TextTokenizer,
    /// See `tokenizer`.
    pub spec: TokenizerSpec,
    /// The training split.
    pub train: TokenDataset,
    /// The validation split.
    pub val: TokenDataset,
    /// Validation text to take a generation prompt from (raw data only).
    pub val_text: Option<String>,
}

/// Reads `data` (default: Shakespeare) for a run in `folder` (`None`: runs that start fresh): a
/// prepared folder (its `meta.json`) is memory-mapped and must match the run's tokenizer; raw
/// text is split 90/10 and tokenized with the run's tokenizer (a resumed run's own, else `spec`:
/// a BPE is trained on the training split). `say` prints progress lines.
///
/// # Errors
/// Data and tokenizer errors, naming the value; [`Error::Config`] when prepared shards were made
/// with another tokenizer than the run's.
pub fn run_data(
    data: Option<&Path>,
    folder: Option<&RunFolder>,
    spec: &TokenizerSpec,
    say: &dyn Fn(String),
) -> altup_moe::Result<RunData> {
    let resumed = folder.filter(|f| f.checkpoint().is_some());
    if let Some(dir) = data.filter(|d| PreparedCorpus::is_prepared(d)) {
        let prepared = PreparedCorpus::open(dir)?;
        let meta = &prepared.meta;
        let run_tokenizer = match resumed {
            Some(folder) => Some(tokenizer_hash(&folder.tokenizer(spec, "")?)?),
            None if *spec != TokenizerSpec::Bytes && spec.to_string() != meta.tokenizer => {
                return Err(Error::Config(format!(
                    "--tokenizer {spec} but {} was prepared with tokenizer {}; prepare it again or drop --tokenizer",
                    dir.display(),
                    meta.tokenizer
                )))
            }
            None => None,
        };
        if let Some(hash) = run_tokenizer.filter(|h| *h != meta.tokenizer_hash) {
            return Err(Error::Config(format!(
                "{} was prepared with tokenizer {} ({}) but the resumed run's tokenizer has hash {hash}",
                dir.display(),
                meta.tokenizer,
                meta.tokenizer_hash
            )));
        }
        let description =
            format!("{} (prepared, {} documents)", dir.display(), meta.train.documents + meta.val.documents);
        return Ok(RunData {
            description,
            hash: meta.content_hash.clone(),
            tokenizer: prepared.tokenizer,
            spec: meta.tokenizer.parse().unwrap_or(TokenizerSpec::Bytes),
            train: prepared.train,
            val: prepared.val,
            val_text: None,
        });
    }
    let (path, corpus) = load_corpus(data)?;
    let (train_text, val_text) = corpus.split_text(0.1)?;
    if resumed.is_none() && matches!(spec, TokenizerSpec::Bpe(_)) {
        say(format!("training a {spec} tokenizer on the training split ({} bytes)", human(train_text.len())));
    }
    let train_string = String::from_utf8_lossy(train_text);
    let tokenizer = match resumed {
        Some(folder) => folder.tokenizer(spec, &train_string)?,
        None => TextTokenizer::from_spec(spec, &train_string)?,
    };
    Ok(RunData {
        description: data_description(&path, &corpus),
        hash: corpus.content_hash(),
        train: tokenizer.dataset(train_text)?,
        val: tokenizer.dataset(val_text)?,
        val_text: Some(String::from_utf8_lossy(val_text).into_owned()),
        tokenizer,
        spec: spec.clone(),
    })
}

/// A generation prompt from the validation data: up to 64 bytes of validation text starting at a
/// line (raw data), or the first 24 validation tokens (prepared shards).
///
/// # Errors
/// Tokenizer and shard errors.
pub fn prompt(tokenizer: &TextTokenizer, val: &TokenDataset, val_text: Option<&str>) -> altup_moe::Result<Vec<i64>> {
    let Some(text) = val_text else { return val.window(0, 24.min(val.len())) };
    let from = text.find('\n').map_or(0, |i| i + 1).min(text.len().saturating_sub(1));
    let end = (from..=(from + 64).min(text.len())).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(from);
    Ok(tokenizer.encode(&text[from..end])?.into_iter().map(i64::from).collect())
}
