//! Text data: corpora (a UTF-8 file or a folder of them), tokenizers (bytes, byte-level BPE, a
//! Hugging Face `tokenizer.json`), corpora prepared into memory-mapped token shards, the token
//! ids of a split with its batches of `[B, T]` windows, and T5 span corruption.
//!
//! # Shape legend
//! `B` batch, `T` sequence length (tokens per window), `S` corrupted-input length.

pub(crate) mod corpus;
pub(crate) mod dataset;
pub(crate) mod run_data;
pub(crate) mod shards;
pub(crate) mod span_corruption;
pub(crate) mod tokenizer;

pub use corpus::Corpus;
pub use dataset::{Batch, ShardDtype, TokenDataset};
pub use run_data::{RunData, RunTokenizer};
pub use shards::{
    input_files, prepare_corpus, read_documents, tokenizer_hash, train_bpe_on_training_split, PreparedCorpus,
    ShardFile, ShardsMeta, SplitMeta, SHARDS_FORMAT,
};
pub use span_corruption::{Seq2SeqBatch, SpanCorruption};
pub use tokenizer::{TextTokenizer, TokenizerSpec, END_OF_TEXT};
