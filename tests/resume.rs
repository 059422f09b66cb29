//! Training you can trust: exact resume, determinism, the non-finite guard, and checkpoint
//! validation.

mod common;

use altup_moe::data::TokenDataset;
use altup_moe::moe::{Balancing, MoeConfig};
use altup_moe::train::{run, CheckpointMeta, RunOptions, Silent, TrainConfig, Trainer};
use altup_moe::{
    model::{Arch, LanguageModel, ModelConfig},
    Error,
};
use common::{device, on_cpu};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use tch::{nn::VarStore, Device, Tensor};

fn tiny() -> ModelConfig {
    let mut c = ModelConfig::preset(Arch::AltUpMoe);
    // Block 0 dense, block 1 MoE (the overflow test fills block 0's FFN).
    c.moe_layers = altup_moe::model::MoeLayers::Every { every: 2, offset: 1 };
    c.d_model = 16;
    c.num_layers = 2;
    c.max_seq_len = 16;
    c.attention.num_heads = 2;
    c.ffn.d_ff = 32;
    // Jitter (libtorch's generator) and aux-free biases (buffers) must survive a resume too.
    c.moe = Some(MoeConfig {
        num_experts: 4,
        d_ff: 32,
        jitter: 0.1,
        balancing: Balancing::AuxFree { bias_update_rate: 0.01 },
        ..Default::default()
    });
    c
}

fn data() -> (TokenDataset, TokenDataset) {
    common::text_splits("Now is the winter of our discontent made glorious summer by this sun of York. ", 30)
}

fn train_config() -> TrainConfig {
    TrainConfig {
        steps: 8,
        batch_size: 4,
        grad_accum: 2,
        seq_len: 16,
        lr: 5e-3,
        warmup_steps: 2,
        eval_every: 3,
        eval_batches: 2,
        seed: 7,
        ..Default::default()
    }
}

fn options(out: &Path, stop_after: Option<u64>) -> RunOptions {
    RunOptions { out_dir: out.to_path_buf(), save_every: Some(2), keep_checkpoints: 2, stop_after, overwrite: false }
}

/// Runs (or resumes) training into `out`; returns the final weights by name.
fn train(out: &Path, stop_after: Option<u64>, resume: bool) -> Vec<(String, Tensor)> {
    let (train, val) = data();
    let (model_config, tc, meta) = if resume {
        let meta = CheckpointMeta::read(out).unwrap();
        (meta.model_config().unwrap(), meta.train_config.clone(), Some(meta))
    } else {
        (tiny(), train_config(), None)
    };
    let vs = VarStore::new(reproducible_device());
    let model = LanguageModel::new(&vs.root(), &model_config).unwrap();
    let mut trainer = Trainer::new(&vs, &model, &train, &val, tc).unwrap();
    let resumed = meta.map(|m| trainer.restore(&m).unwrap());
    run(&mut trainer, resumed, &options(out, stop_after), &mut Silent).unwrap();
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// `metrics.jsonl` without the wall-clock fields (`tokens_per_s`, `elapsed_s`).
fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("tokens_per_s");
            o.remove("elapsed_s");
            v
        })
        .collect()
}

/// Held for the whole of every test here, so that they run one at a time: libtorch has one
/// random generator per device, reseeded at every step, and trainings in parallel test threads
/// would draw each other's router jitter (seen on CUDA, where runs differed while the tests ran
/// in parallel).
fn alone() -> MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The device of every test here. Reproducibility is checked bitwise on every device: off the CPU
/// libtorch is first switched to its deterministic kernels (process-wide, before any CUDA work),
/// since by default its CUDA attention backward and cuBLAS accumulate in varying order, and
/// with MoE routing a last-bit difference flips a token to another expert (seen on an H200:
/// one token of 64 moved at step 3).
fn reproducible_device() -> Device {
    if !on_cpu() {
        altup_moe::runtime::set_deterministic(true);
    }
    device()
}

/// The same weights, bit for bit.
fn assert_same_weights(a: &[(String, Tensor)], b: &[(String, Tensor)]) {
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs");
    }
}

/// N steps straight == N/2 steps, stop, resume, N/2 more: bitwise-identical parameters
/// (including aux-free biases) and identical metrics, on every device (see [`reproducible_device`]).
#[test]
fn resume_is_exact() {
    let _alone = alone();
    let straight = tempfile::tempdir().unwrap();
    let a = train(straight.path(), None, false);
    let interrupted = tempfile::tempdir().unwrap();
    train(interrupted.path(), Some(4), false);
    assert_eq!(metrics(interrupted.path()).len(), 1, "one evaluation (step 3) before the stop");
    let b = train(interrupted.path(), None, true);
    assert_same_weights(&a, &b);
    assert!(a.iter().any(|(n, t)| n.ends_with("expert_bias") && t.abs().sum(tch::Kind::Float).double_value(&[]) > 0.0));
    let (ma, mb) = (metrics(straight.path()), metrics(interrupted.path()));
    assert_eq!(ma.len(), 3); // steps 3, 6, 8
    assert_eq!(ma, mb);
}

/// The same seed and config give the same metrics and weights.
#[test]
fn same_seed_same_metrics_file() {
    let _alone = alone();
    let (x, y) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = train(x.path(), None, false);
    let b = train(y.path(), None, false);
    assert_same_weights(&a, &b);
    assert_eq!(metrics(x.path()), metrics(y.path()));
}

/// Resuming after progress beyond the checkpoint (a crash after step 5 with the last checkpoint
/// at step 4) drops the metrics written after the checkpoint and ends like the straight run.
#[test]
fn resume_drops_metrics_written_after_the_checkpoint() {
    let _alone = alone();
    let straight = tempfile::tempdir().unwrap();
    train(straight.path(), None, false);
    let crashed = tempfile::tempdir().unwrap();
    train(crashed.path(), Some(4), false);
    // Simulate a record from a step after the checkpoint.
    let extra =
        std::fs::read_to_string(crashed.path().join("metrics.jsonl")).unwrap().replace("\"step\":3", "\"step\":5");
    std::fs::write(
        crashed.path().join("metrics.jsonl"),
        format!("{}{extra}", std::fs::read_to_string(crashed.path().join("metrics.jsonl")).unwrap()),
    )
    .unwrap();
    train(crashed.path(), None, true);
    assert_eq!(metrics(straight.path()), metrics(crashed.path()));
}

fn trainer_parts(vs: &VarStore) -> LanguageModel {
    LanguageModel::new(&vs.root(), &tiny()).unwrap()
}

/// A NaN parameter stops training with an error naming the step and the parameter; the last
/// good checkpoint is untouched.
#[test]
fn non_finite_values_stop_training_and_keep_the_last_good_checkpoint() {
    let _alone = alone();
    let out = tempfile::tempdir().unwrap();
    train(out.path(), Some(2), false);
    let ckpt = CheckpointMeta::read(out.path()).unwrap();
    let before = std::fs::read(ckpt.dir.join("model.safetensors")).unwrap();

    let (train_data, val) = data();
    let vs = VarStore::new(reproducible_device());
    let model = trainer_parts(&vs);
    let mut trainer = Trainer::new(&vs, &model, &train_data, &val, train_config()).unwrap();
    let resumed = trainer.restore(&ckpt).unwrap();
    tch::no_grad(|| {
        let _ = vs.variables()["blocks.1.moe.router.weight"].shallow_clone().get(0).get(0).fill_(f64::NAN);
    });
    let err = run(&mut trainer, Some(resumed), &options(out.path(), None), &mut Silent).unwrap_err();
    match &err {
        Error::NonFinite { step, what } => {
            assert_eq!(*step, 3);
            assert_eq!(what, "parameter blocks.1.moe.router.weight");
        }
        other => panic!("expected NonFinite, got {other}"),
    }
    assert_eq!(err.to_string(), "non-finite value at step 3: parameter blocks.1.moe.router.weight");
    let after = CheckpointMeta::read(out.path()).unwrap();
    assert_eq!(after.dir, ckpt.dir, "no checkpoint is written after the failure");
    assert_eq!(std::fs::read(after.dir.join("model.safetensors")).unwrap(), before);
}

/// Between reads the guard works on the device: a NaN parameter poisons step 2, which is not
/// applied, nor are steps 3 and 4 that follow it before the read; the read names step 2, the
/// trainer is back at step 1 with every other weight and buffer as step 1 left them,
/// and once the parameter is repaired training goes on from step 2.
#[test]
fn a_non_finite_step_between_reads_is_skipped_with_every_later_one_and_reported_at_the_read() {
    let _alone = alone();
    let (train_data, val) = data();
    let vs = VarStore::new(reproducible_device());
    let model = trainer_parts(&vs);
    let mut trainer = Trainer::new(&vs, &model, &train_data, &val, train_config()).unwrap();
    trainer.step().unwrap();
    let snapshot = || -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(n, t)| (n, t.copy())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let after_step_1 = snapshot();
    let poisoned = "blocks.1.moe.router.weight";
    let good = vs.variables()[poisoned].get(0).get(0).double_value(&[]);
    tch::no_grad(|| {
        let _ = vs.variables()[poisoned].shallow_clone().get(0).get(0).fill_(f64::NAN);
    });
    for _ in 0..3 {
        trainer.advance().unwrap();
    }
    assert_eq!((trainer.step_count(), trainer.pending_steps()), (4, 3));
    let err = trainer.read_stats().unwrap_err();
    assert_eq!(err.to_string(), format!("non-finite value at step 2: parameter {poisoned}"));
    assert_eq!((trainer.step_count(), trainer.pending_steps()), (1, 0));
    tch::no_grad(|| {
        let _ = vs.variables()[poisoned].shallow_clone().get(0).get(0).fill_(good);
    });
    assert_same_weights(&after_step_1, &snapshot());
    let stats = trainer.step().unwrap();
    assert!(stats.step == 2 && stats.loss.is_finite(), "{stats:?}");
}

/// Finite parameters whose activations overflow: the error names the first block whose output
/// is non-finite.
#[test]
fn overflowing_activations_name_the_block() {
    let _alone = alone();
    let (train_data, val) = data();
    let vs = VarStore::new(reproducible_device());
    let model = trainer_parts(&vs);
    let mut trainer = Trainer::new(&vs, &model, &train_data, &val, train_config()).unwrap();
    tch::no_grad(|| {
        let _ = vs.variables()["blocks.0.ffn.w_out.weight"].shallow_clone().fill_(1e38);
        let _ = vs.variables()["blocks.0.ffn.w_in.weight"].shallow_clone().fill_(1e3);
    });
    let err = trainer.step().unwrap_err().to_string();
    assert_eq!(err, "non-finite value at step 1: output of block 0");
}

/// Broken checkpoints get errors that say what is wrong.
#[test]
fn broken_checkpoints_are_named() {
    let _alone = alone();
    let out = tempfile::tempdir().unwrap();
    train(out.path(), Some(2), false);
    let ckpt = CheckpointMeta::read(out.path()).unwrap();
    let (train_data, val) = data();
    let restore = |dir: &Path| -> Result<(), Error> {
        let meta = CheckpointMeta::read(dir)?;
        let vs = VarStore::new(reproducible_device());
        let model = LanguageModel::new(&vs.root(), &meta.model_config()?)?;
        let mut trainer = Trainer::new(&vs, &model, &train_data, &val, meta.train_config.clone())?;
        trainer.restore(&meta).map(|_| ())
    };
    restore(&ckpt.dir).unwrap();
    let copy = |name: &str| {
        let dir = out.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in std::fs::read_dir(&ckpt.dir).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), dir.join(f.file_name())).unwrap();
        }
        dir
    };
    // Truncated weights.
    let dir = copy("truncated");
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let err = restore(&dir).unwrap_err().to_string();
    assert!(err.starts_with("checkpoint error: cannot read") && err.contains("model.safetensors"), "{err}");
    // Corrupt trainer state.
    let dir = copy("corrupt");
    std::fs::write(dir.join("trainer_state.json"), "{\"step\": oops").unwrap();
    let err = restore(&dir).unwrap_err().to_string();
    assert!(err.starts_with("JSON error in") && err.contains("trainer_state.json"), "{err}");
    // Missing optimizer state.
    let dir = copy("missing");
    std::fs::remove_file(dir.join("optimizer.safetensors")).unwrap();
    let err = restore(&dir).unwrap_err().to_string();
    assert!(err.ends_with("is missing optimizer.safetensors"), "{err}");
    // Weights of another model.
    let dir = copy("mismatch");
    let mut other = tiny();
    other.d_model = 32;
    let vs = VarStore::new(reproducible_device());
    let _ = LanguageModel::new(&vs.root(), &other).unwrap();
    altup_moe::io::save_weights(&vs, &dir.join("model.safetensors")).unwrap();
    let err = restore(&dir).unwrap_err().to_string();
    assert!(
        err.contains("'blocks.0.attn.out.weight' has shape [32, 32] and dtype Float in the file but [16, 16]"),
        "{err}"
    );
    // Config of another model.
    let dir = copy("other-config");
    let meta = CheckpointMeta::read(&dir).unwrap();
    let vs = VarStore::new(reproducible_device());
    let model = LanguageModel::new(&vs.root(), &ModelConfig { init_seed: 5, ..tiny() }).unwrap();
    let mut trainer = Trainer::new(&vs, &model, &train_data, &val, meta.train_config.clone()).unwrap();
    let err = trainer.restore(&meta).unwrap_err().to_string();
    assert!(err.ends_with("config.json describes another model than the one being trained"), "{err}");
    // Nothing to resume from.
    let empty = tempfile::tempdir().unwrap();
    let err = CheckpointMeta::read(empty.path()).unwrap_err().to_string();
    assert!(err.starts_with("checkpoint error: no checkpoint in"), "{err}");
}

/// A fresh run refuses a folder that holds another run's checkpoints unless told to overwrite
/// them, in which case the old checkpoints are deleted (they would otherwise outrank the new ones).
#[test]
fn fresh_runs_do_not_mix_with_an_old_run() {
    let _alone = alone();
    let out = tempfile::tempdir().unwrap();
    train(out.path(), None, false); // checkpoints up to step 8
    let (train_data, val) = data();
    let vs = VarStore::new(reproducible_device());
    let model = LanguageModel::new(&vs.root(), &tiny()).unwrap();
    let short = TrainConfig { steps: 2, warmup_steps: 1, ..train_config() };
    let mut trainer = Trainer::new(&vs, &model, &train_data, &val, short.clone()).unwrap();
    let err = run(&mut trainer, None, &options(out.path(), None), &mut Silent).unwrap_err().to_string();
    assert!(err.contains("already holds a training run") && err.contains("step-00000008"), "{err}");
    let mut trainer = Trainer::new(&vs, &model, &train_data, &val, short).unwrap();
    let overwrite = RunOptions { overwrite: true, ..options(out.path(), None) };
    run(&mut trainer, None, &overwrite, &mut Silent).unwrap();
    let meta = CheckpointMeta::read(out.path()).unwrap();
    assert_eq!(meta.state.step, 2, "the new run's checkpoint is the newest");
    assert_eq!(metrics(out.path()).len(), 1);
}

/// Checkpoints load in Python with safetensors and PyTorch.
#[test]
fn checkpoints_load_in_python() {
    let _alone = alone();
    let out = tempfile::tempdir().unwrap();
    train(out.path(), Some(2), false);
    let ckpt = CheckpointMeta::read(out.path()).unwrap();
    let python = common::python();
    let script = common::source_file("tests/python/load_checkpoint.py");
    let output = std::process::Command::new(&python).arg(&script).arg(&ckpt.dir).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let vs = VarStore::new(reproducible_device());
    let _ = LanguageModel::new(&vs.root(), &tiny()).unwrap();
    assert!(stdout.contains(&format!("model tensors: {}", vs.variables().len())), "{stdout}");
    assert!(stdout.contains("optimizer step: 2"), "{stdout}");
}

/// bf16 compute with f32 master weights trains; logits come back in f32.
#[test]
fn bf16_compute_trains_with_f32_masters() {
    let _alone = alone();
    let (train_data, val) = data();
    let vs = VarStore::new(reproducible_device());
    let mut model = LanguageModel::new(&vs.root(), &tiny()).unwrap();
    model.set_precision(altup_moe::model::Precision::Bf16);
    let tc = TrainConfig { steps: 12, lr: 1e-2, ..train_config() };
    let mut trainer = Trainer::new(&vs, &model, &train_data, &val, tc).unwrap();
    let losses: Vec<f64> = (0..12).map(|_| trainer.step().unwrap().loss).collect();
    assert!(losses[11] < losses[0] - 1.0, "{losses:?}");
    let logits =
        model.forward_t(&Tensor::zeros([1, 4], (tch::Kind::Int64, reproducible_device())), false).unwrap().logits;
    assert_eq!(logits.kind(), tch::Kind::Float);
    assert!(vs.trainable_variables().iter().all(|t| t.kind() == tch::Kind::Float));
    // The model owns its precision; a training config written by an older version may still say
    // one, which must agree.
    let legacy = TrainConfig { precision: Some(altup_moe::model::Precision::F32), ..train_config() };
    let err = Trainer::new(&vs, &model, &train_data, &val, legacy).unwrap_err().to_string();
    assert!(err.contains("the model computes in Bf16 but the training config says F32"), "{err}");
}

#[test]
fn a_changed_corpus_stops_a_resume_unless_allowed() {
    let _alone = alone();
    use altup_moe::data::Corpus;
    use altup_moe::train::{RunFolder, RunStart};
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("corpus.txt");
    std::fs::write(&text, "Now is the winter of our discontent made glorious summer by this sun of York.\n".repeat(40))
        .unwrap();
    let hash = Corpus::from_path(&text, &Default::default()).unwrap().content_hash();
    assert!(hash.starts_with("sha256:") && hash.len() == 7 + 64, "{hash}");
    // One step of a run that records the corpus's hash.
    let (train, val) = data();
    let out = tmp.path().join("run");
    let vs = VarStore::new(reproducible_device());
    let model = LanguageModel::new(&vs.root(), &tiny()).unwrap();
    let tc = TrainConfig { data_hash: hash.clone(), steps: 3, warmup_steps: 1, ..train_config() };
    let mut trainer = Trainer::new(&vs, &model, &train, &val, tc).unwrap();
    run(&mut trainer, None, &options(&out, Some(1)), &mut Silent).unwrap();

    let folder = RunFolder::open(None, RunStart::Resume(out.clone())).unwrap();
    // The same corpus resumes; so does a run that predates hashes (nothing recorded).
    assert_eq!(folder.resumed_train_config(None, "d", &hash, false).unwrap().unwrap().data_hash, hash);
    // One changed byte is an error naming both hashes...
    std::fs::write(&text, "Now is the winter of our discontent made glorious summer by this sun of Yorc.\n".repeat(40))
        .unwrap();
    let changed = Corpus::from_path(&text, &Default::default()).unwrap().content_hash();
    assert_ne!(changed, hash);
    let err = folder.resumed_train_config(None, "d", &changed, false).unwrap_err().to_string();
    assert!(err.contains("the corpus changed") && err.contains(&hash) && err.contains(&changed), "{err}");
    assert!(err.contains("--allow-data-change"), "{err}");
    // ...unless allowed: the new hash is recorded from then on.
    let allowed = folder.resumed_train_config(Some(4), "d", &changed, true).unwrap().unwrap();
    assert_eq!((allowed.data_hash.as_str(), allowed.steps), (changed.as_str(), 4));
}

/// A run written before the model's config held its precision recorded it in
/// `train_config.json`: reading the checkpoint moves it into the model's config, so the resumed
/// model computes as before and the trainer accepts the training config.
#[test]
fn a_legacy_precision_in_the_training_config_moves_into_the_model_config() {
    let _alone = alone();
    let dir = tempfile::tempdir().unwrap();
    train(dir.path(), Some(2), false);
    let checkpoint = CheckpointMeta::read(dir.path()).unwrap().dir;
    let path = checkpoint.join("train_config.json");
    let mut legacy: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    legacy["precision"] = "bf16".into();
    std::fs::write(&path, legacy.to_string()).unwrap();
    let meta = CheckpointMeta::read(dir.path()).unwrap();
    assert_eq!(meta.train_config.precision, None);
    let config: altup_moe::model::ModelConfig = meta.model_config().unwrap();
    assert_eq!(config.precision, altup_moe::model::Precision::Bf16);
    let (train_data, val) = data();
    let vs = VarStore::new(reproducible_device());
    let model = LanguageModel::new(&vs.root(), &config).unwrap();
    let mut trainer = Trainer::new(&vs, &model, &train_data, &val, meta.train_config.clone()).unwrap();
    trainer.restore(&meta).unwrap();
    assert_eq!(trainer.step_count(), 2);
}

/// A stop the run has already passed (at or before the checkpoint's step), or at or past its
/// last step, is refused before anything is written, resumed or fresh.
#[test]
fn a_stop_the_run_has_passed_is_refused() {
    let _alone = alone();
    let out = tempfile::tempdir().unwrap();
    train(out.path(), Some(4), false);
    let before = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    let (train_data, val) = data();
    let attempt = |stop: u64, resume: bool| -> Result<(), Error> {
        let meta = CheckpointMeta::read(out.path())?;
        let vs = VarStore::new(reproducible_device());
        let model = LanguageModel::new(&vs.root(), &meta.model_config()?)?;
        let mut trainer = Trainer::new(&vs, &model, &train_data, &val, meta.train_config.clone())?;
        let resumed = if resume { Some(trainer.restore(&meta)?) } else { None };
        let options = RunOptions { overwrite: true, ..options(out.path(), Some(stop)) };
        run(&mut trainer, resumed, &options, &mut Silent)
    };
    for stop in [2, 4] {
        let err = attempt(stop, true).unwrap_err().to_string();
        assert!(
            err.contains(&format!("stop after step {stop}: it must come after the run's current step (4)")),
            "{err}"
        );
    }
    let err = attempt(8, true).unwrap_err().to_string();
    assert!(err.contains("and before its last step (8)"), "{err}");
    let err = attempt(0, false).unwrap_err().to_string();
    assert!(err.contains("stop after step 0: it must come after the run's current step (0)"), "{err}");
    // Nothing was written or deleted.
    assert_eq!(std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap(), before);
    assert_eq!(CheckpointMeta::read(out.path()).unwrap().state.step, 4);
    attempt(6, true).unwrap();
    assert_eq!(CheckpointMeta::read(out.path()).unwrap().state.step, 6);
}

/// Model folders that cannot give a working model say why when they are opened: weights holding
/// NaN, a config without weights, a subword run without its tokenizer.json.
#[test]
fn unusable_model_folders_are_named_when_opened() {
    let _alone = alone();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    train(&out, None, false);
    let final_dir = tmp.path().join("final");
    std::fs::create_dir_all(&final_dir).unwrap();
    let step = CheckpointMeta::read(&out).unwrap().dir;
    for f in ["config.json", "train_config.json", "model.safetensors"] {
        std::fs::copy(step.join(f), final_dir.join(f)).unwrap();
    }
    altup_moe::io::load_model(&final_dir, Device::Cpu).unwrap();
    // NaN in one tensor.
    let weights = final_dir.join("model.safetensors");
    let mut named = altup_moe::io::read_tensors(&weights).unwrap();
    let name = "blocks.0.attn.out.weight".to_string();
    let poisoned = named[&name].copy();
    let _ = poisoned.view([-1]).get(3).fill_(f64::NAN);
    named.insert(name.clone(), poisoned);
    let list: Vec<(String, Tensor)> = named.into_iter().collect();
    Tensor::write_safetensors(&list, &weights).unwrap();
    let err = altup_moe::io::load_model(&final_dir, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains(&format!("[\"{name}\"] hold non-finite values")), "{err}");
    // A config without weights (and no checkpoints).
    std::fs::remove_file(&weights).unwrap();
    let err = altup_moe::io::load_model(&final_dir, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("holds config.json but no model.safetensors and no checkpoint"), "{err}");
    // A subword run whose tokenizer.json is gone: refused at load, not after generating.
    std::fs::copy(step.join("model.safetensors"), &weights).unwrap();
    let mut train_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(final_dir.join("train_config.json")).unwrap()).unwrap();
    train_config["tokenizer"] = serde_json::json!({"bpe": 300});
    std::fs::write(final_dir.join("train_config.json"), train_config.to_string()).unwrap();
    let err = altup_moe::io::load_model(&final_dir, Device::Cpu).unwrap_err().to_string();
    assert!(
        err.contains("was trained with tokenizer bpe:300 but") && err.contains("tokenizer.json is missing"),
        "{err}"
    );
}
