//! Reads of tensor values back to the host stall a GPU. A training step of the default
//! AltUp + MoE model reads once per MoE layer (the expert group sizes) and once per optimizer
//! step (losses, gradient norm, statistics and the non-finite guard together) — and every read
//! in `src/` goes through `altup_moe::host`, which counts them.

mod common;

use altup_moe::host::host_reads;
use altup_moe::model::{Arch, LanguageModel, ModelConfig};
use altup_moe::train::{TrainConfig, Trainer};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;

#[test]
fn a_training_step_reads_once_per_moe_layer_and_once_more() {
    let config = ModelConfig::preset(Arch::AltUpMoe);
    let moe_layers = (0..config.num_layers).filter(|&l| config.is_moe_layer(l)).count() as u64;
    assert!(moe_layers > 0);
    let (train, val) = common::text_splits("To be, or not to be, that is the question. ", 200);
    let vs = VarStore::new(common::device());
    let model = LanguageModel::new(&vs.root(), &config).unwrap();
    let train_config =
        TrainConfig { steps: 10, batch_size: 4, seq_len: 32, warmup_steps: 1, eval_batches: 1, ..Default::default() };
    let mut trainer = Trainer::new(&vs, &model, &train, &val, train_config).unwrap();
    trainer.step().unwrap(); // warm-up
    for _ in 0..3 {
        let before = host_reads();
        let stats = trainer.step().unwrap();
        let reads = host_reads() - before;
        eprintln!("step {}: {reads} host reads ({moe_layers} MoE layers)", stats.step);
        assert!(stats.loss.is_finite() && stats.moe_layers.len() as u64 == moe_layers);
        assert!(
            reads <= moe_layers + 1,
            "step {} read {reads} times, at most {} allowed ({moe_layers} MoE layers + 1)",
            stats.step,
            moe_layers + 1
        );
    }
    // Evaluation reads (it is not on the step's path), and is counted too.
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
