//! The crate's error type.
//!
//! Every fallible public function returns [`Result`]. Errors name the offending value
//! (`"top_k (3) must be <= num_experts (2)"`), so a user can fix a config or an input without
//! reading our code. libtorch errors keep only their first line: the C++ backtrace that follows
//! it is noise to a user (it is still available through [`Error::Torch`]'s source).

use std::path::PathBuf;

/// Errors returned by altup-moe.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is invalid (checked once, in a `build`/`new` or `validate`).
    #[error("invalid config: {0}")]
    Config(String),
    /// A tensor has the wrong shape, dtype or device for the operation.
    #[error("shape error: {0}")]
    Shape(String),
    /// Invalid input data: token ids out of range, an empty batch, bad text, ...
    #[error("invalid input: {0}")]
    Input(String),
    /// Training data could not be found or used.
    #[error("data error: {0}")]
    Data(String),
    /// A checkpoint is missing, incomplete, or does not match the model.
    #[error("checkpoint error: {0}")]
    Checkpoint(String),
    /// Training produced a non-finite value.
    #[error("non-finite value at step {step}: {what}")]
    NonFinite {
        /// Optimizer step (1-based) at which the value appeared.
        step: u64,
        /// Which quantity (loss, a layer's router, a gradient) went bad.
        what: String,
    },
    /// A file system operation failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// JSON (de)serialisation failed.
    #[error("JSON error in {context}: {source}")]
    Json {
        /// What was being read or written.
        context: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// An error raised by libtorch (first line of its message only).
    #[error("libtorch: {}", first_line(&.0.to_string()))]
    Torch(#[from] tch::TchError),
}

/// Shorthand for `std::result::Result<T, altup_moe::Error>`.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

fn first_line(message: &str) -> &str {
    message.lines().find(|l| !l.trim().is_empty()).unwrap_or(message).trim()
}

/// Returns `Err(Error::Config(msg))` unless `cond` holds. Used by config validation.
pub(crate) fn ensure_config(cond: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(Error::Config(msg()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_errors_keep_only_their_first_line() {
        let err = tch::Tensor::zeros([2, 3], (tch::Kind::Float, tch::Device::Cpu))
            .f_matmul(&tch::Tensor::zeros([2, 3], (tch::Kind::Float, tch::Device::Cpu)))
            .unwrap_err();
        let shown = Error::from(err).to_string();
        assert!(shown.starts_with("libtorch: "), "{shown}");
        assert!(!shown.contains('\n'), "backtrace leaked into the message: {shown}");
        assert!(shown.contains("2x3"), "the useful first line was lost: {shown}");
    }
}
