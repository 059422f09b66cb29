//! Reproduces, at small scale on real text, the headline claims of AltUp and MoE: trains dense,
//! AltUp K = 2, Recycled-AltUp K = 2, Switch E = 8, and AltUp K = 2 + Switch E = 8 stacks with
//! equal steps, tokens and learning-rate schedule, several seeds each, and writes a report with
//! validation bits per byte (mean ± std), parameter counts, step time relative to dense, and
//! plots of validation bits per byte against steps and against wall time.
//!
//! ```text
//! cargo run --release --example reproduce              # `make reproduce`, 1-2 hours on 2 cores
//! cargo run --release --example reproduce -- --quick   # `make reproduce-quick`, a few minutes
//! # subwords (runs under runs/reproduce-bpe2048, report docs/results-bpe2048.md):
//! cargo run --release --example reproduce -- --tokenizer bpe:2048
//! ```

mod common;

use altup_moe::altup::AltUpConfig;
use altup_moe::model::{Arch, LanguageModel, ModelConfig};
use altup_moe::moe::MoeConfig;
use altup_moe::train::{
    run, CheckpointMeta, EvalRecord, RunOptions, Silent, TextTokenizer, TokenizerSpec, TrainConfig, Trainer,
};
use clap::Parser;
use common::curves::read_metrics;
use common::data::{run_data, RunData};
use common::{device_name, parse_device, plot_err};
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tch::{nn::VarStore, Device};

/// Train the five stacks of the AltUp/MoE claims with several seeds and write a report.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Optimizer steps per run.
    #[arg(long, default_value_t = 2000)]
    steps: u64,
    /// Seeds per stack.
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Evaluate every this many steps.
    #[arg(long, default_value_t = 100)]
    eval_every: u64,
    /// Validation batches per evaluation.
    #[arg(long, default_value_t = 32)]
    eval_batches: usize,
    /// A few minutes instead of hours: 150 steps, 1 seed, smaller evaluations, runs under
    /// runs/reproduce-quick and the report in target/results-quick.md (these override --steps,
    /// --seeds, --eval-every, --eval-batches, --runs and --report).
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
    /// Folder for the runs [default: runs/reproduce, or runs/reproduce-TOKENIZER for subwords].
    #[arg(long)]
    runs: Option<PathBuf>,
    /// The report to write [default: docs/results.md, or docs/results-TOKENIZER.md for subwords].
    #[arg(long)]
    report: Option<PathBuf>,
    /// cpu, cuda, cuda:N, or auto.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    device: Device,
    /// Retrain every run; by default a run whose final checkpoint matches the current model and
    /// training settings is kept, so an interrupted reproduction continues where it stopped.
    #[arg(long)]
    fresh: bool,
}

/// The five stacks: name and config (d = 128, 4 blocks, F = 512; MoE on blocks 1 and 3).
fn variants() -> Vec<(&'static str, ModelConfig)> {
    let dense = ModelConfig::preset(Arch::Dense);
    let mut altup = ModelConfig::preset(Arch::AltUp);
    altup.altup = Some(AltUpConfig { num_blocks: 2, ..AltUpConfig::default() });
    let mut recycled = ModelConfig::preset(Arch::AltUp);
    recycled.altup = Some(AltUpConfig::recycled(2));
    let mut switch = ModelConfig::preset(Arch::Switch);
    switch.moe = Some(MoeConfig { num_experts: 8, d_ff: 512, ..MoeConfig::default() });
    let mut altup_moe = ModelConfig::preset(Arch::AltUpMoe);
    altup_moe.moe = switch.moe.clone();
    vec![
        ("dense", dense),
        ("altup-k2", altup),
        ("recycled-altup-k2", recycled),
        ("switch-e8", switch),
        ("altup-k2+switch-e8", altup_moe),
    ]
}

/// Whether `out` holds a completed run of exactly this model and these training settings.
fn finished(out: &Path, config: &ModelConfig, tc: &TrainConfig) -> bool {
    let Ok(meta) = CheckpointMeta::read(out) else { return false };
    let same_model = meta.model_config::<ModelConfig>().is_ok_and(|c| &c == config);
    let last_eval = read_metrics(out).ok().and_then(|mut r| r.pop());
    same_model
        && &meta.train_config == tc
        && meta.state.step == tc.steps
        && last_eval.is_some_and(|r| r.step == tc.steps)
}

fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

/// Two-sided 95% critical value of Student's t with `dof` degrees of freedom.
fn t_critical_95(dof: usize) -> f64 {
    const TABLE: [f64; 10] = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228];
    match dof {
        0 => f64::INFINITY,
        d if d <= TABLE.len() => TABLE[d - 1],
        _ => 1.96,
    }
}

/// The median, robust to one run slowed by a busy machine.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Mean validation bpb per evaluation step (or per mean elapsed time) for each variant.
fn plot(curves: &[(String, Vec<(f64, f64)>)], path: &Path, x_desc: &str, title: &str) -> altup_moe::Result<()> {
    let root = SVGBackend::new(path, (760, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let points = curves.iter().flat_map(|(_, c)| c.iter());
    let (x_max, mut y_min, mut y_max) =
        points.fold((0f64, f64::MAX, f64::MIN), |(x, lo, hi), &(px, py)| (x.max(px), lo.min(py), hi.max(py)));
    // Zoom on the second half of training, where the stacks separate.
    y_max = y_max.min(y_min + 1.0);
    y_min -= 0.02;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max * 1.02, y_min..y_max)
        .map_err(plot_err)?;
    chart.configure_mesh().x_desc(x_desc).y_desc("validation bits per byte").draw().map_err(plot_err)?;
    let colors = [BLACK, RED, MAGENTA, BLUE, GREEN];
    for ((name, curve), color) in curves.iter().zip(colors) {
        chart
            .draw_series(LineSeries::new(curve.clone(), color.stroke_width(2)))
            .map_err(plot_err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.85)).draw().map_err(plot_err)?;
    root.present().map_err(plot_err)
}

/// The tokenizer as a file-name part: "" for bytes, "-bpe2048", "-NAME" for a tokenizer.json.
fn tokenizer_suffix(spec: &TokenizerSpec) -> String {
    match spec {
        TokenizerSpec::Bytes => String::new(),
        TokenizerSpec::Bpe(n) => format!("-bpe{n}"),
        TokenizerSpec::File(path) => {
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            format!(
                "-{}",
                stem.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect::<String>()
            )
        }
    }
}

/// Where the runs and the report go.
struct Paths {
    runs: PathBuf,
    report: PathBuf,
}

fn run_all(mut args: Args) -> altup_moe::Result<()> {
    let suffix = tokenizer_suffix(&args.tokenizer);
    let mut paths = Paths {
        runs: args.runs.clone().unwrap_or_else(|| PathBuf::from(format!("runs/reproduce{suffix}"))),
        report: args.report.clone().unwrap_or_else(|| match suffix.is_empty() {
            true => PathBuf::from("docs/results.md"),
            false => PathBuf::from(format!("docs/results{suffix}.md")),
        }),
    };
    if args.quick {
        args.steps = 150;
        args.seeds = 1;
        args.eval_every = 50;
        args.eval_batches = 4;
        paths.runs = PathBuf::from(format!("runs/reproduce-quick{suffix}"));
        paths.report = PathBuf::from(format!("target/results-quick{suffix}.md"));
    }
    let RunData { description, hash, tokenizer, spec, train, val, .. } =
        run_data(args.data.as_deref(), None, &args.tokenizer, &|line| eprintln!("{line}"))?;
    let variants = variants();
    // Seeds outside, stacks inside: a slow spell of a shared machine then lands on every stack
    // rather than on one, which keeps the step-time ratios fair.
    for seed in 0..args.seeds {
        for (name, config) in &variants {
            let out = paths.runs.join(format!("{name}-seed{seed}"));
            let mut config = config.clone();
            config.init_seed = seed;
            config.max_seq_len = 128;
            config.vocab_size = tokenizer.vocab_size();
            let tc = TrainConfig {
                steps: args.steps,
                warmup_steps: 50.min(args.steps / 10),
                eval_every: args.eval_every,
                eval_batches: args.eval_batches,
                seed,
                data: description.clone(),
                data_hash: hash.clone(),
                tokenizer: spec.clone(),
                ..TrainConfig::default()
            };
            if !args.fresh && finished(&out, &config, &tc) {
                eprintln!("{name:<20} seed {seed}: finished earlier in {}, kept (--fresh retrains)", out.display());
                continue;
            }
            std::fs::create_dir_all(&out).map_err(|e| altup_moe::Error::io(&out, e))?;
            tokenizer.save_to_folder(&out)?;
            let vs = VarStore::new(args.device);
            let model = LanguageModel::new(&vs.root(), &config)?;
            let mut trainer = Trainer::new(&vs, &model, &train, &val, tc)?;
            let options = RunOptions {
                out_dir: out.clone(),
                save_every: None,
                keep_checkpoints: 1,
                stop_after: None,
                overwrite: true,
            };
            let started = std::time::Instant::now();
            run(&mut trainer, None, &options, &mut Silent)?;
            let last = read_metrics(&out)?.pop();
            eprintln!(
                "{name:<20} seed {seed}: val bpb {:.4} in {:.0} s",
                last.map_or(f64::NAN, |r| r.val_bpb),
                started.elapsed().as_secs_f64()
            );
        }
    }
    // Name the corpus relative to the working folder: the report is committed.
    let cwd = format!("{}/", std::env::current_dir().unwrap_or_default().display());
    let shown = description.replace(&cwd, "");
    report(&args, &paths, &tokenizer, &variants, &shown)
}

/// Everything from this line on in an existing report is kept when the report is rewritten.
const HAND_WRITTEN: &str = "<!-- hand-written reading below: kept by `make reproduce` -->";

fn report(
    args: &Args,
    paths: &Paths,
    tokenizer: &TextTokenizer,
    variants: &[(&str, ModelConfig)],
    data: &str,
) -> altup_moe::Result<()> {
    let mut rows = Vec::new();
    let (mut by_step, mut by_time) = (Vec::new(), Vec::new());
    for (name, config) in variants {
        let runs: Vec<Vec<EvalRecord>> = (0..args.seeds)
            .map(|seed| {
                let dir = paths.runs.join(format!("{name}-seed{seed}"));
                let records = read_metrics(&dir)?;
                match records.is_empty() {
                    true => Err(altup_moe::Error::Data(format!("{} holds no metrics.jsonl records", dir.display()))),
                    false => Ok(records),
                }
            })
            .collect::<altup_moe::Result<_>>()?;
        let finals: Vec<f64> = runs.iter().filter_map(|r| r.last().map(|x| x.val_bpb)).collect();
        let step_time: Vec<f64> = runs.iter().filter_map(|r| r.last().map(|x| x.elapsed_s / x.step as f64)).collect();
        let evals = runs.iter().map(|r| r.len()).min().unwrap_or(0);
        let mean_at =
            |i: usize, f: &dyn Fn(&EvalRecord) -> f64| runs.iter().map(|r| f(&r[i])).sum::<f64>() / runs.len() as f64;
        by_step.push((
            name.to_string(),
            (0..evals).map(|i| (mean_at(i, &|r| r.step as f64), mean_at(i, &|r| r.val_bpb))).collect(),
        ));
        // Wall time: the median over seeds, like the step time (one run slowed by a busy machine
        // would otherwise shift the whole curve).
        let median_at = |i: usize, f: &dyn Fn(&EvalRecord) -> f64| median(runs.iter().map(|r| f(&r[i])).collect());
        by_time.push((
            name.to_string(),
            (0..evals).map(|i| (median_at(i, &|r| r.elapsed_s), mean_at(i, &|r| r.val_bpb))).collect(),
        ));
        rows.push((name.to_string(), mean_std(&finals), config.param_counts(), median(step_time), finals));
    }
    let plots = paths.report.with_extension("");
    std::fs::create_dir_all(&plots).map_err(|e| altup_moe::Error::io(&plots, e))?;
    plot(
        &by_step,
        &plots.join("val_bpb_vs_steps.svg"),
        "optimizer steps",
        "Validation bits per byte (mean over seeds)",
    )?;
    plot(
        &by_time,
        &plots.join("val_bpb_vs_time.svg"),
        "wall time (s, median over seeds)",
        "Validation bits per byte (mean over seeds) against wall time",
    )?;
    let dense_time = rows[0].3;
    let unit = if matches!(tokenizer, TextTokenizer::Bytes) { "bytes" } else { "tokens" };
    let plots_link = plots.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut md = String::new();
    let _ = writeln!(md, "# Reproducing AltUp's and MoE's claims at small scale\n");
    let _ = writeln!(
        md,
        "{} language models on {data} (90/10 split), d = 128, 4 blocks, 4 heads, F = 512, \
         16 × 128 {unit} per step, {} steps (warmup {} + cosine to 10%, peak lr 3e-3, AdamW), {} seed(s) \
         per stack, {}, {} threads. Validation on {} × 16 windows of 128 {unit}. Generated by \
         `make reproduce` (`cargo run --release --example reproduce`). Step time is wall time per \
         optimizer step including evaluations, the median over seeds, relative to dense.\n",
        match tokenizer {
            TextTokenizer::Bytes => "Byte-level".to_string(),
            _ => format!("Subword ({}, {} ids)", args.tokenizer, tokenizer.vocab_size()),
        },
        args.steps,
        50.min(args.steps / 10),
        args.seeds,
        device_name(args.device),
        tch::get_num_threads(),
        args.eval_batches
    );
    let _ = writeln!(md, "| stack | val bits/byte (mean ± std) | per seed | total params | active params | step time (ms) | vs dense |\n|---|---|---|---|---|---|---|");
    for (name, (mean, std), counts, time, finals) in &rows {
        let per_seed: Vec<String> = finals.iter().map(|f| format!("{f:.4}")).collect();
        let _ = writeln!(
            md,
            "| {name} | {mean:.4} ± {std:.4} | {} | {:.2}M | {:.2}M | {:.0} | {:.2}× |",
            per_seed.join(", "),
            counts.total as f64 / 1e6,
            counts.active_per_token as f64 / 1e6,
            time * 1e3,
            time / dense_time
        );
    }
    let _ = writeln!(
        md,
        "\n![validation bpb vs steps]({plots_link}/val_bpb_vs_steps.svg)\n\n\
         ![validation bpb vs wall time]({plots_link}/val_bpb_vs_time.svg)\n"
    );
    let _ = writeln!(md, "## The claims, checked against the seed spread\n");
    let find = |n: &str| rows.iter().find(|r| r.0 == n);
    let claims = [
        ("AltUp improves quality at almost no extra latency", "altup-k2", "dense"),
        ("Recycled-AltUp improves pre-training with no perceptible slowdown", "recycled-altup-k2", "dense"),
        ("Switch-style MoE improves quality at equal active compute", "switch-e8", "dense"),
        ("AltUp adds to MoE (AltUp+MoE vs MoE alone)", "altup-k2+switch-e8", "switch-e8"),
        ("MoE adds to AltUp (AltUp+MoE vs AltUp alone)", "altup-k2+switch-e8", "altup-k2"),
    ];
    for (claim, a, b) in claims {
        let (Some(ra), Some(rb)) = (find(a), find(b)) else { continue };
        // Seed s gives every stack the same data order and validation windows, so the per-seed
        // differences are paired: compare their mean with its standard error (Student's t).
        let diffs: Vec<f64> = ra.4.iter().zip(&rb.4).map(|(x, y)| x - y).collect();
        let (diff, diff_std) = mean_std(&diffs);
        let n = diffs.len();
        let t = diff / (diff_std / (n as f64).sqrt());
        let t_crit = t_critical_95(n.saturating_sub(1));
        let verdict = if n < 2 {
            "one seed: no spread to compare with".to_string()
        } else if t < -t_crit {
            format!("holds here (paired t = {t:.1}, beyond the 95% bound ±{t_crit:.2})")
        } else if t > t_crit {
            format!("does not hold here: worse (paired t = {t:.1}, beyond ±{t_crit:.2})")
        } else {
            format!("not resolved at this scale (paired t = {t:.1}, within ±{t_crit:.2})")
        };
        let _ = writeln!(
            md,
            "- **{claim}**: {a} − {b} = {diff:+.4} bits/byte (per seed {}; std of the paired differences \
             {diff_std:.4}; unpaired seed std {:.4}); step time {:.2}× → {verdict}.",
            diffs.iter().map(|d| format!("{d:+.4}")).collect::<Vec<_>>().join(", "),
            (ra.1 .1.powi(2) + rb.1 .1.powi(2)).sqrt(),
            ra.3 / rb.3
        );
    }
    println!("{md}");
    // Keep a hand-written reading of the numbers across regenerations.
    if let Some(kept) = std::fs::read_to_string(&paths.report)
        .ok()
        .and_then(|old| old.find(HAND_WRITTEN).map(|at| old[at..].to_string()))
    {
        let _ = write!(md, "\n{kept}");
    }
    std::fs::write(&paths.report, &md).map_err(|e| altup_moe::Error::io(&paths.report, e))?;
    eprintln!("wrote {} and {}/", paths.report.display(), plots.display());
    Ok(())
}

fn main() -> ExitCode {
    common::exit_code(run_all(Args::parse()))
}
