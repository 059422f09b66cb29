//! Text data: input files read into documents (text, JSON lines, Parquet, gzip), corpora, tokenizers (bytes, byte-level BPE, a
//! Hugging Face `tokenizer.json`), corpora prepared into memory-mapped token shards, the token
//! ids of a split with its batches of `[B, T]` windows, and T5 span corruption.
//!
//! # Shape legend
//! `B` batch, `T` sequence length (tokens per window), `S` corrupted-input length.

pub(crate) mod corpus;
pub(crate) mod dataset;
pub mod documents;
pub(crate) mod parquet;
pub(crate) mod run_data;
pub(crate) mod shards;
pub(crate) mod span_corruption;
pub(crate) mod text_stream;
pub(crate) mod tokenizer;

pub use corpus::Corpus;
pub use dataset::{Batch, ShardDtype, TokenDataset, END_OF_TEXT_BYTE};
pub use documents::{input_files, read_documents, FileFilter, InputFiles};
pub use run_data::{RunData, RunTokenizer};
pub use shards::{
    check_prepare_output, prepare_corpus, tokenizer_hash, train_bpe_on_training_split, PreparedCorpus, ShardFile,
    ShardsMeta, SplitMeta, SHARDS_FORMAT,
};
pub use span_corruption::{Seq2SeqBatch, SpanCorruption};
pub use text_stream::TextStream;
pub use tokenizer::{EncodedPiece, HfTokenizer, SpecialTokens, TextTokenizer, TokenizerSpec, END_OF_TEXT};
