//! Learning-rate schedule: linear warmup then cosine decay (Loshchilov & Hutter 2017, SGDR;
//! the GPT-3 / nanoGPT recipe).

use crate::error::{ensure_config, Result};

/// Linear warmup from 0 to `peak_lr` over `warmup_steps`, then cosine decay to
/// `min_lr_ratio · peak_lr` at `total_steps` (held there afterwards).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// Peak learning rate.
    pub peak_lr: f64,
    /// Warmup length in optimizer steps.
    pub warmup_steps: u64,
    /// Total optimizer steps.
    pub total_steps: u64,
    /// Final learning rate as a fraction of the peak.
    pub min_lr_ratio: f64,
}

impl LrSchedule {
    /// # Errors
    /// [`crate::Error::Config`] for a non-positive peak, zero total steps, or a ratio outside `[0, 1]`.
    pub fn new(peak_lr: f64, warmup_steps: u64, total_steps: u64, min_lr_ratio: f64) -> Result<Self> {
        ensure_config(peak_lr > 0.0 && peak_lr.is_finite(), || {
            format!("learning rate ({peak_lr}) must be positive and finite")
        })?;
        ensure_config(total_steps > 0, || "steps (0) must be positive".into())?;
        ensure_config((0.0..=1.0).contains(&min_lr_ratio), || {
            format!("min_lr_ratio ({min_lr_ratio}) must be in [0, 1]")
        })?;
        Ok(Self { peak_lr, warmup_steps, total_steps, min_lr_ratio })
    }

    /// Learning rate for optimizer step `step` (1-based).
    pub fn lr_at(&self, step: u64) -> f64 {
        if self.warmup_steps > 0 && step <= self.warmup_steps {
            return self.peak_lr * step as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = (step.saturating_sub(self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.peak_lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_peak_midpoint_and_end() {
        let s = LrSchedule::new(1.0, 10, 110, 0.1).unwrap();
        assert!((s.lr_at(5) - 0.5).abs() < 1e-12);
        assert!((s.lr_at(10) - 1.0).abs() < 1e-12);
        assert!((s.lr_at(60) - 0.55).abs() < 1e-12); // half-way: 0.1 + 0.9 * 0.5
        assert!((s.lr_at(110) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(500) - 0.1).abs() < 1e-12);
    }
}
