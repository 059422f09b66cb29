//! Dispatch plans: which token goes to which expert row, decided from the routing, the capacity
//! and the token mask — before any row moves.
//!
//! A plan lists the *kept* assignments grouped by expert (expert 0's rows first). Each assignment
//! has a slot `s` in its token's output buffer and is identified by `a = s·N + t` for token `t`:
//! for token choice the slot is the choice index `c` (`0..k`); for expert choice it is the rank
//! of the assignment among its token's assignments. The combine writes each kept assignment to
//! its own row of a `[slots·N, D]` buffer and sums over slots — no duplicate-index scatter.
//!
//! Capacity: `C = max(min_capacity, ceil(cf · k · N_real / E))`, counting real (unmasked) tokens
//! only; masked tokens take no capacity and get no expert. Each routing family plans in its own
//! file ([`crate::moe::plan_token_choice`], [`crate::moe::plan_expert_choice`]).

use crate::error::{ensure_config, Result};
use crate::host;
use tch::{Kind, Tensor};

/// Expert capacity `C = max(min_capacity, ceil(capacity_factor · top_k · num_tokens / num_experts))`.
///
/// # Errors
/// [`crate::Error::Config`] if `capacity_factor` is not positive and finite or `num_experts` is 0.
pub fn expert_capacity(
    num_tokens: i64,
    num_experts: i64,
    top_k: i64,
    capacity_factor: f64,
    min_capacity: i64,
) -> Result<i64> {
    ensure_config(capacity_factor > 0.0 && capacity_factor.is_finite(), || {
        format!("capacity_factor ({capacity_factor}) must be positive and finite")
    })?;
    ensure_config(num_experts > 0, || format!("num_experts ({num_experts}) must be positive"))?;
    let c = (capacity_factor * (top_k * num_tokens) as f64 / num_experts as f64).ceil() as i64;
    Ok(c.max(min_capacity))
}

/// Rows per expert of a dispatch plan, `[E]` i64 on the device — and on the host once read.
///
/// A dropless token-choice plan without a token mask knows its row count without looking
/// (`k · N`) and never reads its group sizes: the grouped expert kernel takes them as device
/// offsets. Plans whose row count depends on the data (a capacity, a token mask, expert choice)
/// read them once while planning; the per-expert loop and the expert-parallel exchange need them
/// on the host and read them on first use ([`GroupSizes::host`], counted by
/// [`crate::host::host_reads`]).
#[derive(Debug)]
pub struct GroupSizes {
    device: Tensor,
    host: std::sync::OnceLock<Vec<i64>>,
}

impl GroupSizes {
    /// Sizes known on the host, copied to `device` (no read).
    ///
    /// # Errors
    /// [`crate::Error::Shape`] for a negative size; [`crate::Error::Torch`] on libtorch failure.
    pub fn from_host(sizes: &[i64], device: tch::Device) -> Result<Self> {
        if let Some(bad) = sizes.iter().find(|&&g| g < 0) {
            return Err(crate::Error::Shape(format!("group sizes must not be negative, got {bad} in {sizes:?}")));
        }
        let host = std::sync::OnceLock::from(sizes.to_vec());
        Ok(Self { device: Tensor::from_slice(sizes).f_to_device(device)?, host })
    }

    /// Sizes that stay on the device until [`GroupSizes::host`] is called.
    pub(crate) fn on_device(sizes: Tensor) -> Self {
        Self { device: sizes, host: std::sync::OnceLock::new() }
    }

    /// Sizes read to the host now (one read).
    pub(crate) fn read(sizes: Tensor) -> Result<Self> {
        let host = std::sync::OnceLock::from(host::i64s(&sizes)?);
        Ok(Self { device: sizes, host })
    }

    /// The sizes on the device, `[E]` i64.
    pub fn tensor(&self) -> &Tensor {
        &self.device
    }

    /// Number of experts `E`.
    pub fn len(&self) -> usize {
        self.device.numel()
    }

    /// Whether there are no experts.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sizes on the host if they are there already (no read).
    pub fn known(&self) -> Option<&[i64]> {
        self.host.get().map(Vec::as_slice)
    }

    /// The sizes on the host: read once on first use when only the device has them.
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    pub fn host(&self) -> Result<&[i64]> {
        if let Some(known) = self.host.get() {
            return Ok(known);
        }
        let read = host::i64s(&self.device)?;
        Ok(self.host.get_or_init(|| read))
    }

    /// Cumulative row ends `[E]` i32 on the device, the grouped kernel's `offs` (no read).
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    pub fn offsets(&self) -> Result<Tensor> {
        Ok(self.device.f_cumsum(0, Kind::Int)?)
    }
}

/// Where each kept token→expert assignment goes.
#[derive(Debug)]
pub struct DispatchPlan {
    /// Number of token rows `N` (real and masked).
    pub num_tokens: i64,
    /// Output slots per token (`k` for token choice).
    pub num_slots: i64,
    /// Kept assignments in expert order, `[M]` i64, each `a = slot·N + token`.
    pub assignment: Tensor,
    /// Gate weight of each kept assignment, `[M]`, f32.
    pub gate: Tensor,
    /// Rows per expert after capacity, summing to `M`.
    pub group_sizes: GroupSizes,
    /// Number of kept assignments `M` (known on the host: `k · N_real` when dropless).
    pub num_kept: i64,
    /// Assignments per expert before capacity, real tokens only, `[E]` i64.
    pub routed_per_expert: Tensor,
    /// Capacity per expert (`None` = dropless).
    pub capacity: Option<i64>,
    /// Token choice: fraction of the `k · N_real` assignments dropped for lack of capacity.
    /// Expert choice: fraction of real tokens that no expert picked. A scalar f64 tensor on the
    /// device (read with the step's other statistics).
    pub dropped_fraction: Tensor,
}

impl DispatchPlan {
    /// Number of kept assignments `M`.
    pub fn num_kept(&self) -> i64 {
        self.num_kept
    }

    /// Token row of each kept assignment, `[M]` i64.
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    pub fn tokens(&self) -> Result<Tensor> {
        Ok(self.assignment.f_remainder(self.num_tokens)?)
    }
}

/// Number of `true` entries of an optional `[N]` mask (all `N` tokens without a mask; one host
/// read with a mask).
pub(crate) fn count_real(valid: Option<&Tensor>, n: i64) -> Result<i64> {
    match valid {
        Some(v) => host::i64_scalar(&v.f_sum(Kind::Int64)?),
        None => Ok(n),
    }
}

/// Occurrences of each value `0..bins` in the integer tensor `values` (any shape), `[bins]` i64.
/// Unlike `bincount`, which reads the minimum and maximum back to the host on CUDA, this stays on
/// the device (integer `scatter_add` is exact and deterministic).
///
/// # Errors
/// [`Error::Shape`] if a value lies outside `0..bins`; [`crate::Error::Torch`] on libtorch failure.
pub(crate) fn count_values(values: &Tensor, bins: i64) -> Result<Tensor> {
    let flat = values.f_reshape([-1])?;
    let ones = Tensor::f_ones_like(&flat)?;
    Ok(Tensor::f_zeros([bins], (Kind::Int64, values.device()))?.f_scatter_add(0, &flat, &ones)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_formula_rounds_up() {
        assert_eq!(expert_capacity(100, 8, 1, 1.25, 4).unwrap(), 16); // ceil(15.625)
        assert_eq!(expert_capacity(10, 4, 1, 1.0, 1).unwrap(), 3); // ceil(2.5): no token lost to rounding
        assert_eq!(expert_capacity(100, 8, 2, 1.0, 4).unwrap(), 25);
        assert_eq!(expert_capacity(8, 8, 1, 1.0, 4).unwrap(), 4); // min_capacity wins
        assert!(expert_capacity(8, 8, 1, 0.0, 4).unwrap_err().to_string().contains("capacity_factor (0)"));
    }
}
