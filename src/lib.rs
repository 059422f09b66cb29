//! # altup-moe
//!
//! Mixture-of-Experts and Alternating Updates (AltUp) transformer primitives on libtorch,
//! through the [`tch`] crate.
//!
//! * [`moe`]: router, batched experts, sort-based dispatch with capacity, load-balancing and
//!   z-losses (Switch Transformer, GShard, ST-MoE).
//! * [`altup`]: the `K`-block widened representation with its predictor and corrector
//!   (Baykal et al. 2023).
//! * [`nn`]: RMSNorm, causal attention with RoPE, dense FFN, embeddings, parameter roles.
//! * [`model`]: the pre-norm block (dense or MoE FFN), stacks, a serde [`model::ModelConfig`] with
//!   presets for dense, Switch, AltUp and AltUp+MoE stacks, and the [`model::LanguageModel`] built from it.
//! * [`parallel`]: the process group a model is built in (one process is a group of one), the
//!   collectives under it and the segmented backward of expert parallelism.
//! * [`data`]: corpora, tokenizers, prepared token shards, batches, span corruption.
//! * [`io`]: tensor files, checkpoint folders, reading a trained model back, and Hugging Face
//!   Llama / Mixtral checkpoints in and out, with logit parity.
//! * [`train`]: the task seam, the trainer and its objective, AdamW, schedule, metrics, resume.
//!
//! # Shape legend
//! `B` batch, `T` sequence length, `D` model width, `V` vocabulary, `H` heads, `F` FFN/expert
//! hidden width, `E` experts, `k` experts per token, `N = B·T` tokens, `C` expert capacity,
//! `K` AltUp blocks.
//!
//! # Conventions
//! Every forward returns its output and a typed auxiliary record; configs are validated once when
//! a layer is built and errors name the offending value; parameters are f32 masters and
//! routers/mixing run in f32; parameter names mirror the module tree
//! (`blocks.3.moe.experts.w_in`). A `_t` suffix (`forward_t`) means the call takes the training
//! flag (MoE capacity factor, router jitter, AltUp coefficient clipping), as in tch.
//!
//! ```
//! use altup_moe::model::{Arch, LanguageModel, ModelConfig};
//! use tch::nn::VarStore;
//!
//! let config = ModelConfig::preset(Arch::Switch);
//! // the device the tests run on (ALTUP_MOE_TEST_DEVICE, default cpu)
//! let vs = VarStore::new(altup_moe::testing::device()?);
//! let model = LanguageModel::new(&vs.root(), &config)?;
//! let counts = model.param_counts();
//! assert!(counts.active_per_token < counts.total);
//! # Ok::<(), altup_moe::Error>(())
//! ```

#![warn(missing_docs)]

pub mod altup;
pub mod data;
pub mod device;
mod dtype;
mod error;
mod fs;
pub mod host;
pub mod io;
pub mod model;
pub mod moe;
mod names;
mod native;
pub mod nn;
pub mod parallel;
pub mod residual;
pub mod runtime;
mod shape;
/// The device that tests, doctests and examples run on (`ALTUP_MOE_TEST_DEVICE`).
#[cfg(feature = "testing")]
pub mod testing;
pub mod train;

pub use error::{Error, Result};

/// The README's code examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The guide's code examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../docs/guide.md")]
pub struct GuideDoctests;

/// The expert-parallelism page's code examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../docs/expert_parallelism.md")]
pub struct ExpertParallelismDoctests;
