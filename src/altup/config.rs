//! AltUp configuration: number of blocks, block selection, output reduction.

use crate::error::{ensure_config, Result};
use serde::{Deserialize, Serialize};

/// Which of the `K` blocks a layer computes on ("activated block", Baykal et al. 2023, §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockSelection {
    /// Layer `l` activates block `l mod K` (the paper's default).
    #[default]
    Alternating,
    /// Every layer activates the same block (the paper's "same" ablation).
    Same(usize),
}

impl BlockSelection {
    /// The activated block `j*` of layer `layer` among `num_blocks`.
    pub fn active_block(&self, layer: usize, num_blocks: usize) -> usize {
        match *self {
            BlockSelection::Alternating => layer % num_blocks,
            BlockSelection::Same(block) => block,
        }
    }
}

/// How the `K` blocks are reduced to one `D`-wide vector before the final norm and the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputReduction {
    /// `Σ_i x_i`.
    Sum,
    /// `(1/K) Σ_i x_i` (the default; identical to `Sum` after the final RMSNorm up to its epsilon).
    #[default]
    Mean,
    /// One chosen block `x_i`.
    Block(usize),
    /// A learned projection `W · concat(x_1..x_K)`, `W` `[D, K·D]`, initialised to the mean.
    Projection,
}

/// Configuration of AltUp (Baykal et al., "Alternating Updates for Efficient Transformers",
/// NeurIPS 2023, arXiv 2301.13310).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AltUpConfig {
    /// Number of blocks `K` (the representation is `K·D` wide).
    pub num_blocks: usize,
    /// Activated block per layer.
    pub selection: BlockSelection,
    /// Reduction of the `K` blocks at the output.
    pub output: OutputReduction,
}

impl Default for AltUpConfig {
    fn default() -> Self {
        Self { num_blocks: 2, selection: BlockSelection::Alternating, output: OutputReduction::Mean }
    }
}

impl AltUpConfig {
    /// # Errors
    /// [`crate::Error::Config`] naming the value: `K = 0`, or a block index `>= K` in the
    /// selection or the output reduction.
    pub fn validate(&self) -> Result<()> {
        let k = self.num_blocks;
        ensure_config(k > 0, || "altup num_blocks (K = 0) must be positive".into())?;
        if let BlockSelection::Same(b) = self.selection {
            ensure_config(b < k, || format!("altup selection block ({b}) must be < num_blocks ({k})"))?;
        }
        if let OutputReduction::Block(b) = self.output {
            ensure_config(b < k, || format!("altup output block ({b}) must be < num_blocks ({k})"))?;
        }
        Ok(())
    }

    /// Parameters AltUp adds per layer: `K²` predictor + `K` corrector scalars.
    pub fn params_per_layer(&self) -> usize {
        self.num_blocks * self.num_blocks + self.num_blocks
    }
}
