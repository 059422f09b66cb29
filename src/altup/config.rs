//! AltUp configuration: blocks, block selection, what the layer computes on, coefficient mode,
//! widening/collapse, and Sequence-AltUp.

use crate::error::{ensure_config, Error, Result};
use crate::names;
use serde::{Deserialize, Serialize};

/// Which of the `K` blocks a layer computes ("activated block", Baykal et al. 2023, §3.1).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockSelection {
    /// Layer `l` activates block `l mod K` (the paper's default).
    #[default]
    Alternating,
    /// Every layer activates the same block (the paper's "same" ablation; Gemma 3n uses block 0).
    Same(usize),
    /// An explicit schedule: layer `l` activates `schedule[l mod len]`.
    Schedule(Vec<usize>),
}

impl BlockSelection {
    /// The activated block `j*` of layer `layer` among `num_blocks`.
    pub fn active_block(&self, layer: usize, num_blocks: usize) -> usize {
        match self {
            BlockSelection::Alternating => layer % num_blocks,
            BlockSelection::Same(block) => *block,
            BlockSelection::Schedule(s) => s[layer % s.len()],
        }
    }
}

/// What the wrapped layer is applied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputeInput {
    /// The activated input block `x_{j*}` (the paper, Algorithm 1).
    #[default]
    Input,
    /// The activated block's prediction `x̂_{j*}` (Gemma 3n).
    Prediction,
}

/// How the predictor and corrector coefficients are obtained.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Coefficients {
    /// Learned scalars: predictor `P ∈ R^{K×K}` (identity at init) and gains `g ∈ R^K` (ones).
    #[default]
    Static,
    /// Per-token coefficients from a small router (Gemma 3n, Hugging Face `Gemma3nTextAltUp`):
    /// `m = tanh(W_r · RMSNorm(x_active) / D)`, prediction `x̂_i = x_i + Σ_j C[i,j] x_j` with
    /// `C = reshape(W_p m, [K, K])`, gains `1 + W_c m(x̃)`. `W_p`, `W_c` start at zero (identity).
    InputDependent {
        /// In training, `W_p` and `W_c` are clamped to `±clip` *functionally* (the stored
        /// parameters are never modified), as Gemma 3n does (120 there).
        clip: Option<f64>,
    },
}

impl Coefficients {
    /// Gemma 3n's coefficient clip (`altup_coef_clip`).
    pub const GEMMA_CLIP: f64 = 120.0;
}

/// How the `K` blocks are made from the embedding and reduced at the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Widening {
    /// A `K·D`-wide embedding table split into `K` blocks; reduced by [`AltUpConfig::output`].
    #[default]
    WideEmbedding,
    /// Recycled-AltUp (paper §3.2): the `D`-wide embedding replicated `K` times; blocks summed
    /// at the output. Adds only the `K² + K` scalars per layer.
    Recycled,
    /// Gemma 3n: block 0 is the embedding, block `i ≥ 1` a learned `D×D` projection of it
    /// rescaled to the embedding's RMS; at the output, blocks `i ≥ 1` go through learned inverse
    /// projections, are RMS-matched to block 0, and all blocks are averaged. Projections start at
    /// the identity plus `N(0, init_std²)` noise (so that the blocks differ).
    Projected,
}

/// How the `K` blocks are reduced to one `D`-wide vector ([`Widening::WideEmbedding`] only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputReduction {
    /// `Σ_i x_i`.
    Sum,
    /// `(1/K) Σ_i x_i` (the default; equal to `Sum` after the final RMSNorm up to its epsilon).
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
    /// Input of the wrapped layer.
    pub compute_on: ComputeInput,
    /// Static or input-dependent coefficients.
    pub coefficients: Coefficients,
    /// Widening at the input and collapse at the output.
    pub widening: Widening,
    /// Output reduction for [`Widening::WideEmbedding`].
    pub output: OutputReduction,
}

impl Default for AltUpConfig {
    fn default() -> Self {
        Self {
            num_blocks: 2,
            selection: BlockSelection::Alternating,
            compute_on: ComputeInput::Input,
            coefficients: Coefficients::Static,
            widening: Widening::WideEmbedding,
            output: OutputReduction::Mean,
        }
    }
}

impl AltUpConfig {
    /// Recycled-AltUp with `K` blocks.
    pub fn recycled(num_blocks: usize) -> Self {
        Self { num_blocks, widening: Widening::Recycled, ..Self::default() }
    }

    /// Gemma 3n's AltUp: `K = 4`, block 0 always active, the layer computes on the prediction,
    /// input-dependent coefficients clipped at 120, learned projections with RMS matching.
    pub fn gemma3n() -> Self {
        Self {
            num_blocks: 4,
            selection: BlockSelection::Same(0),
            compute_on: ComputeInput::Prediction,
            coefficients: Coefficients::InputDependent { clip: Some(120.0) },
            widening: Widening::Projected,
            output: OutputReduction::Mean,
        }
    }

    /// # Errors
    /// [`Error::Config`] naming the value: `K = 0`, a block index `>= K` in the selection or the
    /// output reduction, an empty schedule, a non-positive clip.
    pub fn validate(&self) -> Result<()> {
        let k = self.num_blocks;
        ensure_config(k > 0, || "altup num_blocks (K = 0) must be positive".into())?;
        match &self.selection {
            BlockSelection::Same(b) => {
                ensure_config(*b < k, || format!("altup selection block ({b}) must be < num_blocks ({k})"))?
            }
            BlockSelection::Schedule(s) => {
                ensure_config(!s.is_empty(), || "altup selection schedule is empty".into())?;
                if let Some(b) = s.iter().find(|&&b| b >= k) {
                    return Err(Error::Config(format!("altup schedule entry ({b}) must be < num_blocks ({k})")));
                }
            }
            BlockSelection::Alternating => {}
        }
        if let OutputReduction::Block(b) = self.output {
            ensure_config(b < k, || format!("altup output block ({b}) must be < num_blocks ({k})"))?;
        }
        ensure_config(self.widening == Widening::WideEmbedding || self.output == OutputReduction::Mean, || {
            format!(
                "altup output {:?} only applies to the wide-embedding widening ({:?} has its own collapse)",
                self.output, self.widening
            )
        })?;
        if let Coefficients::InputDependent { clip: Some(c) } = self.coefficients {
            ensure_config(c > 0.0 && c.is_finite(), || format!("altup clip ({c}) must be positive and finite"))?;
        }
        Ok(())
    }

    /// Width of the embedding table: `K·D` for [`Widening::WideEmbedding`], `D` otherwise.
    pub fn embedding_width(&self, d_model: usize) -> usize {
        match self.widening {
            Widening::WideEmbedding => self.num_blocks * d_model,
            Widening::Recycled | Widening::Projected => d_model,
        }
    }

    /// Parameters AltUp adds per layer: `K² + K` (static), or `D + K·D + K³ + K²` (input-dependent:
    /// router norm, router, prediction and correction coefficient maps).
    pub fn params_per_layer(&self, d_model: usize) -> usize {
        let k = self.num_blocks;
        match self.coefficients {
            Coefficients::Static => k * k + k,
            Coefficients::InputDependent { .. } => d_model + k * d_model + k * k * k + k * k,
        }
    }

    /// Parameters of the widening and collapse: `2(K−1)·D²` for [`Widening::Projected`], `K·D²`
    /// for a projection output, 0 otherwise (the wide embedding table is counted as embedding).
    pub fn widening_params(&self, d_model: usize) -> usize {
        let (k, d) = (self.num_blocks, d_model);
        match (self.widening, self.output) {
            (Widening::Projected, _) => 2 * (k - 1) * d * d,
            (Widening::WideEmbedding, OutputReduction::Projection) => k * d * d,
            _ => 0,
        }
    }
}

/// Sequence-AltUp: run a layer on every `stride`-th token only and predict/correct the others
/// causally (see [`crate::altup::SequenceAltUp`] for the equations).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceAltUpConfig {
    /// Stride `s ≥ 2`: positions `0, s, 2s, ...` are computed.
    pub stride: usize,
}

impl SequenceAltUpConfig {
    /// # Errors
    /// [`Error::Config`] if `stride < 2`.
    pub fn validate(&self) -> Result<()> {
        ensure_config(self.stride >= 2, || format!("sequence_altup stride ({}) must be at least 2", self.stride))
    }

    /// Parameters per layer: `3·(s − 1)` scalars.
    pub fn params_per_layer(&self) -> usize {
        3 * (self.stride - 1)
    }
}

crate::names::kebab_case_names!(ComputeInput, "AltUp compute input");
crate::names::kebab_case_names!(Widening, "AltUp widening");

/// `alternating`, `same:N` or `schedule:I,J,...`.
impl std::str::FromStr for BlockSelection {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.split_once(':') {
            None if s == "alternating" => Ok(BlockSelection::Alternating),
            Some(("same", n)) => Ok(BlockSelection::Same(names::parse_number("AltUp selection", n)?)),
            Some(("schedule", v)) => Ok(BlockSelection::Schedule(names::parse_list("AltUp selection", v)?)),
            _ => Err(Error::Config(format!(
                "unknown selection '{s}' (expected alternating, same:N or schedule:I,J,...)"
            ))),
        }
    }
}

impl std::fmt::Display for BlockSelection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlockSelection::Alternating => f.write_str("alternating"),
            BlockSelection::Same(n) => write!(f, "same:{n}"),
            BlockSelection::Schedule(v) => {
                let list: Vec<String> = v.iter().map(ToString::to_string).collect();
                write!(f, "schedule:{}", list.join(","))
            }
        }
    }
}

/// `sum`, `mean`, `block:N` or `projection`.
impl std::str::FromStr for OutputReduction {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.split_once(':') {
            Some(("block", n)) => Ok(OutputReduction::Block(names::parse_number("AltUp output", n)?)),
            _ => names::parse_unit("AltUp output", s),
        }
    }
}

impl std::fmt::Display for OutputReduction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutputReduction::Block(n) => write!(f, "block:{n}"),
            other => f.write_str(&names::show_unit(other)),
        }
    }
}

/// `static`, or `input-dependent[:CLIP]` (`CLIP` a number or `none`; Gemma 3n's 120 when left
/// out).
impl std::str::FromStr for Coefficients {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.split_once(':') {
            None if s == "static" => Ok(Coefficients::Static),
            None if s == "input-dependent" => Ok(Coefficients::InputDependent { clip: Some(Coefficients::GEMMA_CLIP) }),
            Some(("input-dependent", c)) => {
                Ok(Coefficients::InputDependent { clip: names::parse_optional("AltUp clip", c)? })
            }
            _ => Err(Error::Config(format!(
                "unknown AltUp coefficients '{s}' (expected static or input-dependent[:CLIP|none])"
            ))),
        }
    }
}

impl std::fmt::Display for Coefficients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Coefficients::Static => f.write_str("static"),
            Coefficients::InputDependent { clip } => write!(f, "input-dependent:{}", names::show_optional(clip)),
        }
    }
}
