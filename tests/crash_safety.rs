//! Crash safety: SIGKILL while a checkpoint is being written leaves the previous checkpoint
//! intact and resumable.

mod common;

use altup_moe::data::TokenDataset;
use altup_moe::model::{Arch, LanguageModel, ModelConfig};
use altup_moe::train::{run, CheckpointMeta, RunOptions, Silent, TrainConfig, Trainer};
use common::device;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tch::nn::VarStore;

const STEPS: u64 = 6;

fn tiny() -> ModelConfig {
    let mut c = ModelConfig::preset(Arch::Switch);
    c.d_model = 16;
    c.num_layers = 2;
    c.max_seq_len = 16;
    c.attention.num_heads = 2;
    c.ffn.d_ff = 32;
    c.moe.as_mut().unwrap().d_ff = 32;
    c
}

fn data() -> (TokenDataset, TokenDataset) {
    common::text_splits("Out, out, brief candle! Life's but a walking shadow. ", 40)
}

/// Trains to `STEPS` in `out`, resuming from its newest checkpoint when `resume` is set.
fn train(out: &Path, resume: bool) {
    let (train, val) = data();
    let vs = VarStore::new(device());
    let model = LanguageModel::new(&vs.root(), &tiny()).unwrap();
    let config = TrainConfig {
        steps: STEPS,
        batch_size: 4,
        seq_len: 16,
        warmup_steps: 1,
        eval_every: 2,
        eval_batches: 1,
        ..Default::default()
    };
    let mut trainer = Trainer::new(&vs, &model, &train, &val, config).unwrap();
    let resumed = resume.then(|| trainer.restore(&CheckpointMeta::read(out).unwrap()).unwrap());
    let options = RunOptions {
        out_dir: out.to_path_buf(),
        save_every: Some(2),
        keep_checkpoints: 3,
        stop_after: None,
        overwrite: false,
    };
    run(&mut trainer, resumed, &options, &mut Silent).unwrap();
}

/// The child process of the crash test (not run on its own).
#[test]
#[ignore = "run as a child process by sigkill_during_a_checkpoint_write_keeps_the_previous_one"]
fn crash_child() {
    let out = PathBuf::from(std::env::var_os("ALTUP_MOE_CRASH_DIR").expect("set by the parent test"));
    train(&out, false);
}

#[test]
fn sigkill_during_a_checkpoint_write_keeps_the_previous_one() {
    let out = tempfile::tempdir().unwrap();
    let root = out.path().join("checkpoints");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "crash_child", "--test-threads=1"])
        .env("ALTUP_MOE_CRASH_DIR", out.path())
        .env("ALTUP_MOE_TEST_CHECKPOINT_PAUSE_MS", "3000")
        .spawn()
        .unwrap();
    // Wait until step 2 is complete and step 4 is half-written (paused after its first file).
    let deadline = Instant::now() + Duration::from_secs(180);
    let half_written = loop {
        let tmp = std::fs::read_dir(&root).ok().and_then(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(".step-00000004.tmp"))
        });
        if let (Some(tmp), true) = (tmp, root.join("step-00000002/trainer_state.json").is_file()) {
            if tmp.join("model.safetensors").is_file() {
                break tmp;
            }
        }
        assert!(Instant::now() < deadline, "the child never reached the checkpoint of step 4");
        assert!(child.try_wait().unwrap().is_none(), "the child exited early");
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    assert!(half_written.is_dir(), "the half-written checkpoint is left behind, under a hidden name");
    assert!(!root.join("step-00000004").exists());
    let meta = CheckpointMeta::read(out.path()).unwrap();
    assert_eq!(meta.dir, root.join("step-00000002"));
    assert_eq!(meta.state.step, 2);

    train(out.path(), true);
    let done = CheckpointMeta::read(out.path()).unwrap();
    assert_eq!(done.state.step, STEPS);
    let steps: Vec<u64> = std::fs::read_to_string(out.path().join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![2, 4, 6], "metrics continue from the checkpoint without duplicates");
}
