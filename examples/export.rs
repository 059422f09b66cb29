//! Export a trained language model as a Hugging Face Llama or Mixtral checkpoint.
//!
//! ```text
//! cargo run --example train -- --arch dense --activation swiglu --steps 600 --out runs/dense
//! cargo run --example export -- --model runs/dense --format hf-llama --out exported/llama
//! python -c "import transformers; transformers.AutoModelForCausalLM.from_pretrained('exported/llama')"
//! ```
//!
//! `--model` takes what `train` writes: its output folder, a `step-*` checkpoint, or a
//! `model.safetensors` with its `config.json` beside it. The output folder gets `config.json`
//! (read alike by transformers 5 and 4.x), `model.safetensors` (f32, Hugging Face names and
//! layouts, `{"format": "pt"}` metadata), `generation_config.json` and, for a subword model, the
//! run's `tokenizer.json` with a `tokenizer_config.json` for `AutoTokenizer` (byte-level models
//! need neither: their vocabulary is the 256 bytes). A model the
//! format cannot express (AltUp, expert choice, shared experts, capacity limits,
//! Sequence-AltUp, GELU FFNs or experts, ...) is refused with the list of everything that
//! prevents the export; train with `--arch`/flags that match Llama (dense, SwiGLU) or Mixtral
//! (MoE in every block, top-2 renormalised, dropless, SwiGLU).

mod common;

use altup_moe::io::load_model;
use altup_moe::io::{export_hf, HfFormat};
use altup_moe::Error;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use tch::Device;

/// Export a trained model as a Hugging Face Llama or Mixtral folder.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// A run folder written by `train` (e.g. runs/latest), a step-* checkpoint, or a
    /// model.safetensors with config.json beside it, or a Hugging Face Llama/Mixtral folder.
    #[arg(long, default_value = "runs/latest")]
    model: PathBuf,
    /// hf-llama (a dense model) or hf-mixtral (an MoE in every block).
    #[arg(long, value_parser = |s: &str| s.parse::<HfFormat>().map_err(|e| e.to_string()))]
    format: HfFormat,
    /// The folder to write (created; must be empty unless --overwrite).
    #[arg(long)]
    out: PathBuf,
    /// Replace the model files (config.json, model.safetensors, generation_config.json,
    /// tokenizer.json, tokenizer_config.json) in a non-empty --out.
    #[arg(long)]
    overwrite: bool,
}

fn export_main(args: &Args) -> altup_moe::Result<()> {
    let occupied = std::fs::read_dir(&args.out).map(|mut d| d.next().is_some()).unwrap_or(false);
    if occupied && !args.overwrite {
        return Err(Error::Input(format!(
            "{} is not empty (pass --overwrite to replace its model files)",
            args.out.display()
        )));
    }
    let loaded = load_model(&args.model, Device::Cpu)?.into_decoder()?;
    export_hf(&loaded.model, &loaded.vs, &loaded.tokenizer, args.format, &args.out)?;
    eprintln!(
        "{} → {} ({}, {} parameters)",
        loaded.weights.display(),
        args.out.display(),
        args.format.architecture(),
        common::human(loaded.model.param_counts().total)
    );
    Ok(())
}

fn main() -> ExitCode {
    common::exit_code(export_main(&Args::parse()))
}
