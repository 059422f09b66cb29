//! Prepared corpora: shard dtypes at the u16 boundary, windows inside one shard, documents in one
//! split only, bad folders named in their errors, and bitwise resume on memory-mapped shards.

use altup_moe::data::{
    check_prepare_output, input_files, prepare_corpus, tokenizer_hash, FileFilter, PreparedCorpus, RunData,
    RunTokenizer, ShardDtype, TextTokenizer, TokenDataset, TokenizerSpec,
};
use altup_moe::model::{Arch, LanguageModel, ModelConfig};
use altup_moe::testing::device;
use altup_moe::train::{run, CheckpointMeta, RunOptions, Silent, TrainConfig, Trainer};
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use tch::{nn::VarStore, Device};

fn map(path: &Path, bytes: &[u8]) -> (memmap2::Mmap, PathBuf) {
    std::fs::write(path, bytes).unwrap();
    let file = std::fs::File::open(path).unwrap();
    (unsafe { memmap2::Mmap::map(&file) }.unwrap(), path.to_path_buf())
}

#[test]
fn ids_fit_u16_up_to_65536_ids_and_u32_beyond() {
    assert_eq!(ShardDtype::for_vocab(65_536), ShardDtype::U16);
    assert_eq!(ShardDtype::for_vocab(65_537), ShardDtype::U32);
    let tmp = tempfile::tempdir().unwrap();
    let u16s: Vec<u8> = [0u16, 65_535, 7].iter().flat_map(|i| i.to_le_bytes()).collect();
    let data = TokenDataset::from_shards(vec![map(&tmp.path().join("a.bin"), &u16s)], None, ShardDtype::U16, 65_536, 3)
        .unwrap();
    assert_eq!(data.window(0, 3).unwrap(), vec![0, 65_535, 7]);
    let u32s: Vec<u8> = [65_536u32, 1].iter().flat_map(|i| i.to_le_bytes()).collect();
    let data = TokenDataset::from_shards(vec![map(&tmp.path().join("b.bin"), &u32s)], None, ShardDtype::U32, 65_537, 2)
        .unwrap();
    assert_eq!(data.window(0, 2).unwrap(), vec![65_536, 1]);
    // An id outside the vocabulary is named with its shard and position.
    let data =
        TokenDataset::from_shards(vec![map(&tmp.path().join("c.bin"), &u16s)], None, ShardDtype::U16, 1000, 3).unwrap();
    let err = data.window(0, 3).unwrap_err().to_string();
    assert!(err.contains("c.bin holds id 65535 at position 1 outside the vocabulary of 1000 ids"), "{err}");
}

#[test]
fn windows_come_from_one_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let shard = |name: &str, byte: u8| {
        map(
            &tmp.path().join(name),
            &vec![u16::from(byte); 50].iter().flat_map(|i| i.to_le_bytes()).collect::<Vec<u8>>(),
        )
    };
    let data = TokenDataset::from_shards(
        vec![shard("a.bin", b'a'), shard("b.bin", b'b'), shard("c.bin", b'c')],
        None,
        ShardDtype::U16,
        256,
        150,
    )
    .unwrap();
    assert_eq!(data.len(), 150);
    let homogeneous = |t: &tch::Tensor| {
        let v = Vec::<i64>::try_from(t.flatten(0, -1)).unwrap();
        v.windows(2).all(|w| w[0] == w[1])
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let batch = data.random_batch(1, 20, &mut rng, Device::Cpu).unwrap();
        let joined = tch::Tensor::cat(&[batch.inputs.shallow_clone(), batch.targets.narrow(1, 19, 1)], 1);
        assert!(homogeneous(&joined), "a window crosses shards: {joined:?}");
        seen.insert(i64::try_from(batch.inputs.get(0).get(0)).unwrap());
    }
    assert_eq!(seen.len(), 3, "every shard is sampled");
    for batch in data.eval_batches(4, 20, 4, Device::Cpu).unwrap() {
        for row in 0..batch.inputs.size()[0] {
            assert!(homogeneous(&batch.inputs.get(row)));
        }
    }
    let err = data.window(40, 20).unwrap_err().to_string();
    assert!(err.contains("tokens 40..60 cross the end of shard 0"), "{err}");
}

fn write_corpus(dir: &Path, files: usize, docs: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    for f in 0..files {
        let text: String = (0..docs).map(|d| format!("doc-{f}-{d}: the sun rises over York.\n\n")).collect();
        std::fs::write(dir.join(format!("part-{f}.txt")), text).unwrap();
    }
    input_files(dir, &Default::default()).unwrap().files
}

fn text_of(data: &TokenDataset) -> String {
    String::from_utf8(data.window(0, data.len()).unwrap().iter().map(|&i| i as u8).collect()).unwrap()
}

#[test]
fn prepare_puts_every_document_in_one_split_and_counts_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let files = write_corpus(&tmp.path().join("in"), 3, 100);
    let out = tmp.path().join("prepared");
    let meta = prepare_corpus(&files, &out, &TextTokenizer::Bytes, "bytes", 0.1, 1_000_000, &|_| {}).unwrap();
    assert_eq!(meta.train.documents + meta.val.documents, 300);
    assert!(meta.val.documents > 10 && meta.val.documents < 60, "{}", meta.val.documents);
    let prepared = PreparedCorpus::open(&out).unwrap();
    let (train, val) = (text_of(&prepared.train), text_of(&prepared.val));
    for f in 0..3 {
        for d in 0..100 {
            let marker = format!("doc-{f}-{d}:");
            assert_eq!(train.contains(&marker) as u8 + val.contains(&marker) as u8, 1, "{marker}");
        }
    }
    // Every file ends with the end-of-text byte, which is not text.
    let separators = val.bytes().filter(|&b| b == altup_moe::data::END_OF_TEXT_BYTE).count();
    assert_eq!(prepared.val.text_bytes(), val.len() - separators);
    assert_eq!(text_of(&prepared.train).bytes().filter(|&b| b == 3).count() + separators, 3);
    // The same input gives the same folder (deterministic split and hash).
    let again =
        prepare_corpus(&files, &tmp.path().join("again"), &TextTokenizer::Bytes, "bytes", 0.1, 1_000_000, &|_| {})
            .unwrap();
    assert_eq!((again.content_hash, again.val), (meta.content_hash, meta.val));
}

#[test]
fn bad_inputs_and_damaged_folders_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let jsonl = tmp.path().join("docs.jsonl");
    std::fs::write(&jsonl, "{\"text\": \"one\"}\n{\"body\": \"two\"}\n").unwrap();
    let err = prepare_corpus(&[jsonl.clone()], &tmp.path().join("o"), &TextTokenizer::Bytes, "bytes", 0.1, 10, &|_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("docs.jsonl line 2: expected a string field \"text\", found fields [\"body\"]"), "{err}");
    std::fs::write(&jsonl, "{\"text\": \"one\"}\nnot json\n").unwrap();
    let err = altup_moe::data::read_documents(&jsonl).unwrap_err().to_string();
    assert!(err.contains("docs.jsonl line 2 is not JSON"), "{err}");
    // Too few documents for a validation split.
    std::fs::write(&jsonl, "{\"text\": \"only one document\"}\n").unwrap();
    let err = prepare_corpus(&[jsonl], &tmp.path().join("o"), &TextTokenizer::Bytes, "bytes", 0.1, 10, &|_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("split of") && err.contains("is empty (1 documents in all"), "{err}");

    let files = write_corpus(&tmp.path().join("in"), 2, 60);
    let out = tmp.path().join("prepared");
    let meta = prepare_corpus(&files, &out, &TextTokenizer::Bytes, "bytes", 0.2, 2_000, &|_| {}).unwrap();
    assert!(meta.train.shards.len() > 1);
    // A truncated shard.
    let shard = out.join(&meta.train.shards[1].file);
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 2]).unwrap();
    let err = PreparedCorpus::open(&out).unwrap_err().to_string();
    assert!(err.contains("train-00001.bin holds") && err.contains("but meta.json records"), "{err}");
    // An empty one.
    std::fs::write(&shard, b"").unwrap();
    let mut broken = meta.clone();
    broken.train.shards[1].tokens = 0;
    std::fs::write(out.join("meta.json"), serde_json::to_string(&broken).unwrap()).unwrap();
    let err = PreparedCorpus::open(&out).unwrap_err().to_string();
    assert!(err.contains("empty shards are not allowed"), "{err}");
    // Shards prepared with another tokenizer than the one in the folder.
    std::fs::write(shard, bytes).unwrap();
    std::fs::write(out.join("meta.json"), serde_json::to_string(&meta).unwrap()).unwrap();
    TextTokenizer::train_bpe(&"the sun rises over York. ".repeat(50), 300).unwrap().save_to_folder(&out).unwrap();
    let err = PreparedCorpus::open(&out).unwrap_err().to_string();
    assert!(err.contains("is not the one the shards were prepared with (bytes)"), "{err}");
}

/// Trains on prepared shards into `out`, from scratch or resumed; returns the final weights.
fn train_on(
    prepared: &PreparedCorpus,
    out: &Path,
    stop_after: Option<u64>,
    resume: bool,
) -> Vec<(String, tch::Tensor)> {
    let mut config = ModelConfig::preset(Arch::Switch);
    (config.d_model, config.num_layers, config.ffn.d_ff, config.max_seq_len) = (16, 2, 32, 16);
    config.attention.num_heads = 2;
    if let Some(moe) = config.moe.as_mut() {
        (moe.num_experts, moe.d_ff) = (4, 16);
    }
    let tc = TrainConfig {
        steps: 6,
        batch_size: 4,
        seq_len: 16,
        warmup_steps: 1,
        eval_every: 2,
        eval_batches: 2,
        seed: 5,
        ..Default::default()
    };
    let meta = resume.then(|| CheckpointMeta::read(out).unwrap());
    let vs = VarStore::new(device().unwrap());
    let model = LanguageModel::new(&vs.root(), &config).unwrap();
    let mut trainer = Trainer::new(&vs, &model, &prepared.train, &prepared.val, tc).unwrap();
    let resumed = meta.map(|m| trainer.restore(&m).unwrap());
    let options = RunOptions {
        out_dir: out.to_path_buf(),
        save_every: Some(2),
        keep_checkpoints: 2,
        stop_after,
        overwrite: false,
    };
    run(&mut trainer, resumed, &options, &mut Silent).unwrap();
    let mut vars: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

#[test]
fn resume_on_shards_is_bitwise_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let files = write_corpus(&tmp.path().join("in"), 3, 80);
    let out = tmp.path().join("prepared");
    prepare_corpus(&files, &out, &TextTokenizer::Bytes, "bytes", 0.1, 3_000, &|_| {}).unwrap();
    let prepared = PreparedCorpus::open(&out).unwrap();
    let straight = train_on(&prepared, &tmp.path().join("straight"), None, false);
    train_on(&prepared, &tmp.path().join("resumed"), Some(3), false);
    let resumed = train_on(&prepared, &tmp.path().join("resumed"), None, true);
    assert_eq!(straight.len(), resumed.len());
    for ((name, a), (_, b)) in straight.iter().zip(&resumed) {
        assert!(a.equal(b), "{name} differs after resume");
    }
}

/// A prepared corpus and the run that reads it meet by tokenizer content, not by spelling: the
/// same tokenizer.json under another path (a run's copy, an --init-from model's) is accepted, a
/// different one is refused with both hashes; a bpe:N of another size is refused by name.
#[test]
fn prepared_data_and_runs_compare_tokenizers_by_content() {
    let tmp = tempfile::tempdir().unwrap();
    let files = write_corpus(&tmp.path().join("in"), 2, 60);
    let out = tmp.path().join("prepared");
    let bpe = TextTokenizer::train_bpe(&"doc-1-2: the sun rises over York. ".repeat(40), 300).unwrap();
    let meta = prepare_corpus(&files, &out, &bpe, "bpe:300", 0.2, 1_000_000, &|_| {}).unwrap();
    // The tokenizer as a run folder holds it, under another path.
    let run = tmp.path().join("run");
    bpe.save_to_folder(&run).unwrap();
    let copy = run.join(TextTokenizer::FILE);
    let filter = FileFilter::default();
    for tokenizer in [
        RunTokenizer::Existing(TextTokenizer::from_file(&copy).unwrap()),
        RunTokenizer::FromSpec(TokenizerSpec::File(copy.clone())),
        RunTokenizer::FromSpec(TokenizerSpec::Bpe(300)),
        RunTokenizer::FromSpec(TokenizerSpec::Bytes),
    ] {
        let data = RunData::open(&out, &filter, &tokenizer, &|_| {}).unwrap();
        assert_eq!((data.hash.as_str(), data.tokenizer.vocab_size()), (meta.content_hash.as_str(), bpe.vocab_size()));
    }
    let other = TextTokenizer::train_bpe(&"completely different words here. ".repeat(40), 300).unwrap();
    let other_hash = tokenizer_hash(&other).unwrap();
    assert_ne!(other_hash, meta.tokenizer_hash);
    let err = RunData::open(&out, &filter, &RunTokenizer::Existing(other), &|_| {}).unwrap_err().to_string();
    assert!(
        err.contains(&format!("prepared with tokenizer bpe:300 (hash {})", meta.tokenizer_hash))
            && err.contains(&format!("the run's tokenizer has hash {other_hash}")),
        "{err}"
    );
    let err = RunData::open(&out, &filter, &RunTokenizer::FromSpec(TokenizerSpec::Bpe(512)), &|_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("a new bpe:512 tokenizer was asked for") && err.contains("with tokenizer bpe:300"), "{err}");
}

/// `prepare` refuses an output that is its input, inside it, a file, or an existing corpus
/// (unless overwriting), before reading anything.
#[test]
fn prepare_output_may_not_be_the_input_or_an_existing_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let files = write_corpus(&input, 2, 30);
    for out in [input.clone(), input.join("shards"), input.join("deeper/still")] {
        let err = check_prepare_output(&input, &out, true).unwrap_err().to_string();
        assert!(err.contains("is inside the input") && err.contains(&out.display().to_string()), "{err}");
    }
    // Spelled with `..`, it is still inside.
    let sneaky = input.join("../in/x");
    assert!(check_prepare_output(&input, &sneaky, false).unwrap_err().to_string().contains("inside the input"));
    let out = tmp.path().join("prepared");
    check_prepare_output(&input, &out, false).unwrap();
    prepare_corpus(&files, &out, &TextTokenizer::Bytes, "bytes", 0.2, 1_000_000, &|_| {}).unwrap();
    let err = check_prepare_output(&input, &out, false).unwrap_err().to_string();
    assert!(err.contains("already holds a prepared corpus"), "{err}");
    check_prepare_output(&input, &out, true).unwrap();
    // Replacing it with fewer shards leaves none of the old ones behind.
    let shards = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".bin"))
            .collect();
        names.sort();
        names
    };
    let many = prepare_corpus(&files, &out, &TextTokenizer::Bytes, "bytes", 0.2, 500, &|_| {}).unwrap();
    assert!(many.train.shards.len() > 2, "{}", many.train.shards.len());
    assert_eq!(shards(&out).len(), many.train.shards.len() + many.val.shards.len());
    prepare_corpus(&files, &out, &TextTokenizer::Bytes, "bytes", 0.2, 1_000_000, &|_| {}).unwrap();
    assert_eq!(shards(&out), ["train-00000.bin", "val-00000.bin"]);
    PreparedCorpus::open(&out).unwrap();
    // A single input file: an output folder beside it is fine, the file itself is not a folder.
    check_prepare_output(&files[0], &tmp.path().join("beside"), false).unwrap();
    let err = check_prepare_output(&input, &files[0], true).unwrap_err().to_string();
    assert!(err.contains("is a file, not a folder"), "{err}");
    let err = check_prepare_output(&tmp.path().join("missing"), &out, true).unwrap_err().to_string();
    assert!(err.contains("missing"), "{err}");
}
