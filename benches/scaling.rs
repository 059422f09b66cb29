//! Parameter-versus-compute scaling: sweeps the number of experts E ∈ {1, 2, 4, 8, 16, 32, 64}
//! for top-1 and top-2 routing, and AltUp K ∈ {1, 2, 4}, at a fixed model width and tokens per
//! step. For each point it records total and active parameters, analytic forward FLOPs per
//! token, and the forward+backward time of a training step. The points of a family are timed in
//! interleaved rounds (each round runs every point once), and each point's time relative to the
//! family's first point is the median of the per-round ratios with a 95% interval. Writes
//! `scaling.json`, `scaling.md` and two SVG plots to `--out`.
//!
//! ```text
//! cargo bench --bench scaling -- --out docs/benchmarks
//! ```

#[path = "../examples/common/mod.rs"]
mod common;

use altup_moe::altup::AltUpConfig;
use altup_moe::model::{Arch, LanguageModel, ModelConfig};
use altup_moe::moe::MoeConfig;
use altup_moe::testing::timing::{interleaved, median, seconds, PairedRatio};
use clap::Parser;
use common::{device_name, parse_device, plot_err};
use plotters::coord::combinators::LogCoord;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use tch::{nn::VarStore, Device, Kind, Reduction, Tensor};

/// Sweep experts and AltUp blocks at fixed width and tokens per step; write a table and plots.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Set by `cargo bench` (ignored).
    #[arg(long, hide = true)]
    bench: bool,
    /// Model width d.
    #[arg(long, default_value_t = 256)]
    d_model: usize,
    /// Blocks (MoE on every other block).
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 64)]
    batch_size: i64,
    /// Tokens per sequence (tokens per step = batch × sequence).
    #[arg(long, default_value_t = 256)]
    seq_len: i64,
    /// Timed rounds per family (each round runs every point of the family once).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Untimed warm-up rounds.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Output folder.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// cpu, cuda, cuda:N, or auto.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    device: Device,
    /// Compute in bf16 (e.g. on a GPU).
    #[arg(long)]
    bf16: bool,
}

/// One point of the sweep.
#[derive(Debug, Clone, Serialize)]
struct Point {
    family: String,
    experts: usize,
    top_k: usize,
    altup_blocks: usize,
    total_params: usize,
    active_params: usize,
    forward_flops_per_token: f64,
    step_seconds: f64,
    relative_time: f64,
    relative_low: f64,
    relative_high: f64,
}

/// Forward FLOPs per token: 2 per active matmul weight (embeddings excluded), attention scores
/// and mixing `4·T·D` per block, AltUp mixing `2(K² + K)·D` per block.
fn forward_flops(config: &ModelConfig, seq_len: i64) -> f64 {
    let counts = config.param_counts();
    let k = config.altup_blocks();
    let embedding = config.vocab_size * config.embedding_width();
    let matmul = (counts.active_per_token - embedding) as f64;
    let per_block = 4.0 * seq_len as f64 * config.d_model as f64 + 2.0 * ((k * k + k) * config.d_model) as f64;
    2.0 * matmul + config.num_layers as f64 * per_block
}

/// One forward+backward step of `config`'s model on random bytes, as a call returning its seconds.
fn step(args: &Args, config: &ModelConfig) -> altup_moe::Result<Box<dyn FnMut() -> altup_moe::Result<f64>>> {
    let vs = VarStore::new(args.device);
    let mut model = LanguageModel::new(&vs.root(), config)?;
    if args.bf16 {
        model.set_precision(altup_moe::model::Precision::Bf16);
    }
    let tokens = Tensor::randint(256, [args.batch_size, args.seq_len + 1], (Kind::Int64, args.device));
    let (inputs, targets) = (tokens.narrow(1, 0, args.seq_len), tokens.narrow(1, 1, args.seq_len));
    let device = args.device;
    Ok(Box::new(move || {
        let _keep = &vs;
        seconds(|| {
            let out = model.forward_t(&inputs, true)?;
            let mut loss = out.logits.view([-1, 256]).f_cross_entropy_loss::<Tensor>(
                &targets.reshape([-1]),
                None,
                Reduction::Mean,
                -100,
                0.0,
            )?;
            if let (Some(lb), Some(z)) = (out.aux.load_balancing_loss()?, out.aux.z_loss()?) {
                loss = loss + lb * 0.01 + z * 0.001;
            }
            loss.f_backward()?;
            if let Device::Cuda(index) = device {
                tch::Cuda::synchronize(index as i64);
            }
            Ok(())
        })
    }))
}

fn base_config(args: &Args) -> ModelConfig {
    let mut config = ModelConfig::preset(Arch::Dense);
    config.d_model = args.d_model;
    config.num_layers = args.layers;
    config.max_seq_len = args.seq_len as usize;
    config.ffn.d_ff = 4 * args.d_model;
    config
}

/// A family's points, timed in interleaved rounds; ratios against its first point.
fn family(
    args: &Args,
    family: &str,
    members: Vec<(ModelConfig, usize, usize, usize)>,
) -> altup_moe::Result<Vec<Point>> {
    eprintln!("{family}: {} points, {} rounds", members.len(), args.runs);
    let mut calls = members.iter().map(|(config, ..)| step(args, config)).collect::<altup_moe::Result<Vec<_>>>()?;
    let mut refs: Vec<&mut dyn FnMut() -> altup_moe::Result<f64>> = calls.iter_mut().map(|c| &mut **c as _).collect();
    let times = interleaved(args.warmup, args.runs, &mut refs)?;
    Ok(members
        .iter()
        .zip(&times)
        .map(|((config, experts, top_k, k), t)| {
            let counts = config.param_counts();
            let ratio = PairedRatio::new(&times[0], t);
            let point = Point {
                family: family.to_string(),
                experts: *experts,
                top_k: *top_k,
                altup_blocks: *k,
                total_params: counts.total,
                active_params: counts.active_per_token,
                forward_flops_per_token: forward_flops(config, args.seq_len),
                step_seconds: median(t),
                relative_time: ratio.median,
                relative_low: ratio.low,
                relative_high: ratio.high,
            };
            eprintln!(
                "{:<8} E={:<3} k={} K={} | {:>7.2}M params, {:>6.2}M active | {:>7.1} MFLOP/token | {:>8.1} ms ({})",
                point.family,
                experts,
                top_k,
                k,
                point.total_params as f64 / 1e6,
                point.active_params as f64 / 1e6,
                point.forward_flops_per_token / 1e6,
                point.step_seconds * 1e3,
                ratio.show()
            );
            point
        })
        .collect())
}

fn sweep(args: &Args) -> altup_moe::Result<Vec<Point>> {
    let mut points: Vec<Point> = Vec::new();
    for top_k in [1usize, 2] {
        let members = [1usize, 2, 4, 8, 16, 32, 64]
            .into_iter()
            .filter(|&e| e >= top_k)
            .map(|e| {
                let mut config = base_config(args);
                config.moe = Some(MoeConfig { num_experts: e, top_k, d_ff: 4 * args.d_model, ..MoeConfig::default() });
                (config, e, top_k, 1)
            })
            .collect();
        points.extend(family(args, &format!("moe-k{top_k}"), members)?);
    }
    let members = [1usize, 2, 4]
        .into_iter()
        .map(|k| {
            let mut config = base_config(args);
            config.altup = Some(AltUpConfig { num_blocks: k, ..AltUpConfig::default() });
            (config, 0, 0, k)
        })
        .collect();
    points.extend(family(args, "altup", members)?);
    Ok(points)
}

/// One sweep family on a log-x chart: a labelled line with a marker at each point.
fn draw_family(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<LogCoord<f64>, RangedCoordf64>>,
    family: &str,
    color: RGBColor,
    data: Vec<(f64, f64)>,
) -> altup_moe::Result<()> {
    chart
        .draw_series(LineSeries::new(data.clone(), color.stroke_width(2)))
        .map_err(plot_err)?
        .label(family)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    chart.draw_series(data.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(plot_err)?;
    Ok(())
}

fn plots(points: &[Point], out: &std::path::Path) -> altup_moe::Result<()> {
    let families = [("moe-k1", RED), ("moe-k2", BLUE), ("altup", GREEN)];
    let series = |f: &str| points.iter().filter(|p| p.family == f).collect::<Vec<_>>();
    // Parameters vs step time.
    let path = out.join("scaling_params_vs_time.svg");
    let root = SVGBackend::new(&path, (720, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let max_params = points.iter().map(|p| p.total_params as f64).fold(1.0, f64::max) * 1.5;
    let min_params = points.iter().map(|p| p.total_params as f64).fold(f64::MAX, f64::min) / 1.5;
    let max_ms = points.iter().map(|p| p.step_seconds * 1e3).fold(0.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption("Total parameters vs forward+backward step time", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((min_params..max_params).log_scale(), 0.0..max_ms)
        .map_err(plot_err)?;
    chart.configure_mesh().x_desc("total parameters").y_desc("step time (ms)").draw().map_err(plot_err)?;
    for (family, color) in families {
        let data = series(family).iter().map(|p| (p.total_params as f64, p.step_seconds * 1e3)).collect();
        draw_family(&mut chart, family, color, data)?;
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.8)).draw().map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    // Relative step time vs E (or K).
    let path = out.join("scaling_relative_time.svg");
    let root = SVGBackend::new(&path, (720, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let max_rel = points.iter().map(|p| p.relative_high).filter(|h| h.is_finite()).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption("Step time relative to E = 1 (top-1), E = 2 (top-2), K = 1 (AltUp), 95% intervals", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((1.0f64..80.0).log_scale(), 0.0..max_rel)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("experts E / AltUp blocks K")
        .y_desc("relative step time")
        .draw()
        .map_err(plot_err)?;
    let x_of = |p: &Point| (if p.family == "altup" { p.altup_blocks } else { p.experts }) as f64;
    for (family, color) in families {
        let data = series(family).iter().map(|p| (x_of(p), p.relative_time)).collect();
        draw_family(&mut chart, family, color, data)?;
        // The 95% interval of each ratio.
        let bars = series(family).into_iter().map(|p| {
            PathElement::new(vec![(x_of(p), p.relative_low), (x_of(p), p.relative_high)], color.stroke_width(1))
        });
        chart.draw_series(bars).map_err(plot_err)?;
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.8)).draw().map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

fn table(points: &[Point], args: &Args) -> String {
    let mut md = format!(
        "Forward+backward step time of a {}-block model (d = {}, F = {}, MoE on every other block, dropless), {} tokens per step ({} × {}), {}{}; the points of a family timed in {} interleaved rounds (median time), relative = median of the per-round ratios to the family's first point, with its 95% interval.\n\n",
        args.layers,
        args.d_model,
        4 * args.d_model,
        args.batch_size * args.seq_len,
        args.batch_size,
        args.seq_len,
        device_name(args.device),
        if args.bf16 { ", bf16" } else { ", f32" },
        args.runs
    );
    md += "| sweep | E | k | K | total params | active params | fwd MFLOP/token | step (ms) | relative [95%] |\n|---|---|---|---|---|---|---|---|---|\n";
    for p in points {
        md += &format!(
            "| {} | {} | {} | {} | {:.2}M | {:.2}M | {:.1} | {:.1} | {:.3} [{:.3}, {:.3}] |\n",
            p.family,
            if p.experts == 0 { "-".into() } else { p.experts.to_string() },
            if p.top_k == 0 { "-".into() } else { p.top_k.to_string() },
            p.altup_blocks,
            p.total_params as f64 / 1e6,
            p.active_params as f64 / 1e6,
            p.forward_flops_per_token / 1e6,
            p.step_seconds * 1e3,
            p.relative_time,
            p.relative_low,
            p.relative_high
        );
    }
    md
}

fn run(args: Args) -> altup_moe::Result<()> {
    std::fs::create_dir_all(&args.out).map_err(|e| altup_moe::Error::io(&args.out, e))?;
    eprintln!("scaling sweep on {} with {} threads", device_name(args.device), tch::get_num_threads());
    let points = sweep(&args)?;
    altup_moe::io::save_json(&args.out.join("scaling.json"), &points)?;
    let md = table(&points, &args);
    std::fs::write(args.out.join("scaling.md"), &md)
        .map_err(|e| altup_moe::Error::io(args.out.join("scaling.md"), e))?;
    plots(&points, &args.out)?;
    println!("{md}");
    eprintln!(
        "wrote {}/{{scaling.json, scaling.md, scaling_params_vs_time.svg, scaling_relative_time.svg}}",
        args.out.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    // `cargo test --all-targets` runs every bench target without arguments: a report program has
    // nothing to check there (`cargo bench --bench NAME -- ARGS` runs it).
    if std::env::args().len() <= 1 {
        return ExitCode::SUCCESS;
    }
    common::exit_code(run(Args::parse()))
}
