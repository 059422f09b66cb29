//! Training steps captured in a CUDA graph (`TrainConfig::cuda_graph`): refused, with the reason,
//! wherever a step cannot be captured; on a CUDA device (`ALTUP_MOE_TEST_DEVICE=cuda`), N steps
//! with the graph (3 warm-up steps, the capture, replays) equal N eager steps — bitwise, under
//! deterministic kernels — for dense, AltUp and dropless MoE on the grouped kernel.

mod common;

use altup_moe::model::{Arch, LanguageModel, ModelConfig};
use altup_moe::moe::ExpertBackend;
use altup_moe::train::{StepStats, TrainConfig, Trainer};
use common::{device, on_cpu, tiny};
use tch::nn::VarStore;
use tch::Device;

fn train_config(cuda_graph: bool) -> TrainConfig {
    TrainConfig {
        steps: 20,
        batch_size: 4,
        grad_accum: 2,
        seq_len: 12,
        warmup_steps: 2,
        eval_batches: 1,
        cuda_graph,
        ..Default::default()
    }
}

/// The error of building a trainer with `cuda_graph` for `config` on `device`.
fn refusal(config: &ModelConfig, device: Device) -> String {
    let (train, val) = common::text_splits("To be, or not to be, that is the question. ", 50);
    let vs = VarStore::new(device);
    let model = LanguageModel::new(&vs.root(), config).unwrap();
    Trainer::new(&vs, &model, &train, &val, train_config(true)).unwrap_err().to_string()
}

#[test]
fn steps_that_cannot_be_captured_are_refused_with_the_reason() {
    let err = refusal(&tiny(Arch::Dense), Device::Cpu);
    assert!(err.contains("cuda_graph needs a CUDA device"), "{err}");
    if on_cpu() {
        eprintln!("no CUDA device (ALTUP_MOE_TEST_DEVICE=cpu): only the CPU refusal is checked");
        return;
    }
    let mut capacity = tiny(Arch::Switch);
    capacity.moe.as_mut().unwrap().capacity_factor = Some(1.25);
    let err = refusal(&capacity, device());
    assert!(err.contains("training capacity factor (1.25)"), "{err}");
    let mut looped = tiny(Arch::Switch);
    looped.moe.as_mut().unwrap().backend = ExpertBackend::Loop;
    let err = refusal(&looped, device());
    assert!(err.contains("per-expert loop"), "{err}");
}

/// Statistics and weights after `steps` steps, eager or captured.
fn run(config: &ModelConfig, cuda_graph: bool, steps: usize) -> (Vec<StepStats>, Vec<(String, tch::Tensor)>) {
    let (train, val) = common::text_splits("To be, or not to be, that is the question. ", 50);
    let vs = VarStore::new(device());
    let model = LanguageModel::new(&vs.root(), config).unwrap();
    let mut trainer = Trainer::new(&vs, &model, &train, &val, train_config(cuda_graph)).unwrap();
    for _ in 0..steps {
        trainer.advance().unwrap();
    }
    let stats = trainer.read_stats().unwrap();
    let mut weights: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    (stats, weights)
}

#[test]
fn replayed_steps_equal_eager_steps() {
    if on_cpu() {
        eprintln!("no CUDA device (ALTUP_MOE_TEST_DEVICE=cpu): graph replay is checked on CUDA only");
        return;
    }
    altup_moe::runtime::set_deterministic(true);
    let mut grouped = tiny(Arch::AltUpMoe);
    grouped.moe.as_mut().unwrap().backend = ExpertBackend::GroupedMm;
    for (name, config) in [("dense", tiny(Arch::Dense)), ("altup", tiny(Arch::AltUp)), ("altup-moe", grouped)] {
        let (eager, eager_weights) = run(&config, false, 8);
        let (replayed, replayed_weights) = run(&config, true, 8);
        let losses = |s: &[StepStats]| s.iter().map(|s| s.loss).collect::<Vec<_>>();
        assert_eq!(losses(&eager), losses(&replayed), "{name}: losses");
        for ((n, a), (_, b)) in eager_weights.iter().zip(&replayed_weights) {
            assert!(a.equal(b), "{name}: {n} differs after 8 steps");
        }
    }
}
