//! The statistics of the report: means and spreads over seeds, paired comparisons (Student's t),
//! and where a validation curve first reaches a quality (speed-up at equal quality).

/// Mean and sample standard deviation (0 for one value).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

/// Two-sided 95% critical value of Student's t with `dof` degrees of freedom.
pub fn t_critical_95(dof: usize) -> f64 {
    const TABLE: [f64; 10] = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228];
    match dof {
        0 => f64::INFINITY,
        d if d <= TABLE.len() => TABLE[d - 1],
        _ => 1.96,
    }
}

/// The median, robust to one run slowed by a busy machine.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// A paired comparison of per-seed values `a − b` (seed `s` gives both runs the same data order
/// and validation windows).
pub struct Paired {
    /// Per-seed differences.
    pub diffs: Vec<f64>,
    /// Their mean.
    pub mean: f64,
    /// Their sample standard deviation.
    pub std: f64,
}

impl Paired {
    /// Differences of the seeds both have (`a[i] − b[i]`).
    pub fn new(a: &[f64], b: &[f64]) -> Self {
        let diffs: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
        let (mean, std) = if diffs.is_empty() { (f64::NAN, f64::NAN) } else { mean_std(&diffs) };
        Self { diffs, mean, std }
    }

    /// The verdict for "a is lower (better) than b": holds, worse, or not resolved at 95%.
    pub fn verdict(&self) -> String {
        let n = self.diffs.len();
        let t = self.mean / (self.std / (n as f64).sqrt());
        let t_crit = t_critical_95(n.saturating_sub(1));
        if n < 2 {
            "one seed: no spread to compare with".to_string()
        } else if t < -t_crit {
            format!("holds (paired t = {t:.1}, beyond ±{t_crit:.2})")
        } else if t > t_crit {
            format!("worse (paired t = {t:.1}, beyond ±{t_crit:.2})")
        } else {
            format!("not resolved (paired t = {t:.1}, within ±{t_crit:.2})")
        }
    }

    /// `+0.0123 (+0.01, −0.02, …)`: the mean and the per-seed differences.
    pub fn describe(&self) -> String {
        let per: Vec<String> = self.diffs.iter().map(|d| format!("{d:+.4}")).collect();
        format!("{:+.4} ({})", self.mean, per.join(", "))
    }
}

/// Where a validation curve — `(x, bpb)` points in order of `x` (steps or seconds) — first
/// reaches `target` bits per byte, linearly interpolated between the two evaluations around the
/// crossing; `None` if it never does. A curve whose first point is already at the target
/// crosses there.
pub fn first_crossing(curve: &[(f64, f64)], target: f64) -> Option<f64> {
    let first = curve.first()?;
    if first.1 <= target {
        return Some(first.0);
    }
    curve.windows(2).find(|w| w[1].1 <= target).map(|w| {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        x0 + (x1 - x0) * (y0 - target) / (y0 - y1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossings_interpolate_between_evaluations() {
        let curve = [(0.0, 5.0), (100.0, 3.0), (200.0, 2.0), (300.0, 1.5)];
        assert_eq!(first_crossing(&curve, 2.5), Some(150.0));
        assert_eq!(first_crossing(&curve, 2.0), Some(200.0));
        assert_eq!(first_crossing(&curve, 1.0), None);
        assert_eq!(first_crossing(&curve, 6.0), Some(0.0));
        // The first crossing counts, not a later dip.
        assert_eq!(first_crossing(&[(0.0, 3.0), (10.0, 1.0), (20.0, 2.5), (30.0, 0.5)], 2.0), Some(5.0));
    }

    #[test]
    fn paired_verdicts_follow_the_t_bound() {
        assert!(Paired::new(&[1.0, 1.1, 1.2], &[1.5, 1.6, 1.71]).verdict().starts_with("holds"));
        assert!(Paired::new(&[1.5, 1.6, 1.71], &[1.0, 1.1, 1.2]).verdict().starts_with("worse"));
        assert!(Paired::new(&[1.0, 1.2, 1.1], &[1.1, 1.0, 1.2]).verdict().starts_with("not resolved"));
        assert_eq!(Paired::new(&[1.0], &[2.0]).verdict(), "one seed: no spread to compare with");
        assert_eq!(median(vec![3.0, 1.0, 2.0, 10.0]), 2.5);
        assert_eq!(mean_std(&[1.0, 3.0]), (2.0, 2f64.sqrt()));
    }
}
