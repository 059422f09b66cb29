//! Input files → documents: which files of a folder are read, how each file format is parsed, and
//! how text is normalised. Both ways of feeding text in — raw text (`train --data`,
//! [`crate::data::Corpus`]) and prepared shards ([`crate::data::prepare_corpus`]) — read their
//! files here, so they see the same documents.
//!
//! # Which files
//! A file is read as given. A folder is read recursively in path order, skipping hidden entries
//! (`.*`), `__pycache__`, and the metadata files that datasets and model folders ship beside
//! their data ([`METADATA_FILES`], matched by name in any case). With `--include` patterns only
//! files matching one are read; files matching an `--exclude` pattern are not. Patterns are
//! globs (`*`, `?`, `[..]`, `**`), matched case-insensitively against the path relative to the
//! folder; a pattern without `/` matches the file name at any depth (`*.txt`).
//!
//! # Formats, by extension in any case (after a `.gz`, which is decompressed first)
//! * `.jsonl`, `.ndjson`, `.json`: JSON lines, one document per non-blank line, its string field
//!   `text`; a `.json` file whose first character is `[` is one JSON array of such objects.
//! * `.parquet`: one document per row of the string column `text` (the format Hugging Face
//!   datasets ship in).
//! * anything else: UTF-8 text, the whole file one document.
//!
//! # What a document is
//! Its text with a leading byte-order mark (U+FEFF) removed and line endings normalised to `\n`
//! (`\r\n` and a lone `\r` alike). Documents of only whitespace are skipped. Training data holds
//! every document followed by the tokenizer's end-of-text id (for bytes the ETX byte 0x03, which a
//! document may therefore not contain).

use crate::data::dataset::END_OF_TEXT_BYTE;
use crate::error::{Error, Result};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Names of files a folder's reading skips (any case): dataset cards and metadata of the Hugging
/// Face `datasets` library, a prepared corpus's or model folder's JSON files.
pub const METADATA_FILES: &[&str] = &[
    "README.md",
    "dataset_info.json",
    "dataset_infos.json",
    "dataset_dict.json",
    "state.json",
    "meta.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// Which files of a folder are read (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct FileFilter {
    include: Vec<String>,
    exclude: Vec<String>,
    include_set: Option<GlobSet>,
    exclude_set: Option<GlobSet>,
}

fn glob_set(patterns: &[String], flag: &str) -> Result<Option<GlobSet>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        // A pattern without a slash matches the file name at any depth.
        let full = if pattern.contains('/') { pattern.clone() } else { format!("**/{pattern}") };
        let glob = GlobBuilder::new(&full)
            .case_insensitive(true)
            .literal_separator(true)
            .build()
            .map_err(|e| Error::Input(format!("{flag} pattern {pattern:?} is not a glob: {e}")))?;
        builder.add(glob);
    }
    builder.build().map(Some).map_err(|e| Error::Input(format!("{flag} patterns {patterns:?}: {e}")))
}

impl FileFilter {
    /// Reads files matching one of `include` (all when empty) and none of `exclude`.
    ///
    /// # Errors
    /// [`Error::Input`] naming a pattern that is not a glob.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self> {
        Ok(Self {
            include: include.to_vec(),
            exclude: exclude.to_vec(),
            include_set: glob_set(include, "--include")?,
            exclude_set: glob_set(exclude, "--exclude")?,
        })
    }

    /// The include patterns.
    pub fn include(&self) -> &[String] {
        &self.include
    }

    fn accepts(&self, relative: &Path) -> bool {
        self.include_set.as_ref().is_none_or(|s| s.is_match(relative))
            && !self.exclude_set.as_ref().is_some_and(|s| s.is_match(relative))
    }
}

/// The files a path stands for, and the metadata files that were skipped.
#[derive(Debug, Clone, Default)]
pub struct InputFiles {
    /// Files to read, in path order.
    pub files: Vec<PathBuf>,
    /// Files skipped by name ([`METADATA_FILES`]).
    pub skipped: Vec<PathBuf>,
}

/// The input files of `path`: itself, or the files of a folder `filter` lets through (see the
/// module docs).
///
/// # Errors
/// [`Error::Data`] when the path does not exist or a folder yields no file (the message names
/// the patterns and skipped files); [`Error::Io`] on read errors.
pub fn input_files(path: &Path, filter: &FileFilter) -> Result<InputFiles> {
    let meta =
        std::fs::metadata(path).map_err(|e| Error::Data(format!("cannot read data path {}: {e}", path.display())))?;
    if !meta.is_dir() {
        return Ok(InputFiles { files: vec![path.to_path_buf()], skipped: Vec::new() });
    }
    let mut found = InputFiles::default();
    collect(path, path, filter, &mut found)?;
    found.files.sort();
    found.skipped.sort();
    if found.files.is_empty() {
        let mut why = String::new();
        if !filter.include.is_empty() {
            why += &format!(" matching --include {}", filter.include.join(" "));
        }
        if !filter.exclude.is_empty() {
            why += &format!(" outside --exclude {}", filter.exclude.join(" "));
        }
        if !found.skipped.is_empty() {
            why += &format!(" (skipped as metadata: {})", names(&found.skipped));
        }
        return Err(Error::Data(format!("folder {} holds no input files{why}", path.display())));
    }
    Ok(found)
}

/// File names of `paths`, comma-separated (for messages).
pub fn names(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths
        .iter()
        .map(|p| p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned()))
        .collect();
    names.join(", ")
}

fn collect(root: &Path, dir: &Path, filter: &FileFilter, out: &mut InputFiles) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "__pycache__" {
            continue;
        }
        let path = entry.path();
        let file_type = entry.file_type().map_err(|e| Error::io(&path, e))?;
        if file_type.is_dir() || (file_type.is_symlink() && path.is_dir()) {
            collect(root, &path, filter, out)?;
            continue;
        }
        let relative = path.strip_prefix(root).unwrap_or(&path);
        if !filter.accepts(relative) {
            continue;
        }
        if METADATA_FILES.iter().any(|m| m.eq_ignore_ascii_case(&name)) {
            out.skipped.push(path);
        } else {
            out.files.push(path);
        }
    }
    Ok(())
}

/// How a file's content is parsed (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// UTF-8 text, one document.
    Text,
    /// JSON lines (or one JSON array), one document per object's `text`.
    JsonLines,
    /// Parquet, one document per row's `text`.
    Parquet,
}

/// The format of `path` by its extension (any case) and whether it is gzip-compressed.
pub fn file_format(path: &Path) -> (FileFormat, bool) {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    let (name, gzip) = match name.strip_suffix(".gz") {
        Some(inner) => (inner.to_string(), true),
        None => (name, false),
    };
    let format = match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("jsonl" | "ndjson" | "json") => FileFormat::JsonLines,
        Some("parquet") => FileFormat::Parquet,
        _ => FileFormat::Text,
    };
    (format, gzip)
}

/// `text` as a document: a leading byte-order mark removed, `\r\n` and lone `\r` turned into `\n`.
pub fn normalize_text(text: &str) -> String {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if !text.contains('\r') {
        return text.to_string();
    }
    text.replace("\r\n", "\n").replace('\r', "\n")
}

/// The line (1-based) of byte `offset` in `bytes`.
fn line_of(bytes: &[u8], offset: usize) -> usize {
    bytes[..offset.min(bytes.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

fn read_bytes(path: &Path, gzip: bool) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if !gzip {
        return Ok(raw);
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(raw.as_slice())
        .read_to_end(&mut out)
        .map_err(|e| Error::Data(format!("{} is not gzip data: {e}", path.display())))?;
    Ok(out)
}

fn utf8(path: &Path, bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        Error::Data(format!(
            "{} is not UTF-8 text: invalid byte at offset {at} (line {}); leave binary files out with --exclude",
            path.display(),
            line_of(e.as_bytes(), at)
        ))
    })
}

/// Checks a document for the byte-level end-of-text separator; `at` says where it came from.
fn check_document(text: &str, at: &dyn Fn(usize) -> String) -> Result<()> {
    match text.bytes().position(|b| b == END_OF_TEXT_BYTE) {
        Some(i) => Err(Error::Data(format!(
            "{} holds the control byte 0x03 (ETX), which training data uses as the end-of-text separator",
            at(i)
        ))),
        None => Ok(()),
    }
}

/// The documents of one input file (see the module docs), normalised, blank ones left out.
///
/// # Errors
/// [`Error::Data`] naming the file (and line or row) for text that is not UTF-8, a line that is
/// not a JSON object with a string field `text`, a Parquet file without a string column `text`,
/// a document holding the byte 0x03, or corrupt gzip / Parquet data; [`Error::Io`] on read errors.
pub fn read_documents(path: &Path) -> Result<Vec<String>> {
    let (format, gzip) = file_format(path);
    let docs = match format {
        FileFormat::Text => {
            let text = normalize_text(&utf8(path, read_bytes(path, gzip)?)?);
            check_document(&text, &|i| format!("{} line {}", path.display(), line_of(text.as_bytes(), i)))?;
            vec![text]
        }
        FileFormat::JsonLines => json_documents(path, &utf8(path, read_bytes(path, gzip)?)?)?,
        FileFormat::Parquet => {
            if gzip {
                return Err(Error::Data(format!(
                    "{}: Parquet compresses its own pages; decompress the file",
                    path.display()
                )));
            }
            crate::data::parquet::text_column(path)?
                .into_iter()
                .enumerate()
                .map(|(row, text)| {
                    let text = normalize_text(&text);
                    check_document(&text, &|_| format!("{} row {}", path.display(), row + 1))?;
                    Ok(text)
                })
                .collect::<Result<_>>()?
        }
    };
    Ok(docs.into_iter().filter(|d| !d.trim().is_empty()).collect())
}

fn json_text(value: &serde_json::Value, at: &dyn Fn() -> String) -> Result<String> {
    match value.get("text") {
        Some(serde_json::Value::String(text)) => {
            let text = normalize_text(text);
            check_document(&text, &|_| at())?;
            Ok(text)
        }
        Some(other) => Err(Error::Data(format!(
            "{}: field \"text\" is {}, expected a string",
            at(),
            match other {
                serde_json::Value::Null => "null",
                serde_json::Value::Bool(_) => "a boolean",
                serde_json::Value::Number(_) => "a number",
                serde_json::Value::Array(_) => "an array",
                _ => "an object",
            }
        ))),
        None if value.is_object() => {
            let keys: Vec<&String> = value.as_object().map(|o| o.keys().collect()).unwrap_or_default();
            Err(Error::Data(format!("{}: expected a string field \"text\", found fields {keys:?}", at())))
        }
        None => Err(Error::Data(format!("{}: expected a JSON object with a string field \"text\"", at()))),
    }
}

fn json_documents(path: &Path, text: &str) -> Result<Vec<String>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim_start().starts_with('[') {
        let values: Vec<serde_json::Value> = serde_json::from_str(text).map_err(|e| {
            Error::Data(format!("{} line {} is not a JSON array of objects: {e}", path.display(), e.line()))
        })?;
        return values
            .iter()
            .enumerate()
            .map(|(i, v)| json_text(v, &|| format!("{} element {}", path.display(), i + 1)))
            .collect();
    }
    let mut docs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = || format!("{} line {}", path.display(), i + 1);
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            Error::Data(format!(
                "{} is not JSON ({e}); JSON-lines files hold one {{\"text\": ...}} object per line",
                at()
            ))
        })?;
        docs.push(json_text(&value, &at)?);
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_follow_the_extension_in_any_case() {
        for (name, format, gzip) in [
            ("a.txt", FileFormat::Text, false),
            ("a.md", FileFormat::Text, false),
            ("A.JSONL", FileFormat::JsonLines, false),
            ("a.Json", FileFormat::JsonLines, false),
            ("a.ndjson.GZ", FileFormat::JsonLines, true),
            ("a.txt.gz", FileFormat::Text, true),
            ("train-00000-of-00001.parquet", FileFormat::Parquet, false),
            ("noextension", FileFormat::Text, false),
        ] {
            assert_eq!(file_format(Path::new(name)), (format, gzip), "{name}");
        }
    }

    #[test]
    fn line_endings_and_byte_order_marks_are_normalised() {
        assert_eq!(normalize_text("\u{feff}a\r\nb\rc\n\r\n"), "a\nb\nc\n\n");
        assert_eq!(normalize_text("plain\n"), "plain\n");
        // Only a leading mark is a byte-order mark.
        assert_eq!(normalize_text("a\u{feff}b"), "a\u{feff}b");
    }
}
