//! One finished run's figures, kept in a small JSON file (the `reproduce` example commits them
//! under `docs/results/runs/`) so that an interrupted study continues where it stopped, the report
//! is regenerated from the files alone, and any record is retrained with
//! `train --config RECORD` (a record holds its run's whole [`RunConfig`]).

use crate::error::{Error, Result};
use crate::io::save_json;
use crate::model::ModelConfig;
use crate::train::{EvalRecord, RunConfig, TrainConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One validation point of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    /// Optimizer steps completed.
    pub step: u64,
    /// Wall-clock seconds since training started.
    pub elapsed_s: f64,
    /// Validation bits per byte.
    pub val_bpb: f64,
}

/// A finished run: what was trained, by which code, and its validation curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRecord {
    /// The stack's name in the report.
    pub name: String,
    /// Seed of the initialisation and the data order.
    pub seed: u64,
    /// Total parameters.
    pub params_total: usize,
    /// Parameters active per token.
    pub params_active: usize,
    /// The commit checked out when the run was trained (`git rev-parse --short=12 HEAD`, with
    /// `-dirty` when tracked files had uncommitted changes); `None` when it was not trained in a
    /// git checkout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The model.
    pub model: ModelConfig,
    /// The training settings.
    pub train: TrainConfig,
    /// Every evaluation, in order.
    pub evals: Vec<EvalPoint>,
}

impl RunRecord {
    /// The record of a run of `run` from its metrics (`evals`, in order), trained at `commit`
    /// (see [`current_commit`]).
    pub fn new(name: &str, run: &RunConfig, commit: Option<String>, evals: &[EvalRecord]) -> Self {
        let RunConfig { model, train } = run;
        let counts = model.param_counts();
        Self {
            name: name.to_string(),
            seed: train.seed,
            params_total: counts.total,
            params_active: counts.active_per_token,
            commit,
            model: model.clone(),
            train: train.clone(),
            evals: evals
                .iter()
                .map(|r| EvalPoint { step: r.step, elapsed_s: r.elapsed_s, val_bpb: r.val_bpb })
                .collect(),
        }
    }

    /// Where the record of `name` with `seed` lives under `dir`.
    pub fn path(dir: &Path, name: &str, seed: u64) -> PathBuf {
        dir.join(format!("{name}-seed{seed}.json"))
    }

    /// Reads a record, `None` when there is none yet.
    ///
    /// # Errors
    /// [`Error::Json`] naming a damaged file.
    pub fn read(dir: &Path, name: &str, seed: u64) -> Result<Option<Self>> {
        let path = Self::path(dir, name, seed);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, &path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// A record from its JSON text (`path` names it in errors).
    ///
    /// # Errors
    /// [`Error::Json`] naming `path` for malformed contents or unknown fields.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        serde_json::from_str(text).map_err(|source| Error::Json { context: path.display().to_string(), source })
    }

    /// The run this record is of: its model and training settings.
    pub fn run_config(&self) -> RunConfig {
        RunConfig { model: self.model.clone(), train: self.train.clone() }
    }

    /// Writes the record atomically.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        save_json(&Self::path(dir, &self.name, self.seed), self)
    }

    /// Whether this record is a finished run of exactly `run` (the corpus is compared by its
    /// content hash, not by where it lies on this machine). The code that trained it is not
    /// compared: see [`RunRecord::commit`].
    pub fn is_run_of(&self, run: &RunConfig) -> bool {
        let RunConfig { model, train } = run;
        let recorded = TrainConfig { data: train.data.clone(), ..self.train.effective(&self.model) };
        let same_train = recorded == train.effective(model);
        &self.model == model && same_train && self.evals.last().is_some_and(|e| e.step == train.steps)
    }

    /// The final validation bits per byte.
    pub fn final_bpb(&self) -> f64 {
        self.evals.last().map_or(f64::NAN, |e| e.val_bpb)
    }

    /// Wall time per optimizer step, evaluations included.
    pub fn step_time(&self) -> f64 {
        self.evals.last().map_or(f64::NAN, |e| e.elapsed_s / e.step.max(1) as f64)
    }

    /// The validation curve against steps.
    pub fn by_step(&self) -> Vec<(f64, f64)> {
        self.evals.iter().map(|e| (e.step as f64, e.val_bpb)).collect()
    }

    /// The validation curve against wall time.
    pub fn by_time(&self) -> Vec<(f64, f64)> {
        self.evals.iter().map(|e| (e.elapsed_s, e.val_bpb)).collect()
    }
}

/// The commit of the git checkout around the working folder (`git rev-parse --short=12 HEAD`),
/// with `-dirty` when tracked files have uncommitted changes; `None` outside a git checkout or
/// without git.
pub fn current_commit() -> Option<String> {
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git").args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "--short=12", "HEAD"])?;
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"])?.is_empty();
    Some(if dirty { format!("{head}-dirty") } else { head })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A committed record of the study reads back, and `train --config RECORD` trains exactly its
    /// model and training settings; a record with an unknown field is refused by name.
    #[test]
    fn a_record_is_a_run_configuration_with_its_results() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/results/runs");
        let record = RunRecord::read(&dir, "switch-e8", 1).unwrap().expect("a committed record");
        assert_eq!((record.seed, record.model.init_seed, record.train.seed), (1, 1, 1));
        assert!(record.commit.as_deref().is_some_and(|c| c.len() >= 12), "{:?}", record.commit);
        assert_eq!(record.evals.last().unwrap().step, record.train.steps);
        let run = RunConfig::from_file(&RunRecord::path(&dir, "switch-e8", 1)).unwrap();
        assert_eq!(run, record.run_config());
        assert_eq!(run.model.moe.as_ref().unwrap().num_experts, 8);
        assert!(record.is_run_of(&run));
        assert!(!record.is_run_of(&run.clone().with_seed(2)));
        let longer = RunConfig { train: TrainConfig { steps: run.train.steps + 1, ..run.train.clone() }, ..run };
        assert!(!record.is_run_of(&longer), "a record of 2000 steps is not a run of 2001");

        let tmp = tempfile::tempdir().unwrap();
        let mut value: serde_json::Value = serde_json::to_value(&record).unwrap();
        value["evalz"] = serde_json::json!([]);
        let path = tmp.path().join("damaged-seed0.json");
        std::fs::write(&path, value.to_string()).unwrap();
        let err = RunRecord::read(tmp.path(), "damaged", 0).unwrap_err().to_string();
        assert!(err.contains("damaged-seed0.json") && err.contains("evalz"), "{err}");
        // A record's model and train are read strictly.
        value["train"]["stepz"] = serde_json::json!(3);
        std::fs::write(&path, value.to_string()).unwrap();
        let err = RunConfig::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("damaged-seed0.json") && err.contains("stepz"), "{err}");
        assert_eq!(RunRecord::read(tmp.path(), "absent", 0).unwrap(), None);
    }
}
