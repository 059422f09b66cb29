//! The CUDA half of the shim (`cuda.cpp`): whole-step CUDA graphs and the caching allocator's
//! statistics. Compiled only with `--cfg altup_moe_cuda` (build.rs sets it when libtorch has
//! CUDA); without it every function returns an error saying so, and memory statistics are `None`.

#[cfg(not(altup_moe_cuda))]
use crate::error::Error;
use crate::error::Result;

#[cfg(altup_moe_cuda)]
mod ffi {
    use std::ffi::{c_char, c_void};
    extern "C" {
        pub fn amoe_cuda_graph_new(device: i32, out: *mut *mut c_void) -> *mut c_char;
        pub fn amoe_cuda_graph_free(graph: *mut c_void);
        pub fn amoe_cuda_graph_enter(graph: *mut c_void) -> *mut c_char;
        pub fn amoe_cuda_graph_leave(graph: *mut c_void) -> *mut c_char;
        pub fn amoe_cuda_graph_capture_begin(graph: *mut c_void) -> *mut c_char;
        pub fn amoe_cuda_graph_capture_end(graph: *mut c_void) -> *mut c_char;
        pub fn amoe_cuda_graph_replay(graph: *mut c_void) -> *mut c_char;
        pub fn amoe_cuda_memory(device: i32, allocated: *mut i64, peak: *mut i64) -> *mut c_char;
        pub fn amoe_cuda_reset_peak_memory(device: i32) -> *mut c_char;
    }
}

/// Whether this build can capture CUDA graphs (libtorch with CUDA at build time).
pub(crate) const CUDA_GRAPHS: bool = cfg!(altup_moe_cuda);

#[cfg(not(altup_moe_cuda))]
fn not_built() -> Error {
    Error::Config("this build of altup-moe has no CUDA support (its libtorch had no CUDA when it was compiled)".into())
}

/// A CUDA graph with its side stream (`at::cuda::CUDAGraph`). Not `Send`: the stream switch is
/// per thread.
#[derive(Debug)]
pub(crate) struct CudaGraph {
    #[cfg(altup_moe_cuda)]
    raw: *mut std::ffi::c_void,
}

impl CudaGraph {
    /// A graph on CUDA device `device`, nothing captured yet.
    pub(crate) fn new(device: usize) -> Result<Self> {
        #[cfg(altup_moe_cuda)]
        {
            let mut raw = std::ptr::null_mut();
            // SAFETY: `raw` outlives the call; on success it is a graph we own.
            super::check(unsafe { ffi::amoe_cuda_graph_new(device as i32, &mut raw) })?;
            Ok(Self { raw })
        }
        #[cfg(not(altup_moe_cuda))]
        {
            let _ = device;
            Err(not_built())
        }
    }

    /// Runs `f` on the graph's side stream, not captured (warm-up).
    pub(crate) fn on_side_stream<T>(&mut self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        #[cfg(altup_moe_cuda)]
        {
            // SAFETY: `raw` is a live graph.
            super::check(unsafe { ffi::amoe_cuda_graph_enter(self.raw) })?;
            let result = f();
            super::check(unsafe { ffi::amoe_cuda_graph_leave(self.raw) })?;
            result
        }
        #[cfg(not(altup_moe_cuda))]
        {
            let _ = f;
            Err(not_built())
        }
    }

    /// Captures what `f` launches on the device (nothing runs); replay it with
    /// [`CudaGraph::replay`].
    pub(crate) fn capture<T>(&mut self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        #[cfg(altup_moe_cuda)]
        {
            // SAFETY: `raw` is a live graph.
            super::check(unsafe { ffi::amoe_cuda_graph_capture_begin(self.raw) })?;
            let result = f();
            let ended = super::check(unsafe { ffi::amoe_cuda_graph_capture_end(self.raw) });
            let value = result?;
            ended?;
            Ok(value)
        }
        #[cfg(not(altup_moe_cuda))]
        {
            let _ = f;
            Err(not_built())
        }
    }

    /// Launches the captured work once.
    pub(crate) fn replay(&mut self) -> Result<()> {
        #[cfg(altup_moe_cuda)]
        {
            // SAFETY: `raw` is a live graph.
            super::check(unsafe { ffi::amoe_cuda_graph_replay(self.raw) })
        }
        #[cfg(not(altup_moe_cuda))]
        {
            Err(not_built())
        }
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        #[cfg(altup_moe_cuda)]
        // SAFETY: `raw` is a live graph, freed once.
        unsafe {
            ffi::amoe_cuda_graph_free(self.raw)
        }
    }
}

/// The caching allocator's bytes on CUDA device `device`: `(now, peak since the last reset)`;
/// `None` without CUDA support.
pub(crate) fn memory(device: usize) -> Result<Option<(u64, u64)>> {
    #[cfg(altup_moe_cuda)]
    {
        let (mut allocated, mut peak) = (0i64, 0i64);
        // SAFETY: both outlive the call.
        super::check(unsafe { ffi::amoe_cuda_memory(device as i32, &mut allocated, &mut peak) })?;
        Ok(Some((allocated.max(0) as u64, peak.max(0) as u64)))
    }
    #[cfg(not(altup_moe_cuda))]
    {
        let _ = device;
        Ok(None)
    }
}

/// Restarts the peak of [`memory`] (no-op without CUDA support).
pub(crate) fn reset_peak_memory(device: usize) -> Result<()> {
    #[cfg(altup_moe_cuda)]
    {
        // SAFETY: a call without pointers.
        super::check(unsafe { ffi::amoe_cuda_reset_peak_memory(device as i32) })
    }
    #[cfg(not(altup_moe_cuda))]
    {
        let _ = device;
        Ok(())
    }
}
