//! Process-wide libtorch settings that tch does not expose.
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

/// libtorch's global context and its determinism switch (C++ symbols of libtorch 2.13; tch and
/// torch-sys do not wrap them).
mod ffi {
    use std::os::raw::c_void;
    extern "C" {
        #[link_name = "_ZN2at13globalContextEv"]
        pub fn global_context() -> *mut c_void;
        #[link_name = "_ZN2at7Context26setDeterministicAlgorithmsEbb"]
        pub fn set_deterministic_algorithms(context: *mut c_void, enabled: bool, warn_only: bool);
        #[link_name = "_ZNK2at7Context23deterministicAlgorithmsEv"]
        pub fn deterministic_algorithms(context: *const c_void) -> bool;
    }
}

/// Uses only deterministic libtorch kernels from now on, in the whole process (`true`), or
/// allows the faster non-deterministic ones again (`false`, libtorch's default). With CUDA it
/// also sets `CUBLAS_WORKSPACE_CONFIG=:4096:8` when unset (cuBLAS needs it for reproducible
/// results; set it before the first CUDA call). See the module docs for what this changes.
pub fn set_deterministic(enabled: bool) {
    if enabled && std::env::var_os("CUBLAS_WORKSPACE_CONFIG").is_none() {
        std::env::set_var("CUBLAS_WORKSPACE_CONFIG", ":4096:8");
    }
    // SAFETY: `at::globalContext()` returns the process-wide context, valid for the whole
    // process; the setter is a plain non-virtual member function taking two bools.
    unsafe { ffi::set_deterministic_algorithms(ffi::global_context(), enabled, false) }
}

/// Whether libtorch is restricted to deterministic kernels ([`set_deterministic`]).
pub fn is_deterministic() -> bool {
    // SAFETY: as in `set_deterministic`; a const getter.
    unsafe { ffi::deterministic_algorithms(ffi::global_context()) }
}

#[cfg(test)]
/// Held by the unit tests that flip the process-wide switch, so that they do not interleave.
pub(crate) static TEST_SWITCH_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

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
