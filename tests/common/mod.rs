//! Helpers shared by the integration tests.
#![allow(dead_code)]

use altup_moe::data::{Corpus, TokenDataset};
use altup_moe::io::named_variables;
use altup_moe::model::{Arch, ModelConfig};
use altup_moe::train::TrainConfig;
use tch::nn::VarStore;
use tch::Device;

/// The device the tests run on: `ALTUP_MOE_TEST_DEVICE` (`cpu`, the default, `cuda` or `cuda:N`),
/// through [`altup_moe::testing::device`].
///
/// # Panics
/// With the helper's message when the variable is malformed or names a CUDA device libtorch
/// does not have.
pub fn device() -> Device {
    altup_moe::testing::device().unwrap_or_else(|e| panic!("{e}"))
}

/// Standard-normal f32 values of shape `shape` on the test device, drawn from `rng`. Not from
/// libtorch's generator: it is global to the process, and tests running on other threads draw
/// from it and reseed it (the trainer does, every step), so data drawn there differs between runs.
pub fn seeded_normal(rng: &mut rand::rngs::StdRng, shape: &[i64]) -> tch::Tensor {
    use rand_distr::Distribution;
    let values: Vec<f32> = (0..shape.iter().product::<i64>()).map(|_| rand_distr::StandardNormal.sample(rng)).collect();
    tch::Tensor::from_slice(&values).view(shape).to_device(device())
}

/// Whether the tests run on the CPU (bitwise reproducibility holds there; libtorch's CUDA
/// attention backward is not deterministic).
pub fn on_cpu() -> bool {
    device() == Device::Cpu
}

/// A tiny config of `arch`: d = 16, 3 blocks, 2 heads, F = 32, 4 experts on every other block
/// (blocks 1, 3, … — pinned, whatever the preset's placement, so that MoE stacks mix dense and
/// MoE blocks), sequences ≤ 12.
pub fn tiny(arch: Arch) -> ModelConfig {
    let mut c = ModelConfig::preset(arch);
    c.moe_layers = altup_moe::model::MoeLayers::Every { every: 2, offset: 1 };
    c.d_model = 16;
    c.num_layers = 3;
    c.max_seq_len = 12;
    c.attention.num_heads = 2;
    c.ffn.d_ff = 32;
    if let Some(m) = &mut c.moe {
        m.d_ff = 32;
        m.num_experts = 4;
    }
    c
}

/// Copies every variable of `dst` that `src` also has; returns the names `src` lacks.
pub fn copy_shared(src: &VarStore, dst: &VarStore) -> Vec<String> {
    let src_vars = named_variables(src).unwrap();
    let mut unmatched = Vec::new();
    for (name, var) in named_variables(dst).unwrap() {
        match src_vars.get(&name) {
            Some(s) => tch::no_grad(|| var.shallow_clone().copy_(s)),
            None => unmatched.push(name),
        }
    }
    unmatched
}

/// `text` repeated `times`, written to a temporary file, loaded and split 90/10.
pub fn text_splits(text: &str, times: usize) -> (TokenDataset, TokenDataset) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("text.txt");
    std::fs::write(&path, text.repeat(times)).unwrap();
    Corpus::from_path(&path, &Default::default()).unwrap().split(0.1).unwrap()
}

/// A short training schedule for tests that check learning: 25 steps of 8 windows of 32 tokens
/// at lr 1e-2 (warmup 3), evaluated once at the end on 2 batches.
pub fn short_schedule() -> TrainConfig {
    TrainConfig {
        steps: 25,
        batch_size: 8,
        seq_len: 32,
        lr: 1e-2,
        warmup_steps: 3,
        eval_every: 25,
        eval_batches: 2,
        ..Default::default()
    }
}

/// The Python with PyTorch the tests compare against ([`altup_moe::testing::python`]).
///
/// # Panics
/// When there is none (`make venv` makes it).
pub fn python() -> std::path::PathBuf {
    let python = altup_moe::testing::python();
    assert!(
        python.components().count() == 1 || python.exists(),
        "no Python at {} (run `make venv`, or set {})",
        python.display(),
        altup_moe::testing::PYTHON_VAR
    );
    python
}

/// A file of the project, e.g. `tests/python/load_checkpoint.py` ([`altup_moe::testing::source_dir`]).
pub fn source_file(relative: &str) -> std::path::PathBuf {
    altup_moe::testing::source_dir().join(relative)
}
