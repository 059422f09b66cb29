//! Text → token ids: bytes (the default, 256 ids), a byte-level BPE trained here on the training
//! split, or a user's `tokenizer.json` from the Hugging Face ecosystem — all through one type,
//! [`TextTokenizer`], backed by Hugging Face's `tokenizers` crate for the subword kinds.

use crate::data::dataset::TokenDataset;
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

/// The end-of-text marker of a BPE trained here: one special id; its text inside a corpus never
/// feeds BPE merges (training splits the text at it).
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// Which tokenizer a run uses, as the `--tokenizer` flag spells it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenizerSpec {
    /// One id per byte (256 ids).
    Bytes,
    /// A byte-level BPE of this many ids, trained on the training split only.
    Bpe(usize),
    /// A `tokenizer.json` file.
    File(PathBuf),
}

impl std::str::FromStr for TokenizerSpec {
    type Err = Error;

    /// `bytes`, `bpe:N` (N ≥ 258: 256 byte symbols, the end-of-text marker and a merge), or a
    /// path to a `tokenizer.json`.
    fn from_str(s: &str) -> Result<Self> {
        match s.split_once(':') {
            _ if s == "bytes" => Ok(Self::Bytes),
            Some(("bpe", n)) => match n.parse::<usize>() {
                Ok(n) if n >= 258 => Ok(Self::Bpe(n)),
                _ => Err(Error::Config(format!(
                    "'{n}' in '{s}' is not a BPE vocabulary size >= 258 (256 bytes + end-of-text + merges)"
                ))),
            },
            _ => Ok(Self::File(PathBuf::from(s))),
        }
    }
}

impl std::fmt::Display for TokenizerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bytes => write!(f, "bytes"),
            Self::Bpe(n) => write!(f, "bpe:{n}"),
            Self::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A tokenizer: bytes, or a Hugging Face `tokenizers` tokenizer.
#[derive(Debug, Clone)]
pub enum TextTokenizer {
    /// One id per byte: id = byte value, 256 ids.
    Bytes,
    /// A Hugging Face tokenizer (byte-level BPE trained here, or loaded from `tokenizer.json`).
    Hf(Box<Tokenizer>),
}

fn tok_err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::Data(format!("{what}: {e}"))
}

impl TextTokenizer {
    /// The file name a run folder stores a subword tokenizer under.
    pub const FILE: &'static str = "tokenizer.json";

    /// Reads a `tokenizer.json`.
    ///
    /// # Errors
    /// [`Error::Data`] naming the file when it is missing, unreadable or not a tokenizer.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::Data(format!("tokenizer file {} does not exist", path.display())));
        }
        let tokenizer =
            Tokenizer::from_file(path).map_err(|e| tok_err(format!("cannot read tokenizer {}", path.display()), e))?;
        Ok(Self::Hf(Box::new(tokenizer)))
    }

    /// The tokenizer of a run or model folder: its `tokenizer.json`, or bytes when it has none.
    ///
    /// # Errors
    /// As [`TextTokenizer::from_file`].
    pub fn from_folder(dir: &Path) -> Result<Self> {
        let path = dir.join(Self::FILE);
        if path.is_file() {
            Self::from_file(&path)
        } else {
            Ok(Self::Bytes)
        }
    }

    /// Trains a byte-level BPE (GPT-2 style pre-tokenization, no prefix space) of `vocab_size`
    /// ids on `text`, which must be the *training* split only. [`END_OF_TEXT`] is a special
    /// token: the text is split at every occurrence before training, so its pieces never merge.
    ///
    /// # Errors
    /// [`Error::Data`] if training fails or `vocab_size` < 258.
    pub fn train_bpe(text: &str, vocab_size: usize) -> Result<Self> {
        Self::train_bpe_on(std::iter::once(text.to_string()), vocab_size)
    }

    /// [`TextTokenizer::train_bpe`] on a stream of training documents (read one at a time, so a
    /// corpus larger than memory can train it; only the word counts are kept).
    ///
    /// # Errors
    /// As [`TextTokenizer::train_bpe`].
    pub fn train_bpe_on(documents: impl Iterator<Item = String> + Send, vocab_size: usize) -> Result<Self> {
        if vocab_size < 258 {
            return Err(Error::Data(format!("BPE vocabulary size ({vocab_size}) must be at least 258")));
        }
        let special = AddedToken::from(END_OF_TEXT, true);
        let trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(vec![special.clone()])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut tokenizer = Tokenizer::new(BPE::default());
        tokenizer
            .with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)))
            .with_decoder(Some(ByteLevel::default()))
            .with_post_processor(Some(ByteLevel::default().trim_offsets(false)));
        tokenizer.add_special_tokens(&[special]);
        let mut trainer = TrainerWrapper::BpeTrainer(trainer);
        // Paragraphs, with the end-of-text marker cut out of the training text.
        let pieces = documents.flat_map(|doc| {
            doc.split(END_OF_TEXT).flat_map(paragraphs).map(str::to_string).collect::<Vec<_>>().into_iter()
        });
        tokenizer.train(&mut trainer, pieces).map_err(|e| tok_err("BPE training failed", e))?;
        Ok(Self::Hf(Box::new(tokenizer)))
    }

    /// The tokenizer a spec names; a BPE is trained on `train_text`.
    ///
    /// # Errors
    /// As [`TextTokenizer::from_file`] and [`TextTokenizer::train_bpe`].
    pub fn from_spec(spec: &TokenizerSpec, train_text: &str) -> Result<Self> {
        match spec {
            TokenizerSpec::Bytes => Ok(Self::Bytes),
            TokenizerSpec::Bpe(n) => Self::train_bpe(train_text, *n),
            TokenizerSpec::File(path) => Self::from_file(path),
        }
    }

    /// Number of ids (the model's vocabulary must be at least this).
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Bytes => 256,
            Self::Hf(t) => t.get_vocab_size(true),
        }
    }

    /// Writes a subword tokenizer as `dir/tokenizer.json` (nothing for bytes), atomically.
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::Data`] naming the file.
    pub fn save_to_folder(&self, dir: &Path) -> Result<()> {
        let Self::Hf(t) = self else { return Ok(()) };
        let path = dir.join(Self::FILE);
        let json =
            t.to_string(true).map_err(|e| tok_err(format!("cannot serialise tokenizer for {}", path.display()), e))?;
        crate::fs::write_atomic(&path, |tmp| std::fs::write(tmp, json.as_bytes()).map_err(|e| Error::io(tmp, e)))
    }

    /// Ids of `text` (no special tokens added around it).
    ///
    /// # Errors
    /// [`Error::Data`] if the tokenizer fails.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Self::Bytes => Ok(text.bytes().map(u32::from).collect()),
            Self::Hf(t) => {
                Ok(t.encode_fast(text, false).map_err(|e| tok_err("tokenization failed", e))?.get_ids().to_vec())
            }
        }
    }

    /// The text of `ids` (invalid UTF-8 of a partial sequence shown as U+FFFD).
    ///
    /// # Errors
    /// [`Error::Data`] if an id is outside the vocabulary.
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let vocab = self.vocab_size() as i64;
        if let Some(bad) = ids.iter().find(|&&i| i < 0 || i >= vocab) {
            return Err(Error::Data(format!("token id {bad} is outside the tokenizer's {vocab} ids")));
        }
        match self {
            Self::Bytes => Ok(String::from_utf8_lossy(&ids.iter().map(|&i| i as u8).collect::<Vec<u8>>()).into_owned()),
            Self::Hf(t) => {
                let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
                t.decode(&ids, false).map_err(|e| tok_err("decoding failed", e))
            }
        }
    }

    /// Tokenizes `text` into a dataset that remembers how many bytes of text it holds (for bits
    /// per byte). Bytes are kept as they are; subword text is tokenized per paragraph (split
    /// after every blank line, in parallel), the paragraphs' ids concatenated in order.
    ///
    /// # Errors
    /// As [`TextTokenizer::encode`].
    pub fn dataset(&self, text: &[u8]) -> Result<TokenDataset> {
        match self {
            Self::Bytes => Ok(TokenDataset::new(text.to_vec())),
            Self::Hf(_) => {
                let text = std::str::from_utf8(text).map_err(|e| Error::Data(format!("text is not UTF-8: {e}")))?;
                let parts: Vec<Vec<u32>> =
                    paragraphs(text).collect::<Vec<_>>().par_iter().map(|p| self.encode(p)).collect::<Result<_>>()?;
                let ids: Vec<u32> = parts.into_iter().flatten().collect();
                TokenDataset::from_ids(ids, self.vocab_size(), text.len())
            }
        }
    }
}

/// `text` cut after every blank line (`"\n\n"`), the cuts kept with the piece before them, so the
/// pieces concatenate to `text`.
fn paragraphs(text: &str) -> impl Iterator<Item = &str> {
    text.split_inclusive("\n\n").filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print() {
        assert_eq!("bytes".parse::<TokenizerSpec>().unwrap(), TokenizerSpec::Bytes);
        assert_eq!("bpe:2048".parse::<TokenizerSpec>().unwrap(), TokenizerSpec::Bpe(2048));
        assert_eq!(
            "x/tokenizer.json".parse::<TokenizerSpec>().unwrap(),
            TokenizerSpec::File("x/tokenizer.json".into())
        );
        let err = "bpe:100".parse::<TokenizerSpec>().unwrap_err().to_string();
        assert!(err.contains("'100' in 'bpe:100' is not a BPE vocabulary size >= 258"), "{err}");
        assert!("bpe:lots".parse::<TokenizerSpec>().is_err());
        assert_eq!(TokenizerSpec::Bpe(300).to_string(), "bpe:300");
    }

    #[test]
    fn paragraphs_concatenate_to_the_text() {
        let text = "a b\n\nc\n\n\nd\n";
        let parts: Vec<&str> = paragraphs(text).collect();
        assert_eq!(parts, vec!["a b\n\n", "c\n\n", "\nd\n"]);
        assert_eq!(parts.concat(), text);
    }
}
