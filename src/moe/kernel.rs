//! Which kernel computes the experts ([`ExpertBackend`]), and the one
//! [`ExpertBackend::Auto`] runs on an accelerator, decided by measuring both once per shape class
//! and caching the answer for the process.
//!
//! libtorch 2.13's `_grouped_mm` has a fast kernel only on some GPUs (compute capability 9.x and
//! 10.x, bf16); elsewhere it falls back to a loop that copies the offsets to the host on every
//! call, slower than our own per-expert loop. tch does not expose the compute capability, so
//! the first call of a kind (device, dtype, expert shapes, rows per expert rounded up to a power
//! of two) times forward + backward of both kernels on random data of that shape and keeps the
//! faster one. On the CPU a measured rule decides instead (see `LOOP_MIN_ROWS_PER_EXPERT`).

use crate::error::Result;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use tch::{Device, Kind};

/// On CPU, [`ExpertBackend::Auto`] uses the per-expert loop from this many rows per expert on
/// average, grouped matmul below it.
pub const LOOP_MIN_ROWS_PER_EXPERT: i64 = 128;

/// Which kernel computes the experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpertBackend {
    /// The faster kernel for the device: on CPU (measured in `benches/moe_layer.rs`, D = 256,
    /// F = 1024) the per-expert loop when experts average at least [`LOOP_MIN_ROWS_PER_EXPERT`]
    /// rows (large matmuls; libtorch 2.13's CPU grouped matmul is slower there) and grouped
    /// matmul for smaller groups (many tiny matmuls); on an accelerator whichever of the two
    /// was faster when timed once for the shape class ([`crate::moe::kernel`]), or the loop
    /// under [`crate::runtime::set_deterministic`]. Grouped matmul needs f32/bf16 rows aligned
    /// to 16 bytes; everything else uses the loop.
    #[default]
    Auto,
    /// Always `torch._grouped_mm`; errors where libtorch does not support it.
    GroupedMm,
    /// Always the per-expert loop (reference path; works for every dtype, including f64).
    Loop,
}

/// What a kernel choice depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelKey {
    /// The device.
    pub device: Device,
    /// Dtype of the rows.
    pub kind: Kind,
    /// Experts `E`, width `D`, hidden width `F`.
    pub shape: [i64; 3],
    /// Whether the experts are gated (SwiGLU: a third matmul).
    pub gated: bool,
    /// Average rows per expert, rounded up to a power of two.
    pub rows_per_expert: i64,
}

impl KernelKey {
    /// The key of `rows` rows over experts of `shape` `[E, D, F]`.
    pub fn new(device: Device, kind: Kind, shape: [i64; 3], gated: bool, rows: i64) -> Self {
        let per_expert = (rows + shape[0] - 1) / shape[0].max(1);
        Self { device, kind, shape, gated, rows_per_expert: (per_expert.max(1) as u64).next_power_of_two() as i64 }
    }
}

static CHOICES: Mutex<Option<HashMap<KernelKey, ExpertBackend>>> = Mutex::new(None);

/// The cached choice for `key`, or the faster of [`ExpertBackend::GroupedMm`] and
/// [`ExpertBackend::Loop`] by `measure` (seconds per call of that kernel; a kernel whose
/// measurement fails is not chosen), cached for the rest of the process.
///
/// # Errors
/// The loop's measurement error when both measurements fail.
pub(crate) fn choose(key: KernelKey, mut measure: impl FnMut(ExpertBackend) -> Result<f64>) -> Result<ExpertBackend> {
    if let Some(choice) = CHOICES.lock().ok().and_then(|c| c.as_ref().and_then(|m| m.get(&key).copied())) {
        return Ok(choice);
    }
    let grouped = measure(ExpertBackend::GroupedMm);
    let choice = match (grouped, measure(ExpertBackend::Loop)?) {
        (Ok(g), l) if g < l => ExpertBackend::GroupedMm,
        _ => ExpertBackend::Loop,
    };
    if let Ok(mut choices) = CHOICES.lock() {
        choices.get_or_insert_with(HashMap::new).insert(key, choice);
    }
    Ok(choice)
}

/// The choices made so far in this process (for reports such as the GPU check).
pub fn choices() -> Vec<(KernelKey, ExpertBackend)> {
    let mut out: Vec<(KernelKey, ExpertBackend)> = CHOICES
        .lock()
        .ok()
        .and_then(|c| c.as_ref().map(|m| m.iter().map(|(k, v)| (*k, *v)).collect()))
        .unwrap_or_default();
    out.sort_by_key(|(k, _)| (format!("{:?}", k.device), format!("{:?}", k.kind), k.shape, k.rows_per_expert));
    out
}

crate::names::kebab_case_names!(ExpertBackend, "expert backend");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn the_faster_kernel_is_chosen_once_and_cached() {
        let key = KernelKey::new(Device::Cuda(7), Kind::BFloat16, [8, 64, 256], false, 1000);
        assert_eq!(key.rows_per_expert, 128, "125 rows per expert round up to 128");
        let mut calls = 0;
        let first = choose(key, |b| {
            calls += 1;
            Ok(if b == ExpertBackend::Loop { 1.0 } else { 3.0 })
        })
        .unwrap();
        assert_eq!((first, calls), (ExpertBackend::Loop, 2));
        let again = choose(key, |_| panic!("cached: no second measurement")).unwrap();
        assert_eq!(again, ExpertBackend::Loop);
        assert!(choices().contains(&(key, ExpertBackend::Loop)));
        let other = KernelKey { rows_per_expert: 4, ..key };
        let fast_grouped = choose(other, |b| Ok(if b == ExpertBackend::GroupedMm { 0.5 } else { 1.0 })).unwrap();
        assert_eq!(fast_grouped, ExpertBackend::GroupedMm);
        let unsupported = KernelKey { rows_per_expert: 2, ..key };
        let fallback = choose(unsupported, |b| match b {
            ExpertBackend::GroupedMm => Err(Error::Input("no grouped kernel here".into())),
            _ => Ok(1.0),
        })
        .unwrap();
        assert_eq!(fallback, ExpertBackend::Loop, "a kernel that fails is never chosen");
    }
}
