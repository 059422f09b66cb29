//! Process-wide libtorch settings and counters that tch does not expose: the deterministic-kernels
//! switch and a counter of ATen operations.
//!
//! # Determinism
//! On the CPU, every computation of this library is bitwise reproducible: the same seed gives
//! the same loss curve, and a resumed run continues exactly (tests check both). On CUDA some
//! libtorch kernels accumulate with atomics in a varying order — the backward of attention
//! (`scaled_dot_product_attention`), `index_add` / `index_select`'s backward with repeated
//! indices (Sequence-AltUp spreads anchors this way), cuBLAS with several workspaces — so two
//! runs differ in the last bits and drift apart over many steps. [`set_deterministic`] switches
//! libtorch to its deterministic kernels (PyTorch's `torch.use_deterministic_algorithms`), which
//! are slower, and makes an operation without one fail with an error instead of running
//! non-deterministically. The token combine of the MoE layer never scatters into duplicate
//! indices, so it is deterministic either way. Under the switch,
//! [`crate::moe::ExpertBackend::Auto`] takes the per-expert loop on accelerators instead of
//! timing both kernels (a timed choice can differ between a run and its resumption). With it,
//! the same seed and a resumed run were bitwise equal on an H200 (CUDA 13, libtorch 2.11).

/// Uses only deterministic libtorch kernels from now on, in the whole process (`true`), or
/// allows the faster non-deterministic ones again (`false`, libtorch's default). With CUDA it
/// also sets `CUBLAS_WORKSPACE_CONFIG=:4096:8` when unset (cuBLAS needs it for reproducible
/// results; set it before the first CUDA call). See the module docs for what this changes.
pub fn set_deterministic(enabled: bool) {
    if enabled && std::env::var_os("CUBLAS_WORKSPACE_CONFIG").is_none() {
        std::env::set_var("CUBLAS_WORKSPACE_CONFIG", ":4096:8");
    }
    crate::native::set_deterministic(enabled)
}

/// Whether libtorch is restricted to deterministic kernels ([`set_deterministic`]).
pub fn is_deterministic() -> bool {
    crate::native::is_deterministic()
}

/// ATen operations counted by an [`OpCounter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpCounts {
    /// Operations called from outside any other operation: what the library itself dispatches
    /// (each a kernel launch or more on an accelerator).
    pub top_level: i64,
    /// All operations, including those that composite operations call inside themselves.
    pub all: i64,
}

/// Counts the ATen operations (c10 dispatcher calls, through libtorch's `RecordFunction`
/// callbacks) that the creating thread runs while the counter lives — including the backward
/// work autograd runs for it on other threads — the way PyTorch's profiler counts them. Used by
/// tests and benchmarks to show that a step launches a fixed number of operations.
///
/// One counter exists at a time in a process: [`OpCounter::start`] waits for an earlier one to
/// be dropped. A counter stays on its thread (it is not `Send`).
///
/// ```
/// use altup_moe::runtime::OpCounter;
/// use tch::Tensor;
/// let x = Tensor::from_slice(&[1.0f32, 2.0]);
/// let counter = OpCounter::start()?;
/// let _y = (&x + 1.0) * 2.0;
/// assert_eq!(counter.counts().top_level, 2);
/// # Ok::<(), altup_moe::Error>(())
/// ```
#[derive(Debug)]
pub struct OpCounter {
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
    timing: bool,
    _not_send: std::marker::PhantomData<*const ()>,
}

static OP_COUNTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl OpCounter {
    /// Starts counting from zero.
    ///
    /// # Errors
    /// [`crate::Error::Torch`] if libtorch refuses the callback.
    pub fn start() -> crate::Result<Self> {
        Self::start_with(false)
    }

    /// Starts counting from zero and also times the top-level operations by name
    /// ([`OpCounter::times`]), as a profiler would (each timed operation pays for two clock
    /// reads; on an accelerator the time is that of the launch, not of the kernel).
    ///
    /// # Errors
    /// As [`OpCounter::start`].
    pub fn start_timed() -> crate::Result<Self> {
        Self::start_with(true)
    }

    fn start_with(timing: bool) -> crate::Result<Self> {
        let guard = OP_COUNTER.lock().unwrap_or_else(|p| p.into_inner());
        crate::native::op_counter_start(timing)?;
        Ok(Self { _one_at_a_time: guard, timing, _not_send: std::marker::PhantomData })
    }

    /// The timed top-level operations so far, `(name, calls, seconds)`, most time first (empty
    /// unless started with [`OpCounter::start_timed`]).
    pub fn times(&self) -> Vec<(String, i64, f64)> {
        let mut times = crate::native::op_times();
        times.sort_by(|a, b| b.2.total_cmp(&a.2));
        times
    }

    /// The operations counted so far.
    pub fn counts(&self) -> OpCounts {
        let (top_level, all) = crate::native::op_counts();
        OpCounts { top_level, all }
    }

    /// Restarts the count at zero.
    ///
    /// # Errors
    /// As [`OpCounter::start`].
    pub fn reset(&mut self) -> crate::Result<()> {
        crate::native::op_counter_start(self.timing)
    }
}

impl Drop for OpCounter {
    fn drop(&mut self) {
        // Removing a registered callback does not fail; a failure would only leave it counting.
        let _ = crate::native::op_counter_stop();
    }
}

/// Bytes the CUDA caching allocator holds for tensors on one device
/// (`torch.cuda.memory_allocated` / `max_memory_allocated`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaMemory {
    /// Allocated now.
    pub allocated: u64,
    /// The most allocated at once since the process started or [`reset_peak_cuda_memory`].
    pub peak: u64,
}

/// The CUDA allocator's figures for `device`; `None` for the CPU, or when this build has no CUDA
/// support.
///
/// # Errors
/// [`crate::Error::Torch`] if libtorch refuses (e.g. a device index it does not have).
pub fn cuda_memory(device: tch::Device) -> crate::Result<Option<CudaMemory>> {
    let tch::Device::Cuda(index) = device else { return Ok(None) };
    Ok(crate::native::cuda::memory(index)?.map(|(allocated, peak)| CudaMemory { allocated, peak }))
}

/// Restarts the peak of [`cuda_memory`] for `device` (nothing to do for the CPU).
///
/// # Errors
/// As [`cuda_memory`].
pub fn reset_peak_cuda_memory(device: tch::Device) -> crate::Result<()> {
    match device {
        tch::Device::Cuda(index) => crate::native::cuda::reset_peak_memory(index),
        _ => Ok(()),
    }
}

/// Whether this build can capture CUDA graphs: its libtorch had CUDA when it was compiled (the
/// device must still exist at run time).
pub fn has_cuda_graphs() -> bool {
    crate::native::cuda::CUDA_GRAPHS
}

#[cfg(test)]
/// Held by the unit tests that flip the process-wide switch, so that they do not interleave.
pub(crate) static TEST_SWITCH_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn the_counter_counts_nested_operations_apart_and_times_the_top_level_ones() {
        let x = Tensor::from_slice(&[1.0f32, -2.0, 3.0]);
        let counter = OpCounter::start_timed().unwrap();
        let _ = (&x + 1.0).abs();
        let _ = x.norm(); // a composite: its inner operations count under `all` only
        let counts = counter.counts();
        assert_eq!(counts.top_level, 3);
        assert!(counts.all > counts.top_level, "{counts:?}");
        let names: Vec<String> =
            counter.times().into_iter().map(|(name, calls, _)| format!("{name}×{calls}")).collect();
        for expected in ["aten::add×1", "aten::abs×1", "aten::norm×1"] {
            assert!(names.iter().any(|n| n == expected), "{expected} in {names:?}");
        }
        drop(counter);
        let untimed = OpCounter::start().unwrap();
        let _ = &x * 2.0;
        assert!(untimed.times().is_empty());
        assert_eq!(untimed.counts().top_level, 1);
    }

    #[test]
    fn the_switch_reaches_libtorch_and_cpu_work_still_runs() {
        let _alone = TEST_SWITCH_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let before = is_deterministic();
        set_deterministic(true);
        assert!(is_deterministic());
        // Ops the model uses run under the switch on the CPU, with the same results.
        let x = Tensor::randn([6, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let index = Tensor::from_slice(&[0i64, 0, 2, 5, 5, 5]);
        let y = x.index_select(0, &index).softmax(-1, Kind::Float).sum(Kind::Float);
        y.backward();
        assert!(x.grad().isfinite().all().int64_value(&[]) != 0);
        set_deterministic(before);
        assert_eq!(is_deterministic(), before);
    }
}
