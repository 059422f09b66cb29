//! Files written atomically: a temporary file next to the target, synced to disk, renamed over
//! it, and the folder synced — so a crash leaves the old file or the new one, never half of one.

use crate::error::{Error, Result};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Writes `path` atomically: `write` fills a temporary file next to it, which is then synced to
/// disk and renamed over `path`; finally the folder is synced so the rename itself is durable.
///
/// # Errors
/// [`Error::Io`] naming the file; errors of `write` (the temporary file is removed).
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| Error::Checkpoint(format!("{} is not a file path", path.display())))?;
    let tmp: PathBuf = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = write(&tmp).and_then(|()| {
        File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes a JSON document atomically.
///
/// # Errors
/// [`Error::Json`], [`Error::Io`].
pub fn save_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|source| Error::Json { context: path.display().to_string(), source })?;
    write_atomic(path, |tmp| std::fs::write(tmp, text + "\n").map_err(|e| Error::io(tmp, e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        save_json(&path, &vec![1, 2]).unwrap();
        let err = write_atomic(&path, |_| Err(Error::Checkpoint("disk full".into())));
        assert!(err.is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[\n  1,\n  2\n]\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
