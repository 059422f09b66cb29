//! Helpers for this crate's own tests, doctests and examples, built with the cargo feature
//! `testing` only (they turn it on); not part of the library's API.
//!
//! The test suite, the doctests and the documentation examples build their models and inputs on
//! [`device()`] rather than on a hard-coded `Device::Cpu`, so that the same suite can run on a
//! GPU; [`one_hot_moe`] is the one-hot reference MoE the equivalence tests compare against;
//! [`timing`] times benchmarks as interleaved pairs.
//!
//!
//! ```text
//! ALTUP_MOE_TEST_DEVICE=cuda make test
//! ```

mod reference;
pub mod timing;

pub use reference::{one_hot_moe, route, Routed};

use tch::Device;

use crate::{Error, Result};

/// The environment variable that [`device()`] reads.
pub const DEVICE_VAR: &str = "ALTUP_MOE_TEST_DEVICE";

/// The environment variable that [`source_dir()`] reads.
pub const SOURCE_DIR_VAR: &str = "ALTUP_MOE_SOURCE_DIR";

/// The environment variable that [`python()`] reads first.
pub const PYTHON_VAR: &str = "ALTUP_MOE_PYTHON";

/// The project's folder, where tests and examples find their scripts and fixtures
/// (`tests/python/…`, `benches/…`): `ALTUP_MOE_SOURCE_DIR` when set — a GPU bundle unpacks them
/// elsewhere (see docs/gpu-check.md) — else the folder the crate was built from.
pub fn source_dir() -> std::path::PathBuf {
    std::env::var_os(SOURCE_DIR_VAR).map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}

/// The Python with PyTorch that tests and examples compare against: `ALTUP_MOE_PYTHON`, else
/// `$VIRTUAL_ENV/bin/python`, else the project's `.venv/bin/python`.
pub fn python() -> std::path::PathBuf {
    if let Some(python) = std::env::var_os(PYTHON_VAR) {
        return python.into();
    }
    match std::env::var_os("VIRTUAL_ENV") {
        Some(venv) => std::path::Path::new(&venv).join("bin/python"),
        None => source_dir().join(".venv/bin/python"),
    }
}

/// The device to run tests, doctests and examples on, chosen by the environment variable
/// `ALTUP_MOE_TEST_DEVICE`.
///
/// * unset, empty or `cpu`: [`Device::Cpu`];
/// * `cuda`: `Device::Cuda(0)`;
/// * `cuda:N`: `Device::Cuda(N)`.
///
/// # Errors
/// [`Error::Config`], naming the variable and the value, when
/// * the value is none of the above;
/// * it names a CUDA device and CUDA is not available to libtorch (a CPU-only build);
/// * it names `cuda:N` with `N` at least the number of CUDA devices.
///
/// ```
/// use tch::{nn::VarStore, Kind, Tensor};
///
/// // the device the tests run on (ALTUP_MOE_TEST_DEVICE, default cpu)
/// let device = altup_moe::testing::device()?;
/// let vs = VarStore::new(device);
/// let x = Tensor::zeros([2, 3], (Kind::Float, device));
/// assert_eq!((vs.device(), x.device()), (device, device));
/// # Ok::<(), altup_moe::Error>(())
/// ```
pub fn device() -> Result<Device> {
    let value = std::env::var_os(DEVICE_VAR);
    let value = match &value {
        None => None,
        Some(v) => Some(v.to_str().ok_or_else(|| Error::Config(format!("{DEVICE_VAR} is not valid UTF-8: {v:?}")))?),
    };
    let device = parse(value)?;
    if let Device::Cuda(index) = device {
        if !tch::Cuda::is_available() {
            return Err(Error::Config(format!(
                "{DEVICE_VAR}={:?} asks for CUDA, but CUDA is not available to libtorch \
                 (a CPU-only build, or no GPU or driver)",
                value.unwrap_or_default()
            )));
        }
        let count = tch::Cuda::device_count();
        if index as i64 >= count {
            return Err(Error::Config(format!(
                "{DEVICE_VAR}={:?} asks for CUDA device {index}, but only {count} CUDA device(s) are available",
                value.unwrap_or_default()
            )));
        }
    }
    Ok(device)
}

/// Parses a value of [`DEVICE_VAR`] (`None` when it is unset); does not check that the device exists.
fn parse(value: Option<&str>) -> Result<Device> {
    let raw = value.unwrap_or("");
    let bad = || Error::Config(format!("{DEVICE_VAR} must be `cpu`, `cuda` or `cuda:N` (N = 0, 1, ...), got {raw:?}"));
    match raw {
        "" | "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => {
            let index = raw.strip_prefix("cuda:").ok_or_else(bad)?;
            if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            Ok(Device::Cuda(index.parse::<usize>().map_err(|_| bad())?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_the_default() {
        assert_eq!(parse(None).unwrap(), Device::Cpu);
        assert_eq!(parse(Some("")).unwrap(), Device::Cpu);
        assert_eq!(parse(Some("cpu")).unwrap(), Device::Cpu);
    }

    #[test]
    fn cuda_devices() {
        assert_eq!(parse(Some("cuda")).unwrap(), Device::Cuda(0));
        assert_eq!(parse(Some("cuda:0")).unwrap(), Device::Cuda(0));
        assert_eq!(parse(Some("cuda:3")).unwrap(), Device::Cuda(3));
        assert_eq!(parse(Some("cuda:12")).unwrap(), Device::Cuda(12));
    }

    #[test]
    fn bad_values_name_the_variable_and_the_value() {
        for bad in [
            "gpu",
            "CPU",
            " cpu",
            "cuda:",
            "cuda:x",
            "cuda:-1",
            "cuda:+1",
            "cuda:1:2",
            "cuda0",
            "mps",
            "cuda:99999999999999999999",
        ] {
            let err = parse(Some(bad)).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{bad}: {err}");
            let message = err.to_string();
            assert!(message.contains(DEVICE_VAR), "{message}");
            assert!(message.contains(&format!("{bad:?}")), "{message}");
        }
    }
}
