//! Stack presets: the four architectures the builder assembles ([`Arch`]), and small Llama and
//! Mixtral models ([`ModelConfig::llama`], [`ModelConfig::mixtral`]) that export to Hugging Face.

use crate::altup::AltUpConfig;
use crate::error::{Error, Result};
use crate::model::config::{ModelConfig, MoeLayers};
use crate::moe::MoeConfig;
use crate::nn::{Activation, AttentionConfig, FeedForwardConfig};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A stack architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    /// Plain pre-norm transformer.
    #[serde(rename = "dense")]
    Dense,
    /// Switch Transformer: top-1 MoE FFN on every other block (Fedus et al. 2021).
    #[serde(rename = "switch")]
    Switch,
    /// AltUp with `K = 2` blocks around dense blocks (Baykal et al. 2023).
    #[serde(rename = "altup")]
    AltUp,
    /// AltUp (`K = 2`) around blocks whose FFN is a Switch MoE on *every* block: with
    /// alternating selection the experts then compute on both sub-blocks. The placement study of
    /// docs/results.md chose it (3 seeds, d = 128: 0.033 bits/byte better than MoE on every
    /// other block, and 0.055 better than Switch with MoE on every block).
    #[serde(rename = "altup-moe")]
    AltUpMoe,
}

impl Default for Arch {
    /// The main job's stack, [`Arch::AltUpMoe`].
    fn default() -> Self {
        Arch::AltUpMoe
    }
}

impl Arch {
    /// All architectures, in a stable order.
    pub const ALL: [Arch; 4] = [Arch::Dense, Arch::Switch, Arch::AltUp, Arch::AltUpMoe];

    /// The command-line / JSON name.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Dense => "dense",
            Arch::Switch => "switch",
            Arch::AltUp => "altup",
            Arch::AltUpMoe => "altup-moe",
        }
    }

    /// Whether the stack has MoE blocks.
    pub fn has_moe(self) -> bool {
        matches!(self, Arch::Switch | Arch::AltUpMoe)
    }

    /// Whether the stack is AltUp-widened.
    pub fn has_altup(self) -> bool {
        matches!(self, Arch::AltUp | Arch::AltUpMoe)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Arch::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Arch::ALL.iter().map(|a| a.name()).collect();
            Error::Config(format!("unknown architecture '{s}' (expected one of: {})", names.join(", ")))
        })
    }
}

impl ModelConfig {
    /// The default small configuration of an architecture: `D = 128`, 4 blocks, 4 heads, FFN and
    /// expert width 512, 8 dropless top-1 experts ([`MoeConfig::default`]: no capacity limit, no
    /// jitter; [`MoeConfig::switch`] has Switch's capacity factors 1.25 / 2.0) on every other block
    /// for `switch` and on every block for `altup-moe` (see [`Arch::AltUpMoe`]), AltUp `K = 2`
    /// with alternating selection and mean reduction.
    ///
    /// ```
    /// use altup_moe::model::{Arch, ModelConfig};
    /// let mut config = ModelConfig::preset(Arch::AltUpMoe);
    /// config.d_model = 64;
    /// config.validate().unwrap();
    /// assert!(config.is_moe_layer(0) && config.is_moe_layer(1));
    /// assert!(ModelConfig::preset(Arch::Switch).is_moe_layer(1));
    /// assert!(!ModelConfig::preset(Arch::Switch).is_moe_layer(0));
    /// assert_eq!(config.altup_blocks(), 2);
    /// ```
    pub fn preset(arch: Arch) -> Self {
        let base = ModelConfig::default();
        let moe = arch.has_moe().then(|| MoeConfig { d_ff: base.ffn.d_ff, ..MoeConfig::default() });
        let altup = arch.has_altup().then(AltUpConfig::default);
        let moe_layers = match arch {
            Arch::AltUpMoe => MoeLayers::Every { every: 1, offset: 0 },
            _ => MoeLayers::default(),
        };
        ModelConfig { moe, moe_layers, altup, ..base }
    }
}

/// Hidden width of the `llama` and `mixtral` presets' SwiGLU FFNs and experts (about
/// `8/3 · D` at `D = 128`, rounded up to a multiple of 32, as Llama sizes its MLP).
const LLAMA_D_FF: usize = 352;

impl ModelConfig {
    /// A small Llama-style model (Touvron et al. 2023, arXiv 2302.13971; Hugging Face
    /// `models/llama/modeling_llama.py`), exportable as `hf-llama` (see `altup_moe::hf`): byte
    /// vocabulary (256), `D = 128`, 4 blocks, 8 query heads of width 16 with 2 key/value heads
    /// (grouped-query attention), rotary θ = 10⁴ with the rotate-half pairing, RMSNorm ε = 10⁻⁵,
    /// SwiGLU FFN of width 352, an untied output head, no biases.
    ///
    /// ```
    /// use altup_moe::model::ModelConfig;
    /// let config = ModelConfig::llama();
    /// config.validate()?;
    /// assert_eq!(config.attention.kv_heads(), 2);
    /// assert!(config.moe.is_none() && !config.tie_embeddings);
    /// # Ok::<(), altup_moe::Error>(())
    /// ```
    pub fn llama() -> Self {
        ModelConfig {
            attention: AttentionConfig { num_heads: 8, num_kv_heads: Some(2), ..AttentionConfig::default() },
            ffn: FeedForwardConfig { d_ff: LLAMA_D_FF, activation: Activation::SwiGlu },
            norm_eps: 1e-5,
            tie_embeddings: false,
            ..ModelConfig::default()
        }
    }

    /// A small Mixtral-style model (Jiang et al. 2024, arXiv 2401.04088; Hugging Face
    /// `models/mixtral/modeling_mixtral.py`), exportable as `hf-mixtral`: [`ModelConfig::llama`]
    /// with rotary θ = 10⁶ and an MoE FFN in every block — 8 SwiGLU experts of width 352, a
    /// softmax router whose top-2 gates are renormalised to sum to 1, dropless (no capacity
    /// limit), no jitter ([`MoeConfig::mixtral`]).
    ///
    /// ```
    /// use altup_moe::model::ModelConfig;
    /// let config = ModelConfig::mixtral();
    /// config.validate()?;
    /// assert!((0..config.num_layers).all(|l| config.is_moe_layer(l)));
    /// let moe = config.moe.as_ref().unwrap();
    /// assert_eq!((moe.top_k, moe.normalize_gates, moe.capacity_factor), (2, true, None));
    /// # Ok::<(), altup_moe::Error>(())
    /// ```
    pub fn mixtral() -> Self {
        let llama = ModelConfig::llama();
        ModelConfig {
            attention: AttentionConfig { rope_theta: 1e6, ..llama.attention.clone() },
            moe: Some(MoeConfig::mixtral(8, LLAMA_D_FF)),
            moe_layers: MoeLayers::Every { every: 1, offset: 0 },
            ..llama
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_listed() {
        for arch in Arch::ALL {
            assert_eq!(arch.name().parse::<Arch>().unwrap(), arch);
            assert_eq!(serde_json::to_string(&arch).unwrap(), format!("\"{}\"", arch.name()));
        }
        let err = "moe".parse::<Arch>().unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid config: unknown architecture 'moe' (expected one of: dense, switch, altup, altup-moe)"
        );
    }

    #[test]
    fn presets_validate() {
        for arch in Arch::ALL {
            let c = ModelConfig::preset(arch);
            c.validate().unwrap();
            assert_eq!(c.moe.is_some(), arch.has_moe());
            assert_eq!(c.altup.is_some(), arch.has_altup());
        }
    }
}
