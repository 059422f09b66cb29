//! The checks to run when a GPU is available (`make gpu-check`; `GPU_CHECK_DEVICE=cpu make
//! gpu-check` runs the same on the CPU, which is how CI keeps it working). After the Makefile
//! has run the test suite on the device, this program trains the four stacks in f32, bf16 and
//! bf16-mixed for a few dozen steps, generates with and without the key/value cache, trains the
//! encoder-decoder, runs expert parallelism with two thread ranks on the one device, checks
//! same-seed and resume determinism, and records the expert kernels `Auto` chose and the host
//! reads per training step — all into one Markdown report.
//!
//! ```text
//! cargo run --release --example gpu_check -- --device cuda --out target/gpu-check/report.md
//! ```

mod common;

use altup_moe::data::{RunTokenizer, TokenizerSpec};
use altup_moe::data::{SpanCorruption, TokenDataset};
use altup_moe::host::host_reads;
use altup_moe::model::{Generation, Precision, Sampling, Seq2SeqConfig, Seq2SeqModel};
use altup_moe::moe::kernel;
use altup_moe::nn::VarBuilder;
use altup_moe::parallel::{ProcessGroup, ThreadGroup};
use altup_moe::train::{CheckpointMeta, MetricsWindow, SpanCorruptionTask, TrainConfig, Trainer};
use altup_moe::{
    model::{Arch, LanguageModel, ModelConfig},
    Error, Result,
};
use clap::Parser;
use common::{device_name, parse_device, run_data};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;
use tch::{nn::VarStore, Device};

/// Check the library on a device (CUDA by default): training of every stack and precision,
/// cached generation, the encoder-decoder, expert parallelism, determinism, kernel choice and
/// host reads; writes one report.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The device to check: cuda, cuda:N, or cpu.
    #[arg(long, default_value = "cuda", value_parser = parse_device)]
    device: Device,
    /// Training steps per stack and precision.
    #[arg(long, default_value_t = 30)]
    steps: u64,
    /// Sequences per training batch.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Bytes per sequence.
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// A UTF-8 text file or folder to train on [default: Shakespeare's plays from `.venv`].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output of `cargo test` on the device, summarised in the report (optional).
    #[arg(long)]
    tests_log: Option<PathBuf>,
    /// Where to write the report.
    #[arg(long, default_value = "target/gpu-check/report.md")]
    out: PathBuf,
}

/// The report: a Markdown text and whether every check passed.
struct Report {
    text: String,
    failures: Vec<String>,
}

impl Report {
    fn check(&mut self, ok: bool, what: String) {
        if !ok {
            self.failures.push(what);
        }
    }
}

fn train_config(args: &Args, steps: u64) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: args.batch_size,
        seq_len: args.seq_len,
        warmup_steps: (steps / 10).min(10),
        eval_every: steps,
        eval_batches: 4,
        ..Default::default()
    }
}

/// Trains `config` for `steps` steps; returns (first loss, last loss, median step seconds, host
/// reads per step, final weights checksum).
fn train(
    args: &Args,
    config: &ModelConfig,
    data: &(TokenDataset, TokenDataset),
    steps: u64,
    precision: Precision,
) -> Result<(f64, f64, f64, u64, f64)> {
    let device = args.device;
    let vs = VarStore::new(device);
    let mut model = LanguageModel::new(&vs.root(), config)?;
    model.set_precision(precision);
    let mut trainer = Trainer::new(&vs, &model, &data.0, &data.1, train_config(args, steps))?;
    let (mut first, mut last, mut times, mut reads) = (f64::NAN, f64::NAN, Vec::new(), 0);
    for step in 0..steps {
        let before = host_reads();
        let start = Instant::now();
        let stats = trainer.step()?;
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
        times.push(start.elapsed().as_secs_f64());
        reads = host_reads() - before;
        if step == 0 {
            first = stats.loss;
        }
        last = stats.loss;
    }
    times.sort_by(f64::total_cmp);
    Ok((first, last, times[times.len() / 2], reads, checksum(&vs)))
}

/// Sum of every weight's absolute values (a cheap fingerprint for determinism checks).
fn checksum(vs: &VarStore) -> f64 {
    vs.trainable_variables().iter().map(|v| v.abs().sum(tch::Kind::Double).double_value(&[])).sum()
}

fn stacks(report: &mut Report, data: &(TokenDataset, TokenDataset), args: &Args) -> Result<()> {
    report.text.push_str(
        "## Training, four stacks × three precisions\n\n| stack | precision | loss at step 1 | loss at the end | \
         median step | host reads per step |\n|---|---|---|---|---|---|\n",
    );
    for arch in [Arch::Dense, Arch::Switch, Arch::AltUp, Arch::AltUpMoe] {
        let config = ModelConfig::preset(arch);
        let moe_layers = (0..config.num_layers).filter(|&l| config.is_moe_layer(l)).count() as u64;
        for precision in [Precision::F32, Precision::Bf16, Precision::Bf16Mixed] {
            eprintln!("training {arch} in {precision:?} ...");
            let (first, last, step_s, reads, _) = train(args, &config, data, args.steps, precision)?;
            let _ = writeln!(
                report.text,
                "| {arch} | {precision:?} | {first:.4} | {last:.4} | {:.1} ms | {reads} |",
                step_s * 1e3
            );
            // A few steps (the CPU run in CI) need not lower the loss; a few dozen must.
            let learned = last < first || args.steps < 10;
            report.check(last.is_finite() && learned, format!("{arch} {precision:?}: loss {first} -> {last}"));
            report.check(reads <= moe_layers + 1, format!("{arch} {precision:?}: {reads} host reads per step"));
        }
    }
    Ok(())
}

fn generation(report: &mut Report, device: Device) -> Result<()> {
    let vs = VarStore::new(device);
    let model = LanguageModel::new(&vs.root(), &ModelConfig::preset(Arch::AltUpMoe))?;
    let greedy = Sampling { temperature: 0.0, top_k: None, top_p: None };
    let prompt: Vec<i64> = b"ROMEO: ".iter().map(|&b| i64::from(b)).collect();
    let mut rng: rand::rngs::StdRng = rand::SeedableRng::seed_from_u64(0);
    let timed = |f: &mut dyn FnMut() -> Result<Vec<i64>>| -> Result<(Vec<i64>, f64)> {
        let start = Instant::now();
        Ok((f()?, start.elapsed().as_secs_f64()))
    };
    let mut rng2: rand::rngs::StdRng = rand::SeedableRng::seed_from_u64(0);
    let (cached, cached_s) = timed(&mut || model.generate(&prompt, &Generation::new(64, greedy), &mut rng))?;
    let (full, full_s) = timed(&mut || model.generate_uncached(&prompt, &Generation::new(64, greedy), &mut rng2))?;
    let _ = writeln!(
        report.text,
        "\n## Generation\n\n64 greedy tokens after a 7-byte prompt (AltUp + MoE, untrained): with the key/value cache \
         {:.1} ms, without {:.1} ms; identical tokens: {}.",
        cached_s * 1e3,
        full_s * 1e3,
        cached == full
    );
    report.check(cached == full, "cached generation differs from full recomputation".into());
    Ok(())
}

fn encoder_decoder(report: &mut Report, data: &(TokenDataset, TokenDataset), args: &Args) -> Result<()> {
    let corruption = SpanCorruption::default();
    let config = Seq2SeqConfig::preset(Arch::AltUpMoe, corruption.vocab_size());
    let vs = VarStore::new(args.device);
    let model = Seq2SeqModel::new(&vs.root(), &config)?;
    let task = SpanCorruptionTask { model: &model, corruption, eval_seed: 0 };
    let mut trainer = Trainer::new(&vs, &task, &data.0, &data.1, train_config(args, args.steps))?;
    let before = trainer.evaluate()?.loss;
    for _ in 0..args.steps {
        trainer.step()?;
    }
    let after = trainer.evaluate()?.loss;
    let _ = writeln!(
        report.text,
        "\n## Encoder-decoder\n\nAltUp + MoE encoder-decoder, span corruption, {} steps: validation loss {before:.4} → \
         {after:.4}.",
        args.steps
    );
    report.check(
        after.is_finite() && (after < before || args.steps < 10),
        format!("encoder-decoder: validation loss {before} -> {after}"),
    );
    Ok(())
}

fn expert_parallel(report: &mut Report, data: &(TokenDataset, TokenDataset), args: &Args) -> Result<()> {
    let config = ModelConfig::preset(Arch::Switch);
    let steps = 5;
    let single = train(args, &config, data, steps, Precision::F32)?;
    let ranks = ThreadGroup::run(&[args.device, args.device], |group: ProcessGroup, device| {
        let vs = VarStore::new(device);
        let model = LanguageModel::new(VarBuilder::new(&vs.root()).with_group(group), &config)?;
        let mut trainer = Trainer::new(&vs, &model, &data.0, &data.1, train_config(args, steps))?;
        let mut last = f64::NAN;
        for _ in 0..steps {
            last = trainer.step()?.loss;
        }
        Ok(last)
    })?;
    let losses: Vec<f64> = ranks.into_iter().collect::<Result<_>>()?;
    let diff = (losses[0] - single.1).abs();
    let _ = writeln!(
        report.text,
        "\n## Expert parallelism\n\nSwitch, two thread ranks on one device, {steps} steps: loss {:.6} (one process \
         {:.6}, difference {diff:.2e}).",
        losses[0], single.1
    );
    report.check(diff < 1e-3, format!("expert parallelism: loss differs by {diff}"));
    Ok(())
}

fn determinism(report: &mut Report, data: &(TokenDataset, TokenDataset), args: &Args) -> Result<()> {
    let config = ModelConfig::preset(Arch::AltUpMoe);
    let steps = 6;
    // Off the CPU some default kernels accumulate in a varying order; the check runs under
    // libtorch's deterministic kernels there (as tests/resume.rs does) and restores the switch.
    let was_deterministic = altup_moe::runtime::is_deterministic();
    if args.device != Device::Cpu {
        altup_moe::runtime::set_deterministic(true);
    }
    let outcome = determinism_runs(report, data, args, &config, steps);
    altup_moe::runtime::set_deterministic(was_deterministic);
    outcome
}

/// The two same-seed runs and the resumed run of [`determinism`], compared bitwise.
fn determinism_runs(
    report: &mut Report,
    data: &(TokenDataset, TokenDataset),
    args: &Args,
    config: &ModelConfig,
    steps: u64,
) -> Result<()> {
    let a = train(args, config, data, steps, Precision::F32)?;
    let b = train(args, config, data, steps, Precision::F32)?;
    // Resume: 3 steps, checkpoint, a fresh model restores it and trains 3 more.
    let dir = std::env::temp_dir().join(format!("altup-moe-gpu-check-{}", std::process::id()));
    let resumed = {
        let vs = VarStore::new(args.device);
        let model = LanguageModel::new(&vs.root(), config)?;
        let mut trainer = Trainer::new(&vs, &model, &data.0, &data.1, train_config(args, steps))?;
        for _ in 0..3 {
            trainer.step()?;
        }
        trainer.save_checkpoint(&dir, &MetricsWindow::default(), 0.0, 1)?;
        let vs = VarStore::new(args.device);
        let model = LanguageModel::new(&vs.root(), config)?;
        let mut trainer = Trainer::new(&vs, &model, &data.0, &data.1, train_config(args, steps))?;
        trainer.restore(&CheckpointMeta::read(&dir)?)?;
        let mut last = f64::NAN;
        for _ in 3..steps {
            last = trainer.step()?.loss;
        }
        (last, checksum(&vs))
    };
    let _ = std::fs::remove_dir_all(&dir);
    let same_seed = a.1 == b.1 && a.4 == b.4;
    let resume = resumed.0 == a.1 && resumed.1 == a.4;
    let _ = writeln!(
        report.text,
        "\n## Determinism\n\nSame seed twice ({steps} steps of AltUp + MoE): final loss {:.8} and {:.8}, weights \
         checksum {:.6} and {:.6} — {}. Resumed after 3 steps: loss {:.8}, checksum {:.6} — {}. (Default kernels on the \
         CPU; libtorch's deterministic kernels on an accelerator, where some default ones accumulate in a varying \
         order.)",
        a.1,
        b.1,
        a.4,
        b.4,
        if same_seed { "bitwise equal" } else { "different" },
        resumed.0,
        resumed.1,
        if resume { "bitwise equal" } else { "different" }
    );
    report.check(same_seed && resume, format!("runs on {:?} are not bitwise reproducible", args.device));
    Ok(())
}

fn tests_summary(report: &mut Report, log: &std::path::Path) {
    let Ok(text) = std::fs::read_to_string(log) else {
        report.text.push_str("\n## Test suite\n\nno test log found.\n");
        return;
    };
    let (mut passed, mut failed) = (0usize, 0usize);
    for line in text.lines().filter(|l| l.starts_with("test result:")) {
        let number = |word: &str| -> usize {
            line.split(';')
                .find(|p| p.contains(word))
                .and_then(|p| p.split_whitespace().find_map(|w| w.parse().ok()))
                .unwrap_or(0)
        };
        passed += number("passed");
        failed += number("failed");
    }
    let failures: Vec<&str> = text.lines().filter(|l| l.ends_with("FAILED") && l.starts_with("test ")).collect();
    let _ = writeln!(report.text, "\n## Test suite on the device\n\n{passed} passed, {failed} failed.");
    for f in &failures {
        let _ = writeln!(report.text, "* {f}");
    }
    report.check(failed == 0 && passed > 0, format!("test suite: {passed} passed, {failed} failed"));
}

fn run(args: &Args) -> Result<Report> {
    if let Device::Cuda(i) = args.device {
        if !tch::Cuda::is_available() || i >= tch::Cuda::device_count() as usize {
            return Err(Error::Config(format!(
                "{} is not available (CUDA devices: {})",
                device_name(args.device),
                tch::Cuda::device_count()
            )));
        }
    }
    let bytes =
        run_data(args.data.as_deref(), &Default::default(), &RunTokenizer::FromSpec(TokenizerSpec::Bytes), &|_| {})?;
    let data = (bytes.train, bytes.val);
    let mut report = Report {
        text: format!(
            "# GPU check\n\nDevice: {} (CUDA devices: {}, cuDNN: {}). {} training steps per stack and precision.\n\n",
            device_name(args.device),
            tch::Cuda::device_count(),
            tch::Cuda::cudnn_is_available(),
            args.steps
        ),
        failures: Vec::new(),
    };
    if let Some(log) = &args.tests_log {
        tests_summary(&mut report, log);
        report.text.push('\n');
    }
    stacks(&mut report, &data, args)?;
    generation(&mut report, args.device)?;
    encoder_decoder(&mut report, &data, args)?;
    expert_parallel(&mut report, &data, args)?;
    determinism(&mut report, &data, args)?;
    report.text.push_str("\n## Expert kernels chosen by `Auto`\n\n");
    let choices = kernel::choices();
    if choices.is_empty() {
        report.text.push_str("None measured (on the CPU `Auto` follows its measured rule).\n");
    }
    for (key, backend) in choices {
        let _ = writeln!(
            report.text,
            "* {:?} {:?}, experts {:?}, ~{} rows per expert, gated {}: {backend:?}",
            key.device, key.kind, key.shape, key.rows_per_expert, key.gated
        );
    }
    let _ = writeln!(
        report.text,
        "\n## Verdict\n\n{}",
        if report.failures.is_empty() { "every check passed".to_string() } else { report.failures.join("\n") }
    );
    Ok(report)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let report = match run(&args) {
        Ok(report) => report,
        Err(e) => return common::exit_code(Err(e)),
    };
    println!("{}", report.text);
    if let Some(dir) = args.out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(&args.out, &report.text) {
        eprintln!("error: cannot write {}: {e}", args.out.display());
        return ExitCode::FAILURE;
    }
    eprintln!("wrote {}", args.out.display());
    if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("{} check(s) failed", report.failures.len());
        ExitCode::FAILURE
    }
}
