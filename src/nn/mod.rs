//! Transformer parts: normalisation, attention, feed-forward, embedding, and the block.
//!
//! # Shape legend
//! `B` batch, `T` sequence length, `D` model width, `H` heads, `F` FFN hidden width, `V` vocabulary.

pub mod attention;
pub mod block;
pub mod embedding;
pub mod feed_forward;
pub mod init;
pub mod linear;
pub mod norm;
pub mod rope;

pub use attention::{AttentionConfig, CrossAttention, KvCache, SelfAttention};
pub use block::{residual_add, Block, BlockCache, BlockConfig, BlockContext, Ffn, FfnConfig};
pub use embedding::Embedding;
pub use feed_forward::{Activation, FeedForward, FeedForwardConfig};
pub use init::InitScheme;
pub use linear::Linear;
pub use norm::RmsNorm;
pub use rope::Rope;
