//! A training run's folder: where a run writes, and whether it starts fresh, replaces an
//! earlier run or continues one — the policy every training program needs, in one place.
//!
//! A run folder holds `config.json` (the model), `train_config.json`, `metrics.jsonl`,
//! `checkpoints/step-*` and, after the last step, `model.safetensors` (see [`crate::train`]).

use crate::data::{RunTokenizer, TextTokenizer, TokenizerSpec};
use crate::error::{Error, Result};
use crate::fs::save_json;
use crate::io::{find_checkpoint, run_folder_of, save_weights_gathered};
use crate::parallel::ProcessGroup;
use crate::train::checkpoint::CheckpointMeta;
use crate::train::config::TrainConfig;
use crate::train::run::RunOptions;
use crate::train::run_settings::{GivenSettings, ResolvedSettings, RunSettings};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;

/// How a run starts in its folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStart {
    /// A new run; refused when the folder already holds a checkpoint (so that no run is
    /// replaced by accident).
    Fresh,
    /// A new run that replaces whatever the folder holds: its checkpoints are deleted when
    /// training starts.
    Overwrite,
    /// Continue from a checkpoint: a `step-*` folder, or a run folder (its newest checkpoint).
    Resume(PathBuf),
}

/// The folder of one training run and how it starts ([`RunStart`]).
///
/// ```no_run
/// use altup_moe::train::{RunFolder, RunStart};
/// // A fresh run in runs/latest; an error if runs/latest already holds one.
/// let fresh = RunFolder::open(None, RunStart::Fresh)?;
/// // Continue the newest checkpoint of runs/latest, writing there again.
/// let resumed = RunFolder::open(None, RunStart::Resume("runs/latest".into()))?;
/// assert!(resumed.checkpoint().is_some());
/// # let _ = fresh;
/// # Ok::<(), altup_moe::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct RunFolder {
    dir: PathBuf,
    start: RunStart,
    checkpoint: Option<CheckpointMeta>,
}

impl RunFolder {
    /// Where runs go when no folder is given.
    pub const DEFAULT_DIR: &'static str = "runs/latest";

    /// Resolves the run folder: `out` if given, else the resumed checkpoint's run folder
    /// (`RUN/checkpoints/step-N` → `RUN`), else [`RunFolder::DEFAULT_DIR`]. With
    /// [`RunStart::Resume`] the checkpoint's JSON parts are read (not its tensors).
    ///
    /// # Errors
    /// [`Error::Checkpoint`] when a fresh run's folder already holds a checkpoint (naming it and
    /// the three ways on), or when the checkpoint to resume is missing or incomplete;
    /// [`Error::Input`] when the folder is an existing file; [`Error::Json`] / [`Error::Config`]
    /// for the checkpoint's malformed parts.
    pub fn open(out: Option<&Path>, start: RunStart) -> Result<Self> {
        let checkpoint = match &start {
            RunStart::Resume(path) => Some(CheckpointMeta::read(path)?),
            _ => None,
        };
        let dir = match (out, &checkpoint) {
            (Some(out), _) => out.to_path_buf(),
            (None, Some(meta)) => run_folder_of(&meta.dir),
            (None, None) => PathBuf::from(Self::DEFAULT_DIR),
        };
        if dir.exists() && !dir.is_dir() {
            return Err(Error::Input(format!(
                "the run folder {} is a file, not a folder: choose another output folder",
                dir.display()
            )));
        }
        if start == RunStart::Fresh {
            if let Ok(existing) = find_checkpoint(&dir) {
                return Err(Error::Checkpoint(format!(
                    "{} already holds a training run (checkpoint {}): continue it (resume from {0}), replace it \
                     (overwrite), or choose another folder",
                    dir.display(),
                    existing.display()
                )));
            }
        }
        Ok(Self { dir, start, checkpoint })
    }

    /// The run folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How the run starts.
    pub fn start(&self) -> &RunStart {
        &self.start
    }

    /// The checkpoint being resumed ([`RunStart::Resume`] only).
    pub fn checkpoint(&self) -> Option<&CheckpointMeta> {
        self.checkpoint.as_ref()
    }

    /// The resumed run's training config, extended to `steps` when given, with the data
    /// description `data` and content hash `data_hash` of the corpus given now (it may have
    /// moved). `None` for a new run.
    ///
    /// # Errors
    /// [`Error::Input`] when `steps` is below the checkpoint's step (a run cannot be shortened);
    /// [`Error::Data`] naming both hashes when the corpus differs from the one the run was trained
    /// on, unless `allow_data_change` (a run recorded without a hash is not checked).
    pub fn resumed_train_config(
        &self,
        steps: Option<u64>,
        data: &str,
        data_hash: &str,
        allow_data_change: bool,
    ) -> Result<Option<TrainConfig>> {
        let Some(meta) = &self.checkpoint else { return Ok(None) };
        if let Some(steps) = steps.filter(|&s| s < meta.state.step) {
            return Err(Error::Input(format!(
                "steps ({steps}) is below the step of the checkpoint {} ({}); a run cannot be shortened",
                meta.dir.display(),
                meta.state.step
            )));
        }
        let recorded = &meta.train_config.data_hash;
        if !recorded.is_empty() && recorded != data_hash && !allow_data_change {
            return Err(Error::Data(format!(
                "the corpus changed: {} was trained on data with hash {recorded} but the data given now ({data}) has \
                 hash {data_hash}; pass the same data, or allow the change (--allow-data-change)",
                meta.dir.display()
            )));
        }
        let mut config = meta.train_config.clone();
        config.steps = steps.unwrap_or(config.steps);
        config.data = data.to_string();
        config.data_hash = data_hash.to_string();
        Ok(Some(config))
    }

    /// The run's settings ([`RunSettings`]): a resumed run's `run.json` with `given` on top, each
    /// change named; a new run's `given` on the defaults. A resumed run written before settings
    /// were recorded goes on with `given` on the defaults, with a warning that says so.
    ///
    /// # Errors
    /// As [`RunSettings::read`] and [`RunSettings::resolve`].
    pub fn settings(&self, given: &GivenSettings) -> Result<ResolvedSettings> {
        let Some(meta) = &self.checkpoint else { return RunSettings::resolve(None, given) };
        let run_dir = run_folder_of(&meta.dir);
        match RunSettings::read(&run_dir)? {
            Some(recorded) => RunSettings::resolve(Some(&recorded), given),
            None => {
                let mut resolved = RunSettings::resolve(None, given)?;
                resolved.warnings.push(format!(
                    "{} has no {}: its data, checkpoint interval and thread count were not recorded, so the given \
                     ones (or the defaults) are used",
                    run_dir.display(),
                    RunSettings::FILE
                ));
                Ok(resolved)
            }
        }
    }

    /// The options of [`crate::train::run`] for this folder: checkpoints every
    /// `settings.save_every` steps (0: only after the last step), the newest
    /// `settings.keep_checkpoints` kept, an optional stop after `stop_after` steps; an earlier
    /// run's checkpoints are deleted only with [`RunStart::Overwrite`].
    pub fn options(&self, settings: &RunSettings, stop_after: Option<u64>) -> RunOptions {
        RunOptions {
            out_dir: self.dir.clone(),
            save_every: Some(settings.save_every).filter(|&n| n > 0),
            keep_checkpoints: settings.keep_checkpoints.max(1) as usize,
            overwrite: self.start == RunStart::Overwrite,
            stop_after,
        }
    }

    /// Writes `config.json` (the model config, `C` = [`crate::model::ModelConfig`] or
    /// [`crate::model::Seq2SeqConfig`]) and `train_config.json`, creating the folder. Only the
    /// group's main rank writes (the others return at once).
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn write_configs<C: serde::Serialize>(
        &self,
        model: &C,
        train: &TrainConfig,
        group: &ProcessGroup,
    ) -> Result<()> {
        if !group.is_main() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        save_json(&self.dir.join("config.json"), model)?;
        save_json(&self.dir.join("train_config.json"), train)
    }

    /// Writes the final weights to `model.safetensors` in the single-process format: every rank
    /// of the group must call it (each rank's experts are gathered; rank 0 writes).
    ///
    /// # Errors
    /// As [`save_weights_gathered`].
    pub fn write_weights(&self, vs: &VarStore, group: &ProcessGroup) -> Result<PathBuf> {
        let path = self.dir.join("model.safetensors");
        save_weights_gathered(vs, group, &path)?;
        Ok(path)
    }

    /// The run's tokenizer: a resumed run's own (the `tokenizer.json` of its folder, or bytes
    /// when its training config says bytes), else the one `spec` makes for a new run.
    ///
    /// # Errors
    /// [`Error::Data`] when a resumed subword run's `tokenizer.json` is missing or unreadable.
    pub fn run_tokenizer(&self, spec: &TokenizerSpec) -> Result<RunTokenizer> {
        let Some(meta) = &self.checkpoint else { return Ok(RunTokenizer::FromSpec(spec.clone())) };
        if meta.train_config.tokenizer == TokenizerSpec::Bytes {
            return Ok(RunTokenizer::Existing(TextTokenizer::Bytes));
        }
        let path = run_folder_of(&meta.dir).join(TextTokenizer::FILE);
        if !path.is_file() {
            return Err(Error::Data(format!(
                "the run {} was trained with tokenizer {} but {} is missing",
                meta.dir.display(),
                meta.train_config.tokenizer,
                path.display()
            )));
        }
        Ok(RunTokenizer::Existing(TextTokenizer::from_file(&path)?))
    }

    /// Writes a subword tokenizer as `tokenizer.json` in the folder (nothing for bytes); the
    /// group's main rank only.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn write_tokenizer(&self, tokenizer: &TextTokenizer, group: &ProcessGroup) -> Result<()> {
        if !group.is_main() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        tokenizer.save_to_folder(&self.dir)
    }

    /// The newest complete checkpoint in the folder, if any (to name after a failure).
    pub fn last_checkpoint(&self) -> Option<PathBuf> {
        find_checkpoint(&self.dir).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_folder_of_a_checkpoint() {
        assert_eq!(run_folder_of(Path::new("runs/a/checkpoints/step-00000010")), PathBuf::from("runs/a"));
        assert_eq!(run_folder_of(Path::new("checkpoints/step-1")), PathBuf::from(""));
        assert_eq!(run_folder_of(Path::new("somewhere/step-1")), PathBuf::from("somewhere/step-1"));
    }

    #[test]
    fn fresh_run_refuses_a_folder_with_a_run_and_overwrite_or_resume_do_not() {
        let tmp = std::env::temp_dir().join(format!("altup-moe-run-folder-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        assert_eq!(RunFolder::open(Some(&tmp), RunStart::Fresh).unwrap().dir(), tmp.as_path());
        let step = tmp.join("checkpoints/step-00000003");
        std::fs::create_dir_all(&step).unwrap();
        std::fs::write(step.join("trainer_state.json"), "{}").unwrap();
        let err = RunFolder::open(Some(&tmp), RunStart::Fresh).unwrap_err().to_string();
        assert!(err.contains("already holds a training run (checkpoint") && err.contains("step-00000003"), "{err}");
        let over = RunFolder::open(Some(&tmp), RunStart::Overwrite).unwrap();
        let never = RunSettings { save_every: 0, ..RunSettings::default() };
        assert!(over.options(&never, None).overwrite);
        assert_eq!(over.options(&never, None).save_every, None);
        let other = RunFolder::open(Some(&tmp.join("other")), RunStart::Fresh).unwrap();
        assert!(!other.options(&RunSettings::default(), None).overwrite);
        assert_eq!(other.options(&RunSettings::default(), None).save_every, Some(500));
        // A file is not a run folder.
        let file = tmp.join("notes.txt");
        std::fs::write(&file, "x").unwrap();
        let err = RunFolder::open(Some(&file), RunStart::Fresh).unwrap_err().to_string();
        assert!(err.contains("notes.txt is a file, not a folder"), "{err}");
        // An incomplete checkpoint (no config.json) cannot be resumed: the error names the file.
        let err = RunFolder::open(None, RunStart::Resume(tmp.clone())).unwrap_err().to_string();
        assert!(err.contains("step-00000003/config.json"), "{err}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
