//! Residual-stream methods: how a block's sublayers read from and write to the residual stream.
//!
//! The plain pre-norm residual `x + f(norm(x))` keeps one stream. Hyper-Connections and mHC keep
//! `n` (`[B, T, n, D]`): [`widen_stream`] copies the embedding into each, every sublayer's
//! [`SublayerConnection`] reads its input from the streams, writes its output back and mixes
//! them, and [`collapse_stream`] averages them before the final norm. LAuReL learns the residual
//! path of one stream (its previous-activation slots ride in the stream the same way). AltUp,
//! the other widened stream (`K` blocks, one computed per layer), wraps whole blocks instead
//! ([`crate::altup`]).
//!
//! # Shape legend
//! `B` batch, `T` sequence length, `n` streams, `D` model width.
//!
//! # Methods and sources
//! | method | config | source |
//! |---|---|---|
//! | plain | [`ResidualConfig::Plain`] | pre-norm residual (GPT-2, Llama) |
//! | Hyper-Connections, static and dynamic | [`ResidualConfig::HyperConnections`] | arXiv 2409.19606 §2 (eq. 3–5, 10–14); the `hyper-connections` package |
//! | mHC | [`ResidualConfig::Mhc`] | arXiv 2512.24880 §4.2 (eq. 3, 7–9) |
//! | LAuReL RW, LR, PA | [`ResidualConfig::Laurel`] | arXiv 2411.07501 §2 (eq. 2–5); Gemma 3n's `Gemma3nTextLaurelBlock` |

pub(crate) mod config;
pub(crate) mod connection;
pub(crate) mod hyper;
pub(crate) mod laurel;
pub(crate) mod mhc;
pub(crate) mod streams;

pub use config::ResidualConfig;
pub use connection::{residual_add, PlainResidual, Sublayer, SublayerConnection};
pub use hyper::HyperConnection;
pub use laurel::Laurel;
pub use mhc::{sinkhorn_knopp, ManifoldHyperConnection, MhcMaps};
pub use streams::{collapse_stream, widen_stream};

use crate::error::Result;
use crate::nn::VarBuilder;

/// The connection of sublayer `index` (counted over the stack) under `vb` for `config`.
///
/// # Errors
/// [`crate::Error::Config`] for invalid settings; [`crate::Error::Torch`] if allocation fails.
pub fn connection<'a>(
    vb: impl Into<VarBuilder<'a>>,
    d_model: usize,
    config: &ResidualConfig,
    index: usize,
    norm_eps: f64,
) -> Result<Box<dyn SublayerConnection>> {
    Ok(match *config {
        ResidualConfig::Plain => Box::new(PlainResidual),
        ResidualConfig::HyperConnections { streams, dynamic } => {
            Box::new(HyperConnection::new(vb, d_model, streams, dynamic, index)?)
        }
        ResidualConfig::Mhc { streams, sinkhorn_iters } => {
            Box::new(ManifoldHyperConnection::new(vb, d_model, streams, sinkhorn_iters, norm_eps)?)
        }
        ResidualConfig::Laurel { rw, rank, post_norm, previous } => {
            Box::new(Laurel::new(vb, d_model, rw, (rank, post_norm), previous, norm_eps)?)
        }
    })
}
