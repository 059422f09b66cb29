//! Text corpora: the documents of a UTF-8 file or a folder of input files (see
//! [`crate::data::documents`] for which files and formats), each followed by the end-of-text
//! byte, with their content hash and the fixed 90/10 train/validation split.

use crate::data::dataset::TokenDataset;
use crate::data::dataset::END_OF_TEXT_BYTE;
use crate::data::documents::{input_files, read_documents, FileFilter};
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// A text corpus: its documents as one byte stream, each document followed by
/// [`END_OF_TEXT_BYTE`], with the files it came from.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// The documents, each followed by [`END_OF_TEXT_BYTE`] (UTF-8 text otherwise).
    pub bytes: Vec<u8>,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
    /// Files of a folder skipped as metadata ([`crate::data::documents::METADATA_FILES`]).
    pub skipped: Vec<PathBuf>,
    /// Documents read.
    pub documents: usize,
}

impl Corpus {
    /// Reads the documents of a file, or of the files of a folder `filter` lets through (see
    /// [`crate::data::documents`]), in path order.
    ///
    /// # Errors
    /// As [`crate::data::documents::input_files`] and [`crate::data::documents::read_documents`]
    /// (each naming the file and line); [`Error::Data`] if there is no text at all.
    pub fn from_path(path: &Path, filter: &FileFilter) -> Result<Self> {
        let inputs = input_files(path, filter)?;
        let contents: Vec<Vec<String>> = inputs.files.par_iter().map(|f| read_documents(f)).collect::<Result<_>>()?;
        let documents: usize = contents.iter().map(Vec::len).sum();
        if documents == 0 {
            return Err(Error::Data(format!("data at {} is empty", path.display())));
        }
        let mut bytes = Vec::with_capacity(contents.iter().flatten().map(|d| d.len() + 1).sum());
        for doc in contents.iter().flatten() {
            bytes.extend_from_slice(doc.as_bytes());
            bytes.push(END_OF_TEXT_BYTE);
        }
        Ok(Self { bytes, files: inputs.files, skipped: inputs.skipped, documents })
    }

    /// Bytes of text (the separators left out).
    pub fn text_bytes(&self) -> usize {
        self.bytes.len() - self.documents
    }

    /// SHA-256 of [`Corpus::bytes`] (the documents in order, each followed by the separator), as
    /// `sha256:<hex>`: recorded in `train_config.json` so that a resumed run notices a changed corpus.
    pub fn content_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(&self.bytes);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }

    /// Splits the bytes at `⌊(1 − val_fraction) · len⌋`: the first part trains, the rest validates
    /// (as byte datasets; see [`Corpus::split_text`] for other tokenizers).
    ///
    /// # Errors
    /// [`Error::Data`] if `val_fraction` is not in `(0, 1)`.
    pub fn split(&self, val_fraction: f64) -> Result<(TokenDataset, TokenDataset)> {
        let (train, val) = self.split_text(val_fraction)?;
        let dataset =
            |b: &[u8]| TokenDataset::from_bytes(b.to_vec(), b.iter().filter(|&&x| x != END_OF_TEXT_BYTE).count());
        Ok((dataset(train), dataset(val)))
    }

    /// The training and validation text of [`Corpus::split`], before tokenization: the cut
    /// moves back to the start of a UTF-8 character if it falls inside one (never for ASCII).
    ///
    /// # Errors
    /// As [`Corpus::split`].
    pub fn split_text(&self, val_fraction: f64) -> Result<(&[u8], &[u8])> {
        if !(val_fraction > 0.0 && val_fraction < 1.0) {
            return Err(Error::Data(format!("validation fraction ({val_fraction}) must be in (0, 1)")));
        }
        let mut cut = ((1.0 - val_fraction) * self.bytes.len() as f64).floor() as usize;
        // UTF-8 continuation bytes are 0b10xxxxxx.
        while cut > 0 && cut < self.bytes.len() && self.bytes[cut] & 0xC0 == 0x80 {
            cut -= 1;
        }
        Ok(self.bytes.split_at(cut))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_binary_files_and_empty_files() {
        let dir = tempfile::tempdir().unwrap();
        let all = FileFilter::default();
        std::fs::write(dir.path().join("b.txt"), "second").unwrap();
        std::fs::write(dir.path().join("a.txt"), "\u{feff}first\r\nline").unwrap();
        std::fs::write(dir.path().join(".hidden"), [0xffu8]).unwrap();
        std::fs::write(dir.path().join("dataset_info.json"), "{}").unwrap();
        let corpus = Corpus::from_path(dir.path(), &all).unwrap();
        assert_eq!(corpus.bytes, b"first\nline\x03second\x03");
        assert_eq!((corpus.documents, corpus.text_bytes()), (2, 16));
        assert_eq!(corpus.skipped, vec![dir.path().join("dataset_info.json")]);
        std::fs::write(dir.path().join("c.bin"), [b'o', b'\n', b'k', 0xff]).unwrap();
        let err = Corpus::from_path(dir.path(), &all).unwrap_err().to_string();
        assert!(err.contains("c.bin is not UTF-8 text: invalid byte at offset 3 (line 2)"), "{err}");
        let txt = FileFilter::new(&["*.TXT".into()], &[]).unwrap();
        assert_eq!(Corpus::from_path(dir.path(), &txt).unwrap().files.len(), 2);
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, "  \n").unwrap();
        assert!(Corpus::from_path(&empty, &all).unwrap_err().to_string().contains("is empty"));
        let missing = Corpus::from_path(&dir.path().join("nope"), &all).unwrap_err().to_string();
        assert!(missing.contains("cannot read data path"), "{missing}");
    }
}
