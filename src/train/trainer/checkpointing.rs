//! Saving and restoring a [`Trainer`]'s checkpoints: weights, optimizer state, configs and
//! trainer state, with the experts gathered from / sliced to the expert-parallel ranks (the
//! files are in the single-process format whatever the number of ranks). The folder layout
//! and the atomic write are [`crate::train::checkpoint`]'s.

use super::Trainer;
use crate::error::{Error, Result};
use crate::io::{
    checkpoint_name, load_named_weights, read_tensors, weight_tensors, write_checkpoint_dir, write_tensors, FileWriter,
};
use crate::nn::role::roles;
use crate::train::checkpoint::{CheckpointMeta, TrainerState, CHECKPOINT_FORMAT};
use crate::train::metrics::MetricsWindow;
use crate::train::task::Task;
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::Tensor;

impl<T: Task> Trainer<'_, T> {
    /// Writes checkpoint `root/step-NNNNNNNN` (weights, optimizer state, configs, trainer state
    /// with `window` and `elapsed_s`) atomically, keeping the newest `keep` checkpoints.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] while steps wait to be read ([`Trainer::read_stats`]);
    /// [`Error::Io`] / [`Error::Torch`] on write errors.
    pub fn save_checkpoint(&self, root: &Path, window: &MetricsWindow, elapsed_s: f64, keep: usize) -> Result<PathBuf> {
        if self.pending.len() != 0 {
            // The guard may have skipped one of them: only a read can tell.
            return Err(Error::Checkpoint(format!(
                "{} steps up to step {} have not been read back yet (Trainer::read_stats) and cannot be checkpointed",
                self.pending.len(),
                self.step
            )));
        }
        let state = TrainerState {
            format: CHECKPOINT_FORMAT,
            step: self.step,
            data_position: self.step * self.config.grad_accum as u64,
            seed: self.config.seed,
            elapsed_s,
            window: window.clone(),
        };
        let (group, roles) = (self.group(), roles(self.vs));
        let weights = group.gather_sharded(weight_tensors(self.vs)?, |n| roles.get(n).is_some_and(|r| r.sharded))?;
        let optimizer =
            group.gather_sharded(self.optimizer.state_tensors()?, |n| self.optimizer.is_sharded_state(n))?;
        let written = if group.is_main() {
            self.write_checkpoint(root, state, weights, optimizer, keep)
        } else {
            Ok(root.join(checkpoint_name(self.step)))
        };
        // Every rank waits for rank 0's write (a resume right after must find the files) and
        // learns whether it failed.
        let failed = group.agree_on_failure(written.as_ref().err().map(ToString::to_string))?;
        match (written, failed) {
            (Err(e), _) => Err(e),
            (Ok(_), Some(what)) => Err(Error::Checkpoint(format!("writing the checkpoint failed: {what}"))),
            (Ok(dir), None) => Ok(dir),
        }
    }

    fn write_checkpoint(
        &self,
        root: &Path,
        state: TrainerState,
        weights: Vec<(String, Tensor)>,
        optimizer: Vec<(String, Tensor)>,
        keep: usize,
    ) -> Result<PathBuf> {
        let json = |value: String| move |path: &Path| std::fs::write(path, value).map_err(|e| Error::io(path, e));
        let files: Vec<(&str, FileWriter)> = vec![
            ("model.safetensors", Box::new(|p: &Path| write_tensors(p, &weights))),
            ("optimizer.safetensors", Box::new(|p: &Path| write_tensors(p, &optimizer))),
            ("config.json", Box::new(json(pretty(&self.task.model().config_json()?)?))),
            ("train_config.json", Box::new(json(pretty(&self.config)?))),
            ("trainer_state.json", Box::new(json(pretty(&state)?))),
        ];
        write_checkpoint_dir(root, self.step, files, keep)
    }

    /// Restores weights, optimizer state and step from a checkpoint written by
    /// [`Trainer::save_checkpoint`]. Returns the saved metrics window and elapsed seconds.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] if the checkpoint's model config differs from the model's, or its
    /// tensors do not match the model or optimizer exactly (names, shapes, dtypes).
    pub fn restore(&mut self, meta: &CheckpointMeta) -> Result<(MetricsWindow, f64)> {
        if meta.model_config != self.task.model().config_json()? {
            return Err(Error::Checkpoint(format!(
                "{}/config.json describes another model than the one being trained",
                meta.dir.display()
            )));
        }
        let weights_path = meta.dir.join("model.safetensors");
        let (group, roles) = (self.group(), roles(self.vs));
        let weights = group.slice_sharded(read_tensors(&weights_path)?, |n| roles.get(n).is_some_and(|r| r.sharded))?;
        let optimizer = group.slice_sharded(read_tensors(&meta.dir.join("optimizer.safetensors"))?, |n| {
            self.optimizer.is_sharded_state(n)
        })?;
        load_named_weights(self.vs, &weights, &weights_path)?;
        self.optimizer.load_state(&optimizer)?;
        let optimizer_step = self.optimizer.step_count()?;
        if optimizer_step != meta.state.step {
            return Err(Error::Checkpoint(format!(
                "{}: optimizer step {optimizer_step} differs from trainer step {}",
                meta.dir.display(),
                meta.state.step
            )));
        }
        self.step = meta.state.step;
        self.pending.clear();
        let _ = self.halted.f_zero_()?;
        Ok((meta.state.window.clone(), meta.state.elapsed_s))
    }
}

fn pretty<S: Serialize>(value: &S) -> Result<String> {
    serde_json::to_string_pretty(value)
        .map(|s| s + "\n")
        .map_err(|source| Error::Json { context: "checkpoint".into(), source })
}
