//! What a training run reads: raw text (a UTF-8 file or folder, split 90/10 and tokenized at
//! start) or a corpus prepared into memory-mapped shards ([`crate::data::prepare_corpus`]), with
//! the run's tokenizer, the checks between the two, and a description and content hash for the
//! run's `train_config.json`.

use crate::data::corpus::Corpus;
use crate::data::dataset::TokenDataset;
use crate::data::dataset::END_OF_TEXT_BYTE;
use crate::data::documents::{names, FileFilter};
use crate::data::shards::{tokenizer_hash, PreparedCorpus};
use crate::data::tokenizer::{TextTokenizer, TokenizerSpec};
use crate::error::{Error, Result};
use std::path::Path;

/// The tokenizer of a run: one it already has (a resumed run's), or one to make from a spec (a
/// BPE is trained on the training split only).
#[derive(Debug, Clone)]
pub enum RunTokenizer {
    /// The tokenizer the run was trained with.
    Existing(TextTokenizer),
    /// A new run's `--tokenizer`.
    FromSpec(TokenizerSpec),
}

/// The data of a run.
#[derive(Debug)]
pub struct RunData {
    /// Where the data came from, for `train_config.json` (path, files and bytes, or the prepared
    /// folder and its documents).
    pub description: String,
    /// Content hash of the corpus (`sha256:…`; checked when a run resumes).
    pub hash: String,
    /// The run's tokenizer.
    pub tokenizer: TextTokenizer,
    /// How the tokenizer is spelled in `train_config.json`.
    pub spec: TokenizerSpec,
    /// The training split.
    pub train: TokenDataset,
    /// The validation split.
    pub val: TokenDataset,
    /// The validation text (raw data only), to take a generation prompt from.
    pub val_text: Option<String>,
}

impl RunData {
    /// Reads `path`: a prepared folder (its `meta.json`) is memory-mapped and must have been made
    /// with the run's tokenizer; raw text (the files of a folder that `filter` lets through, see
    /// [`crate::data::documents`]) is split 90/10 and tokenized with the run's tokenizer. `say`
    /// prints progress (and the metadata files a folder's reading skipped).
    ///
    /// # Errors
    /// Data and tokenizer errors naming the value; [`Error::Config`] when prepared shards were
    /// made with another tokenizer than the run's.
    pub fn open(path: &Path, filter: &FileFilter, tokenizer: &RunTokenizer, say: &dyn Fn(String)) -> Result<Self> {
        if PreparedCorpus::is_prepared(path) {
            return Self::prepared(path, tokenizer);
        }
        let corpus = Corpus::from_path(path, filter)?;
        if !corpus.skipped.is_empty() {
            say(format!("skipped metadata files: {}", names(&corpus.skipped)));
        }
        let (train_text, val_text) = corpus.split_text(0.1)?;
        // The BPE trainer sees documents, not their separators.
        let train_string = String::from_utf8_lossy(train_text).replace(char::from(END_OF_TEXT_BYTE), "\n\n");
        let (tokenizer, spec) = match tokenizer {
            RunTokenizer::Existing(t) => (t.clone(), spec_of(t)),
            RunTokenizer::FromSpec(spec) => {
                if let TokenizerSpec::Bpe(_) = spec {
                    say(format!("training a {spec} tokenizer on the training split ({} bytes)", train_text.len()));
                }
                (TextTokenizer::from_spec(spec, &train_string)?, spec.clone())
            }
        };
        Ok(Self {
            description: format!(
                "{} ({} files, {} documents, {} bytes)",
                path.display(),
                corpus.files.len(),
                corpus.documents,
                corpus.text_bytes()
            ),
            hash: corpus.content_hash(),
            train: tokenizer.dataset(train_text)?,
            val: tokenizer.dataset(val_text)?,
            val_text: Some(String::from_utf8_lossy(val_text).into_owned()),
            tokenizer,
            spec,
        })
    }

    fn prepared(dir: &Path, tokenizer: &RunTokenizer) -> Result<Self> {
        let prepared = PreparedCorpus::open(dir)?;
        let meta = &prepared.meta;
        // Tokenizers are compared by content (a hash of their serialisation), not by how their
        // path or spec is spelled.
        let given = match tokenizer {
            RunTokenizer::Existing(t) => Some((t.clone(), "the run's tokenizer".to_string())),
            RunTokenizer::FromSpec(TokenizerSpec::File(path)) => {
                Some((TextTokenizer::from_file(path)?, format!("the tokenizer {}", path.display())))
            }
            RunTokenizer::FromSpec(spec @ TokenizerSpec::Bpe(_)) if spec.to_string() != meta.tokenizer => {
                return Err(Error::Config(format!(
                    "a new {spec} tokenizer was asked for but {} was prepared with tokenizer {}: prepare the data \
                     again with {spec}, or train on the prepared corpus with its own tokenizer",
                    dir.display(),
                    meta.tokenizer
                )))
            }
            // Bytes (the default) or the same bpe:N: the prepared corpus's own tokenizer.
            RunTokenizer::FromSpec(_) => None,
        };
        if let Some((given, what)) = given {
            let hash = tokenizer_hash(&given)?;
            if hash != meta.tokenizer_hash {
                return Err(Error::Config(format!(
                    "{} was prepared with tokenizer {} (hash {}) but {what} has hash {hash}: prepare the data again \
                     with this tokenizer (prepare --tokenizer FILE, e.g. the run's tokenizer.json)",
                    dir.display(),
                    meta.tokenizer,
                    meta.tokenizer_hash
                )));
            }
        }
        Ok(Self {
            description: format!(
                "{} (prepared, {} documents)",
                dir.display(),
                meta.train.documents + meta.val.documents
            ),
            hash: meta.content_hash.clone(),
            spec: meta.tokenizer.parse().unwrap_or(TokenizerSpec::Bytes),
            tokenizer: prepared.tokenizer,
            train: prepared.train,
            val: prepared.val,
            val_text: None,
        })
    }

    /// A generation prompt from the validation data: up to 64 bytes of validation text starting
    /// at a line (raw data), or the first 24 validation tokens (prepared shards).
    ///
    /// # Errors
    /// Tokenizer and shard errors.
    pub fn prompt(&self) -> Result<Vec<i64>> {
        let Some(text) = &self.val_text else { return self.val.window(0, 24.min(self.val.len())) };
        let from = text.find('\n').map_or(0, |i| i + 1).min(text.len().saturating_sub(1));
        // Up to 64 bytes, within one document.
        let limit = text[from..].find(char::from(END_OF_TEXT_BYTE)).map_or(text.len(), |i| from + i).min(from + 64);
        let end = (from..=limit).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(from);
        Ok(self.tokenizer.encode(&text[from..end])?.into_iter().map(i64::from).collect())
    }
}

/// How an existing tokenizer is spelled in a training config (a subword one by its file, which a
/// resumed run keeps in its folder).
fn spec_of(tokenizer: &TextTokenizer) -> TokenizerSpec {
    match tokenizer {
        TextTokenizer::Bytes => TokenizerSpec::Bytes,
        TextTokenizer::Hf(_) => TokenizerSpec::File(TextTokenizer::FILE.into()),
    }
}
