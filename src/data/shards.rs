//! Corpora larger than memory: a prepared folder of token shards (raw little-endian u16 or u32
//! ids) with a `meta.json`, written by [`prepare_corpus`] (the `prepare` example) and
//! memory-mapped for training ([`PreparedCorpus::open`]), so that peak memory does not depend on
//! the corpus size.
//!
//! Input files are read into documents as raw text is ([`crate::data::documents`]). Each
//! document is tokenized whole and followed by the tokenizer's end-of-text id (the ids of a blank
//! line for a tokenizer without one). The unit of the train/validation split is a JSON-lines or
//! Parquet document, or a paragraph of a text file (cut after every blank line, its ids a slice
//! of the whole file's ids, see [`TextTokenizer::encode_paragraphs`]): each unit goes wholly to
//! one split, decided by a hash of its text (so the splits never share one, duplicates included).

use crate::data::dataset::{ShardDtype, TokenDataset};
use crate::data::documents::{file_format, read_documents, FileFormat};
use crate::data::tokenizer::{paragraphs, EncodedPiece, TextTokenizer};
use crate::error::{Error, Result};
use crate::fs::save_json;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Version of the folder layout written to `meta.json` (2: documents end with the end-of-text id).
pub const SHARDS_FORMAT: u32 = 2;

/// One shard file of a split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardFile {
    /// File name inside the prepared folder.
    pub file: String,
    /// Ids in the file.
    pub tokens: u64,
    /// The file of its byte counts (little-endian u16, the bytes of text each id stands for;
    /// subword tokenizers only: a byte id stands for one byte, the end-of-text byte for none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_file: Option<String>,
}

/// One split of a prepared corpus.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitMeta {
    /// Split units in the split: JSON-lines / Parquet documents and paragraphs of text files.
    pub documents: u64,
    /// Bytes of text the split's ids stand for (for bits per byte).
    pub text_bytes: u64,
    /// Ids in all shards.
    pub tokens: u64,
    /// The shard files, in order.
    pub shards: Vec<ShardFile>,
}

/// `meta.json` of a prepared corpus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardsMeta {
    /// [`SHARDS_FORMAT`].
    pub format: u32,
    /// The tokenizer as `--tokenizer` spelled it.
    pub tokenizer: String,
    /// SHA-256 of the tokenizer's `tokenizer.json` text, or `bytes`.
    pub tokenizer_hash: String,
    /// Ids are below this.
    pub vocab_size: usize,
    /// Width of the ids.
    pub dtype: ShardDtype,
    /// SHA-256 over every document's text in input order.
    pub content_hash: String,
    /// Share of documents (by text hash) in the validation split.
    pub val_fraction: f64,
    /// The training split.
    pub train: SplitMeta,
    /// The validation split.
    pub val: SplitMeta,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The tokenizer's identity for [`ShardsMeta::tokenizer_hash`].
///
/// # Errors
/// [`Error::Data`] if a subword tokenizer cannot be serialised.
pub fn tokenizer_hash(tokenizer: &TextTokenizer) -> Result<String> {
    match tokenizer {
        TextTokenizer::Bytes => Ok("bytes".into()),
        TextTokenizer::Hf(t) => {
            let json = t
                .tokenizer
                .to_string(false)
                .map_err(|e| Error::Data(format!("cannot serialise the tokenizer: {e}")))?;
            Ok(format!("sha256:{}", sha256_hex(json.as_bytes())))
        }
    }
}

/// Whether a document (by the hash of its text) belongs to the validation split.
fn is_validation(text: &str, val_fraction: f64) -> bool {
    let digest = Sha256::digest(text.as_bytes());
    let x = u64::from_le_bytes(digest[..8].try_into().unwrap_or([0; 8]));
    (x as f64 / u64::MAX as f64) < val_fraction
}

/// The split units of a document of `path` (see the module docs): paragraphs of a text file,
/// else the whole document.
fn units<'d>(path: &Path, document: &'d str) -> Vec<&'d str> {
    match file_format(path).0 {
        FileFormat::Text => paragraphs(document).collect(),
        _ => vec![document],
    }
}

/// A byte-level BPE of `vocab_size` ids trained on the *training* units of `inputs` only (the
/// documents and paragraphs [`prepare_corpus`] puts in the training split), streamed file by file.
///
/// # Errors
/// As [`read_documents`] and [`TextTokenizer::train_bpe`].
pub fn train_bpe_on_training_split(inputs: &[PathBuf], val_fraction: f64, vocab_size: usize) -> Result<TextTokenizer> {
    // Files are read once, as the trainer pulls documents; the first read error is kept and
    // returned after training (the trainer's stream itself cannot fail).
    let first_error: std::sync::Mutex<Option<Error>> = std::sync::Mutex::new(None);
    let pieces = inputs.iter().flat_map(|p| match read_documents(p) {
        Ok(docs) => docs
            .iter()
            .flat_map(|d| units(p, d))
            .filter(|u| !is_validation(u.trim(), val_fraction))
            .map(str::to_string)
            .collect(),
        Err(e) => {
            if let Ok(mut slot) = first_error.lock() {
                slot.get_or_insert(e);
            }
            Vec::new()
        }
    });
    let tokenizer = TextTokenizer::train_bpe_on(pieces, vocab_size);
    match first_error.into_inner().ok().flatten() {
        Some(e) => Err(e),
        None => tokenizer,
    }
}

/// Appends ids (and, for subword tokenizers, their byte counts) to numbered shard files of at
/// most `max_tokens` ids each; a shard enters `meta.shards` when it is closed.
struct ShardWriter {
    dir: PathBuf,
    split: &'static str,
    dtype: ShardDtype,
    max_tokens: u64,
    with_bytes: bool,
    meta: SplitMeta,
    open: Option<OpenShard>,
}

/// The shard being written: its ids, its byte counts (subword tokenizers), its record.
struct OpenShard {
    ids: std::io::BufWriter<std::fs::File>,
    bytes: Option<std::io::BufWriter<std::fs::File>>,
    shard: ShardFile,
}

fn create(path: &Path) -> Result<std::io::BufWriter<std::fs::File>> {
    Ok(std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| Error::io(path, e))?))
}

fn finish(file: std::io::BufWriter<std::fs::File>, path: &Path) -> Result<()> {
    file.into_inner().map_err(|e| Error::io(path, e.into_error()))?.sync_all().map_err(|e| Error::io(path, e))
}

impl ShardWriter {
    /// Appends `ids`, each standing for `bytes[i]` bytes of text.
    fn push(&mut self, ids: &[u32], bytes: &[u32]) -> Result<()> {
        let mut at = 0;
        while at < ids.len() {
            if self.open.as_ref().is_some_and(|o| o.shard.tokens >= self.max_tokens) {
                self.close()?;
            }
            let open = match &mut self.open {
                Some(open) => open,
                None => {
                    let name = format!("{}-{:05}.bin", self.split, self.meta.shards.len());
                    let bytes_name =
                        self.with_bytes.then(|| format!("{}-{:05}.bytes", self.split, self.meta.shards.len()));
                    let bytes = match &bytes_name {
                        Some(b) => Some(create(&self.dir.join(b))?),
                        None => None,
                    };
                    let shard = ShardFile { file: name.clone(), tokens: 0, bytes_file: bytes_name };
                    self.open.insert(OpenShard { ids: create(&self.dir.join(&name))?, bytes, shard })
                }
            };
            let n = ((self.max_tokens - open.shard.tokens) as usize).min(ids.len() - at);
            let mut buf = Vec::with_capacity(n * self.dtype.width());
            for &id in &ids[at..at + n] {
                match self.dtype {
                    ShardDtype::U16 => buf.extend_from_slice(&(id as u16).to_le_bytes()),
                    ShardDtype::U32 => buf.extend_from_slice(&id.to_le_bytes()),
                }
            }
            open.ids.write_all(&buf).map_err(|e| Error::io(self.dir.join(&open.shard.file), e))?;
            if let (Some(file), Some(name)) = (&mut open.bytes, &open.shard.bytes_file) {
                let mut counts = Vec::with_capacity(2 * n);
                for &b in &bytes[at..at + n] {
                    let b = u16::try_from(b).map_err(|_| {
                        Error::Data(format!("a token stands for {b} bytes of text, more than a shard records (65,535)"))
                    })?;
                    counts.extend_from_slice(&b.to_le_bytes());
                }
                file.write_all(&counts).map_err(|e| Error::io(self.dir.join(name), e))?;
            }
            open.shard.tokens += n as u64;
            self.meta.tokens += n as u64;
            at += n;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        if let Some(open) = self.open.take() {
            finish(open.ids, &self.dir.join(&open.shard.file))?;
            if let (Some(file), Some(name)) = (open.bytes, &open.shard.bytes_file) {
                finish(file, &self.dir.join(name))?;
            }
            self.meta.shards.push(open.shard);
        }
        Ok(())
    }
}

/// Checks that `out` may receive the prepared corpus of `input` before anything is read or
/// written: it must not be `input` itself, a folder inside it (a second run would read the first
/// one's shards as text) or an existing file, and it must not already hold a prepared corpus
/// unless `overwrite`.
///
/// ```
/// let input = std::env::temp_dir();
/// let err = altup_moe::data::check_prepare_output(&input, &input.join("shards"), false).unwrap_err();
/// assert!(err.to_string().contains("inside the input"), "{err}");
/// ```
///
/// # Errors
/// [`Error::Data`] naming both folders, or the corpus already in `out`; [`Error::Io`] when
/// `input` does not exist.
pub fn check_prepare_output(input: &Path, out: &Path, overwrite: bool) -> Result<()> {
    let input_abs = std::fs::canonicalize(input).map_err(|e| Error::io(input, e))?;
    if out.exists() && !out.is_dir() {
        return Err(Error::Data(format!("the output {} is a file, not a folder", out.display())));
    }
    // The output may not exist yet: resolve its nearest existing ancestor.
    let mut existing = out.to_path_buf();
    let mut rest = Vec::new();
    while !existing.as_os_str().is_empty() && !existing.exists() {
        rest.push(existing.file_name().map(|n| n.to_os_string()).unwrap_or_default());
        existing = existing.parent().map(Path::to_path_buf).unwrap_or_default();
    }
    let base = if existing.as_os_str().is_empty() { PathBuf::from(".") } else { existing };
    let mut out_abs = std::fs::canonicalize(&base).map_err(|e| Error::io(&base, e))?;
    out_abs.extend(rest.iter().rev());
    if input_abs.is_dir() && out_abs.starts_with(&input_abs) {
        return Err(Error::Data(format!(
            "the output {} is inside the input {}: a second run would read the shards as text; choose an output \
             outside the input folder",
            out.display(),
            input.display()
        )));
    }
    if PreparedCorpus::is_prepared(out) && !overwrite {
        return Err(Error::Data(format!(
            "{} already holds a prepared corpus (meta.json): choose another output folder or replace it (overwrite)",
            out.display()
        )));
    }
    Ok(())
}

/// Tokenizes the files `inputs` (in order; see [`read_documents`] and the module docs) into shards under `out`, each
/// of at most `max_shard_tokens` ids, and writes `meta.json` last (atomically), so a folder with
/// a `meta.json` is complete. Files are read and tokenized in parallel, a batch of files at a
/// time, so memory holds one batch, not the corpus. `on_file` is called after each file with its
/// byte size (for progress output). A subword tokenizer is saved as `out/tokenizer.json`.
///
/// # Errors
/// As [`read_documents`]; [`Error::Data`] when a split ends up empty (too few documents for
/// `val_fraction`), `val_fraction` is not in (0, 1) or `max_shard_tokens` is 0; [`Error::Io`].
pub fn prepare_corpus(
    inputs: &[PathBuf],
    out: &Path,
    tokenizer: &TextTokenizer,
    tokenizer_spec: &str,
    val_fraction: f64,
    max_shard_tokens: u64,
    on_file: &(dyn Fn(u64) + Sync),
) -> Result<ShardsMeta> {
    if !(val_fraction > 0.0 && val_fraction < 1.0) {
        return Err(Error::Data(format!("validation fraction ({val_fraction}) must be in (0, 1)")));
    }
    if max_shard_tokens == 0 {
        return Err(Error::Data("shard size (0 tokens) must be at least 1".into()));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    // A corpus prepared here before is replaced: its meta.json goes first (the folder is then
    // incomplete until the new one is written), then its shard files, which a smaller corpus would
    // otherwise leave behind.
    let old: Option<ShardsMeta> =
        std::fs::read_to_string(out.join("meta.json")).ok().and_then(|text| serde_json::from_str(&text).ok());
    let _ = std::fs::remove_file(out.join("meta.json"));
    for shard in old.iter().flat_map(|m| m.train.shards.iter().chain(&m.val.shards)) {
        for name in std::iter::once(&shard.file).chain(&shard.bytes_file) {
            let _ = std::fs::remove_file(out.join(name));
        }
    }
    let dtype = ShardDtype::for_vocab(tokenizer.vocab_size());
    let writer = |split| ShardWriter {
        dir: out.to_path_buf(),
        split,
        dtype,
        max_tokens: max_shard_tokens,
        with_bytes: tokenizer.hf().is_some(),
        meta: SplitMeta::default(),
        open: None,
    };
    let (mut train, mut val) = (writer("train"), writer("val"));
    let mut content = Sha256::new();
    let separator = tokenizer.separator()?;
    let threads = rayon::current_num_threads().max(1);
    for batch in inputs.chunks(threads * 2) {
        // Per file: (documents' texts, (is validation, ids, byte counts) per split unit).
        type Encoded = Vec<(bool, Vec<u32>, Vec<u32>)>;
        let files: Vec<(Vec<String>, Encoded)> = batch
            .par_iter()
            .map(|path| -> Result<(Vec<String>, Encoded)> {
                let docs = read_documents(path)?;
                let mut encoded = Vec::new();
                for doc in &docs {
                    let pieces = match file_format(path).0 {
                        FileFormat::Text => tokenizer.encode_paragraphs(doc)?,
                        _ => {
                            let (ids, bytes) = tokenizer.encode_with_bytes(doc)?;
                            vec![EncodedPiece { text: doc, ids, bytes }]
                        }
                    };
                    let last = pieces.len().saturating_sub(1);
                    for (i, mut piece) in pieces.into_iter().enumerate() {
                        if i == last {
                            piece.ids.extend_from_slice(&separator);
                            piece.bytes.extend(separator.iter().map(|_| 0));
                        }
                        encoded.push((is_validation(piece.text.trim(), val_fraction), piece.ids, piece.bytes));
                    }
                }
                on_file(std::fs::metadata(path).map(|m| m.len()).unwrap_or(0));
                Ok((docs, encoded))
            })
            .collect::<Result<_>>()?;
        for (docs, encoded) in files {
            for doc in &docs {
                content.update(doc.as_bytes());
                content.update(b"\0");
            }
            for (is_val, ids, bytes) in encoded {
                let split = if is_val { &mut val } else { &mut train };
                split.push(&ids, &bytes)?;
                split.meta.documents += 1;
                split.meta.text_bytes += bytes.iter().map(|&b| u64::from(b)).sum::<u64>();
            }
        }
    }
    train.close()?;
    val.close()?;
    for (name, split) in [("training", &train.meta), ("validation", &val.meta)] {
        if split.tokens == 0 {
            return Err(Error::Data(format!(
                "the {name} split of {} is empty ({} documents in all, validation fraction {val_fraction}); use more \
                 documents (paragraphs or JSON lines)",
                out.display(),
                train.meta.documents + val.meta.documents
            )));
        }
    }
    tokenizer.save_to_folder(out)?;
    let meta = ShardsMeta {
        format: SHARDS_FORMAT,
        tokenizer: tokenizer_spec.to_string(),
        tokenizer_hash: tokenizer_hash(tokenizer)?,
        vocab_size: tokenizer.vocab_size(),
        dtype,
        content_hash: format!("sha256:{}", sha256_hex(&content.finalize())),
        val_fraction,
        train: train.meta,
        val: val.meta,
    };
    save_json(&out.join("meta.json"), &meta)?;
    Ok(meta)
}

/// A prepared corpus opened for training: both splits memory-mapped.
#[derive(Debug)]
pub struct PreparedCorpus {
    /// `meta.json`.
    pub meta: ShardsMeta,
    /// The training split.
    pub train: TokenDataset,
    /// The validation split.
    pub val: TokenDataset,
    /// The corpus's tokenizer (`tokenizer.json` in the folder, or bytes).
    pub tokenizer: TextTokenizer,
}

impl PreparedCorpus {
    /// Whether `dir` holds a prepared corpus: a `meta.json` with the `format` and
    /// `tokenizer_hash` fields [`prepare_corpus`] writes (a dataset's own `meta.json` in a folder
    /// of text is not taken for one).
    pub fn is_prepared(dir: &Path) -> bool {
        std::fs::read_to_string(dir.join("meta.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .is_some_and(|json| json.get("format").is_some() && json.get("tokenizer_hash").is_some())
    }

    /// Opens the folder written by [`prepare_corpus`].
    ///
    /// # Errors
    /// [`Error::Data`] naming the file for a missing or malformed `meta.json`, another format
    /// version, a shard whose size is not its recorded ids × width, an empty shard, or a
    /// tokenizer that does not match the recorded hash; [`Error::Io`].
    pub fn open(dir: &Path) -> Result<Self> {
        let meta_path = dir.join("meta.json");
        let text = std::fs::read_to_string(&meta_path)
            .map_err(|e| Error::Data(format!("cannot read {}: {e} (prepare the corpus first)", meta_path.display())))?;
        let meta: ShardsMeta = serde_json::from_str(&text)
            .map_err(|source| Error::Json { context: meta_path.display().to_string(), source })?;
        if meta.format != SHARDS_FORMAT {
            return Err(Error::Data(format!(
                "{} has format {} but this version reads format {SHARDS_FORMAT}; prepare the corpus again",
                meta_path.display(),
                meta.format
            )));
        }
        let tokenizer = TextTokenizer::from_folder(dir)?;
        let hash = tokenizer_hash(&tokenizer)?;
        if hash != meta.tokenizer_hash {
            return Err(Error::Data(format!(
                "the tokenizer in {} (hash {hash}) is not the one the shards were prepared with ({})",
                dir.display(),
                meta.tokenizer_hash
            )));
        }
        let open = |split: &SplitMeta| -> Result<TokenDataset> {
            let mut shards = Vec::with_capacity(split.shards.len());
            let mut counts = Vec::new();
            for s in &split.shards {
                let path = dir.join(&s.file);
                let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
                let size = file.metadata().map_err(|e| Error::io(&path, e))?.len();
                let expected = s.tokens * meta.dtype.width() as u64;
                if s.tokens == 0 || size != expected {
                    return Err(Error::Data(format!(
                        "shard {} holds {size} bytes but meta.json records {} ids of {} bytes ({expected} bytes){}",
                        path.display(),
                        s.tokens,
                        meta.dtype.width(),
                        if s.tokens == 0 { "; empty shards are not allowed" } else { "" }
                    )));
                }
                // SAFETY: the file is opened read-only and the map is only read; a prepared
                // folder must not be modified while a run reads it (documented in the guide).
                let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
                shards.push((map, path));
                match (&s.bytes_file, tokenizer.hf().is_some()) {
                    (Some(name), true) => {
                        let path = dir.join(name);
                        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
                        // SAFETY: as above.
                        counts.push(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?);
                    }
                    (None, false) => {}
                    (None, true) => {
                        return Err(Error::Data(format!(
                            "{} records no byte counts for shard {} of a subword corpus; prepare it again",
                            meta_path.display(),
                            s.file
                        )))
                    }
                    (Some(name), false) => {
                        return Err(Error::Data(format!(
                            "{} records byte counts ({name}) for a byte-level corpus",
                            meta_path.display()
                        )))
                    }
                }
            }
            let counts = tokenizer.hf().is_some().then_some(counts);
            TokenDataset::from_shards(shards, counts, meta.dtype, meta.vocab_size, split.text_bytes as usize)
        };
        Ok(Self { train: open(&meta.train)?, val: open(&meta.val)?, tokenizer, meta })
    }
}
