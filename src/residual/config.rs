//! Which residual-stream method a stack uses, and its settings.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// How the sublayers of every block read from and write to the residual stream.
///
/// `Plain` is the pre-norm residual `x + f(norm(x))` of every other stack. The others keep `n`
/// copies of the stream (`[B, T, n, D]`): the embedding is copied into each, every sublayer
/// (attention, cross-attention, FFN or MoE) reads a learned combination of them and writes its
/// output back with learned weights while the streams mix, and the streams are averaged before
/// the final norm. AltUp, the other widened stream, is configured by [`crate::altup::AltUpConfig`]
/// and cannot be combined with these.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ResidualConfig {
    /// `x + f(norm(x))`.
    #[default]
    Plain,
    /// Hyper-Connections (Zhu et al., arXiv 2409.19606, §2): `n` streams with learned read,
    /// write and stream-mixing weights; `dynamic` adds input-dependent terms (eq. 10–13).
    HyperConnections {
        /// Expansion rate `n` (streams), at least 1.
        streams: usize,
        /// Dynamic (input-dependent) weights on top of the static ones.
        dynamic: bool,
    },
    /// Manifold-constrained Hyper-Connections (DeepSeek, arXiv 2512.24880): the stream-mixing
    /// matrix projected onto the doubly stochastic matrices with `sinkhorn_iters` Sinkhorn–Knopp
    /// iterations, non-negative read and write weights.
    Mhc {
        /// Expansion rate `n` (streams), at least 1.
        streams: usize,
        /// Sinkhorn–Knopp iterations of the stream-mixing projection, at least 1.
        sinkhorn_iters: usize,
    },
}

impl ResidualConfig {
    /// The number of residual streams `n` (1 for [`ResidualConfig::Plain`]).
    pub fn streams(&self) -> usize {
        match self {
            Self::Plain => 1,
            Self::HyperConnections { streams, .. } | Self::Mhc { streams, .. } => *streams,
        }
    }

    /// Whether this is the plain residual.
    pub fn is_plain(&self) -> bool {
        matches!(self, Self::Plain)
    }

    /// Parameters of one sublayer's connection at width `d`: Hyper-Connections `n(n+1) + n`
    /// (dynamic: `+ D(n+1) + 2D + 2`), mHC `nD·(2n + n²) + 2n + n² + 3`, plain 0.
    pub fn params_per_sublayer(&self, d: usize) -> usize {
        match *self {
            Self::Plain => 0,
            Self::HyperConnections { streams: n, dynamic } => {
                n * (n + 1) + n + if dynamic { d * (n + 1) + 2 * d + 2 } else { 0 }
            }
            Self::Mhc { streams: n, .. } => n * d * (2 * n + n * n) + 2 * n + n * n + 3,
        }
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::Config`] naming the value: no streams, mHC with one stream, or no Sinkhorn
    /// iterations.
    pub fn validate(&self) -> Result<()> {
        let streams = self.streams();
        if streams == 0 {
            return Err(Error::Config("residual streams (0) must be at least 1".into()));
        }
        if let Self::Mhc { streams, sinkhorn_iters } = *self {
            if streams < 2 {
                return Err(Error::Config(format!("mHC needs at least 2 residual streams, got {streams}")));
            }
            if sinkhorn_iters == 0 {
                return Err(Error::Config("residual sinkhorn_iters (0) must be at least 1".into()));
            }
        }
        Ok(())
    }
}
