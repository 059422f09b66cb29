//! Reads of tensor values back to the host stall a GPU, and make a step impossible to capture as
//! a CUDA graph. A training step of a dense, AltUp or AltUp + MoE model on the grouped expert
//! kernel (dropless) reads nothing: its statistics and the non-finite guard stay on the device
//! until [`Trainer::read_stats`] reads every pending step in one copy. Paths whose shapes depend
//! on the data read once per MoE layer (the per-expert loop, a capacity). Every read in `src/`
//! goes through `altup_moe::host`, which counts them.

mod common;

use altup_moe::host::host_reads;
use altup_moe::model::{Arch, LanguageModel, ModelConfig};
use altup_moe::moe::ExpertBackend;
use altup_moe::train::{TrainConfig, Trainer};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;

/// Host reads of each of 3 `advance` calls after a warm-up step, and of the `read_stats` that
/// follows them (which must return the 3 steps).
fn reads(config: &ModelConfig) -> (Vec<u64>, u64) {
    let (train, val) = common::text_splits("To be, or not to be, that is the question. ", 200);
    let vs = VarStore::new(common::device());
    let model = LanguageModel::new(&vs.root(), config).unwrap();
    let train_config =
        TrainConfig { steps: 10, batch_size: 4, seq_len: 32, warmup_steps: 1, eval_batches: 1, ..Default::default() };
    let mut trainer = Trainer::new(&vs, &model, &train, &val, train_config).unwrap();
    trainer.step().unwrap(); // warm-up (the kernel choice, if any, is made here)
    let per_step = (0..3)
        .map(|_| {
            let before = host_reads();
            trainer.advance().unwrap();
            host_reads() - before
        })
        .collect();
    let before = host_reads();
    let stats = trainer.read_stats().unwrap();
    let read = host_reads() - before;
    assert_eq!(stats.iter().map(|s| s.step).collect::<Vec<_>>(), vec![2, 3, 4]);
    assert!(stats.iter().all(|s| s.loss.is_finite()));
    let moe_layers = (0..config.num_layers).filter(|&l| config.is_moe_layer(l)).count();
    assert!(stats.iter().all(|s| s.moe_layers.len() == moe_layers));
    (per_step, read)
}

fn with_backend(arch: Arch, backend: ExpertBackend) -> ModelConfig {
    let mut config = ModelConfig::preset(arch);
    if let Some(m) = &mut config.moe {
        m.backend = backend;
    }
    config
}

fn with_capacity(arch: Arch, capacity_factor: f64) -> ModelConfig {
    let mut config = ModelConfig::preset(arch);
    if let Some(m) = &mut config.moe {
        m.capacity_factor = Some(capacity_factor);
    }
    config
}

#[test]
fn steps_on_static_shapes_read_nothing_until_the_statistics_are_read_once() {
    for (name, config) in [
        ("dense", ModelConfig::preset(Arch::Dense)),
        ("altup", ModelConfig::preset(Arch::AltUp)),
        ("altup-moe, grouped kernel", with_backend(Arch::AltUpMoe, ExpertBackend::GroupedMm)),
    ] {
        let (per_step, read) = reads(&config);
        eprintln!("{name}: {per_step:?} host reads per step, {read} for the statistics of 3 steps");
        assert_eq!(per_step, vec![0, 0, 0], "{name}");
        assert_eq!(read, 1, "{name}");
    }
}

#[test]
fn data_dependent_shapes_read_once_per_moe_layer() {
    for (name, config) in [
        ("altup-moe, per-expert loop", with_backend(Arch::AltUpMoe, ExpertBackend::Loop)),
        ("switch, capacity 1.25", with_capacity(Arch::Switch, 1.25)),
    ] {
        let moe_layers = (0..config.num_layers).filter(|&l| config.is_moe_layer(l)).count() as u64;
        assert!(moe_layers > 0 && config.moe.as_ref().is_some());
        let (per_step, read) = reads(&config);
        eprintln!("{name}: {per_step:?} host reads per step ({moe_layers} MoE layers)");
        assert!(per_step.iter().all(|&r| r == moe_layers), "{name}: {per_step:?}");
        assert_eq!(read, 1, "{name}");
    }
}

#[test]
fn evaluation_reads_and_is_counted() {
    let config = ModelConfig::preset(Arch::Dense);
    let (train, val) = common::text_splits("To be, or not to be, that is the question. ", 200);
    let vs = VarStore::new(common::device());
    let model = LanguageModel::new(&vs.root(), &config).unwrap();
    let train_config =
        TrainConfig { steps: 10, batch_size: 4, seq_len: 32, warmup_steps: 1, eval_batches: 1, ..Default::default() };
    let trainer = Trainer::new(&vs, &model, &train, &val, train_config).unwrap();
    let before = host_reads();
    trainer.evaluate().unwrap();
    assert!(host_reads() > before);
}

/// The calls that copy tensor values to the host, outside `src/host.rs`, in the library's code
/// (unit tests and comments excluded).
fn direct_reads(root: &Path) -> Vec<String> {
    const READS: [&str; 8] = [
        "double_value(",
        "int64_value(",
        ">::try_from(",
        "f64::try_from(",
        "f32::try_from(",
        "to_device(Device::Cpu)",
        "to_device(tch::Device::Cpu)",
        "copy_data",
    ];
    let mut found = Vec::new();
    let mut files = vec![root.to_path_buf()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") || path.ends_with("host.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (i, line) in code.lines().enumerate() {
            let line = line.trim_start();
            if line.starts_with("//") {
                continue;
            }
            if let Some(call) = READS.iter().find(|r| line.contains(*r)) {
                found.push(format!("{}:{}: {call}", path.display(), i + 1));
            }
        }
    }
    found.sort();
    found
}

#[test]
fn every_host_read_goes_through_the_counting_helper() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = direct_reads(&src);
    assert!(found.is_empty(), "direct host reads outside src/host.rs (use altup_moe::host):\n{}", found.join("\n"));
    // The scan itself finds a read where there is one.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x.rs"), "fn f(t: &Tensor) -> f64 { t.double_value(&[]) }\n").unwrap();
    assert_eq!(direct_reads(dir.path()).len(), 1);
}
