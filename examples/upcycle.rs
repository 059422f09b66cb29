//! Upcycle a trained dense language model into a Switch-MoE, AltUp or AltUp+MoE model that
//! computes the same function at step 0 (sparse upcycling, Komatsuzaki et al. 2022, arXiv
//! 2212.05055; AltUp from its identity initialisation), then continue training it with
//! `train --init-from`.
//!
//! ```text
//! cargo run --release --example train -- --arch dense --steps 600 --out runs/dense
//! cargo run --release --example upcycle -- --from runs/dense --arch altup-moe --out runs/upcycled
//! cargo run --release --example train -- --init-from runs/upcycled --steps 600 --out runs/upcycled-trained
//! ```
//!
//! Writes `OUT/config.json`, `OUT/model.safetensors` and the dense model's `tokenizer.json` (if
//! it has one), and prints how far the upcycled model's logits are from the dense model's on a
//! random batch (0 up to float rounding).

mod common;

use altup_moe::data::TextTokenizer;
use altup_moe::io::load_model;
use altup_moe::io::{save_json, save_weights};
use altup_moe::model::MoeLayers;
use altup_moe::model::{upcycle, Arch};
use altup_moe::train::Section;
use altup_moe::Error;
use clap::Parser;
use common::flags::ConfigFlags;
use common::{human, parse_device};
use std::path::PathBuf;
use std::process::ExitCode;
use tch::{nn::VarStore, Device, Kind, Tensor};

/// Turn a trained dense model into an MoE, AltUp or AltUp+MoE model with the same function:
/// every expert a copy of the dense FFN, AltUp's blocks copies of the embedding.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The dense model: a run folder written by `train`, a step-* checkpoint, or a
    /// model.safetensors with config.json beside it, or a Hugging Face Llama/Mixtral folder.
    #[arg(long)]
    from: PathBuf,
    /// Output folder for config.json and model.safetensors.
    #[arg(long)]
    out: PathBuf,
    /// Replace a model already in --out.
    #[arg(long)]
    overwrite: bool,
    /// cpu, cuda, cuda:N, or auto.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    device: Device,
    /// What to upcycle to (--arch switch, altup or altup-moe, and/or --residual METHOD) and its
    /// MoE / AltUp settings (the sizes stay the dense model's).
    #[command(flatten)]
    config: ConfigFlags,
}

fn upcycle_main(args: &Args) -> altup_moe::Result<()> {
    let run = args.config.run_config()?;
    let arch = match (&run.model.moe, &run.model.altup) {
        (Some(_), Some(_)) => Arch::AltUpMoe,
        (Some(_), None) => Arch::Switch,
        (None, Some(_)) => Arch::AltUp,
        (None, None) => Arch::Dense,
    };
    let kept = ["--arch", "--residual"];
    let ignored: Vec<String> = args
        .config
        .given_in(&[Section::Model, Section::Training])
        .into_iter()
        .filter(|f| !kept.contains(&f.as_str()))
        .collect();
    if !ignored.is_empty() {
        eprintln!("warning: {} ignored: the upcycled model keeps the dense model's sizes", ignored.join(", "));
    }
    if arch == Arch::Dense && run.model.residual.is_plain() {
        return Err(Error::Config(
            "--arch dense without --residual: upcycle to switch, altup or altup-moe, or to a residual-stream method"
                .into(),
        ));
    }
    let weights_out = args.out.join("model.safetensors");
    if weights_out.exists() && !args.overwrite {
        return Err(Error::Input(format!("{} already exists; pass --overwrite to replace it", weights_out.display())));
    }
    let dense = load_model(&args.from, args.device)?.into_decoder()?;
    let dense_config = dense.model.config().clone();
    let mut target = dense_config.clone();
    if let Some(moe) = run.model.moe {
        // Every expert is a copy of the dense FFN: its width and activation.
        let (d_ff, activation) = (dense_config.ffn.d_ff, dense_config.ffn.activation);
        target.moe = Some(altup_moe::moe::MoeConfig { d_ff, activation, ..moe });
        target.moe_layers = run.model.moe_layers;
    } else {
        target.moe_layers = MoeLayers::default();
    }
    if run.model.altup.is_some() {
        target.altup = run.model.altup;
        // A K·d-wide embedding cannot be tied to the d-wide head: the head starts as a copy.
        target.tie_embeddings &= target.embedding_width() == target.d_model;
    }
    target.residual = run.model.residual;
    let vs = VarStore::new(args.device);
    let model = upcycle(&dense.vs, &dense_config, &target, &vs)?;

    // The function is the dense one: compare logits on a random batch.
    let ids = Tensor::f_randint(
        dense_config.vocab_size as i64,
        [4, dense_config.max_seq_len.min(64) as i64],
        (Kind::Int64, args.device),
    )?;
    let (a, b) = (dense.model.forward_t(&ids, false)?.logits, model.forward_t(&ids, false)?.logits);
    let diff = a.f_sub(&b)?.f_abs()?.f_max()?.f_double_value(&[])?;

    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;
    save_json(&args.out.join("config.json"), &target)?;
    save_weights(&vs, &weights_out)?;
    if !matches!(dense.tokenizer, TextTokenizer::Bytes) {
        dense.tokenizer.save_to_folder(&args.out)?;
    }
    let (before, after) = (dense.model.param_counts(), model.param_counts());
    eprintln!(
        "{} -> {}: {} params ({} active per token) -> {} ({} active); max |logit difference| on a random batch {diff:.2e}",
        dense.weights.display(),
        arch,
        human(before.total),
        human(before.active_per_token),
        human(after.total),
        human(after.active_per_token),
    );
    eprintln!(
        "wrote {}/{{config.json, model.safetensors}}; continue with: train --init-from {}",
        args.out.display(),
        args.out.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    common::exit_code(upcycle_main(&Args::parse()))
}
