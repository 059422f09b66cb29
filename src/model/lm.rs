//! Decoder-only language model: a [`Stack`] and an output head.

use crate::error::{Error, Result};
use crate::model::block::Block;
use crate::model::config::ModelConfig;
use crate::model::forward::ForwardOptions;
use crate::model::head::OutputHead;
use crate::model::output::ModelOutput;
use crate::model::params::ParamCounts;
use crate::model::precision::Precision;
use crate::model::stack::{Stack, StackCache};
use crate::nn::{InitScheme, VarBuilder};
use crate::parallel::ProcessGroup;
use tch::Tensor;

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
/// use altup_moe::model::{Arch, LanguageModel, ModelConfig};
/// use tch::{nn::VarStore, Kind, Tensor};
///
/// let mut config = ModelConfig::preset(Arch::AltUpMoe);
/// config.d_model = 32;
/// config.num_layers = 2;
/// config.ffn.d_ff = 64;
/// config.moe.as_mut().unwrap().d_ff = 64;
/// // the device the tests run on (ALTUP_MOE_TEST_DEVICE, default cpu)
/// let device = altup_moe::testing::device()?;
/// let vs = VarStore::new(device);
/// let model = LanguageModel::new(&vs.root(), &config)?;
/// let tokens = Tensor::randint(256, [2, 16], (Kind::Int64, device));
/// let out = model.forward_t(&tokens, true)?;
/// assert_eq!(out.logits.size(), vec![2, 16, 256]);
/// let balance = out.aux.load_balancing_loss()?.expect("one MoE layer");
/// // E · Σ_i f_i · P_i (Switch §2.2): 1.0 when the load and the router probabilities are uniform
/// let value = balance.double_value(&[]);
/// assert!(value.is_finite() && value > 0.0);
/// # Ok::<(), altup_moe::Error>(())
/// ```
#[derive(Debug)]
pub struct LanguageModel {
    stack: Stack,
    head: OutputHead,
    group: ProcessGroup,
}

impl LanguageModel {
    /// Validates `config` and creates every parameter under `vb`'s path (a `&VarStore` root or
    /// sub-path converts into a [`VarBuilder`] of one process), on the `VarStore`'s device, with the
    /// GPT-2 initialisation `config` describes (`init_std`, `init_seed`; the builder's own scheme
    /// is not used).
    ///
    /// In a process group that exchanges rows (`VarBuilder::with_group`), this is the rank's part
    /// of an expert-parallel model: every parameter except the experts is replicated, and each MoE
    /// layer holds experts `r·E/R .. (r+1)·E/R`, initialised exactly as in one process (so `R`
    /// ranks start from the single-process model). Every rank must then run the same calls
    /// (forward passes exchange token rows); train it with [`crate::train::Trainer`], which shards
    /// each batch over the ranks.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first invalid value (see [`ModelConfig::validate`]), if the
    /// config asks for cross-attention (that is a decoder of [`crate::model::Seq2SeqModel`]), or
    /// in an expert-parallel group, if an MoE layer's `num_experts` is not a multiple of the ranks
    /// or its routing needs the whole batch in one place (expert choice, confidence-prioritized
    /// capacity).
    pub fn new<'a>(vb: impl Into<VarBuilder<'a>>, config: &ModelConfig) -> Result<Self> {
        config.validate()?;
        if config.cross_attention {
            return Err(Error::Config(
                "cross_attention (true) needs an encoder: build a Seq2SeqModel instead of a LanguageModel".into(),
            ));
        }
        let vb = vb.into().with_init(InitScheme::gpt2(config.init_std, config.num_layers, config.init_seed));
        let stack = Stack::new(&vb, config, None)?;
        let (d, v) = (config.d_model, config.vocab_size);
        let head = OutputHead::new(&vb / "head", d, v, config.tie_embeddings, stack.embedding())?;
        Ok(Self { stack, head, group: vb.group().clone() })
    }

    /// The process group the model's MoE layers exchange tokens over (a group of one in one
    /// process).
    pub fn group(&self) -> &ProcessGroup {
        &self.group
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        self.stack.config()
    }

    /// The transformer stack.
    pub fn stack(&self) -> &Stack {
        &self.stack
    }

    /// The blocks, in order.
    pub fn blocks(&self) -> &[Block] {
        self.stack.blocks()
    }

    /// The AltUp layers, one per block (empty without AltUp).
    pub fn altup_layers(&self) -> &[crate::altup::AltUp] {
        self.stack.altup_layers()
    }

    /// The device of the model's parameters.
    pub fn device(&self) -> tch::Device {
        self.stack.embedding().weight.device()
    }

    /// Sets the compute precision of the activations (parameters keep their dtype).
    pub fn set_precision(&mut self, precision: Precision) {
        self.stack.set_precision(precision);
    }

    /// The compute precision.
    pub fn precision(&self) -> Precision {
        self.stack.precision()
    }

    /// Parameter counts (see [`ModelConfig::param_counts`]).
    pub fn param_counts(&self) -> ParamCounts {
        self.config().param_counts()
    }

    /// Next-token logits for a batch of token sequences.
    ///
    /// `options` is the pass's mode and token mask ([`ForwardOptions`]; `true`/`false` for a plain
    /// training/evaluation pass): training selects the training capacity factor of MoE layers,
    /// enables router jitter and AltUp coefficient clipping; masked tokens are not attended to,
    /// take no expert capacity, get zero MoE outputs and are left out of the MoE losses.
    ///
    /// # Shapes
    /// `tokens`: `[B, T]` integer ids in `0..V`, `1 ≤ T ≤ max_seq_len`; mask `[B, T]` → logits
    /// `[B, T, V]` in f32 (f64 for an f64 model), position `t` predicting token `t + 1`, and one
    /// aux record per block.
    ///
    /// # Errors
    /// [`Error::Input`] for an empty batch, a too-long sequence, non-integer or out-of-range ids
    /// (the message names the id); [`Error::Shape`] if `tokens` is not 2-D or the mask not
    /// `[B, T]`; [`Error::NonFinite`] naming the first bad block with `check_finite`.
    pub fn forward_t<'a>(&self, tokens: &Tensor, options: impl Into<ForwardOptions<'a>>) -> Result<ModelOutput> {
        let (hidden, aux) = self.stack.forward(tokens, &options.into(), None, None)?;
        Ok(ModelOutput { logits: self.logits(&hidden)?, aux })
    }

    /// A fresh cache for [`LanguageModel::forward_cached`].
    pub fn new_cache(&self) -> StackCache {
        self.stack.new_cache()
    }

    /// Incremental decoding (evaluation mode): `tokens` continue the sequence held by `cache`,
    /// whose keys and values are reused instead of recomputing the prefix. The logits equal
    /// those of a full forward pass over the whole sequence, except for the models
    /// [`ModelConfig::cache_blockers`] lists (expert-choice routing, an evaluation capacity
    /// limit), whose routing depends on the tokens routed together; `generate` does not cache
    /// those.
    ///
    /// # Shapes
    /// `tokens`: `[B, T]` with `cache.len + T ≤ max_seq_len` → logits `[B, T, V]`.
    ///
    /// # Errors
    /// As [`LanguageModel::forward_t`]; [`Error::Input`] for Sequence-AltUp models.
    pub fn forward_cached(&self, tokens: &Tensor, cache: &mut StackCache) -> Result<ModelOutput> {
        let (hidden, aux) = self.stack.forward(tokens, &ForwardOptions::eval(), None, Some(cache))?;
        Ok(ModelOutput { logits: self.logits(&hidden)?, aux })
    }

    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.head.forward(hidden)
    }
}
