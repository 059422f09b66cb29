//! The model builder: a serde [`ModelConfig`], presets for the four stacks ([`Arch`]), the
//! [`LanguageModel`], its typed auxiliary output, parameter accounting and sampling.

pub mod config;
pub mod generate;
pub mod lm;
pub mod output;
pub mod params;
pub mod presets;

pub use config::{ModelConfig, MoeLayers};
pub use generate::Sampling;
pub use lm::{LanguageModel, Precision};
pub use output::{LayerAux, ModelAux, ModelOutput};
pub use params::ParamCounts;
pub use presets::Arch;
