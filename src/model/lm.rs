//! Decoder-only language model: a [`Stack`] and an output head.

use crate::error::{Error, Result};
use crate::model::block::Block;
use crate::model::config::ModelConfig;
use crate::model::head::OutputHead;
use crate::model::output::ModelOutput;
use crate::model::params::ParamCounts;
use crate::model::precision::Precision;
use crate::model::stack::{Stack, StackCache, StackContext};
use crate::moe::ExpertParallel;
use crate::nn::InitScheme;
use tch::{nn, Tensor};

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
    parallel: Option<ExpertParallel>,
}

impl LanguageModel {
    /// Validates `config` and creates every parameter under `path` (a `VarStore` root or sub-path),
    /// on the `VarStore`'s device.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first invalid value (see [`ModelConfig::validate`]), or if the
    /// config asks for cross-attention (that is a decoder of [`crate::model::Seq2SeqModel`]).
    pub fn new(path: &nn::Path, config: &ModelConfig) -> Result<Self> {
        Self::build(path, config, None)
    }

    /// This rank's part of an expert-parallel model over `parallel`: every parameter except the
    /// experts is replicated, and each MoE layer holds experts `r·E/R .. (r+1)·E/R`, initialised
    /// exactly as in [`LanguageModel::new`] (so `R` ranks start from the single-process model).
    /// Every rank must run the same calls (forward passes exchange token rows); train it with
    /// [`crate::train::Trainer`], which shards each batch over the ranks.
    ///
    /// # Errors
    /// As [`LanguageModel::new`]; [`Error::Config`] if an MoE layer's `num_experts` is not a
    /// multiple of the ranks, or its routing needs the whole batch in one place (expert choice,
    /// confidence-prioritized capacity).
    pub fn new_expert_parallel(path: &nn::Path, config: &ModelConfig, parallel: ExpertParallel) -> Result<Self> {
        Self::build(path, config, Some(parallel))
    }

    fn build(path: &nn::Path, config: &ModelConfig, parallel: Option<ExpertParallel>) -> Result<Self> {
        config.validate()?;
        if config.cross_attention {
            return Err(Error::Config(
                "cross_attention (true) needs an encoder: build a Seq2SeqModel instead of a LanguageModel".into(),
            ));
        }
        let init = InitScheme::gpt2(config.init_std, config.num_layers, config.init_seed);
        let stack = Stack::build(path, config, &init, None, parallel.as_ref())?;
        let (d, v) = (config.d_model, config.vocab_size);
        let head = OutputHead::new(path, d, v, config.tie_embeddings, stack.embedding(), &init)?;
        Ok(Self { stack, head, parallel })
    }

    /// The expert-parallel group the model's MoE layers exchange tokens over (`None` in one
    /// process).
    pub fn expert_parallel(&self) -> Option<&ExpertParallel> {
        self.parallel.as_ref()
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

    /// Applies the aux-loss-free bias update of every MoE layer that uses it, from per-layer
    /// assignment counts summed over one optimizer step (`(block index, counts [E])`).
    ///
    /// # Errors
    /// [`Error::Input`] for a block index that is not an MoE block; [`Error::Shape`] for counts
    /// that are not `[E]`.
    pub fn update_expert_biases(&self, counts: &[(usize, Tensor)]) -> Result<()> {
        self.stack.update_expert_biases(counts)
    }

    /// Finds the first block whose output or router logits are non-finite for `tokens`
    /// (training mode, no gradients). `None` when every block is finite.
    ///
    /// # Errors
    /// As [`LanguageModel::forward_t`].
    pub fn first_non_finite(&self, tokens: &Tensor) -> Result<Option<String>> {
        let ctx = StackContext { train: true, check_finite: true, ..Default::default() };
        tch::no_grad(|| match self.stack.forward(tokens, &ctx, None) {
            Ok(_) => Ok(None),
            Err(Error::NonFinite { what, .. }) => Ok(Some(what)),
            Err(e) => Err(e),
        })
    }

    /// Parameter counts (see [`ModelConfig::param_counts`]).
    pub fn param_counts(&self) -> ParamCounts {
        self.config().param_counts()
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
    /// masked tokens are not attended to, take no expert capacity, get zero MoE outputs and are
    /// left out of the MoE losses.
    ///
    /// # Errors
    /// As [`LanguageModel::forward_t`], plus [`Error::Shape`] for a mask that is not `[B, T]`.
    pub fn forward_masked_t(&self, tokens: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<ModelOutput> {
        self.forward_with(tokens, &StackContext { mask, train, ..Default::default() })
    }

    /// [`LanguageModel::forward_t`] with every option of the stack's context (mask, training
    /// mode, the non-finite check, ids the caller has already validated; the memory fields are
    /// for encoder-decoders and must be `None` here).
    ///
    /// # Errors
    /// As [`LanguageModel::forward_masked_t`].
    pub fn forward_with(&self, tokens: &Tensor, ctx: &StackContext) -> Result<ModelOutput> {
        let (hidden, aux) = self.stack.forward(tokens, ctx, None)?;
        Ok(ModelOutput { logits: self.logits(&hidden)?, aux })
    }

    /// A fresh cache for [`LanguageModel::forward_cached`].
    pub fn new_cache(&self) -> StackCache {
        self.stack.new_cache()
    }

    /// Incremental decoding (evaluation mode): `tokens` continue the sequence held by `cache`,
    /// whose keys and values are reused instead of recomputing the prefix. The logits equal
    /// those of a full forward pass over the whole sequence (exactly so for token-choice MoE
    /// without an evaluation capacity limit; expert-choice routing depends on the whole batch
    /// window and is not equivalent).
    ///
    /// # Shapes
    /// `tokens`: `[B, T]` with `cache.len + T ≤ max_seq_len` → logits `[B, T, V]`.
    ///
    /// # Errors
    /// As [`LanguageModel::forward_t`]; [`Error::Input`] for Sequence-AltUp models.
    pub fn forward_cached(&self, tokens: &Tensor, cache: &mut StackCache) -> Result<ModelOutput> {
        let (hidden, aux) = self.stack.forward(tokens, &StackContext::default(), Some(cache))?;
        Ok(ModelOutput { logits: self.logits(&hidden)?, aux })
    }

    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.head.forward(hidden)
    }
}
