//! Checkpoint folders, written so that a crash never leaves a half-written one.
//!
//! Files are written atomically (a temporary file in the same folder, fsync, rename, fsync the
//! folder). A checkpoint is a *folder* `checkpoints/step-NNNNNNNN/`; it is assembled in a hidden
//! temporary folder and renamed into place only once every file is on disk, so a `step-*` folder
//! is always complete (a training checkpoint's files are listed in [`crate::train::CheckpointMeta`]).
//! The newest `keep` checkpoints are kept.

use crate::error::{Error, Result};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Resolves `path` to a checkpoint folder: itself if it holds `trainer_state.json`, else the
/// newest `step-*` folder in it or in its `checkpoints/` subfolder.
///
/// # Errors
/// [`Error::Checkpoint`] naming the path when there is none.
pub fn find_checkpoint(path: &Path) -> Result<PathBuf> {
    if !path.exists() {
        return Err(Error::Checkpoint(format!("{} does not exist", path.display())));
    }
    if path.join("trainer_state.json").is_file() {
        return Ok(path.to_path_buf());
    }
    for dir in [path.join("checkpoints"), path.to_path_buf()] {
        if let Some(latest) = list_checkpoints(&dir)?.pop() {
            return Ok(latest);
        }
    }
    Err(Error::Checkpoint(format!(
        "no checkpoint in {} (expected trainer_state.json, or step-* folders in it or in its checkpoints/ folder)",
        path.display()
    )))
}

/// The complete `step-*` checkpoint folders in `dir`, oldest first (none if `dir` does not exist).
///
/// # Errors
/// [`Error::Io`] if `dir` exists but cannot be listed.
pub fn list_checkpoints(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok()) {
            if entry.path().join("trainer_state.json").is_file() {
                found.push((step, entry.path()));
            }
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// Writes one file of a checkpoint to the given path.
pub type FileWriter<'a> = Box<dyn FnOnce(&Path) -> Result<()> + 'a>;

/// The folder name of the checkpoint after `step` optimizer steps: `step-NNNNNNNN`.
pub fn checkpoint_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Writes a checkpoint folder `root/step-NNNNNNNN` atomically (see the module docs) and removes
/// all but the newest `keep` checkpoints. `files` lists `(file name, writer)` pairs; each writer
/// fills the given path. Returns the checkpoint folder.
///
/// For crash tests (cargo feature `testing` only), the environment variable
/// `ALTUP_MOE_TEST_CHECKPOINT_PAUSE_MS` makes the writer sleep that long after the first file,
/// while the checkpoint is half-written.
///
/// # Errors
/// [`Error::Io`] naming the file or folder; errors of the writers (the temporary folder is removed).
pub fn write_checkpoint_dir(
    root: &Path,
    step: u64,
    files: Vec<(&str, FileWriter<'_>)>,
    keep: usize,
) -> Result<PathBuf> {
    std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
    let name = checkpoint_name(step);
    let tmp = root.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    #[cfg(feature = "testing")]
    let pause = std::env::var("ALTUP_MOE_TEST_CHECKPOINT_PAUSE_MS").ok().and_then(|v| v.parse::<u64>().ok());
    #[cfg(not(feature = "testing"))]
    let pause: Option<u64> = None;
    let result = (|| -> Result<()> {
        for (i, (file, write)) in files.into_iter().enumerate() {
            let path = tmp.join(file);
            write(&path)?;
            File::open(&path).and_then(|f| f.sync_all()).map_err(|e| Error::io(&path, e))?;
            if let (0, Some(ms)) = (i, pause) {
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
        }
        File::open(&tmp).and_then(|d| d.sync_all()).map_err(|e| Error::io(&tmp, e))
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let final_dir = root.join(&name);
    if final_dir.exists() {
        // Re-saving a step (after a resume): move the old folder aside first.
        let old = root.join(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(&final_dir, &old).map_err(|e| Error::io(&final_dir, e))?;
        std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
    }
    File::open(root).and_then(|d| d.sync_all()).map_err(|e| Error::io(root, e))?;
    let existing = list_checkpoints(root)?;
    for old in existing.iter().take(existing.len().saturating_sub(keep.max(1))) {
        std::fs::remove_dir_all(old).map_err(|e| Error::io(old, e))?;
    }
    Ok(final_dir)
}

/// The run folder of a checkpoint folder (`RUN/checkpoints/step-N` → `RUN`); other folders are
/// their own run folder.
pub fn run_folder_of(checkpoint: &Path) -> PathBuf {
    match checkpoint.parent() {
        Some(parent) if parent.file_name().is_some_and(|n| n == "checkpoints") => {
            parent.parent().map_or_else(|| PathBuf::from("."), PathBuf::from)
        }
        _ => checkpoint.to_path_buf(),
    }
}
