//! Which residual-stream method a stack uses, and its settings.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// How the sublayers of every block read from and write to the residual stream.
///
/// `Plain` is the pre-norm residual `x + f(norm(x))` of every other stack. Hyper-Connections and
/// mHC keep `n` copies of the stream (`[B, T, n, D]`): the embedding is copied into each, every
/// sublayer (attention, cross-attention, FFN or MoE) reads a learned combination of them and
/// writes its output back with learned weights while the streams mix, and the streams are
/// averaged before the final norm. LAuReL keeps one stream and learns the residual path (with
/// previous activations, the stream holds them: `[B, T, k, D]`). AltUp, the other widened stream,
/// is configured by [`crate::altup::AltUpConfig`] and cannot be combined with these.
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
        /// Expansion rate `n` (streams), at least 2.
        streams: usize,
        /// Sinkhorn–Knopp iterations of the stream-mixing projection, at least 1 (the paper: 20).
        sinkhorn_iters: usize,
    },
    /// LAuReL (Menghani et al., arXiv 2411.07501, §2): a learned residual path, any combination
    /// of RW, LR and PA (see [`crate::residual::Laurel`]).
    Laurel {
        /// RW: learned weights on the sublayer output and the residual path.
        rw: bool,
        /// LR: rank `r` of the low-rank residual term (0: off).
        rank: usize,
        /// LR in Gemma 3n's form: an RMS norm with a gain on the low-rank term (needs `rank`).
        #[serde(default)]
        post_norm: bool,
        /// PA: previous activations `k` the residual path sees, the current one included (0 or
        /// 1: off).
        #[serde(default)]
        previous: usize,
    },
}

impl ResidualConfig {
    /// The number of stream slots `n` of the `[B, T, n, D]` stream, `None` for a `[B, T, D]`
    /// stream (plain, LAuReL without PA).
    pub fn streams(&self) -> Option<usize> {
        match *self {
            Self::Plain => None,
            Self::HyperConnections { streams, .. } | Self::Mhc { streams, .. } => Some(streams),
            Self::Laurel { previous, .. } => (previous > 1).then_some(previous),
        }
    }

    /// Whether this is the plain residual.
    pub fn is_plain(&self) -> bool {
        matches!(self, Self::Plain)
    }

    /// Parameters of one sublayer's connection at width `d`: Hyper-Connections `n(n+1) + n`
    /// (dynamic: `+ D(n+1) + 2D + 2`), mHC `nD·(2n + n²) + 2n + n² + 3`, LAuReL `2` (RW) `+ 2rD`
    /// (LR, `+ D` with the post-norm) `+ k − 1` (PA), plain 0.
    pub fn params_per_sublayer(&self, d: usize) -> usize {
        match *self {
            Self::Plain => 0,
            Self::HyperConnections { streams: n, dynamic } => {
                n * (n + 1) + n + if dynamic { d * (n + 1) + 2 * d + 2 } else { 0 }
            }
            Self::Mhc { streams: n, .. } => n * d * (2 * n + n * n) + 2 * n + n * n + 3,
            Self::Laurel { rw, rank, post_norm, previous } => {
                2 * usize::from(rw) + 2 * rank * d + if post_norm { d } else { 0 } + previous.saturating_sub(1)
            }
        }
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::Config`] naming the value: no streams, mHC with one stream, no Sinkhorn
    /// iterations, a LAuReL with nothing to learn, or a post-norm without LR.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Self::Plain => {}
            Self::HyperConnections { streams, .. } => {
                if streams == 0 {
                    return Err(Error::Config("residual streams (0) must be at least 1".into()));
                }
            }
            Self::Mhc { streams, sinkhorn_iters } => {
                if streams < 2 {
                    return Err(Error::Config(format!("mHC needs at least 2 residual streams, got {streams}")));
                }
                if sinkhorn_iters == 0 {
                    return Err(Error::Config("residual sinkhorn_iters (0) must be at least 1".into()));
                }
            }
            Self::Laurel { rw, rank, post_norm, previous } => {
                if !rw && rank == 0 && previous < 2 {
                    return Err(Error::Config(
                        "LAuReL needs at least one of rw, rank > 0 (LR) or previous ≥ 2 (PA)".into(),
                    ));
                }
                if post_norm && rank == 0 {
                    return Err(Error::Config("LAuReL post_norm needs the low-rank path (rank > 0)".into()));
                }
            }
        }
        Ok(())
    }
}
