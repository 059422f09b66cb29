//! Reproduces, at small scale on real text, the claims of AltUp and MoE, in parts (`--part`),
//! each split by seed (`--seed`) into pieces of at most about an hour on 2 cores:
//!
//! * `claims` — dense, AltUp K = 2, Recycled-AltUp K = 2, Switch E = 8 and AltUp K = 2 + Switch
//!   E = 8 with equal steps, tokens and schedule; paired differences in validation bits per byte
//!   and the AltUp paper's own metric, the speed-up at equal quality (how much sooner a stack's
//!   validation curve first reaches the dense model's final quality);
//! * `placement` — AltUp + MoE with the MoE blocks placed so that the experts compute on both
//!   sub-blocks, and Switch with MoE on every block;
//! * `size-small`, `size-large`, `size-large-recycled` — dense vs AltUp K = 2 at d = 64 and 256
//!   (d = 128 is the claims' runs), Recycled-AltUp at 256;
//! * `residual`, `residual-moe` — Hyper-Connections (n = 4, static and dynamic), mHC (n = 4) and
//!   LAuReL RW+LR against dense and AltUp (the claims' runs), and with Switch E = 8 on every block
//!   against Switch alone on every block (the placement part's).
//!
//! Each finished run's figures go to a small committed JSON file (`docs/results/runs/`), so an
//! interrupted study continues where it stopped (a run whose record matches its model and
//! training settings is not retrained) and the report is regenerated from those files alone.
//!
//! ```text
//! make reproduce PART=claims                 # one part (claims: about 90 minutes on 2 cores)
//! make reproduce PART=placement SEED=0       # one seed of a part (placement: ~45 min per seed)
//! make reproduce                             # every part not yet recorded, then the report
//! cargo run --release --example reproduce -- --report-only
//! cargo run --release --example reproduce -- --quick   # `make reproduce-quick`: every table in miniature
//! ```

#[path = "../common/mod.rs"]
mod common;
mod report;
mod stats;
mod study;

use altup_moe::data::{RunData, RunTokenizer};
use altup_moe::data::{TextTokenizer, TokenizerSpec};
use altup_moe::model::ModelConfig;
use altup_moe::parallel::ProcessGroup;
use altup_moe::train::{current_commit, run, RunConfig, RunOptions, RunRecord, TrainConfig, Trainer};
use clap::Parser;
use common::curves::read_metrics;
use common::{device_name, log, parse_device, progress_bar, run_data, Progress};
use report::{part_name, write_report, Records};
use std::path::PathBuf;
use std::process::ExitCode;
use study::{stacks, Part};
use tch::Device;

/// Train the stacks of the AltUp/MoE claims with several seeds and write a report.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The part to train (default: every part whose runs are not recorded yet).
    #[arg(long, value_enum)]
    part: Option<Part>,
    /// Only rewrite the report from the recorded runs.
    #[arg(long, conflicts_with = "part")]
    report_only: bool,
    /// Optimizer steps per run.
    #[arg(long, default_value_t = 2000)]
    steps: u64,
    /// Seeds per stack.
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Train only this seed of the part (below --seeds), to split a long part into shorter
    /// sessions; the report still reads every recorded seed.
    #[arg(long, requires = "part")]
    seed: Option<u64>,
    /// Evaluate every this many steps.
    #[arg(long, default_value_t = 100)]
    eval_every: u64,
    /// Validation batches per evaluation.
    #[arg(long, default_value_t = 32)]
    eval_batches: usize,
    /// A few minutes instead of hours: 150 steps, 1 seed, widths 32/64/128, smaller
    /// evaluations, every part; runs under runs/reproduce-quick, records and the report under
    /// target/ (these override --steps, --seeds, --eval-every, --eval-batches, --runs, --report).
    #[arg(long)]
    quick: bool,
    /// A UTF-8 text file, a folder of them, or a folder prepared by the `prepare` example
    /// [default: Shakespeare's plays].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Tokenizer of every run: bytes (256 ids), bpe:N (a byte-level BPE of N ids trained once on
    /// the training split, saved as tokenizer.json in each run folder), or the path of a
    /// tokenizer.json. Validation bits per byte stay per byte of text, so reports compare.
    #[arg(long, default_value = "bytes")]
    tokenizer: TokenizerSpec,
    /// Folder for the runs' checkpoints and metrics [default: runs/reproduce, or
    /// runs/reproduce-TOKENIZER for subwords].
    #[arg(long)]
    runs: Option<PathBuf>,
    /// The report to write; the run records go to its folder's results/runs [default:
    /// docs/results.md, or docs/results-TOKENIZER.md for subwords].
    #[arg(long)]
    report: Option<PathBuf>,
    /// cpu, cuda, cuda:N, or auto.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    device: Device,
    /// Retrain the chosen runs even if their records match.
    #[arg(long)]
    fresh: bool,
    /// Train only the stack of this name (repeatable; the report's names, e.g. dense,
    /// altup-k2+switch-e8, dense-d256) [default: every stack of the chosen parts].
    #[arg(long, value_name = "NAME")]
    stack: Vec<String>,
}

/// The tokenizer as a file-name part: "" for bytes, "-bpe2048", "-NAME" for a tokenizer.json.
fn tokenizer_suffix(spec: &TokenizerSpec) -> String {
    match spec {
        TokenizerSpec::Bytes => String::new(),
        TokenizerSpec::Bpe(n) => format!("-bpe{n}"),
        TokenizerSpec::File(path) => {
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let clean: String = stem.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
            format!("-{clean}")
        }
    }
}

/// Where the runs, the records, the plots and the report go.
struct Paths {
    runs: PathBuf,
    report: PathBuf,
    records: PathBuf,
    plots: PathBuf,
}

impl Paths {
    fn new(args: &Args) -> Self {
        let suffix = tokenizer_suffix(&args.tokenizer);
        let (runs, report) = if args.quick {
            (
                PathBuf::from(format!("runs/reproduce-quick{suffix}")),
                PathBuf::from(format!("target/results-quick{suffix}.md")),
            )
        } else {
            (
                args.runs.clone().unwrap_or_else(|| PathBuf::from(format!("runs/reproduce{suffix}"))),
                args.report.clone().unwrap_or_else(|| PathBuf::from(format!("docs/results{suffix}.md"))),
            )
        };
        // docs/results.md → docs/results/ (plots) and docs/results/runs/ (records).
        let plots = report.with_extension("");
        Self { records: plots.join("runs"), plots, runs, report }
    }
}

/// The run of one stack with one seed: the stack's model with the study's training settings
/// and the library's other defaults, on `data` (the corpus named as `data_shown`).
fn run_of(args: &Args, data: &RunData, data_shown: &str, config: &ModelConfig, seed: u64) -> RunConfig {
    let train = TrainConfig {
        steps: args.steps,
        warmup_steps: TrainConfig::default_warmup(args.steps),
        eval_every: args.eval_every,
        eval_batches: args.eval_batches,
        ..TrainConfig::default()
    };
    let mut run = RunConfig { model: config.clone(), train }.with_seed(seed).on_data(data);
    run.train.data = data_shown.to_string();
    run
}

/// Trains one stack with one seed (unless its record already matches) and records it with
/// `commit`, the checkout's commit when the study started.
fn train_one(
    args: &Args,
    paths: &Paths,
    data: &RunData,
    (name, run_config): (&str, &RunConfig),
    commit: Option<&str>,
) -> altup_moe::Result<()> {
    let seed = run_config.train.seed;
    if !args.fresh && RunRecord::read(&paths.records, name, seed)?.is_some_and(|r| r.is_run_of(run_config)) {
        eprintln!("{name:<30} seed {seed}: recorded in {}, kept (--fresh retrains)", paths.records.display());
        return Ok(());
    }
    let out = paths.runs.join(format!("{name}-seed{seed}"));
    std::fs::create_dir_all(&out).map_err(|e| altup_moe::Error::io(&out, e))?;
    data.tokenizer.save_to_folder(&out)?;
    let (vs, model) = run_config.build_model(&ProcessGroup::single(), args.device)?;
    let tc = &run_config.train;
    let mut trainer = Trainer::new(&vs, &model, &data.train, &data.val, tc.clone())?;
    let options =
        RunOptions { out_dir: out.clone(), save_every: None, keep_checkpoints: 1, stop_after: None, overwrite: true };
    // A bar on a terminal (evaluations above it), plain evaluation lines in a log.
    let bar = progress_bar(tc.steps, 0);
    log(&bar, format!("{name:<30} seed {seed}: training {} steps in {}", tc.steps, out.display()));
    let started = std::time::Instant::now();
    let result = run(&mut trainer, None, &options, &mut Progress::new(&bar, None));
    bar.finish_and_clear();
    result?;
    let record = RunRecord::new(name, run_config, commit.map(str::to_string), &read_metrics(&out)?);
    record.write(&paths.records)?;
    eprintln!("{name:<30} seed {seed}: val bpb {:.4} in {:.0} s", record.final_bpb(), started.elapsed().as_secs_f64());
    Ok(())
}

fn run_all(mut args: Args) -> altup_moe::Result<()> {
    if args.quick {
        args.steps = 150;
        args.seeds = 1;
        args.eval_every = 50;
        args.eval_batches = 4;
    }
    if let Some(seed) = args.seed.filter(|&s| s >= args.seeds) {
        return Err(altup_moe::Error::Config(format!("--seed {seed} is not below --seeds {}", args.seeds)));
    }
    let paths = Paths::new(&args);
    // The code that trains: the commit checked out now (the checkout may change during a study).
    let commit = current_commit();
    let tokenizer = RunTokenizer::FromSpec(args.tokenizer.clone());
    let data = run_data(args.data.as_deref(), &Default::default(), &tokenizer, &|line| eprintln!("{line}"))?;
    // Name the corpus relative to the working folder: records and the report are committed.
    let cwd = format!("{}/", std::env::current_dir().unwrap_or_default().display());
    let data_shown = data.description.replace(&cwd, "");
    let all_stacks: Vec<_> = Part::ALL.iter().flat_map(|&p| stacks(p, args.quick)).collect();
    let names: Vec<String> = all_stacks.iter().map(|s| s.name.clone()).collect();
    if let Some(unknown) = args.stack.iter().find(|n| !names.contains(n)) {
        return Err(altup_moe::Error::Config(format!(
            "--stack {unknown}: no such stack (stacks: {})",
            names.join(", ")
        )));
    }
    let parts: Vec<Part> = match (args.report_only, args.part) {
        (true, _) => Vec::new(),
        (false, Some(part)) => vec![part],
        (false, None) => Part::ALL.to_vec(),
    };
    // Seeds outside, stacks inside: a slow spell of a shared machine then lands on every stack
    // rather than on one, which keeps the step-time ratios fair.
    for part in parts {
        eprintln!("part {}", part_name(part));
        for seed in (0..args.seeds).filter(|s| args.seed.is_none_or(|chosen| chosen == *s)) {
            let chosen =
                stacks(part, args.quick).into_iter().filter(|s| args.stack.is_empty() || args.stack.contains(&s.name));
            for stack in chosen {
                let run = run_of(&args, &data, &data_shown, &stack.config, seed);
                train_one(&args, &paths, &data, (&stack.name, &run), commit.as_deref())?;
            }
        }
    }
    // The tables compare only records the study would keep now: same model, settings and corpus.
    let is_current = |r: &RunRecord| {
        let stack = all_stacks.iter().find(|s| s.name == r.name);
        stack.is_some_and(|s| r.is_run_of(&run_of(&args, &data, &data_shown, &s.config, r.seed)))
    };
    let records = Records::read(&paths.records, &names, args.seeds, &data.hash, is_current)?;
    let [small, base, large] = study::sizes(args.quick);
    let unit = if matches!(data.tokenizer, TextTokenizer::Bytes) { "bytes" } else { "tokens" };
    // The corpus the records were trained on (this run's data when they disagree).
    let trained_on = records.data().unwrap_or(&data_shown);
    let header = format!(
        "{} language models on {trained_on} (90/10 split), 4 blocks, 4 heads, F = 4d (d = {base} unless a \
         table says otherwise; the size trend adds d = {small} and {large}), 16 × 128 {unit} per step, {} steps \
         (warmup {} + cosine to 10%, peak lr 3e-3, AdamW), {} seed(s) per stack, {}, {} threads. Validation on {} \
         × 16 windows of 128 {unit}. Generated by `make reproduce` (`cargo run --release --example reproduce`) \
         from the run records in `{}`. Step time is wall time per optimizer step including evaluations, the \
         median over seeds, relative to dense.",
        match &data.tokenizer {
            TextTokenizer::Bytes => "Byte-level".to_string(),
            t => format!("Subword ({}, {} ids)", args.tokenizer, t.vocab_size()),
        },
        args.steps,
        50.min(args.steps / 10),
        args.seeds,
        device_name(args.device),
        tch::get_num_threads(),
        args.eval_batches,
        paths.records.display()
    );
    let md = write_report(&records, &header, &paths.report, &paths.plots, args.quick)?;
    println!("{md}");
    eprintln!("wrote {} and {}/", paths.report.display(), paths.plots.display());
    Ok(())
}

fn main() -> ExitCode {
    common::exit_code(run_all(Args::parse()))
}
