//! Text corpora: a UTF-8 file or a folder of them as bytes, its content hash, and the fixed
//! 90/10 train/validation split.

use crate::data::dataset::TokenDataset;
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// A text corpus as bytes, with the files it came from.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// Concatenated file contents, files separated by one `\n`.
    pub bytes: Vec<u8>,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
}

impl Corpus {
    /// Reads a UTF-8 text file, or every file under a folder (recursively, sorted by path,
    /// skipping hidden entries and `__pycache__`). With `extensions`, only files with one of
    /// those extensions are read from a folder.
    ///
    /// # Errors
    /// [`Error::Data`] if the path does not exist, a file is not valid UTF-8 (the message names
    /// the file and the byte offset), the folder holds no matching file, or the text is empty;
    /// [`Error::Io`] on read errors.
    pub fn from_path(path: &Path, extensions: Option<&[&str]>) -> Result<Self> {
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::Data(format!("cannot read data path {}: {e}", path.display())))?;
        let files = if meta.is_dir() {
            let mut files = Vec::new();
            collect_files(path, extensions, &mut files)?;
            files.sort();
            if files.is_empty() {
                let filter = extensions.map(|e| format!(" with extension {}", e.join("/"))).unwrap_or_default();
                return Err(Error::Data(format!("folder {} holds no text files{filter}", path.display())));
            }
            files
        } else {
            vec![path.to_path_buf()]
        };
        let contents: Vec<Vec<u8>> = files.par_iter().map(|f| read_utf8(f)).collect::<Result<_>>()?;
        let mut bytes = Vec::with_capacity(contents.iter().map(|c| c.len() + 1).sum());
        for (i, c) in contents.iter().enumerate() {
            if i > 0 {
                bytes.push(b'\n');
            }
            bytes.extend_from_slice(c);
        }
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(Error::Data(format!("data at {} is empty", path.display())));
        }
        Ok(Self { bytes, files })
    }

    /// SHA-256 of the corpus text as read (files in order, joined by `\n`), as
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
        Ok((TokenDataset::new(train.to_vec()), TokenDataset::new(val.to_vec())))
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

pub(crate) fn collect_files(dir: &Path, extensions: Option<&[&str]>, out: &mut Vec<PathBuf>) -> Result<()> {
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
            collect_files(&path, extensions, out)?;
        } else {
            let matches = extensions
                .is_none_or(|exts| path.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.contains(&e)));
            if matches {
                out.push(path);
            }
        }
    }
    Ok(())
}

fn read_utf8(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if let Err(e) = std::str::from_utf8(&bytes) {
        return Err(Error::Data(format!(
            "{} is not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.valid_up_to()
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_binary_files_and_empty_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.txt"), "second").unwrap();
        std::fs::write(dir.path().join("a.txt"), "first").unwrap();
        std::fs::write(dir.path().join(".hidden"), [0xffu8]).unwrap();
        let corpus = Corpus::from_path(dir.path(), None).unwrap();
        assert_eq!(corpus.bytes, b"first\nsecond");
        std::fs::write(dir.path().join("c.bin"), [b'o', b'k', 0xff]).unwrap();
        let err = Corpus::from_path(dir.path(), None).unwrap_err().to_string();
        assert!(err.contains("c.bin is not UTF-8 text (invalid byte at offset 2)"), "{err}");
        assert_eq!(Corpus::from_path(dir.path(), Some(&["txt"])).unwrap().files.len(), 2);
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, "  \n").unwrap();
        assert!(Corpus::from_path(&empty, None).unwrap_err().to_string().contains("is empty"));
        let missing = Corpus::from_path(&dir.path().join("nope"), None).unwrap_err().to_string();
        assert!(missing.contains("cannot read data path"), "{missing}");
    }
}
