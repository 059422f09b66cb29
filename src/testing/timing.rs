//! Timing for benchmarks and reports: interleaved runs (A B A B …) so that every variant sees the
//! same machine state, and the median per-pair ratio with a distribution-free 95% interval that
//! decides a verdict — never one timed number (machines are shared and noisy).

use crate::error::Result;

/// Median wall-clock seconds of `runs` calls of `f` after `warmup` untimed calls.
pub fn median_seconds(warmup: usize, runs: usize, f: impl FnMut() -> Result<()>) -> Result<f64> {
    let times = timed_runs(warmup, runs, f)?;
    Ok(times[times.len() / 2])
}

/// Fastest of `runs` calls of `f` after `warmup` untimed calls: on a shared, noisy machine the
/// minimum is the most repeatable estimate of the undisturbed cost.
pub fn min_seconds(warmup: usize, runs: usize, f: impl FnMut() -> Result<()>) -> Result<f64> {
    Ok(timed_runs(warmup, runs, f)?[0])
}

/// Sorted wall-clock seconds of `runs` calls after `warmup` untimed calls.
fn timed_runs(warmup: usize, runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        f()?;
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t = std::time::Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// The median of per-pair ratios `b[i] / a[i]` of interleaved timings (A B A B …) with a
/// distribution-free 95% confidence interval: order statistics `r_(j)`, `r_(n+1-j)` of the sorted
/// ratios, with `j` the largest rank such that `P(Binomial(n, ½) < j) ≤ 2.5%` (coverage ≥ 95%).
/// With fewer than 6 pairs no such `j` exists and the interval is the whole range.
#[derive(Debug, Clone, Copy)]
pub struct PairedRatio {
    /// Median of the per-pair ratios.
    pub median: f64,
    /// Lower end of the 95% interval.
    pub low: f64,
    /// Upper end of the 95% interval.
    pub high: f64,
    /// Number of pairs.
    pub pairs: usize,
}

impl PairedRatio {
    /// From timings of A and B taken in pairs (`a[i]` just before `b[i]`).
    pub fn new(a: &[f64], b: &[f64]) -> Self {
        let mut r: Vec<f64> = a.iter().zip(b).map(|(a, b)| b / a).collect();
        r.sort_by(f64::total_cmp);
        let n = r.len();
        if n == 0 {
            return Self { median: f64::NAN, low: f64::NAN, high: f64::NAN, pairs: 0 };
        }
        let median = if n % 2 == 1 { r[n / 2] } else { 0.5 * (r[n / 2 - 1] + r[n / 2]) };
        // P(X ≤ m) for X ~ Binomial(n, 1/2).
        let cdf = |m: usize| -> f64 {
            let (mut term, mut sum) = (0.5f64.powi(n as i32), 0.0);
            for i in 0..=m {
                sum += term;
                term *= (n - i) as f64 / (i + 1) as f64;
            }
            sum
        };
        let j = (1..=n / 2).take_while(|&j| cdf(j - 1) <= 0.025).last().unwrap_or(1);
        Self { median, low: r[j - 1], high: r[n - j], pairs: n }
    }

    /// `met` when the whole interval is at or below `target`, `missed` when it is above,
    /// `within noise` when the interval contains it.
    pub fn verdict(&self, target: f64) -> &'static str {
        if self.high <= target {
            "met"
        } else if self.low > target {
            "missed"
        } else {
            "within noise"
        }
    }

    /// `1.23× [1.20, 1.27]`.
    pub fn show(&self) -> String {
        format!("{:.3}× [{:.3}, {:.3}]", self.median, self.low, self.high)
    }
}

/// Interleaved timing: `rounds` rounds after `warmup` untimed ones, each calling every entry of
/// `calls` once in order (A B A B … for two), so that every variant sees the same machine state
/// round after round. Each call returns its own duration in seconds (so it can time only the
/// part that matters, or ask another process). Returns `times[call][round]`.
pub fn interleaved(
    warmup: usize,
    rounds: usize,
    calls: &mut [&mut dyn FnMut() -> Result<f64>],
) -> Result<Vec<Vec<f64>>> {
    let mut times = vec![Vec::with_capacity(rounds); calls.len()];
    for round in 0..warmup + rounds {
        for (i, call) in calls.iter_mut().enumerate() {
            let t = call()?;
            if round >= warmup {
                times[i].push(t);
            }
        }
    }
    Ok(times)
}

/// Seconds of one call of `f`.
pub fn seconds(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let start = std::time::Instant::now();
    f()?;
    Ok(start.elapsed().as_secs_f64())
}

/// The median of `values` (upper median for an even count; NaN when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Peak resident memory of this process (`VmHWM`), in MiB; `None` where /proc is unavailable.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::PairedRatio;

    #[test]
    fn paired_ratio_interval_uses_binomial_order_statistics() {
        // Ratios 1.0, 1.1, ..., 1.9 (10 pairs): P(X ≤ 1) = 11/1024 ≤ 2.5% < P(X ≤ 2) = 56/1024,
        // so the interval runs from the 2nd to the 9th smallest ratio.
        let a = vec![2.0; 10];
        let b: Vec<f64> = (0..10).rev().map(|i| 2.0 * (1.0 + 0.1 * i as f64)).collect();
        let r = PairedRatio::new(&a, &b);
        assert!(
            (r.median - 1.45).abs() < 1e-12 && (r.low - 1.1).abs() < 1e-12 && (r.high - 1.8).abs() < 1e-12,
            "{r:?}"
        );
        assert_eq!(r.verdict(1.9), "met");
        assert_eq!(r.verdict(1.05), "missed");
        assert_eq!(r.verdict(1.5), "within noise");
        let few = PairedRatio::new(&[1.0; 5], &[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!((few.low, few.median, few.high), (1.0, 3.0, 5.0), "5 pairs: the whole range");
    }
}
