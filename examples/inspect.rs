//! Inspect a trained language model: parameter counts, how its MoE layers use their experts on
//! held-out text, and its AltUp coefficients, as tables.
//!
//! ```text
//! cargo run --example inspect -- --model runs/latest
//! ```

mod common;

use altup_moe::altup::{AltUpCoefficients, BlockSelection, Widening};
use altup_moe::data::RunTokenizer;
use altup_moe::io::load_model;
use altup_moe::model::LanguageModel;
use altup_moe::train::RunSettings;
use clap::Parser;
use common::{human, parse_device, run_data};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use tch::{Device, Kind, Tensor};

/// Parameter counts, expert utilisation and AltUp coefficients of a trained language model.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// A run folder written by `train` (e.g. runs/latest), a step-* checkpoint, or a
    /// model.safetensors with config.json beside it, or a Hugging Face Llama/Mixtral folder.
    #[arg(long, default_value = "runs/latest")]
    model: PathBuf,
    /// Text to measure expert utilisation on: its last 10% (the validation split) [default: the
    /// data the run was trained on (its run.json), else Shakespeare's plays].
    #[arg(long)]
    data: Option<PathBuf>,
    #[command(flatten)]
    files: common::FileFlags,
    /// Validation windows of 128 tokens to route (in batches of 16; fewer when the validation
    /// split is shorter, as the report says).
    #[arg(long, default_value_t = 64)]
    windows: usize,
    /// cpu, cuda, cuda:N, or auto.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    device: Device,
}

/// Appends a line to the report (a `String`; writing to it cannot fail).
macro_rules! report {
    ($out:expr, $($arg:tt)*) => {
        let _ = writeln!($out, $($arg)*);
    };
}

fn params(out: &mut String, model: &LanguageModel) {
    let c = model.param_counts();
    report!(out, "## Parameters\n\n| part | parameters |\n|---|---|");
    for (name, n) in [
        ("total", c.total),
        ("active per token", c.active_per_token),
        ("routed experts", c.expert),
        ("routers", c.router),
        ("AltUp", c.altup),
        ("embedding (+ head)", c.embedding),
    ] {
        report!(out, "| {name} | {} ({n}) |", human(n));
    }
}

/// Tokens per expert, dropped fraction and router entropy per MoE layer over validation windows.
fn utilisation(
    out: &mut String,
    model: &LanguageModel,
    tokenizer: &altup_moe::data::TextTokenizer,
    weights: &std::path::Path,
    args: &Args,
) -> altup_moe::Result<()> {
    let config = model.config();
    let Some(moe) = &config.moe else {
        report!(out, "\n## Experts\n\nNo MoE layers.");
        return Ok(());
    };
    // The data the run was trained on (its run.json), unless --data is given.
    let recorded = match &args.data {
        Some(_) => None,
        None => RunSettings::of_model(weights)?,
    };
    let (path, files) = match &recorded {
        Some(s) => (s.data.clone(), common::FileFlags::of(s)),
        None => (args.data.clone(), args.files.clone()),
    };
    if args.data.is_none() && recorded.is_none() {
        eprintln!("note: no run.json beside {}: routing the default corpus (pass --data)", weights.display());
    }
    let data = run_data(path.as_deref(), &files, &RunTokenizer::Existing(tokenizer.clone()), &|_| {})?;
    let val = data.val;
    let seq_len = 128.min(config.max_seq_len);
    let mut batches = val.eval_batches(16, seq_len, args.windows.div_ceil(16).max(1), args.device)?;
    // Exactly --windows windows (fewer only when the validation split is shorter).
    let mut left = args.windows as i64;
    for batch in &mut batches {
        let keep = batch.inputs.size()[0].min(left);
        batch.inputs = batch.inputs.f_narrow(0, 0, keep)?;
        left -= keep;
    }
    batches.retain(|b| b.inputs.size()[0] > 0);
    let windows: i64 = batches.iter().map(|b| b.inputs.size()[0]).sum();
    let mut per_layer: Vec<(usize, Vec<i64>, f64, f64)> = Vec::new(); // layer, counts, dropped, entropy
    tch::no_grad(|| -> altup_moe::Result<()> {
        for batch in &batches {
            let out = model.forward_t(&batch.inputs, false)?;
            for (i, (layer, aux)) in out.aux.moe_layers().enumerate() {
                let counts = Vec::<i64>::try_from(&aux.assignments_per_expert.f_to_device(Device::Cpu)?)?;
                let entropy = aux.router_entropy.f_double_value(&[])?;
                let dropped = aux.dropped_fraction.f_double_value(&[])?;
                match per_layer.get_mut(i) {
                    Some(entry) => {
                        entry.1.iter_mut().zip(&counts).for_each(|(a, b)| *a += b);
                        entry.2 += dropped;
                        entry.3 += entropy;
                    }
                    None => per_layer.push((layer, counts, dropped, entropy)),
                }
            }
        }
        Ok(())
    })?;
    let n = batches.len() as f64;
    report!(
        out,
        "\n## Experts\n\n{} experts, top-{}, capacity factor {} (evaluation: {}); routed {} validation windows of {seq_len} tokens from {}. Share = an expert's part of the assignments (uniform = {:.1}%); entropy in nats (uniform = {:.2}).\n",
        moe.num_experts,
        moe.top_k,
        moe.capacity_factor.map_or("none (dropless)".to_string(), |c| c.to_string()),
        moe.eval_capacity_factor.map_or("none".to_string(), |c| c.to_string()),
        windows,
        data.description,
        100.0 / moe.num_experts as f64,
        (moe.num_experts as f64).ln(),
    );
    report!(out, "| block | share per expert (%) | busiest / mean | dropped | router entropy |\n|---|---|---|---|---|");
    for (layer, counts, dropped, entropy) in per_layer {
        let total = counts.iter().sum::<i64>().max(1) as f64;
        let shares: Vec<String> = counts.iter().map(|&c| format!("{:.1}", 100.0 * c as f64 / total)).collect();
        let mean = total / counts.len().max(1) as f64;
        let max = counts.iter().copied().max().unwrap_or(0) as f64;
        report!(
            out,
            "| {layer} | {} | {:.2} | {:.1}% | {:.3} |",
            shares.join(" "),
            max / mean,
            100.0 * dropped / n,
            entropy / n
        );
    }
    Ok(())
}

fn matrix(t: &Tensor) -> altup_moe::Result<String> {
    let t = t.f_to_kind(Kind::Double)?.f_to_device(Device::Cpu)?;
    let rows: Vec<Vec<f64>> = match t.dim() {
        1 => vec![Vec::<f64>::try_from(&t)?],
        _ => Vec::<Vec<f64>>::try_from(&t)?,
    };
    Ok(rows
        .iter()
        .map(|r| format!("[{}]", r.iter().map(|v| format!("{v:.3}")).collect::<Vec<_>>().join(", ")))
        .collect::<Vec<_>>()
        .join(" "))
}

fn altup(out: &mut String, model: &LanguageModel) -> altup_moe::Result<()> {
    let layers = model.altup_layers();
    let Some(config) = &model.config().altup else {
        report!(out, "\n## AltUp\n\nNo AltUp.");
        return Ok(());
    };
    report!(
        out,
        "\n## AltUp\n\nK = {} blocks, selection {}, widening {}.",
        config.num_blocks,
        selection_flag(&config.selection),
        widening_flag(config.widening)
    );
    match layers.first().map(|a| &a.coefficients) {
        Some(AltUpCoefficients::Static { .. }) => {
            report!(out, "Predictor P (row i mixes the blocks into prediction i; identity at init) and corrector gains g (ones at init):\n\n| block | P | g |\n|---|---|---|");
        }
        _ => {
            report!(out, "Input-dependent coefficients (Gemma 3n): Frobenius norms of the router W_r and of W_p, W_c (zero at init):\n\n| block | ‖W_r‖ | ‖W_p‖ | ‖W_c‖ |\n|---|---|---|---|");
        }
    }
    for (i, layer) in layers.iter().enumerate() {
        match &layer.coefficients {
            AltUpCoefficients::Static { predictor, corrector } => {
                report!(out, "| {i} | {} | {} |", matrix(predictor)?, matrix(corrector)?);
            }
            AltUpCoefficients::InputDependent { modality_router, prediction_coefs, correction_coefs, .. } => {
                let norm = |t: &Tensor| t.f_norm().and_then(|n| n.f_double_value(&[]));
                report!(
                    out,
                    "| {i} | {:.3} | {:.3} | {:.3} |",
                    norm(modality_router)?,
                    norm(prediction_coefs)?,
                    norm(correction_coefs)?
                );
            }
        }
    }
    Ok(())
}

/// The `train --altup-selection` spelling of a block selection.
fn selection_flag(selection: &BlockSelection) -> String {
    match selection {
        BlockSelection::Alternating => "alternating".into(),
        BlockSelection::Same(j) => format!("same:{j}"),
        BlockSelection::Schedule(s) => {
            format!("schedule:{}", s.iter().map(usize::to_string).collect::<Vec<_>>().join(","))
        }
    }
}

/// The `train --altup-widening` spelling of a widening.
fn widening_flag(widening: Widening) -> &'static str {
    match widening {
        Widening::WideEmbedding => "wide-embedding",
        Widening::Recycled => "recycled",
        Widening::Projected => "projected",
    }
}

/// Builds the whole report before printing it, so that a bad flag or file fails before any output.
fn inspect_main(args: &Args) -> altup_moe::Result<String> {
    common::ensure_flag(args.windows > 0, "--windows (0) must be at least 1")?;
    let loaded = load_model(&args.model, args.device)?.into_decoder()?;
    let c = loaded.model.config();
    let mut out = String::new();
    let out = &mut out;
    report!(out, "# {}\n", loaded.weights.display());
    report!(
        out,
        "d_model {}, {} blocks, {} heads, FFN {}, vocabulary {}, sequences up to {}.\n",
        c.d_model,
        c.num_layers,
        c.attention.num_heads,
        c.ffn.d_ff,
        c.vocab_size,
        c.max_seq_len
    );
    params(out, &loaded.model);
    utilisation(out, &loaded.model, &loaded.tokenizer, &loaded.weights, args)?;
    altup(out, &loaded.model)?;
    Ok(std::mem::take(out))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match inspect_main(&args) {
        // A closed pipe (`inspect | head`) is not an error.
        Ok(report) => match std::io::stdout().lock().write_all(report.as_bytes()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                eprintln!("error: cannot write the report: {e}");
                ExitCode::FAILURE
            }
            _ => ExitCode::SUCCESS,
        },
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use altup_moe::model::{Arch, ModelConfig};
    use altup_moe::train::RunSettings;
    use clap::Parser;

    /// Without --data, the experts are measured on the data the run recorded in run.json, and
    /// --windows is taken literally (20 windows, not 32).
    #[test]
    fn expert_use_is_measured_on_the_runs_own_data_and_windows_are_literal() {
        let tmp = tempfile::tempdir().unwrap();
        let text = tmp.path().join("sonnets.txt");
        std::fs::write(&text, "Shall I compare thee to a summer's day? Thou art more lovely.\n".repeat(1000)).unwrap();
        let run = tmp.path().join("run");
        let mut config = ModelConfig::preset(Arch::Switch);
        (config.d_model, config.num_layers, config.max_seq_len, config.attention.num_heads) = (16, 2, 128, 2);
        config.ffn.d_ff = 32;
        config.moe.as_mut().unwrap().d_ff = 32;
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let _model = LanguageModel::new(&vs.root(), &config).unwrap();
        std::fs::create_dir_all(&run).unwrap();
        altup_moe::io::save_weights(&vs, &run.join("model.safetensors")).unwrap();
        altup_moe::io::save_json(&run.join("config.json"), &config).unwrap();
        let settings = RunSettings { data: Some(text.canonicalize().unwrap()), ..RunSettings::default() };
        settings.write(&run, &altup_moe::parallel::ProcessGroup::single()).unwrap();
        let report = |windows: &str| {
            let run = run.display().to_string();
            let flags = ["inspect", "--model", &run, "--windows", windows, "--device", "cpu"];
            inspect_main(&Args::try_parse_from(flags).unwrap()).unwrap()
        };
        let report20 = report("20");
        assert!(report20.contains("routed 20 validation windows of 128 tokens"), "{report20}");
        assert!(report20.contains("sonnets.txt (1 files"), "{report20}");
        // A split too short for the windows asked for: the report says how many were routed.
        let report500 = report("500");
        assert!(report500.contains("routed 48 validation windows of 128 tokens"), "{report500}");
    }
}
