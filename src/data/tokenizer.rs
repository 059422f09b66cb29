//! Text → token ids: bytes (the default, 256 ids), a byte-level BPE trained here on the training
//! split, or a user's `tokenizer.json` from the Hugging Face ecosystem — all through one type,
//! [`TextTokenizer`], backed by Hugging Face's `tokenizers` crate for the subword kinds.
//!
//! # Special tokens
//! Every tokenizer knows its end-of-text id, which separates documents in training data and stops
//! generation: the byte [`END_OF_TEXT_BYTE`] (ASCII ETX, 0x03) for bytes, the [`END_OF_TEXT`]
//! token of a BPE trained here, and for a `tokenizer.json` the `eos_token` of the
//! `tokenizer_config.json` beside it, else the `eos_token_id` (a number or a list) of the
//! `generation_config.json` / `config.json` beside it, else the first of a few well-known
//! end-of-text tokens the vocabulary holds (`<|endoftext|>`, `</s>`, `<|end_of_text|>`, `<eos>`).
//! The beginning-of-sequence token is read the same way (`bos_token` / `bos_token_id`); a prompt
//! is encoded with the tokenizer's own template (its post-processor), so a Llama-style
//! tokenizer puts its BOS first, as transformers does.
//!
//! A loaded `tokenizer.json` has its truncation and padding switched off: a Hub tokenizer saved
//! with `max_length` truncation would otherwise silently cut every document. Its id space is the
//! largest id + 1 over the vocabulary and the added tokens (vocabularies may have holes).

use crate::data::dataset::{TokenDataset, END_OF_TEXT_BYTE};
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

/// End-of-text tokens looked for in a `tokenizer.json` whose folder names none.
const WELL_KNOWN_END_OF_TEXT: [&str; 4] = [END_OF_TEXT, "</s>", "<|end_of_text|>", "<eos>"];

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

/// A tokenizer: bytes, or a Hugging Face `tokenizers` tokenizer with its special tokens.
#[derive(Debug, Clone)]
pub enum TextTokenizer {
    /// One id per byte: id = byte value, 256 ids; [`END_OF_TEXT_BYTE`] ends a document.
    Bytes,
    /// A Hugging Face tokenizer (byte-level BPE trained here, or loaded from `tokenizer.json`).
    Hf(Box<HfTokenizer>),
}

/// A Hugging Face tokenizer (truncation and padding off) and its special token ids.
#[derive(Debug, Clone)]
pub struct HfTokenizer {
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// Its special tokens.
    pub special: SpecialTokens,
    /// Ids are below this: the largest id + 1, added tokens included.
    pub id_space: usize,
}

/// A tokenizer's special token ids (see the module docs for where they are read from).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// The beginning-of-sequence id, if any.
    pub bos: Option<u32>,
    /// End-of-sequence ids, the document separator first; generation stops at any of them.
    pub eos: Vec<u32>,
    /// The padding id, if any.
    pub pad: Option<u32>,
}

impl HfTokenizer {
    /// Wraps `tokenizer` with truncation and padding switched off.
    fn new(mut tokenizer: Tokenizer, special: SpecialTokens) -> Result<Self> {
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| tok_err("cannot switch the tokenizer's truncation off", e))?;
        let id_space = tokenizer.get_vocab(true).values().max().map_or(0, |&m| m as usize + 1);
        Ok(Self { tokenizer, special, id_space })
    }
}

fn tok_err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::Data(format!("{what}: {e}"))
}

impl TextTokenizer {
    /// The file name a run folder stores a subword tokenizer under.
    pub const FILE: &'static str = "tokenizer.json";

    /// Reads a `tokenizer.json` and its special tokens (from the files beside it, see the module
    /// docs), with truncation and padding switched off.
    ///
    /// # Errors
    /// [`Error::Data`] naming the file when it is missing, unreadable or not a tokenizer, or when
    /// a special token named beside it is not in its vocabulary.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::Data(format!("tokenizer file {} does not exist", path.display())));
        }
        let tokenizer =
            Tokenizer::from_file(path).map_err(|e| tok_err(format!("cannot read tokenizer {}", path.display()), e))?;
        let special = read_special_tokens(&tokenizer, path.parent().unwrap_or(Path::new(".")))?;
        Ok(Self::Hf(Box::new(HfTokenizer::new(tokenizer, special)?)))
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
        let eos = tokenizer.token_to_id(END_OF_TEXT).into_iter().collect();
        Ok(Self::Hf(Box::new(HfTokenizer::new(tokenizer, SpecialTokens { eos, ..SpecialTokens::default() })?)))
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

    /// Number of ids (the model's vocabulary must be at least this): 256 for bytes, else the
    /// largest id + 1, added tokens included.
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Bytes => 256,
            Self::Hf(t) => t.id_space,
        }
    }

    /// The Hugging Face tokenizer (`None` for bytes).
    pub fn hf(&self) -> Option<&Tokenizer> {
        match self {
            Self::Bytes => None,
            Self::Hf(t) => Some(&t.tokenizer),
        }
    }

    /// The special tokens: for bytes, [`END_OF_TEXT_BYTE`] as the one end-of-sequence id.
    pub fn special_tokens(&self) -> SpecialTokens {
        match self {
            Self::Bytes => SpecialTokens { eos: vec![u32::from(END_OF_TEXT_BYTE)], ..SpecialTokens::default() },
            Self::Hf(t) => t.special.clone(),
        }
    }

    /// The id that ends a document (separates documents in training data), if the tokenizer
    /// has one (bytes always do).
    pub fn end_of_text(&self) -> Option<u32> {
        self.special_tokens().eos.first().copied()
    }

    /// Writes a subword tokenizer as `dir/tokenizer.json` with its special tokens in
    /// `dir/tokenizer_config.json` (nothing for bytes), each file atomically; `dir` is created if
    /// needed.
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::Data`] naming the file or folder.
    pub fn save_to_folder(&self, dir: &Path) -> Result<()> {
        let Self::Hf(t) = self else { return Ok(()) };
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(Self::FILE);
        let json = t
            .tokenizer
            .to_string(true)
            .map_err(|e| tok_err(format!("cannot serialise tokenizer for {}", path.display()), e))?;
        crate::fs::write_atomic(&path, |tmp| std::fs::write(tmp, json.as_bytes()).map_err(|e| Error::io(tmp, e)))?;
        let name = |id: Option<u32>| id.and_then(|i| t.tokenizer.id_to_token(i));
        let config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": name(t.special.bos),
            "eos_token": name(t.special.eos.first().copied()),
            "pad_token": name(t.special.pad),
            "add_bos_token": false,
            "add_eos_token": false,
            "clean_up_tokenization_spaces": false,
        });
        crate::fs::save_json(&dir.join(TOKENIZER_CONFIG), &config)
    }

    /// Ids of `text` as training data: no special tokens added around it.
    ///
    /// # Errors
    /// [`Error::Data`] if the tokenizer fails.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Self::Bytes => Ok(text.bytes().map(u32::from).collect()),
            Self::Hf(t) => Ok(t
                .tokenizer
                .encode_fast(text, false)
                .map_err(|e| tok_err("tokenization failed", e))?
                .get_ids()
                .to_vec()),
        }
    }

    /// Ids of a generation prompt: encoded with the tokenizer's template (its post-processor
    /// adds a BOS where the tokenizer's own files say so, as transformers' tokenizers do); for
    /// bytes and a BPE trained here the same as [`TextTokenizer::encode`].
    ///
    /// # Errors
    /// [`Error::Data`] if the tokenizer fails.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<i64>> {
        let ids = match self {
            Self::Bytes => self.encode(text)?,
            Self::Hf(t) => {
                t.tokenizer.encode_fast(text, true).map_err(|e| tok_err("tokenization failed", e))?.get_ids().to_vec()
            }
        };
        Ok(ids.into_iter().map(i64::from).collect())
    }

    /// Ids of `text` and the bytes of `text` each id stands for (from the tokenizer's offsets:
    /// a token's bytes run from where its piece starts to where the next one starts, so the
    /// counts sum to `text.len()`; a token sharing its piece's bytes with the one before, as byte
    /// fallback does, counts 0).
    ///
    /// # Errors
    /// [`Error::Data`] if the tokenizer fails.
    pub fn encode_with_bytes(&self, text: &str) -> Result<(Vec<u32>, Vec<u32>)> {
        let (ids, mut starts) = match self {
            Self::Bytes => (text.bytes().map(u32::from).collect::<Vec<_>>(), (0..text.len()).collect::<Vec<_>>()),
            Self::Hf(t) => {
                let encoding = t.tokenizer.encode(text, false).map_err(|e| tok_err("tokenization failed", e))?;
                (encoding.get_ids().to_vec(), encoding.get_offsets().iter().map(|o| o.0).collect())
            }
        };
        if let Some(first) = starts.first_mut() {
            *first = 0;
        }
        for i in 1..starts.len() {
            starts[i] = starts[i].max(starts[i - 1]).min(text.len());
        }
        let bytes =
            (0..starts.len()).map(|i| (starts.get(i + 1).copied().unwrap_or(text.len()) - starts[i]) as u32).collect();
        Ok((ids, bytes))
    }

    /// The text of `ids`. Special tokens (BOS, end of text, padding; for bytes the separator byte)
    /// are left out, as transformers' text-generation pipeline does, and so are ids the tokenizer
    /// does not have (a model's vocabulary may be padded past the tokenizer's). A byte-level
    /// sequence cut inside a character decodes that character as U+FFFD.
    ///
    /// # Errors
    /// [`Error::Data`] if the tokenizer's decoder fails.
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let vocab = self.vocab_size() as i64;
        let known = ids.iter().copied().filter(|&i| (0..vocab).contains(&i));
        match self {
            Self::Bytes => {
                let bytes: Vec<u8> = known.filter(|&i| i != i64::from(END_OF_TEXT_BYTE)).map(|i| i as u8).collect();
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Self::Hf(t) => {
                let ids: Vec<u32> = known.map(|i| i as u32).collect();
                t.tokenizer.decode(&ids, true).map_err(|e| tok_err("decoding failed", e))
            }
        }
    }

    /// How many of `ids` the tokenizer does not have (see [`TextTokenizer::decode`]).
    pub fn unknown_ids(&self, ids: &[i64]) -> usize {
        let vocab = self.vocab_size() as i64;
        ids.iter().filter(|&&i| !(0..vocab).contains(&i)).count()
    }

    /// Tokenizes `text` — documents, each followed by [`END_OF_TEXT_BYTE`] as
    /// [`crate::data::Corpus`] holds them (the last one may lack it) — into a dataset that
    /// remembers how many bytes of text it holds (for bits per byte; separators are not text).
    /// Each document is encoded whole (in parallel over documents) and followed by the
    /// tokenizer's end-of-text id; a tokenizer without one separates documents by the ids of a
    /// blank line (`"\n\n"`). Bytes keep the text as it is.
    ///
    /// # Errors
    /// As [`TextTokenizer::encode`]; [`Error::Data`] if a subword text is not UTF-8.
    pub fn dataset(&self, text: &[u8]) -> Result<TokenDataset> {
        let separators = text.iter().filter(|&&b| b == END_OF_TEXT_BYTE).count();
        let text_bytes = text.len() - separators;
        match self {
            Self::Bytes => Ok(TokenDataset::from_bytes(text.to_vec(), text_bytes)),
            Self::Hf(_) => {
                let text = std::str::from_utf8(text).map_err(|e| Error::Data(format!("text is not UTF-8: {e}")))?;
                let separator = self.separator()?;
                let documents: Vec<&str> = text.split_inclusive(char::from(END_OF_TEXT_BYTE)).collect();
                let parts: Vec<(Vec<u32>, Vec<u32>)> = documents
                    .par_iter()
                    .map(|d| -> Result<(Vec<u32>, Vec<u32>)> {
                        let (body, ended) = match d.strip_suffix(char::from(END_OF_TEXT_BYTE)) {
                            Some(body) => (body, true),
                            None => (*d, false),
                        };
                        let (mut ids, mut bytes) =
                            if body.is_empty() { Default::default() } else { self.encode_with_bytes(body)? };
                        if ended {
                            ids.extend_from_slice(&separator);
                            bytes.extend(separator.iter().map(|_| 0));
                        }
                        Ok((ids, bytes))
                    })
                    .collect::<Result<_>>()?;
                let (ids, bytes): (Vec<Vec<u32>>, Vec<Vec<u32>>) = parts.into_iter().unzip();
                TokenDataset::from_ids_with_bytes(ids.concat(), bytes.concat(), self.vocab_size())
            }
        }
    }

    /// The ids that follow every document in training data: the end-of-text id, or the ids of
    /// a blank line for a tokenizer without one (they stand for no bytes of the text).
    ///
    /// # Errors
    /// As [`TextTokenizer::encode`].
    pub fn separator(&self) -> Result<Vec<u32>> {
        match self.end_of_text() {
            Some(id) => Ok(vec![id]),
            None => self.encode("\n\n"),
        }
    }

    /// The ids of one document cut into pieces at paragraph starts (after every blank line), the
    /// ids and byte counts being slices of the whole document's
    /// ([`TextTokenizer::encode_with_bytes`]; a token that spans a cut goes with the paragraph it
    /// starts in), so the pieces' ids concatenate to the document's ids. The end-of-text id is not
    /// added.
    ///
    /// # Errors
    /// As [`TextTokenizer::encode`].
    pub fn encode_paragraphs<'t>(&self, document: &'t str) -> Result<Vec<EncodedPiece<'t>>> {
        let (ids, bytes) = self.encode_with_bytes(document)?;
        let mut pieces = Vec::new();
        let (mut offset, mut next_id, mut consumed) = (0, 0, 0usize);
        let texts: Vec<&str> = paragraphs(document).collect();
        for (i, text) in texts.iter().enumerate() {
            let end = offset + text.len();
            let last = i + 1 == texts.len();
            let first_id = next_id;
            // A token belongs to the paragraph its first byte lies in.
            while next_id < ids.len() && (last || consumed < end) {
                consumed += bytes[next_id] as usize;
                next_id += 1;
            }
            pieces.push(EncodedPiece {
                text,
                ids: ids[first_id..next_id].to_vec(),
                bytes: bytes[first_id..next_id].to_vec(),
            });
            offset = end;
        }
        Ok(pieces)
    }
}

/// A piece of a document with its ids and the bytes each stands for
/// ([`TextTokenizer::encode_paragraphs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPiece<'t> {
    /// The piece's text.
    pub text: &'t str,
    /// Its ids.
    pub ids: Vec<u32>,
    /// Bytes of text per id.
    pub bytes: Vec<u32>,
}

/// The file a run or model folder keeps a subword tokenizer's special tokens in.
pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";

/// A special token as `tokenizer_config.json` writes it: a string, or `{"content": …}`.
fn token_text(value: Option<&serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(String::from),
        _ => None,
    }
}

/// Ids as `config.json` / `generation_config.json` write them: a number or a list of numbers.
fn token_ids(value: Option<&serde_json::Value>) -> Vec<u32> {
    match value {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|i| i as u32).into_iter().collect(),
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_u64()).map(|i| i as u32).collect(),
        _ => Vec::new(),
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    serde_json::from_str(text).map(Some).map_err(|source| Error::Json { context: path.display().to_string(), source })
}

/// The special tokens of `tokenizer` from the files of its folder `dir` (see the module docs).
fn read_special_tokens(tokenizer: &Tokenizer, dir: &Path) -> Result<SpecialTokens> {
    let config_path = dir.join(TOKENIZER_CONFIG);
    let tokenizer_config = read_json(&config_path)?;
    let named = |field: &str| -> Result<Option<u32>> {
        let Some(text) = token_text(tokenizer_config.as_ref().and_then(|c| c.get(field))) else { return Ok(None) };
        match tokenizer.token_to_id(&text) {
            Some(id) => Ok(Some(id)),
            None => Err(Error::Data(format!(
                "{} names {field} {text:?}, which the tokenizer's vocabulary does not hold",
                config_path.display()
            ))),
        }
    };
    let mut special = SpecialTokens {
        bos: named("bos_token")?,
        eos: named("eos_token")?.into_iter().collect(),
        pad: named("pad_token")?,
    };
    for file in ["generation_config.json", "config.json"] {
        if let Some(config) = read_json(&dir.join(file))? {
            for id in token_ids(config.get("eos_token_id")) {
                if !special.eos.contains(&id) {
                    special.eos.push(id);
                }
            }
            special.bos = special.bos.or(token_ids(config.get("bos_token_id")).first().copied());
            special.pad = special.pad.or(token_ids(config.get("pad_token_id")).first().copied());
        }
    }
    if special.eos.is_empty() {
        special.eos = WELL_KNOWN_END_OF_TEXT.iter().find_map(|t| tokenizer.token_to_id(t)).into_iter().collect();
    }
    Ok(special)
}

/// `text` cut after every blank line (`"\n\n"`), the cuts kept with the piece before them and
/// a piece of only whitespace joined to the one before it, so the pieces concatenate to `text`.
pub(crate) fn paragraphs(text: &str) -> impl Iterator<Item = &str> {
    let mut cuts = vec![0];
    let (mut offset, mut seen_text) = (0, false);
    for piece in text.split_inclusive("\n\n") {
        if !piece.trim().is_empty() {
            if seen_text {
                cuts.push(offset);
            }
            seen_text = true;
        }
        offset += piece.len();
    }
    cuts.push(text.len());
    let pieces: Vec<&str> = cuts.windows(2).map(|w| &text[w[0]..w[1]]).filter(|p| !p.is_empty()).collect();
    pieces.into_iter()
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
        // Pieces of only whitespace join the piece before them.
        let text = "a\n\n\n\n\n\nb\n\n\n\n";
        let parts: Vec<&str> = paragraphs(text).collect();
        assert_eq!(parts, vec!["a\n\n\n\n\n\n", "b\n\n\n\n"]);
        assert_eq!(paragraphs("\n\nx").collect::<Vec<_>>(), vec!["\n\nx"]);
        assert_eq!(paragraphs("").count(), 0);
    }
}
