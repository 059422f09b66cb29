//! Sample text from a trained byte-level language model.
//!
//! ```text
//! cargo run --example generate -- --model runs/latest --prompt "ROMEO:" --tokens 300
//! ```
//!
//! `--model` takes what `train` writes: its output folder, a `step-*` checkpoint, or a
//! `model.safetensors` with its `config.json` beside it.

mod common;

use altup_moe::io::load_model;
use altup_moe::model::Sampling;
use altup_moe::Error;
use clap::Parser;
use common::{device_name, parse_device};
use rand::SeedableRng;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use tch::Device;

/// Sample from a trained byte-level language model (temperature, top-k, top-p).
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
    /// Tokens to generate per sample (bytes with the byte tokenizer).
    #[arg(long, default_value_t = 300)]
    tokens: usize,
    /// Softmax temperature (0 = greedy).
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    temperature: f64,
    /// Sample among the k most likely tokens only (0 = no cut).
    #[arg(long, default_value_t = 40, allow_negative_numbers = true)]
    top_k: usize,
    /// Nucleus sampling: the smallest set of likely bytes whose probability reaches p, in (0, 1].
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
    let prompt: Vec<i64> = loaded.tokenizer.encode(&args.prompt)?.into_iter().map(i64::from).collect();
    eprintln!(
        "{} | {} parameters | device {}",
        loaded.weights.display(),
        common::human(loaded.model.param_counts().total),
        device_name(args.device)
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut out = std::io::stdout().lock();
    for i in 0..args.samples {
        let tokens = loaded.model.generate(&prompt, args.tokens, sampling, &mut rng)?;
        if args.samples > 1 {
            let _ = writeln!(out, "--- sample {} ---", i + 1);
        }
        let _ = writeln!(out, "{}", loaded.tokenizer.decode(&tokens)?);
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
