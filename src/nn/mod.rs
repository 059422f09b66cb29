//! Transformer parts: normalisation, attention, feed-forward, embedding, rotary positions,
//! linear projections and initialisation (the block that combines them, with an optional MoE
//! FFN, is [`crate::model::Block`]).
//!
//! # Shape legend
//! `B` batch, `T` sequence length, `D` model width, `H` heads, `F` FFN hidden width, `V` vocabulary.

pub(crate) mod attention;
pub(crate) mod embedding;
pub(crate) mod feed_forward;
pub(crate) mod init;
pub(crate) mod linear;
pub(crate) mod norm;
pub(crate) mod role;
pub(crate) mod rope;
pub(crate) mod var_builder;

pub use attention::{AttentionConfig, CrossAttention, KvCache, SelfAttention};
pub use embedding::Embedding;
pub use feed_forward::{Activation, FeedForward, FeedForwardConfig};
pub use init::InitScheme;
pub use linear::Linear;
pub use norm::RmsNorm;
pub use role::{roles, ParamRole};
pub use rope::Rope;
pub use var_builder::VarBuilder;
