//! Sample text from a trained language model, streamed as it is drawn; a sample ends at the
//! tokenizer's end-of-text ids (the ETX byte for byte-level models) or after `--tokens`.
//!
//! ```text
//! cargo run --example generate -- --model runs/latest --prompt "ROMEO:" --tokens 300
//! ```
//!
//! `--model` takes what `train` writes: its output folder, a `step-*` checkpoint, or a
//! `model.safetensors` with its `config.json` beside it.

mod common;

use altup_moe::data::TextStream;
use altup_moe::io::load_model;
use altup_moe::model::{Generation, Sampling};
use altup_moe::Error;
use clap::Parser;
use common::{device_name, parse_device};
use rand::SeedableRng;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use tch::Device;

/// Sample from a trained language model (temperature, top-k, top-p), printing text as it is
/// drawn. The prompt is encoded with the tokenizer's template (a BOS where the tokenizer adds
/// one); a sample ends at an end-of-sequence id of the tokenizer (its end-of-text token; the ETX
/// byte 0x03 for byte-level models; a Hugging Face folder's eos_token_id list) or a --stop token.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// A run folder written by `train` (e.g. runs/latest), a step-* checkpoint, or a
    /// model.safetensors with config.json beside it, or a Hugging Face Llama/Mixtral folder.
    #[arg(long, default_value = "runs/latest")]
    model: PathBuf,
    /// The text to continue (encoded with the model's tokenizer: its bytes by default).
    #[arg(long, default_value = "\n")]
    prompt: String,
    /// Most tokens to generate per sample (bytes with the byte tokenizer).
    #[arg(long, default_value_t = 300)]
    tokens: usize,
    /// Also stop at this token, given as its text (repeatable; e.g. --stop $'\n').
    #[arg(long, value_name = "TOKEN")]
    stop: Vec<String>,
    /// Do not stop at the tokenizer's end-of-sequence ids (always generate --tokens).
    #[arg(long)]
    no_stop: bool,
    /// Softmax temperature (0 = greedy).
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    temperature: f64,
    /// Sample among the k most likely tokens only (0 = no cut).
    #[arg(long, default_value_t = 40, allow_negative_numbers = true)]
    top_k: usize,
    /// Nucleus sampling: the smallest set of likely tokens whose probability reaches p, in (0, 1].
    #[arg(long, allow_negative_numbers = true)]
    top_p: Option<f64>,
    /// Independent samples to draw.
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, cuda, cuda:N, or auto.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    device: Device,
}

fn generate_main(args: &Args) -> altup_moe::Result<()> {
    let sampling =
        Sampling { temperature: args.temperature, top_k: (args.top_k > 0).then_some(args.top_k), top_p: args.top_p };
    sampling.validate()?;
    if args.prompt.is_empty() {
        return Err(Error::Input("--prompt must hold at least one character".into()));
    }
    if args.tokens == 0 || args.samples == 0 {
        return Err(Error::Input(format!(
            "--tokens ({}) and --samples ({}) must be at least 1",
            args.tokens, args.samples
        )));
    }
    let loaded = load_model(&args.model, args.device)?.into_decoder()?;
    let tokenizer = &loaded.tokenizer;
    let prompt = tokenizer.encode_prompt(&args.prompt)?;
    let mut stop_ids: Vec<i64> = match args.no_stop {
        true => Vec::new(),
        false => tokenizer.special_tokens().eos.into_iter().map(i64::from).collect(),
    };
    for text in &args.stop {
        match tokenizer.encode(text)?.as_slice() {
            [id] => stop_ids.push(i64::from(*id)),
            ids => {
                return Err(Error::Input(format!(
                    "--stop {text:?} is {} tokens of the model's tokenizer; give the text of one token",
                    ids.len()
                )))
            }
        }
    }
    let generation = Generation::new(args.tokens, sampling).stop_at(stop_ids.iter().copied());
    eprintln!(
        "{} | {} parameters | device {}",
        loaded.weights.display(),
        common::human(loaded.model.param_counts().total),
        device_name(args.device)
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut out = std::io::stdout().lock();
    let mut unknown = 0;
    for i in 0..args.samples {
        if args.samples > 1 {
            let _ = writeln!(out, "--- sample {} ---", i + 1);
        }
        let mut stream = TextStream::new(tokenizer);
        let _ = write!(out, "{}", stream.push_all(&prompt)?);
        let mut on_token = |id: i64| -> altup_moe::Result<()> {
            let _ = write!(out, "{}", stream.push(id)?);
            let _ = out.flush();
            Ok(())
        };
        let tokens = loaded.model.generate_streaming(&prompt, &generation, &mut rng, &mut on_token)?;
        let _ = writeln!(out, "{}", stream.finish()?);
        let new = &tokens[prompt.len()..];
        unknown += tokenizer.unknown_ids(new);
        if new.last().is_some_and(|t| stop_ids.contains(t)) {
            eprintln!("(sample {} ended at a stop id after {} tokens)", i + 1, new.len());
        }
    }
    if unknown > 0 {
        eprintln!(
            "note: {unknown} generated ids are outside the tokenizer's {} ids (the model's vocabulary is padded \
             past it) and were left out of the text",
            tokenizer.vocab_size()
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match generate_main(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if !args.model.exists() {
                eprintln!("(train a model first, e.g. `make train`, or point --model at a run folder)");
            }
            ExitCode::FAILURE
        }
    }
}
