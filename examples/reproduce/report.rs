//! The report: tables with paired statistics and plots, regenerated from the run records alone.

use crate::common::plot_err;
use crate::stats::{first_crossing, mean_std, median, Paired};
use crate::study::{sized, sizes, stacks, Part, PLACEMENTS, RESIDUAL_METHODS};
use altup_moe::train::RunRecord;
use plotters::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

/// Everything from this line on in an existing report is kept when the report is rewritten.
pub const HAND_WRITTEN: &str = "<!-- hand-written reading below: kept by `make reproduce` -->";

/// The finished records of every stack, by name, each in seed order: those the tables compare
/// (the study would keep them now) and the stale rest.
pub struct Records {
    by_name: BTreeMap<String, Vec<RunRecord>>,
    /// Records whose model, training settings or corpus differ from what the study trains now
    /// (`make reproduce` retrains them): shown apart, never paired with current ones.
    stale: Vec<RunRecord>,
    /// Content hash of the corpus the study trains on now.
    data_hash: String,
}

impl Records {
    /// Every record under `dir` for seeds `0..seeds`; `is_current` says whether the study would
    /// keep a record as it is (same model, settings and corpus, whose hash is `data_hash`).
    ///
    /// # Errors
    /// A damaged record file.
    pub fn read(
        dir: &Path,
        names: &[String],
        seeds: u64,
        data_hash: &str,
        is_current: impl Fn(&RunRecord) -> bool,
    ) -> altup_moe::Result<Self> {
        let (mut by_name, mut stale) = (BTreeMap::new(), Vec::new());
        for name in names {
            let (runs, old): (Vec<RunRecord>, Vec<RunRecord>) = (0..seeds)
                .map(|s| RunRecord::read(dir, name, s))
                .collect::<altup_moe::Result<Vec<_>>>()?
                .into_iter()
                .flatten()
                .partition(&is_current);
            stale.extend(old);
            if !runs.is_empty() {
                by_name.insert(name.clone(), runs);
            }
        }
        Ok(Self { by_name, stale, data_hash: data_hash.to_string() })
    }

    /// The corpus every record was trained on (its description), `None` when there are no
    /// records or they disagree.
    pub fn data(&self) -> Option<&str> {
        let mut all = self.by_name.values().flatten().map(|r| r.train.data.as_str());
        let first = all.next()?;
        all.all(|d| d == first).then_some(first)
    }

    fn get(&self, name: &str) -> Option<&[RunRecord]> {
        self.by_name.get(name).map(Vec::as_slice)
    }

    /// Final bits per byte of `a` and `b` on the seeds both have, in seed order.
    fn paired(&self, a: &str, b: &str) -> Option<Paired> {
        let (ra, rb) = (self.get(a)?, self.get(b)?);
        let (mut xa, mut xb) = (Vec::new(), Vec::new());
        for r in ra {
            if let Some(other) = rb.iter().find(|o| o.seed == r.seed) {
                xa.push(r.final_bpb());
                xb.push(other.final_bpb());
            }
        }
        (!xa.is_empty()).then(|| Paired::new(&xa, &xb))
    }

    /// Per seed, the speed-up of `name` over `baseline` at the baseline's final quality: the
    /// baseline's steps (or wall time) over the steps (wall time) at which `name`'s validation
    /// curve first reaches it; `None` for a seed whose curve never does.
    fn speedups(&self, name: &str, baseline: &str) -> Option<Vec<(u64, Option<(f64, f64)>)>> {
        let (runs, base) = (self.get(name)?, self.get(baseline)?);
        Some(
            runs.iter()
                .filter_map(|r| {
                    let b = base.iter().find(|b| b.seed == r.seed)?;
                    let last = b.evals.last()?;
                    let steps = first_crossing(&r.by_step(), last.val_bpb);
                    let time = first_crossing(&r.by_time(), last.val_bpb);
                    let speedup = steps.zip(time).map(|(s, t)| (last.step as f64 / s, last.elapsed_s / t));
                    Some((r.seed, speedup))
                })
                .collect(),
        )
    }
}

fn missing(part: Part) -> String {
    format!("not run yet (`make reproduce PART={}`)", part_name(part))
}

/// The `--part` spelling of a part.
pub fn part_name(part: Part) -> String {
    clap::ValueEnum::to_possible_value(&part).map(|v| v.get_name().to_string()).unwrap_or_default()
}

/// `a − b` paired per seed with its verdict, or "—" when the two share no seed.
fn compared(records: &Records, a: &str, b: &str) -> String {
    records.paired(a, b).map_or("—".into(), |p| format!("{} → {}", p.describe(), p.verdict()))
}

/// The speed-up of `name` at `baseline`'s final quality over the seeds that reach it (mean ±
/// std), in steps and, `with_time`, in wall time ("steps× / wall×"), with how many seeds reach
/// it; or "not reached".
fn speedup(records: &Records, name: &str, baseline: &str, with_time: bool) -> String {
    let per_seed = records.speedups(name, baseline).unwrap_or_default();
    let (steps, time): (Vec<f64>, Vec<f64>) = per_seed.iter().filter_map(|(_, s)| *s).unzip();
    if steps.is_empty() {
        return "not reached".to_string();
    }
    let shown = if with_time {
        format!("{}× / {}×", mean_pm(&steps, 2), mean_pm(&time, 2))
    } else {
        format!("{}×", mean_pm(&steps, 2))
    };
    format!("{shown} ({} of {} seeds reach)", steps.len(), per_seed.len())
}

fn mean_pm(values: &[f64], digits: usize) -> String {
    let (m, s) = mean_std(values);
    format!("{m:.digits$} ± {s:.digits$}")
}

fn per_seed(values: &[f64]) -> String {
    values.iter().map(|v| format!("{v:.4}")).collect::<Vec<_>>().join(", ")
}

/// Validation bpb against steps or wall time, one curve per stack (mean over seeds at each
/// evaluation), with the dense model's final value as a dashed line and each curve's first
/// crossing of it marked.
fn plot(
    curves: &[(String, Vec<(f64, f64)>)],
    target: Option<f64>,
    path: &Path,
    x_desc: &str,
    title: &str,
) -> altup_moe::Result<()> {
    let root = SVGBackend::new(path, (760, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let points = curves.iter().flat_map(|(_, c)| c.iter());
    let (x_max, mut y_min, mut y_max) =
        points.fold((0f64, f64::MAX, f64::MIN), |(x, lo, hi), &(px, py)| (x.max(px), lo.min(py), hi.max(py)));
    // Zoom on the second half of training, where the stacks separate.
    y_max = y_max.min(y_min + 1.0);
    y_min -= 0.02;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max * 1.02, y_min..y_max)
        .map_err(plot_err)?;
    chart.configure_mesh().x_desc(x_desc).y_desc("validation bits per byte").draw().map_err(plot_err)?;
    if let Some(t) = target {
        chart
            .draw_series(DashedLineSeries::new(vec![(0.0, t), (x_max * 1.02, t)], 6, 4, BLACK.mix(0.5).stroke_width(1)))
            .map_err(plot_err)?;
    }
    let colors = [BLACK, RED, MAGENTA, BLUE, GREEN, CYAN, RGBColor(255, 140, 0), RGBColor(128, 0, 128)];
    for ((name, curve), color) in curves.iter().zip(colors.iter().cycle()) {
        let color = *color;
        chart
            .draw_series(LineSeries::new(curve.clone(), color.stroke_width(2)))
            .map_err(plot_err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        if let Some(x) = target.and_then(|t| first_crossing(curve, t)) {
            let t = target.unwrap_or_default();
            chart.draw_series(std::iter::once(Circle::new((x, t), 5, color.stroke_width(2)))).map_err(plot_err)?;
        }
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.85)).draw().map_err(plot_err)?;
    root.present().map_err(plot_err)
}

/// Mean (over seeds) validation curve of a stack, against steps or against the median elapsed
/// time (one run slowed by a busy machine would otherwise shift the whole curve).
fn mean_curve(runs: &[RunRecord], by_time: bool) -> Vec<(f64, f64)> {
    let evals = runs.iter().map(|r| r.evals.len()).min().unwrap_or(0);
    (0..evals)
        .map(|i| {
            let x = if by_time {
                median(runs.iter().map(|r| r.evals[i].elapsed_s).collect())
            } else {
                runs.iter().map(|r| r.evals[i].step as f64).sum::<f64>() / runs.len() as f64
            };
            (x, runs.iter().map(|r| r.evals[i].val_bpb).sum::<f64>() / runs.len() as f64)
        })
        .collect()
}

/// Writes the report (markdown to `report`, plots in the folder `plots`).
///
/// # Errors
/// Plot and write errors.
pub fn write_report(
    records: &Records,
    header: &str,
    report: &Path,
    plots: &Path,
    quick: bool,
) -> altup_moe::Result<String> {
    std::fs::create_dir_all(plots).map_err(|e| altup_moe::Error::io(plots, e))?;
    let mut md = String::new();
    let _ = writeln!(md, "# Reproducing AltUp's and MoE's claims at small scale\n\n{header}\n");
    claims_table(&mut md, records, plots)?;
    claims_checked(&mut md, records);
    speedups_table(&mut md, records);
    placement_table(&mut md, records);
    size_trend(&mut md, records, quick);
    residual_methods(&mut md, records);
    stale_records(&mut md, records, quick);
    provenance(&mut md, records);
    // Keep a hand-written reading of the numbers across regenerations.
    let mut out = md.clone();
    if let Some(kept) =
        std::fs::read_to_string(report).ok().and_then(|old| old.find(HAND_WRITTEN).map(|at| old[at..].to_string()))
    {
        let _ = write!(out, "\n{kept}");
    }
    std::fs::write(report, &out).map_err(|e| altup_moe::Error::io(report, e))?;
    Ok(md)
}

/// The residual-stream methods against dense and AltUp (same steps, tokens and schedule; the
/// training FLOPs per token of each stack beside), and with Switch on every block against Switch
/// alone.
fn residual_methods(md: &mut String, records: &Records) {
    let _ = writeln!(
        md,
        "\n## AltUp and its successors on the residual stream\n\nEvery stack trains the same steps on the same tokens; \
         training FLOPs per token (6 per active weight, attention, the methods' stream mixing) relative to dense \
         show what each costs in compute, step time what it costs on this machine. Differences are paired per seed \
         (negative: better than the baseline).\n\n| stack | params | train FLOPs / token vs dense | val bits/byte | − dense | \
         − altup-k2 | step time vs dense | speed-up at dense quality, steps / wall time |\n|---|---|---|---|---|---|---|---|"
    );
    let dense_flops = records.get("dense").map(|r| r[0].model.train_flops_per_token(r[0].train.seq_len));
    let dense_time = dense_time(records);
    let mut rows: Vec<(String, Part)> =
        ["altup-k2", "recycled-altup-k2"].iter().map(|n| (n.to_string(), Part::Claims)).collect();
    rows.extend(RESIDUAL_METHODS.iter().map(|(n, _)| (n.to_string(), Part::Residual)));
    for (name, part) in &rows {
        let Some(runs) = records.get(name) else {
            let _ = writeln!(md, "| {name} | {} | | | | | | |", missing(*part));
            continue;
        };
        let flops = runs[0].model.train_flops_per_token(runs[0].train.seq_len);
        let finals: Vec<f64> = runs.iter().map(RunRecord::final_bpb).collect();
        let time = median(runs.iter().map(RunRecord::step_time).collect());
        let _ = writeln!(
            md,
            "| {name} | {:.2}M | {} | {} | {} | {} | {} | {} |",
            runs[0].params_total as f64 / 1e6,
            dense_flops.map_or("—".into(), |d| format!("{:.3}×", flops / d)),
            mean_pm(&finals, 4),
            compared(records, name, "dense"),
            if name == "altup-k2" { "—".into() } else { compared(records, name, "altup-k2") },
            dense_time.map_or("—".into(), |d| format!("{:.2}×", time / d)),
            speedup(records, name, "dense", true)
        );
    }
    let _ = writeln!(
        md,
        "\nWith Switch E = 8 on every block, against Switch alone on every block (`switch-e8-every`, the placement \
         part):\n\n| stack | params (active) | val bits/byte | − switch-e8-every | − the method alone | speed-up at \
         switch-e8-every's quality, steps / wall time |\n|---|---|---|---|---|---|"
    );
    // AltUp with Switch on every block is the placement part's stack.
    let with_switch = std::iter::once(("altup-k2", Part::Placement))
        .chain(RESIDUAL_METHODS.iter().map(|&(method, _)| (method, Part::ResidualMoe)));
    for (method, part) in with_switch {
        let name = format!("{method}+switch-e8-every");
        let Some(runs) = records.get(&name) else {
            let _ = writeln!(md, "| {name} | {} | | | | |", missing(part));
            continue;
        };
        let finals: Vec<f64> = runs.iter().map(RunRecord::final_bpb).collect();
        let _ = writeln!(
            md,
            "| {name} | {:.2}M ({:.2}M) | {} | {} | {} | {} |",
            runs[0].params_total as f64 / 1e6,
            runs[0].params_active as f64 / 1e6,
            mean_pm(&finals, 4),
            compared(records, &name, "switch-e8-every"),
            compared(records, &name, method),
            speedup(records, &name, "switch-e8-every", true)
        );
    }
}

/// The records the study would retrain (another corpus, model or settings), with their last
/// numbers, apart from the tables: a stale record paired with a current one would compare two
/// corpora, or two machines' step times.
fn stale_records(md: &mut String, records: &Records, quick: bool) {
    if records.stale.is_empty() {
        return;
    }
    let short = |hash: &str| hash.get(..13).unwrap_or(hash).to_string();
    let _ = writeln!(
        md,
        "\n## Stale records, left out of the tables\n\nThese records were trained on another corpus (the current \
         one is `{}…`) or with other model or training settings than the study's now, so the tables above leave \
         them out (\"not run yet\") instead of pairing them with current runs. Their last numbers, for reference; \
         the command retrains a stack at the current commit and corpus.\n\n| stack | seeds | corpus | commit | val \
         bits/byte (mean ± std) | retrain with |\n|---|---|---|---|---|---|",
        short(&records.data_hash)
    );
    let mut by_name: BTreeMap<&str, Vec<&RunRecord>> = BTreeMap::new();
    for r in &records.stale {
        by_name.entry(r.name.as_str()).or_default().push(r);
    }
    for (name, runs) in by_name {
        let finals: Vec<f64> = runs.iter().map(|r| r.final_bpb()).collect();
        let hashes: BTreeSet<String> = runs.iter().map(|r| format!("`{}…`", short(&r.train.data_hash))).collect();
        let commits: BTreeSet<&str> = runs.iter().map(|r| r.commit.as_deref().unwrap_or("not recorded")).collect();
        let part = Part::ALL.into_iter().find(|&p| stacks(p, quick).iter().any(|s| s.name == name));
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} |",
            runs.iter().map(|r| r.seed.to_string()).collect::<Vec<_>>().join(", "),
            hashes.into_iter().collect::<Vec<_>>().join(", "),
            commits.into_iter().collect::<Vec<_>>().join(", "),
            mean_pm(&finals, 4),
            part.map_or("—".into(), |p| format!("`make reproduce PART={} STACK={name}`", part_name(p)))
        );
    }
}

/// Which commit trained which records: a record's numbers are those of its commit's code (a
/// later commit that changes the numbers retrains them).
fn provenance(md: &mut String, records: &Records) {
    let mut by_commit: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for runs in records.by_name.values() {
        for r in runs {
            let commit = r.commit.as_deref().unwrap_or("not recorded");
            by_commit.entry(commit).or_default().push(format!("{} seed {}", r.name, r.seed));
        }
    }
    let _ = writeln!(
        md,
        "\n## Where the records come from\n\nEach record holds the commit checked out when it was trained (`-dirty`: with \
         uncommitted changes). Retrain any record with `cargo run --release --example train -- --config RECORD` \
         (its model and training settings; the same thread count gives the same numbers) or \
         `cargo run --release --example reproduce -- --stack NAME --seed S --part PART --fresh`.\n\n| commit | \
         records |\n|---|---|"
    );
    for (commit, runs) in by_commit {
        let _ = writeln!(md, "| {commit} | {} ({}) |", runs.len(), runs.join(", "));
    }
    md.push('\n');
}

/// The claims' stacks.
const CLAIMS: [&str; 5] = ["dense", "altup-k2", "recycled-altup-k2", "switch-e8", "altup-k2+switch-e8"];

/// Median step time of dense (the tables' time reference).
fn dense_time(records: &Records) -> Option<f64> {
    records.get("dense").map(|r| median(r.iter().map(RunRecord::step_time).collect()))
}

/// The claims' table and their validation curves.
fn claims_table(md: &mut String, records: &Records, plots: &Path) -> altup_moe::Result<()> {
    let plots_link = plots.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let claims = CLAIMS;
    let dense_time = dense_time(records);
    let _ = writeln!(md, "| stack | val bits/byte (mean ± std) | per seed | total params | active params | step time (ms) | vs dense |\n|---|---|---|---|---|---|---|");
    for name in claims {
        match records.get(name) {
            Some(runs) => {
                let finals: Vec<f64> = runs.iter().map(RunRecord::final_bpb).collect();
                let time = median(runs.iter().map(RunRecord::step_time).collect());
                let _ = writeln!(
                    md,
                    "| {name} | {} | {} | {:.2}M | {:.2}M | {:.0} | {:.2}× |",
                    mean_pm(&finals, 4),
                    per_seed(&finals),
                    runs[0].params_total as f64 / 1e6,
                    runs[0].params_active as f64 / 1e6,
                    time * 1e3,
                    time / dense_time.unwrap_or(f64::NAN)
                );
            }
            None => {
                let _ = writeln!(md, "| {name} | {} | | | | | |", missing(Part::Claims));
            }
        }
    }
    let curves = |names: &[&str], by_time: bool| -> Vec<(String, Vec<(f64, f64)>)> {
        names.iter().filter_map(|n| records.get(n).map(|r| (n.to_string(), mean_curve(r, by_time)))).collect()
    };
    let target = records.get("dense").map(|r| r.iter().map(RunRecord::final_bpb).sum::<f64>() / r.len() as f64);
    if records.get("dense").is_some() {
        plot(
            &curves(&claims, false),
            target,
            &plots.join("val_bpb_vs_steps.svg"),
            "optimizer steps",
            "Validation bits per byte (mean over seeds); dashed: dense's final",
        )?;
        plot(
            &curves(&claims, true),
            target,
            &plots.join("val_bpb_vs_time.svg"),
            "wall time (s, median over seeds)",
            "Validation bits per byte against wall time; circles: dense's final quality reached",
        )?;
        let _ = writeln!(md, "\n![validation bpb vs steps]({plots_link}/val_bpb_vs_steps.svg)\n\n![validation bpb vs wall time]({plots_link}/val_bpb_vs_time.svg)\n");
    }

    Ok(())
}

/// Each claim as a paired difference with its verdict.
fn claims_checked(md: &mut String, records: &Records) {
    let _ = writeln!(md, "## The claims, checked against the seed spread\n");
    let claim_list = [
        ("AltUp improves quality at almost no extra latency", "altup-k2", "dense"),
        ("Recycled-AltUp improves pre-training with no perceptible slowdown", "recycled-altup-k2", "dense"),
        ("Switch-style MoE improves quality at equal active compute", "switch-e8", "dense"),
        ("AltUp adds to MoE (AltUp+MoE vs MoE alone)", "altup-k2+switch-e8", "switch-e8"),
        ("MoE adds to AltUp (AltUp+MoE vs AltUp alone)", "altup-k2+switch-e8", "altup-k2"),
    ];
    for (claim, a, b) in claim_list {
        let Some(p) = records.paired(a, b) else {
            let _ = writeln!(md, "- **{claim}**: {}", missing(Part::Claims));
            continue;
        };
        let time = |n: &str| records.get(n).map_or(f64::NAN, |r| median(r.iter().map(RunRecord::step_time).collect()));
        let _ = writeln!(
            md,
            "- **{claim}**: {a} − {b} = {} bits/byte (std of the paired differences {:.4}); step time {:.2}× → {}.",
            p.describe(),
            p.std,
            time(a) / time(b),
            p.verdict()
        );
    }
}

/// The AltUp paper's own metric: the speed-up to dense quality.
fn speedups_table(md: &mut String, records: &Records) {
    let claims = CLAIMS;
    let _ = writeln!(
        md,
        "\n## Speed-up at equal quality\n\nThe AltUp paper's own metric: how much sooner a stack's validation curve first reaches \
         the dense model's *final* validation bits per byte (same seed; linear interpolation between evaluations), \
         as dense's steps (wall time) over the stack's. Above 1: faster to dense quality; \"not reached\" when the \
         curve never gets there within the run.\n\n| stack | seeds reaching dense quality | speed-up in steps (mean ± std; per seed) | speed-up in wall time (mean ± std; per seed) |\n|---|---|---|---|"
    );
    let speed_rows: Vec<&str> =
        claims[1..].iter().copied().chain(PLACEMENTS.iter().map(|p| p.0)).chain(["switch-e8-every"]).collect();
    for name in speed_rows {
        let Some(per) = records.speedups(name, "dense") else { continue };
        let reached: Vec<(f64, f64)> = per.iter().filter_map(|(_, s)| *s).collect();
        let (steps, times): (Vec<f64>, Vec<f64>) = reached.iter().copied().unzip();
        let show = |v: &[f64]| match v.is_empty() {
            true => "not reached".to_string(),
            false => {
                format!("{}× ({})", mean_pm(v, 2), v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", "))
            }
        };
        let _ = writeln!(md, "| {name} | {} of {} | {} | {} |", reached.len(), per.len(), show(&steps), show(&times));
    }
}

/// Where the MoE blocks go in AltUp + MoE.
fn placement_table(md: &mut String, records: &Records) {
    let dense_time = dense_time(records);
    let _ = writeln!(
        md,
        "\n## Placement of the MoE blocks in AltUp + MoE\n\nWith K = 2, alternating selection and MoE on blocks 1 and 3 (the \
         claims' `altup-k2+switch-e8`), both MoE blocks compute on sub-block 1, so the experts never see sub-block 0 \
         directly. The placements below let the experts compute on both. Each stack is compared with Switch alone \
         with as many MoE blocks (switch-e8: blocks 1 and 3; switch-e8-every: every block) and with AltUp alone. \
         Differences are paired per seed; negative is better.\n\n| stack | placement | val bits/byte | − Switch alone \
         | − altup-k2 | step time vs dense |\n|---|---|---|---|---|---|"
    );
    let placement_rows: Vec<(&str, &str)> =
        std::iter::once(("altup-k2+switch-e8", "MoE on blocks 1 and 3, alternating (MoE on sub-block 1 only)"))
            .chain(PLACEMENTS.iter().copied())
            .chain([("switch-e8-every", "Switch alone, MoE on every block")])
            .collect();
    for (name, what) in placement_rows {
        // The Switch stack with as many MoE blocks (for switch-e8-every itself: the two-block one).
        let switch =
            if name.ends_with("-every") && name != "switch-e8-every" { "switch-e8-every" } else { "switch-e8" };
        let Some(runs) = records.get(name) else {
            let _ = writeln!(md, "| {name} | {what} | {} | | | |", missing(Part::Placement));
            continue;
        };
        let finals: Vec<f64> = runs.iter().map(RunRecord::final_bpb).collect();
        let cmp = |b: &str| compared(records, name, b);
        let time = median(runs.iter().map(RunRecord::step_time).collect());
        let _ = writeln!(
            md,
            "| {name} | {what} | {} | {} | {} | {:.2}× |",
            mean_pm(&finals, 4),
            format!("{switch}: {}", cmp(switch)),
            if name.starts_with("switch") { "—".into() } else { cmp("altup-k2") },
            time / dense_time.unwrap_or(f64::NAN)
        );
    }
}

/// Dense against AltUp at three widths, and Recycled-AltUp at the largest.
fn size_trend(md: &mut String, records: &Records, quick: bool) {
    let [small, base_width, large] = sizes(quick);
    let _ = writeln!(
        md,
        "\n## Does AltUp's gain grow with size?\n\nDense vs AltUp K = 2 at three widths (4 blocks, 4 heads, F = 4d, the same \
         tokens per step and steps); the gain is paired per seed (negative: AltUp better).\n\n| d | params dense / AltUp | dense bits/byte | AltUp bits/byte | AltUp − dense | speed-up in steps at dense quality |\n|---|---|---|---|---|---|"
    );
    for (d, part) in [(small, Part::SizeSmall), (base_width, Part::Claims), (large, Part::SizeLarge)] {
        let (dn, an) = (sized("dense", d, base_width), sized("altup-k2", d, base_width));
        let (Some(dr), Some(ar), Some(p)) = (records.get(&dn), records.get(&an), records.paired(&an, &dn)) else {
            let _ = writeln!(md, "| {d} | {} | | | | |", missing(part));
            continue;
        };
        let finals = |r: &[RunRecord]| r.iter().map(RunRecord::final_bpb).collect::<Vec<_>>();
        let _ = writeln!(
            md,
            "| {d} | {:.2}M / {:.2}M | {} | {} | {} → {} | {} |",
            dr[0].params_total as f64 / 1e6,
            ar[0].params_total as f64 / 1e6,
            mean_pm(&finals(dr), 4),
            mean_pm(&finals(ar), 4),
            p.describe(),
            p.verdict(),
            speedup(records, &an, &dn, false)
        );
    }
    let (rn, dn, an) = (
        sized("recycled-altup-k2", large, base_width),
        sized("dense", large, base_width),
        sized("altup-k2", large, base_width),
    );
    let _ = writeln!(
        md,
        "\nRecycled-AltUp K = 2 at d = {large}, paired per seed with dense and with AltUp K = 2 at the same width:\n\n\
         | stack | params | bits/byte | − {dn} | − {an} | speed-up in steps at dense quality |\n|---|---|---|---|---|---|"
    );
    match (records.get(&rn), records.paired(&rn, &dn)) {
        (Some(runs), Some(_)) => {
            let finals: Vec<f64> = runs.iter().map(RunRecord::final_bpb).collect();
            let _ = writeln!(
                md,
                "| {rn} | {:.2}M | {} | {} | {} | {} |",
                runs[0].params_total as f64 / 1e6,
                mean_pm(&finals, 4),
                compared(records, &rn, &dn),
                compared(records, &rn, &an),
                speedup(records, &rn, &dn, false)
            );
        }
        _ => {
            let _ = writeln!(md, "| {rn} | {} | | | | |", missing(Part::SizeLargeRecycled));
        }
    }
}
