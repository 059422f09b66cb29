//! The model builder: a serde [`ModelConfig`], presets for the four stacks ([`Arch`]), the
//! [`LanguageModel`], its typed auxiliary output, parameter accounting and sampling.

pub(crate) mod block;
pub(crate) mod config;
pub(crate) mod forward;
pub(crate) mod generate;
pub(crate) mod head;
pub(crate) mod lm;
pub(crate) mod output;
pub(crate) mod params;
pub(crate) mod precision;
pub(crate) mod presets;
pub(crate) mod seq2seq;
pub(crate) mod stack;
pub(crate) mod trainable;
pub(crate) mod upcycle;

pub use block::{residual_add, Block, BlockCache, BlockConfig, BlockContext, Ffn, FfnConfig};
pub use config::{ModelConfig, MoeLayers};
pub use forward::{ForwardOptions, Memory};
pub use generate::{Generation, Sampling};
pub use head::OutputHead;
pub use lm::LanguageModel;
pub use output::{LayerAux, ModelAux, ModelOutput, StackKind};
pub use params::ParamCounts;
pub use precision::Precision;
pub use presets::Arch;
pub use seq2seq::{Seq2SeqConfig, Seq2SeqModel, Seq2SeqOutput};
pub use stack::{Stack, StackCache};
pub use trainable::Trainable;
pub use upcycle::{check_upcycle, upcycle};
