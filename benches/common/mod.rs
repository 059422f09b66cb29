//! Shared by the benchmarks: reading criterion's results back to print ratios measured in the
//! same run.

#![allow(dead_code)]

use std::path::PathBuf;

/// Median time (ns) of a finished benchmark `group/id`, read from criterion's estimates
/// (`target/criterion/<group>/<id>/new/estimates.json`).
pub fn median_ns(group: &str, id: &str) -> Option<f64> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let path = target.join("criterion").join(group).join(id).join("new/estimates.json");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

/// `ours / baseline` formatted as `1.23x`, or `-` when either is missing.
pub fn ratio(group: &str, ours: &str, baseline: &str) -> String {
    match (median_ns(group, ours), median_ns(group, baseline)) {
        (Some(a), Some(b)) => format!("{:.3}x", a / b),
        _ => "-".to_string(),
    }
}

/// Whether criterion runs for real (`cargo bench`) rather than once per benchmark as a test.
pub fn measuring() -> bool {
    std::env::args().any(|a| a == "--bench")
}
