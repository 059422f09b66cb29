//! Checkpoints, written so that a crash never leaves a half-written one.
//!
//! Files are written atomically (a temporary file in the same folder, fsync, rename, fsync the
//! folder). A training checkpoint is a *folder* `checkpoints/step-NNNNNNNN/` holding
//! `config.json`, `train_config.json`, `model.safetensors`, `optimizer.safetensors` and
//! `trainer_state.json`; it is assembled in a hidden temporary folder and renamed into place
//! only once every file is on disk, so a `step-*` folder is always complete. The newest `keep`
//! checkpoints are kept.

use crate::error::{Error, Result};
use crate::host;
use crate::moe::ExpertParallel;
use crate::train::metrics::MetricsWindow;
use crate::train::trainer::TrainConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use tch::{nn::VarStore, Tensor};

/// Format version written to `trainer_state.json`.
pub const CHECKPOINT_FORMAT: u32 = 1;

/// Everything besides tensors that resuming needs (`trainer_state.json`).
///
/// The data position and random state are functions of `(seed, step)`: the batch of step `s`
/// (micro-batch `m`) is drawn from a generator seeded by `(seed, s, m)`, and libtorch's generator
/// (router jitter) is reseeded from `(seed, s)` at every step, so `step` restores both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// [`CHECKPOINT_FORMAT`].
    pub format: u32,
    /// Optimizer steps completed.
    pub step: u64,
    /// Training batches consumed (`step · grad_accum`).
    pub data_position: u64,
    /// Seed of the data order and of the per-step generators.
    pub seed: u64,
    /// Wall-clock seconds of training so far.
    pub elapsed_s: f64,
    /// Running means since the last evaluation (so resumed metrics equal uninterrupted ones).
    pub window: MetricsWindow,
}

/// A checkpoint folder and its JSON parts.
#[derive(Debug, Clone)]
pub struct CheckpointMeta {
    /// The `step-*` folder.
    pub dir: PathBuf,
    /// `config.json` (a [`crate::ModelConfig`], or a [`crate::model::Seq2SeqConfig`] for an
    /// encoder-decoder; parse it with [`CheckpointMeta::model_config`]).
    pub model_config: serde_json::Value,
    /// `train_config.json`.
    pub train_config: TrainConfig,
    /// `trainer_state.json`.
    pub state: TrainerState,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::Checkpoint(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|source| Error::Json { context: path.display().to_string(), source })
}

impl CheckpointMeta {
    /// Reads the JSON parts of a checkpoint folder (a `step-*` folder, or a run folder /
    /// `checkpoints` folder, in which case the newest checkpoint is used).
    ///
    /// # Errors
    /// [`Error::Checkpoint`] when no checkpoint is found or a file is missing; [`Error::Json`] /
    /// [`Error::Config`] for malformed or invalid contents.
    pub fn read(path: &Path) -> Result<Self> {
        let dir = find_checkpoint(path)?;
        let model_config: serde_json::Value = read_json(&dir.join("config.json"))?;
        let train_config: TrainConfig = read_json(&dir.join("train_config.json"))?;
        train_config.validate()?;
        let state: TrainerState = read_json(&dir.join("trainer_state.json"))?;
        if state.format != CHECKPOINT_FORMAT {
            return Err(Error::Checkpoint(format!(
                "{} has format {} but this version reads format {CHECKPOINT_FORMAT}",
                dir.display(),
                state.format
            )));
        }
        for file in ["model.safetensors", "optimizer.safetensors"] {
            if !dir.join(file).is_file() {
                return Err(Error::Checkpoint(format!("{} is missing {file}", dir.display())));
            }
        }
        Ok(Self { dir, model_config, train_config, state })
    }
}

impl CheckpointMeta {
    /// The checkpoint's model config as `C` (e.g. [`crate::ModelConfig`]).
    ///
    /// # Errors
    /// [`Error::Json`] if `config.json` does not hold a `C`.
    pub fn model_config<C: serde::de::DeserializeOwned>(&self) -> Result<C> {
        serde_json::from_value(self.model_config.clone())
            .map_err(|source| Error::Json { context: self.dir.join("config.json").display().to_string(), source })
    }
}

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
/// For crash tests, the environment variable `ALTUP_MOE_TEST_CHECKPOINT_PAUSE_MS` makes the
/// writer sleep that long after the first file, while the checkpoint is half-written.
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
    let pause = std::env::var("ALTUP_MOE_TEST_CHECKPOINT_PAUSE_MS").ok().and_then(|v| v.parse::<u64>().ok());
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

/// Writes named tensors to a safetensors file (no atomicity of its own: used inside
/// [`write_atomic`] or [`write_checkpoint_dir`]).
///
/// # Errors
/// [`Error::Torch`] on write errors.
pub fn write_tensors(path: &Path, named: &[(String, Tensor)]) -> Result<()> {
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Ok(Tensor::write_safetensors(&refs, path)?)
}

/// Reads a safetensors file into a name → tensor map.
///
/// # Errors
/// [`Error::Checkpoint`] naming the file when it is missing, truncated or not safetensors.
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    if !path.is_file() {
        return Err(Error::Checkpoint(format!("{} does not exist", path.display())));
    }
    Ok(Tensor::read_safetensors(path)
        .map_err(|e| Error::Checkpoint(format!("cannot read {}: {}", path.display(), Error::Torch(e))))?
        .into_iter()
        .collect())
}

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

/// The variables of a `VarStore`, sorted by name.
///
/// # Errors
/// [`Error::Checkpoint`] if a name was silently de-duplicated by the `VarStore` (contains `__`),
/// which means two modules registered the same parameter name.
pub fn named_variables(vs: &VarStore) -> Result<BTreeMap<String, Tensor>> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    if let Some(name) = vars.keys().find(|n| n.contains("__")) {
        return Err(Error::Checkpoint(format!("duplicate parameter name (renamed to '{name}') in the model")));
    }
    Ok(vars)
}

/// Saves every variable of `vs` to a safetensors file, atomically.
///
/// # Errors
/// [`Error::Checkpoint`] for duplicate names, [`Error::Io`] / [`Error::Torch`] on write errors.
pub fn save_weights(vs: &VarStore, path: &Path) -> Result<()> {
    save_weights_gathered(vs, None, path)
}

/// [`save_weights`] for a model that may be expert-parallel: with a group, every rank must call
/// it; each rank's experts are gathered into the whole model (the single-process format) and
/// rank 0 writes the file.
///
/// # Errors
/// As [`save_weights`]; transport errors.
pub fn save_weights_gathered(vs: &VarStore, parallel: Option<&ExpertParallel>, path: &Path) -> Result<()> {
    let mut named = weight_tensors(vs)?;
    if let Some(p) = parallel {
        named = p.gather_sharded(named)?;
        if p.rank() != 0 {
            return Ok(());
        }
    }
    write_atomic(path, |tmp| write_tensors(tmp, &named))
}

/// Every variable of `vs` by name, on the CPU (what `model.safetensors` holds).
///
/// # Errors
/// [`Error::Checkpoint`] for duplicate names.
pub fn weight_tensors(vs: &VarStore) -> Result<Vec<(String, Tensor)>> {
    named_variables(vs)?.into_iter().map(|(n, t)| Ok((n, host::to_cpu(&t)?))).collect()
}

/// Loads a safetensors file into `vs`, after checking that it holds exactly the model's
/// variable names with the same shapes and dtypes.
///
/// # Errors
/// [`Error::Checkpoint`] listing missing and unexpected names, or the first shape/dtype mismatch;
/// [`Error::Torch`] if the file cannot be read as safetensors.
pub fn load_weights(vs: &VarStore, path: &Path) -> Result<()> {
    load_named_weights(vs, &read_tensors(path)?, path)
}

/// Loads named tensors (read from `origin`, named in errors) into `vs`, with the checks of
/// Up to five names in `["a", "b"]` form, then how many more there are.
fn first_names(names: &[&String]) -> String {
    const SHOWN: usize = 5;
    let head = format!("{:?}", &names[..names.len().min(SHOWN)]);
    match names.len().saturating_sub(SHOWN) {
        0 => head,
        more => format!("{head} and {more} more"),
    }
}

/// [`load_weights`].
///
/// # Errors
/// As [`load_weights`].
pub fn load_named_weights(vs: &VarStore, file: &BTreeMap<String, Tensor>, origin: &Path) -> Result<()> {
    let path = origin;
    let vars = named_variables(vs)?;
    let missing: Vec<&String> = vars.keys().filter(|k| !file.contains_key(*k)).collect();
    let unexpected: Vec<&String> = file.keys().filter(|k| !vars.contains_key(*k)).collect();
    if !missing.is_empty() || !unexpected.is_empty() {
        // Optimizer state files hold `exp_avg.*` moments: a common wrong pick.
        let hint = if unexpected.len() == file.len() && file.keys().any(|k| k.starts_with("exp_avg")) {
            " (this looks like optimizer state, not model weights: use model.safetensors)"
        } else {
            ""
        };
        return Err(Error::Checkpoint(format!(
            "{} does not match the model: missing {}, unexpected {}{hint}",
            path.display(),
            first_names(&missing),
            first_names(&unexpected)
        )));
    }
    for (name, var) in &vars {
        let src = &file[name];
        if src.size() != var.size() || src.kind() != var.kind() {
            return Err(Error::Checkpoint(format!(
                "{}: '{name}' has shape {:?} and dtype {:?} in the file but {:?} and {:?} in the model",
                path.display(),
                src.size(),
                src.kind(),
                var.size(),
                var.kind()
            )));
        }
    }
    tch::no_grad(|| -> Result<()> {
        for (name, var) in &vars {
            let mut var = var.shallow_clone();
            var.f_copy_(&file[name])?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn save_load_is_bitwise_and_mismatches_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let vs = VarStore::new(Device::Cpu);
        let a = (vs.root() / "a").f_randn_standard("weight", &[3, 2]).unwrap();
        save_weights(&vs, &path).unwrap();
        let vs2 = VarStore::new(Device::Cpu);
        let b = (vs2.root() / "a").f_zeros("weight", &[3, 2]).unwrap();
        load_weights(&vs2, &path).unwrap();
        assert!(a.equal(&b));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "temporary file left behind");

        let vs3 = VarStore::new(Device::Cpu);
        let _ = (vs3.root() / "a").f_zeros("weight", &[2, 3]).unwrap();
        let err = load_weights(&vs3, &path).unwrap_err().to_string();
        assert!(err.contains("'a.weight' has shape [3, 2]"), "{err}");
        let vs4 = VarStore::new(Device::Cpu);
        let _ = (vs4.root() / "b").f_zeros("weight", &[3, 2]).unwrap();
        let err = load_weights(&vs4, &path).unwrap_err().to_string();
        assert!(err.contains("missing [\"b.weight\"], unexpected [\"a.weight\"]"), "{err}");
    }

    #[test]
    fn long_name_lists_are_cut_and_optimizer_files_are_recognised() {
        let vs = VarStore::new(Device::Cpu);
        for i in 0..8 {
            let _ = (vs.root() / format!("p{i}")).f_zeros("weight", &[1]).unwrap();
        }
        let file: BTreeMap<String, Tensor> =
            (0..8).map(|i| (format!("exp_avg.p{i}.weight"), Tensor::zeros([1], (Kind::Float, Device::Cpu)))).collect();
        let err = load_named_weights(&vs, &file, Path::new("optimizer.safetensors")).unwrap_err().to_string();
        assert!(
            err.contains(
                "missing [\"p0.weight\", \"p1.weight\", \"p2.weight\", \"p3.weight\", \"p4.weight\"] and 3 more"
            ),
            "{err}"
        );
        assert!(err.ends_with("(this looks like optimizer state, not model weights: use model.safetensors)"), "{err}");
    }

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
