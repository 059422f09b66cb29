//! Which residual-stream method a stack uses, and its settings.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The streams of a Hyper-Connections or mHC preset without `:N` (the papers' main setting).
pub const DEFAULT_STREAMS: usize = 4;
/// mHC's Sinkhorn–Knopp iterations (the paper's `t_max`).
pub const DEFAULT_SINKHORN_ITERS: usize = 20;
/// The parts of the `laurel` preset: RW and LR of rank 16 (eq. 5).
pub const DEFAULT_LAUREL: &str = "rw+lr=16";

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

    /// Forward FLOPs per token of one sublayer's connection at width `d` (2 per multiply-add):
    /// Hyper-Connections read and mix `(n+1)·n·D` and write `n·D` (dynamic: `+ n·D·(n+1) + n·D`
    /// for the projections); mHC projects `n·D·(2n + n²)`, reads `n·D`, mixes `n²·D`, writes
    /// `n·D` (Sinkhorn's `O(n²)` per iteration not counted); LAuReL's LR `2·r·D` and PA
    /// `(k − 1)·D`; plain 0. Norms, activations and the additions are not counted, as for the
    /// blocks.
    pub fn forward_flops_per_sublayer(&self, d: usize) -> f64 {
        let macs = match *self {
            Self::Plain => 0,
            Self::HyperConnections { streams: n, dynamic } => {
                (n + 1) * n * d + n * d + if dynamic { n * d * (n + 1) + n * d } else { 0 }
            }
            Self::Mhc { streams: n, .. } => n * d * (2 * n + n * n) + n * d + n * n * d + n * d,
            Self::Laurel { rank, previous, .. } => 2 * rank * d + previous.saturating_sub(1) * d,
        };
        2.0 * macs as f64
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

impl fmt::Display for ResidualConfig {
    /// The command-line form [`ResidualConfig::from_str`] reads (non-default Sinkhorn iterations
    /// are not part of it: set them with `model.residual.sinkhorn_iters`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Plain => f.write_str("plain"),
            Self::HyperConnections { streams, dynamic: true } => write!(f, "hyper-connections:{streams}"),
            Self::HyperConnections { streams, dynamic: false } => write!(f, "static-hyper-connections:{streams}"),
            Self::Mhc { streams, .. } => write!(f, "mhc:{streams}"),
            Self::Laurel { rw, rank, post_norm, previous } => {
                let mut parts = Vec::new();
                if rw {
                    parts.push("rw".to_string());
                }
                if rank > 0 {
                    parts.push(format!("{}={rank}", if post_norm { "lr-norm" } else { "lr" }));
                }
                if previous > 1 {
                    parts.push(format!("pa={previous}"));
                }
                write!(f, "laurel:{}", parts.join("+"))
            }
        }
    }
}

impl FromStr for ResidualConfig {
    type Err = Error;

    /// `plain`; `hyper-connections[:N]` (dynamic) or `static-hyper-connections[:N]`; `mhc[:N]`
    /// (20 Sinkhorn iterations); `laurel[:PARTS]` with `PARTS` `+`-separated from `rw`, `lr=R`,
    /// `lr-norm=R` (Gemma 3n's form) and `pa=K` (default `rw+lr=16`). `N` defaults to 4.
    fn from_str(s: &str) -> Result<Self> {
        let (name, arg) = match s.split_once(':') {
            Some((name, arg)) => (name, Some(arg)),
            None => (s, None),
        };
        let number = |what: &str, v: &str| -> Result<usize> {
            v.parse().map_err(|_| Error::Config(format!("residual '{s}': {what} '{v}' is not a number")))
        };
        let streams = || arg.map_or(Ok(DEFAULT_STREAMS), |v| number("the number of streams", v));
        let config = match name {
            "plain" if arg.is_none() => Self::Plain,
            "hyper-connections" => Self::HyperConnections { streams: streams()?, dynamic: true },
            "static-hyper-connections" => Self::HyperConnections { streams: streams()?, dynamic: false },
            "mhc" => Self::Mhc { streams: streams()?, sinkhorn_iters: DEFAULT_SINKHORN_ITERS },
            "laurel" => {
                let (mut rw, mut rank, mut post_norm, mut previous) = (false, 0, false, 0);
                for part in arg.unwrap_or(DEFAULT_LAUREL).split('+') {
                    match part.split_once('=') {
                        None if part == "rw" => rw = true,
                        Some(("lr", r)) => rank = number("the rank", r)?,
                        Some(("lr-norm", r)) => (rank, post_norm) = (number("the rank", r)?, true),
                        Some(("pa", k)) => previous = number("the number of activations", k)?,
                        _ => {
                            return Err(Error::Config(format!(
                                "residual '{s}': unknown LAuReL part '{part}' (expected rw, lr=R, lr-norm=R or pa=K)"
                            )))
                        }
                    }
                }
                Self::Laurel { rw, rank, post_norm, previous }
            }
            _ => {
                return Err(Error::Config(format!(
                    "unknown residual method '{s}' (expected plain, hyper-connections[:N], \
                     static-hyper-connections[:N], mhc[:N] or laurel[:rw+lr=R+lr-norm=R+pa=K])"
                )))
            }
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_forms_read_back_and_bad_ones_are_named() {
        for (text, config) in [
            ("plain", ResidualConfig::Plain),
            ("hyper-connections", ResidualConfig::HyperConnections { streams: 4, dynamic: true }),
            ("static-hyper-connections:2", ResidualConfig::HyperConnections { streams: 2, dynamic: false }),
            ("mhc:2", ResidualConfig::Mhc { streams: 2, sinkhorn_iters: 20 }),
            ("laurel", ResidualConfig::Laurel { rw: true, rank: 16, post_norm: false, previous: 0 }),
            ("laurel:lr-norm=8+pa=3", ResidualConfig::Laurel { rw: false, rank: 8, post_norm: true, previous: 3 }),
        ] {
            assert_eq!(text.parse::<ResidualConfig>().unwrap(), config, "{text}");
            assert_eq!(config.to_string().parse::<ResidualConfig>().unwrap(), config, "{config}");
        }
        for (text, expected) in [
            ("hc", "unknown residual method 'hc'"),
            ("mhc:x", "residual 'mhc:x': the number of streams 'x' is not a number"),
            ("mhc:1", "mHC needs at least 2 residual streams, got 1"),
            ("laurel:lx=3", "unknown LAuReL part 'lx=3'"),
            ("plain:2", "unknown residual method 'plain:2'"),
        ] {
            let err = text.parse::<ResidualConfig>().unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
