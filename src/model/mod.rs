//! The model builder: a serde [`ModelConfig`], presets for the four stacks ([`Arch`]), the
//! [`LanguageModel`], its typed auxiliary output, parameter accounting and sampling.

pub mod config;
pub mod generate;
pub mod lm;
pub mod output;
pub mod params;
pub mod precision;
pub mod presets;
pub mod seq2seq;
pub mod stack;

pub use config::{ModelConfig, MoeLayers};
pub use generate::Sampling;
pub use lm::LanguageModel;
pub use output::{LayerAux, ModelAux, ModelOutput};
pub use params::ParamCounts;
pub use precision::Precision;
pub use presets::Arch;
pub use seq2seq::{Seq2SeqConfig, Seq2SeqModel, Seq2SeqOutput};
pub use stack::{Stack, StackCache, StackContext};
