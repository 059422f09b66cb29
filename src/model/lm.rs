//! Decoder-only language model: embedding → (AltUp widen) → blocks → (AltUp collapse) → norm → head.

use crate::altup::{AltUp, AltUpWidening, SequenceAltUp};
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::output::{LayerAux, ModelAux, ModelOutput};
use crate::model::params::ParamCounts;
use crate::moe::MoeAux;
use crate::nn::{Block, Embedding, Ffn, InitScheme, Linear, RmsNorm};
use crate::shape::{accumulate_kind, cast_like};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

/// Whether every element of `t` is finite.
fn all_finite(t: &Tensor) -> Result<bool> {
    Ok(t.f_isfinite()?.f_all()?.f_int64_value(&[])? != 0)
}

/// The dtype activations are computed in. Parameters (and optimizer state) stay in their own
/// dtype (f32 masters); routers, norms, AltUp mixing and the logits stay in f32 regardless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Activations in the parameters' dtype (f32; f64 for an f64 model).
    #[default]
    F32,
    /// Activations in bfloat16; matmuls run in bf16 with the f32 weights cast in forward.
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(Error::Config(format!("unknown precision '{other}' (expected f32 or bf16)"))),
        }
    }
}

/// A decoder-only transformer LM built from a [`ModelConfig`]: dense, Switch-MoE, AltUp or
/// AltUp+MoE (and Recycled-, Sequence- or Gemma-3n-style AltUp) depending on the config.
///
/// Parameter names mirror the module tree: `embed.weight`, `blocks.{l}.attn_norm.weight`,
/// `blocks.{l}.attn.{qkv,out}.weight`, `blocks.{l}.ffn_norm.weight`,
/// `blocks.{l}.ffn.{w_in,w_gate,w_out}.weight` or `blocks.{l}.moe.router.weight` and
/// `blocks.{l}.moe.experts.{w_in,w_gate,w_out}`, `blocks.{l}.altup.{predictor,corrector}`,
/// `blocks.{l}.seq_altup.{alpha,beta,gamma}`, `collapse.weight`, `widen.{i}.weight`,
/// `unwiden.{i}.weight`, `final_norm.weight`, `head.weight`.
///
/// ```
/// use altup_moe::{Arch, LanguageModel, ModelConfig};
/// use tch::{nn::VarStore, Device, Kind, Tensor};
///
/// let mut config = ModelConfig::preset(Arch::AltUpMoe);
/// config.d_model = 32;
/// config.num_layers = 2;
/// config.ffn.d_ff = 64;
/// config.moe.as_mut().unwrap().d_ff = 64;
/// let vs = VarStore::new(Device::Cpu);
/// let model = LanguageModel::new(&vs.root(), &config)?;
/// let tokens = Tensor::randint(256, [2, 16], (Kind::Int64, Device::Cpu));
/// let out = model.forward_t(&tokens, true)?;
/// assert_eq!(out.logits.size(), vec![2, 16, 256]);
/// let balance = out.aux.load_balancing_loss()?.expect("one MoE layer");
/// assert!(balance.double_value(&[]) >= 1.0 - 1e-6); // 1.0 when perfectly balanced
/// # Ok::<(), altup_moe::Error>(())
/// ```
#[derive(Debug)]
pub struct LanguageModel {
    config: ModelConfig,
    embed: Embedding,
    blocks: Vec<Block>,
    altup: Vec<AltUp>,
    widening: Option<AltUpWidening>,
    sequence_altup: Vec<SequenceAltUp>,
    final_norm: RmsNorm,
    head: Option<Linear>,
    precision: Precision,
}

impl LanguageModel {
    /// Validates `config` and creates every parameter under `path` (a `VarStore` root or sub-path),
    /// on the `VarStore`'s device.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first invalid value (see [`ModelConfig::validate`]).
    pub fn new(path: &nn::Path, config: &ModelConfig) -> Result<Self> {
        config.validate()?;
        let init = InitScheme::gpt2(config.init_std, config.num_layers, config.init_seed);
        let d = config.d_model;
        let embed = Embedding::new(&(path / "embed"), config.vocab_size, config.embedding_width(), &init)?;
        let mut blocks = Vec::with_capacity(config.num_layers);
        let (mut altup, mut sequence_altup) = (Vec::new(), Vec::new());
        for layer in 0..config.num_layers {
            let block_path = path / "blocks" / layer;
            blocks.push(Block::new(&block_path, d, &config.block_config(layer), &init)?);
            if let Some(a) = &config.altup {
                altup.push(AltUp::new(&(&block_path / "altup"), a.num_blocks, d, a.coefficients, a.compute_on, &init)?);
            }
            if let Some(s) = &config.sequence_altup {
                sequence_altup.push(SequenceAltUp::new(&(&block_path / "seq_altup"), s)?);
            }
        }
        let widening = config.altup.as_ref().map(|a| AltUpWidening::new(path, a, d, &init)).transpose()?;
        let final_norm = RmsNorm::new(&(path / "final_norm"), d as i64, config.norm_eps)?;
        let head = if config.tie_embeddings {
            None
        } else {
            Some(Linear::new(&(path / "head"), d as i64, config.vocab_size as i64, init.std, &init)?)
        };
        Ok(Self {
            config: config.clone(),
            embed,
            blocks,
            altup,
            widening,
            sequence_altup,
            final_norm,
            head,
            precision: Precision::F32,
        })
    }

    /// Sets the compute precision of the activations (parameters keep their dtype).
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// The compute precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Finds the first block whose output or router logits are non-finite for `tokens`
    /// (training mode, no gradients). `None` when every block is finite.
    ///
    /// # Errors
    /// As [`LanguageModel::forward_t`].
    pub fn first_non_finite(&self, tokens: &Tensor) -> Result<Option<String>> {
        tch::no_grad(|| match self.forward_impl(tokens, None, true, true) {
            Ok(_) => Ok(None),
            Err(Error::NonFinite { what, .. }) => Ok(Some(what)),
            Err(e) => Err(e),
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The blocks, in order.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// The AltUp layers, one per block (empty without AltUp).
    pub fn altup_layers(&self) -> &[AltUp] {
        &self.altup
    }

    /// The device of the model's parameters.
    pub fn device(&self) -> tch::Device {
        self.embed.weight.device()
    }

    /// Applies the aux-loss-free bias update of every MoE layer that uses it, from per-layer
    /// assignment counts summed over one optimizer step (`(block index, counts [E])`).
    ///
    /// # Errors
    /// [`Error::Input`] for a block index that is not an MoE block; [`Error::Shape`] for counts
    /// that are not `[E]`.
    pub fn update_expert_biases(&self, counts: &[(usize, Tensor)]) -> Result<()> {
        for (layer, c) in counts {
            match self.blocks.get(*layer).map(|b| &b.ffn) {
                Some(Ffn::Moe(moe)) => moe.update_expert_bias(c)?,
                _ => return Err(Error::Input(format!("block {layer} is not an MoE block"))),
            }
        }
        Ok(())
    }

    /// Parameter counts (see [`ModelConfig::param_counts`]).
    pub fn param_counts(&self) -> ParamCounts {
        self.config.param_counts()
    }

    /// Next-token logits for a batch of token sequences.
    ///
    /// `train` selects the training capacity factor of MoE layers, enables router jitter and
    /// AltUp coefficient clipping.
    ///
    /// # Shapes
    /// `tokens`: `[B, T]` integer ids in `0..V`, `1 ≤ T ≤ max_seq_len` → logits `[B, T, V]` in f32
    /// (f64 for an f64 model), position `t` predicting token `t + 1`, and one aux record per block.
    ///
    /// # Errors
    /// [`Error::Input`] for an empty batch, a too-long sequence, non-integer or out-of-range ids
    /// (the message names the id); [`Error::Shape`] if `tokens` is not 2-D.
    pub fn forward_t(&self, tokens: &Tensor, train: bool) -> Result<ModelOutput> {
        self.forward_masked_t(tokens, None, train)
    }

    /// [`LanguageModel::forward_t`] with a token mask `[B, T]` (true/non-zero = real token):
    /// masked tokens take no expert capacity, get zero MoE outputs and are left out of the MoE
    /// losses. Attention stays causal, so with right padding the logits of real tokens do not
    /// depend on padding.
    ///
    /// # Errors
    /// As [`LanguageModel::forward_t`], plus [`Error::Shape`] for a mask that is not `[B, T]`.
    pub fn forward_masked_t(&self, tokens: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<ModelOutput> {
        self.forward_impl(tokens, mask, train, false)
    }

    /// The forward pass; with `check_finite`, stops at the first block whose output or router
    /// is non-finite with [`Error::NonFinite`] naming it.
    fn forward_impl(
        &self,
        tokens: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
        check_finite: bool,
    ) -> Result<ModelOutput> {
        let size = tokens.size();
        if size.len() != 2 {
            return Err(Error::Shape(format!("tokens must have shape [B, T], got {size:?}")));
        }
        if size[0] == 0 || size[1] == 0 {
            return Err(Error::Input(format!(
                "tokens must hold at least one sequence of one token, got shape {size:?}"
            )));
        }
        if size[1] > self.config.max_seq_len as i64 {
            return Err(Error::Input(format!(
                "sequence length {} exceeds max_seq_len ({})",
                size[1], self.config.max_seq_len
            )));
        }
        if let Some(m) = mask {
            let integer =
                matches!(m.kind(), Kind::Bool | Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8);
            if m.size() != size || !integer {
                return Err(Error::Shape(format!(
                    "token mask must be a bool or integer tensor of shape {size:?}, got {:?} {:?}",
                    m.size(),
                    m.kind()
                )));
            }
        }
        let mut embedded = self.embed.forward(tokens)?;
        if self.precision == Precision::Bf16 {
            embedded = embedded.f_to_kind(Kind::BFloat16)?;
        }
        let check = |layer: usize, y: &Tensor, moe: &Option<MoeAux>| -> Result<()> {
            if !check_finite {
                return Ok(());
            }
            let what = match moe {
                Some(m) if !all_finite(&m.z_loss)? => format!("router of block {layer}"),
                _ if !all_finite(y)? => format!("output of block {layer}"),
                _ => return Ok(()),
            };
            Err(Error::NonFinite { step: 0, what })
        };
        let mut layers = Vec::with_capacity(self.blocks.len());
        let hidden = match (&self.config.altup, &self.widening) {
            (Some(altup_config), Some(widening)) => {
                let k = altup_config.num_blocks;
                let mut x = widening.widen(&embedded)?;
                for (layer, altup) in self.altup.iter().enumerate() {
                    let active = altup_config.selection.active_block(layer, k);
                    let (y, moe) = altup.forward_t(&x, active, train, |a| self.run_block(layer, a, mask, train))?;
                    check(layer, &y, &moe)?;
                    layers.push(LayerAux { layer, moe });
                    x = y;
                }
                widening.collapse(&x)?
            }
            _ => {
                let mut x = embedded;
                for layer in 0..self.blocks.len() {
                    let (y, moe) = self.run_block(layer, &x, mask, train)?;
                    check(layer, &y, &moe)?;
                    layers.push(LayerAux { layer, moe });
                    x = y;
                }
                x
            }
        };
        let normed = self.final_norm.forward(&hidden)?;
        let logits = match &self.head {
            Some(head) => head.forward(&normed)?,
            None => normed.f_linear::<Tensor>(&cast_like(&self.embed.weight, &normed)?, None)?,
        };
        Ok(ModelOutput { logits: logits.f_to_kind(accumulate_kind(&logits))?, aux: ModelAux { layers } })
    }

    /// Block `layer` on `[B, T, D]`, through Sequence-AltUp when configured.
    fn run_block(
        &self,
        layer: usize,
        x: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Result<(Tensor, Option<MoeAux>)> {
        let block = &self.blocks[layer];
        match self.sequence_altup.get(layer) {
            Some(seq) => seq.forward_t(x, mask, |anchors, positions, anchor_mask| {
                block.forward_at(anchors, anchor_mask, Some(positions), train)
            }),
            None => block.forward_t(x, mask, train),
        }
    }
}
