//! A run record of the `reproduce` study retrains to the same numbers through `train`: both build
//! their run with the library's one builder (`RunConfig::with_seed`, `on_data`, `build_model`),
//! and `train --config RECORD` reads the record's model and training settings. The record is made
//! here (a short run of the study's `dense` stack), then retrained, and every validation point is
//! compared bit for bit.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `cargo run --example NAME -- ARGS` in the project (the dev profile, as the docs test).
fn example(project: &Path, name: &str, args: &[&str]) -> String {
    let out = Command::new("cargo")
        .args(["run", "--quiet", "--example", name, "--"])
        .args(args)
        .current_dir(project)
        .env("CARGO_TARGET_DIR", project.join("target"))
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL")
        .output()
        .unwrap();
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{name} {args:?} failed:\n{output}");
    output
}

/// The validation bits per byte of each line of a run's metrics.jsonl, by step.
fn metrics(run: &Path) -> Vec<(u64, f64)> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (v["step"].as_u64().unwrap(), v["val_bpb"].as_f64().unwrap())
        })
        .collect()
}

/// A text of about 200 KB: verse-like lines from a fixed vocabulary (a linear congruential
/// generator picks the words), so that the test needs no corpus.
fn text() -> String {
    let words = ["the", "king", "of", "night", "shall", "come", "and", "we", "will", "know", "thy", "heart", "so"];
    let mut state: u64 = 7;
    let mut out = String::new();
    while out.len() < 200_000 {
        for _ in 0..8 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            out.push_str(words[(state >> 33) as usize % words.len()]);
            out.push(' ');
        }
        out.push('\n');
    }
    out
}

#[test]
fn a_study_record_retrains_bit_for_bit_through_train() {
    if std::env::var_os("ALTUP_MOE_TEST_DEVICE").is_some() {
        eprintln!("skipped: runs once, in the plain (CPU) test suite");
        return;
    }
    let project = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("verse.txt");
    std::fs::write(&data, text()).unwrap();
    let s = |p: &Path| p.display().to_string();
    let report = tmp.path().join("results.md");
    example(
        &project,
        "reproduce",
        &[
            "--part",
            "claims",
            "--seeds",
            "2",
            "--seed",
            "1",
            "--stack",
            "dense",
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--eval-batches",
            "1",
            "--device",
            "cpu",
            "--data",
            &s(&data),
            "--runs",
            &s(&tmp.path().join("runs")),
            "--report",
            &s(&report),
        ],
    );
    let record_path = tmp.path().join("results/runs/dense-seed1.json");
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&record_path).unwrap()).unwrap();
    assert_eq!((record["seed"].as_u64(), record["model"]["init_seed"].as_u64()), (Some(1), Some(1)));
    let recorded: Vec<(u64, f64)> = record["evals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["step"].as_u64().unwrap(), e["val_bpb"].as_f64().unwrap()))
        .collect();
    assert_eq!(recorded.iter().map(|e| e.0).collect::<Vec<_>>(), [2, 4]);
    let final_bpb = format!("| dense | {:.4}", recorded.last().unwrap().1);
    let md = std::fs::read_to_string(&report).unwrap();
    assert!(md.contains("## Where the records come from") && md.contains(&final_bpb), "{md}");
    assert!(!md.contains("## Stale records"), "{md}");

    // On another corpus the record is stale: the report leaves it out of the tables (never
    // pairing it with runs on this corpus) and lists it apart, with its numbers and the command
    // that retrains it.
    let changed = tmp.path().join("verse-changed.txt");
    std::fs::write(&changed, text() + "and so the king shall know\n").unwrap();
    let study_flags = ["--seeds", "2", "--steps", "4", "--eval-every", "2", "--eval-batches", "1", "--device", "cpu"];
    let (changed, report_path) = (s(&changed), s(&report));
    let mut args = vec!["--report-only", "--data", &changed, "--report", &report_path];
    args.extend(study_flags);
    example(&project, "reproduce", &args);
    let md = std::fs::read_to_string(&report).unwrap();
    let stale = &md[md.find("## Stale records").unwrap_or_else(|| panic!("no stale section:\n{md}"))..];
    assert!(
        stale.contains("| dense | 1 | `sha256:") && stale.contains("make reproduce PART=claims STACK=dense"),
        "{stale}"
    );
    assert!(!md.contains(&final_bpb) && md.contains("| dense | not run yet (`make reproduce PART=claims`)"), "{md}");

    let out = tmp.path().join("retrained");
    example(
        &project,
        "train",
        &["--config", &s(&record_path), "--data", &s(&data), "--out", &s(&out), "--sample-len", "0", "--device", "cpu"],
    );
    assert_eq!(metrics(&out), recorded, "train --config RECORD gives the record's validation curve bit for bit");

    // The same record with another seed is another run: the test can tell runs apart.
    let other = tmp.path().join("other-seed");
    example(
        &project,
        "train",
        &[
            "--config",
            &s(&record_path),
            "--seed",
            "2",
            "--data",
            &s(&data),
            "--out",
            &s(&other),
            "--sample-len",
            "0",
            "--device",
            "cpu",
        ],
    );
    assert_ne!(metrics(&other), recorded);
}
