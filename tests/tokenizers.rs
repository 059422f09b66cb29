//! Subword tokenizers: Python parity of a user's tokenizer.json, BPE trained on the training
//! split only, the end-of-text marker, bits per byte of the text whatever the tokenizer, and
//! bad inputs named in their errors.

use altup_moe::data::{Corpus, TextTokenizer, TokenDataset, TokenizerSpec, END_OF_TEXT};
use altup_moe::model::{Arch, LanguageModel, ModelConfig};
use altup_moe::testing::device;
use altup_moe::train::{TrainConfig, Trainer};
use std::path::PathBuf;
use tch::nn::VarStore;

fn fixtures() -> PathBuf {
    std::env::var_os("ALTUP_MOE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/hf-fixtures"))
}

fn english(n: usize) -> String {
    "It is the east, and Juliet is the sun. Arise, fair sun, and kill the envious moon.\n\n".repeat(n)
}

#[test]
fn a_python_made_tokenizer_gives_the_same_ids_in_rust() {
    let dir = fixtures();
    let ids_path = dir.join("tokenizer_ids.json");
    assert!(ids_path.is_file(), "missing fixture {}: run `make fixtures`", ids_path.display());
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ids_path).unwrap()).unwrap();
    let text = expected["text"].as_str().unwrap();
    let python_ids: Vec<u32> = expected["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    assert_eq!(tokenizer.encode(text).unwrap(), python_ids);
    let ids: Vec<i64> = python_ids.iter().map(|&i| i64::from(i)).collect();
    assert_eq!(tokenizer.decode(&ids).unwrap(), expected["decoded"].as_str().unwrap());
    assert_eq!(tokenizer.decode(&ids).unwrap(), text);
}

#[test]
fn bpe_is_trained_on_the_training_split_only() {
    // The last tenth (validation) repeats a word the training text never holds.
    let text = format!("{}{}", english(200), "qzxv qzxv qzxv qzxv qzxv qzxv\n".repeat(40));
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("corpus.txt"), &text).unwrap();
    let corpus = Corpus::from_path(&tmp.path().join("corpus.txt"), &Default::default()).unwrap();
    let (train, val) = corpus.split_text(0.1).unwrap();
    assert!(!String::from_utf8_lossy(train).contains("qzxv") && String::from_utf8_lossy(val).contains("qzxv"));
    let tokenizer = TextTokenizer::from_spec(&TokenizerSpec::Bpe(300), &String::from_utf8_lossy(train)).unwrap();
    // No merge of the validation-only word: one id per letter.
    assert_eq!(tokenizer.encode("qzxv").unwrap().len(), 4);
    // A training word is merged.
    assert!(tokenizer.encode("Juliet").unwrap().len() < 6);
    // Trained on everything, the word would merge (the check above can fail).
    let leaky = TextTokenizer::train_bpe(&text, 300).unwrap();
    assert!(leaky.encode("qzxv").unwrap().len() < 4);
}

#[test]
fn the_end_of_text_marker_is_one_id_and_its_pieces_never_merge() {
    let text = format!("{}{END_OF_TEXT}", english(2)).repeat(60);
    let tokenizer = TextTokenizer::train_bpe(&text, 320).unwrap();
    let ids = tokenizer.encode(END_OF_TEXT).unwrap();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let hf = tokenizer.hf().expect("a BPE");
    let vocab = hf.get_vocab(true);
    assert_eq!(vocab.get(END_OF_TEXT), Some(&ids[0]));
    for piece in ["<|", "|>", "endof", "oftext"] {
        let merged: Vec<&String> = vocab.keys().filter(|k| k.contains(piece) && k.as_str() != END_OF_TEXT).collect();
        assert!(merged.is_empty(), "{piece}: {merged:?}");
    }
    // Inside text, the marker still becomes its one id.
    let inside = tokenizer.encode(&format!("sun.{END_OF_TEXT}Arise")).unwrap();
    assert_eq!(inside.iter().filter(|&&i| i == ids[0]).count(), 1);
}

#[test]
fn bits_per_byte_count_the_bytes_of_the_text() {
    let tokenizer = TextTokenizer::from_file(&fixtures().join("tokenizer.json")).unwrap();
    let text = "naïve café ∑ 東京 🙂 — the sun\n\n".repeat(20);
    let data = tokenizer.dataset(text.as_bytes()).unwrap();
    assert_eq!(data.text_bytes(), text.len());
    assert_eq!(data.len(), tokenizer.encode(&text).unwrap().len());
    assert!((data.bytes_per_token() - text.len() as f64 / data.len() as f64).abs() < 1e-12);
    // Decoding tokens one at a time counts a token holding part of a character as U+FFFD's
    // 3 bytes: a different (wrong) byte count for this text.
    let one_at_a_time: usize =
        tokenizer.encode(&text).unwrap().iter().map(|&id| tokenizer.decode(&[i64::from(id)]).unwrap().len()).sum();
    assert_ne!(one_at_a_time, text.len());
    // Bytes: one byte per token.
    let bytes = TextTokenizer::Bytes.dataset(text.as_bytes()).unwrap();
    assert_eq!((bytes.len(), bytes.bytes_per_token()), (text.len(), 1.0));
}

fn tiny_model(vocab: usize) -> (VarStore, LanguageModel) {
    let mut config = ModelConfig::preset(Arch::Dense);
    (config.d_model, config.num_layers, config.ffn.d_ff, config.max_seq_len, config.vocab_size) =
        (16, 1, 32, 16, vocab);
    config.attention.num_heads = 2;
    let vs = VarStore::new(device().unwrap());
    let model = LanguageModel::new(&vs.root(), &config).unwrap();
    (vs, model)
}

fn tiny_train_config() -> TrainConfig {
    TrainConfig {
        steps: 2,
        warmup_steps: 1,
        batch_size: 2,
        seq_len: 16,
        eval_every: 1,
        eval_batches: 2,
        ..Default::default()
    }
}

/// Bits per byte divide the summed loss by the bytes the scored targets stand for, not by the
/// split's average: on validation text whose density varies (long merged words, then one byte
/// per token) and windows that do not cover it all, the two differ.
#[test]
fn bits_per_byte_count_the_bytes_actually_scored() {
    let dense = english(40);
    let tokenizer = TextTokenizer::train_bpe(&dense, 300).unwrap();
    let train = tokenizer.dataset(dense.as_bytes()).unwrap();
    // Dense English, then a long run of characters no merge covers (one token per byte).
    let sparse: String = (0..3000).map(|i| char::from(b"zqxj#%&"[i % 7])).collect();
    let val_text = format!("{}{sparse}", english(8));
    let val = tokenizer.dataset(val_text.as_bytes()).unwrap();
    assert_eq!(val.text_bytes(), val_text.len());
    let (vs, model) = tiny_model(tokenizer.vocab_size());
    let config = TrainConfig { eval_batches: 3, ..tiny_train_config() };
    let trainer = Trainer::new(&vs, &model, &train, &val, config.clone()).unwrap();
    let eval = trainer.evaluate().unwrap();
    // Independently: the summed cross-entropy of the same windows over the UTF-8 bytes of their
    // decoded targets (ASCII text: decoding is exact per window).
    let (mut loss, mut bytes, mut tokens) = (0.0, 0usize, 0usize);
    for batch in val.eval_batches(config.batch_size, config.seq_len, config.eval_batches, device().unwrap()).unwrap() {
        let logits = model.forward_t(&batch.inputs, false).unwrap().logits;
        let v = logits.size()[2];
        let ce = logits.view([-1, v]).cross_entropy_for_logits(&batch.targets.view([-1]));
        let n = batch.targets.numel();
        loss += ce.double_value(&[]) * n as f64;
        tokens += n;
        for row in Vec::<Vec<i64>>::try_from(batch.targets.to_device(tch::Device::Cpu)).unwrap() {
            bytes += tokenizer.decode(&row).unwrap().len();
        }
    }
    let expected = loss / std::f64::consts::LN_2 / bytes as f64;
    assert!((eval.bits_per_byte - expected).abs() < 1e-9, "{} vs {expected}", eval.bits_per_byte);
    assert!((eval.loss - loss / tokens as f64).abs() < 1e-9);
    // The split's average bytes per token gives another figure here.
    let by_average = eval.loss / std::f64::consts::LN_2 / val.bytes_per_token();
    assert!((by_average - expected).abs() / expected > 0.05, "{by_average} vs {expected}");
}

#[test]
fn bad_tokenizer_inputs_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope/tokenizer.json");
    let err = TextTokenizer::from_file(&missing).unwrap_err().to_string();
    assert!(err.contains("nope/tokenizer.json") && err.contains("does not exist"), "{err}");
    let garbage = tmp.path().join("tokenizer.json");
    std::fs::write(&garbage, "{ not a tokenizer").unwrap();
    let err = TextTokenizer::from_file(&garbage).unwrap_err().to_string();
    assert!(err.contains("cannot read tokenizer") && err.contains(&*garbage.to_string_lossy()), "{err}");
    // Ids past the tokenizer (a padded model vocabulary) are left out of the text and counted.
    assert_eq!(TextTokenizer::Bytes.decode(&[65, 300, 66, -1]).unwrap(), "AB");
    assert_eq!(TextTokenizer::Bytes.unknown_ids(&[65, 300, 66, -1]), 2);
    let err = TokenDataset::from_ids(vec![1, 2, 500], 400, 3).unwrap_err().to_string();
    assert!(err.contains("token id 500 at position 2 is outside the vocabulary of 400 ids"), "{err}");

    // A tokenizer with more ids than the model's vocabulary (e.g. on resume).
    let tokenizer = TextTokenizer::train_bpe(&english(40), 300).unwrap();
    let (train, val) =
        (tokenizer.dataset(english(40).as_bytes()).unwrap(), tokenizer.dataset(english(10).as_bytes()).unwrap());
    let (vs, model) = tiny_model(256);
    let err = Trainer::new(&vs, &model, &train, &val, tiny_train_config()).unwrap_err().to_string();
    assert!(err.contains("vocab_size (256) must be at least the data's 300 token ids"), "{err}");

    // A validation split shorter than one window.
    let short = tokenizer.dataset(b"the sun").unwrap();
    let (vs, model) = tiny_model(300);
    let err = Trainer::new(&vs, &model, &train, &short, tiny_train_config()).unwrap_err().to_string();
    assert!(err.contains("the validation split holds") && err.contains("fewer than seq_len + 1 = 17"), "{err}");
}

fn hub_expected() -> serde_json::Value {
    let path = fixtures().join("hub/expected.json");
    assert!(path.is_file(), "missing fixture {}: run `make fixtures`", path.display());
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn id_list(value: &serde_json::Value) -> Vec<u32> {
    value.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

/// A SentencePiece-style Hub tokenizer saved with truncation (16) and padding: every encode is
/// Python's with both off, documents are encoded whole (no "▁" added at each paragraph), the
/// prompt gets its BOS, the special tokens come from tokenizer_config.json, decoding is lossless.
#[test]
fn hub_tokenizers_are_used_as_transformers_uses_them() {
    let expected = hub_expected();
    let tokenizer = TextTokenizer::from_file(&fixtures().join("hub/tokenizer.json")).unwrap();
    let document = expected["document"].as_str().unwrap();
    let ids = id_list(&expected["ids"]);
    assert!(ids.len() > 16, "the fixture must be longer than its truncation");
    assert_eq!(tokenizer.encode(document).unwrap(), ids);
    let special = tokenizer.special_tokens();
    assert_eq!(special.bos, Some(expected["bos"].as_u64().unwrap() as u32));
    assert_eq!(special.eos, vec![expected["eos"].as_u64().unwrap() as u32]);
    assert_eq!(tokenizer.vocab_size(), expected["vocab_size"].as_u64().unwrap() as usize);
    // Training data: the whole document's ids and the end-of-text id.
    let data = tokenizer.dataset(format!("{document}\u{3}").as_bytes()).unwrap();
    let mut with_eos: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    with_eos.push(i64::from(special.eos[0]));
    assert_eq!(data.window(0, data.len()).unwrap(), with_eos);
    assert_eq!(data.text_bytes(), document.len());
    // Paragraph by paragraph the ids would differ (a "▁" at every paragraph): the test can fail.
    let by_paragraph: Vec<u32> = document.split_inclusive("\n\n").flat_map(|p| tokenizer.encode(p).unwrap()).collect();
    assert_ne!(by_paragraph, ids);
    // The prompt is encoded with the template: BOS first, as transformers' tokenizer(prompt).
    let prompt: Vec<i64> = id_list(&expected["prompt_ids"]).into_iter().map(i64::from).collect();
    assert_eq!(tokenizer.encode_prompt(expected["prompt"].as_str().unwrap()).unwrap(), prompt);
    assert_eq!(prompt[0], i64::from(special.bos.unwrap()));
    let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    assert_eq!(tokenizer.decode(&ids).unwrap(), expected["decoded"].as_str().unwrap());
    assert_eq!(tokenizer.decode(&ids).unwrap(), document);
    // Its pieces cut at paragraphs concatenate to the whole document's ids.
    let pieces = tokenizer.encode_paragraphs(document).unwrap();
    // Three copies of three paragraphs, the third running into the next copy's first.
    assert_eq!(pieces.len(), 7);
    assert_eq!(pieces.iter().flat_map(|p| p.ids.iter().map(|&x| i64::from(x))).collect::<Vec<_>>(), ids);
    assert_eq!(pieces.iter().map(|p| p.text).collect::<String>(), document);
    // The byte counts sum to the document's bytes (a token spanning a cut counts with the piece
    // it starts in, as ".\n\nSeco…" does here).
    assert_eq!(pieces.iter().flat_map(|p| &p.bytes).sum::<u32>() as usize, document.len());
}

/// A tokenizer.json written by hand: a word-level vocabulary with holes, its special token far
/// past the rest (5 entries, ids up to 70,000: `get_vocab_size` says 5).
fn holey_tokenizer(dir: &std::path::Path, extra: &[(&str, &str)]) -> std::path::PathBuf {
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": {"direction": "Right", "max_length": 2, "strategy": "LongestFirst", "stride": 0},
        "padding": null,
        "added_tokens": [
            {"id": 70000, "content": "<|end_of_text|>", "single_word": false, "lstrip": false, "rstrip": false,
             "normalized": false, "special": true}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {
            "type": "WordLevel",
            "vocab": {"[UNK]": 0, "the": 1, "sun": 5, "rises": 9, "<|end_of_text|>": 70000},
            "unk_token": "[UNK]"
        }
    });
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, json.to_string()).unwrap();
    for (name, text) in extra {
        std::fs::write(dir.join(name), text).unwrap();
    }
    path
}

#[test]
fn the_id_space_is_the_largest_id_plus_one() {
    let tmp = tempfile::tempdir().unwrap();
    let tokenizer = TextTokenizer::from_file(&holey_tokenizer(tmp.path(), &[])).unwrap();
    assert_eq!(tokenizer.hf().unwrap().get_vocab_size(true), 5);
    assert_eq!(tokenizer.vocab_size(), 70_001);
    assert_eq!(altup_moe::data::ShardDtype::for_vocab(tokenizer.vocab_size()), altup_moe::data::ShardDtype::U32);
    // Truncation to 2 is off; the well-known end-of-text token is found.
    assert_eq!(tokenizer.encode("the sun rises").unwrap(), vec![1, 5, 9]);
    assert_eq!(tokenizer.end_of_text(), Some(70_000));
    let data = tokenizer.dataset("the sun rises the sun\u{3}".repeat(40).as_bytes()).unwrap();
    assert_eq!(data.vocab_size(), 70_001);
    // A model too small for the tokenizer is refused, naming both sizes.
    let (vs, model) = tiny_model(300);
    let err = Trainer::new(&vs, &model, &data, &data, tiny_train_config()).unwrap_err().to_string();
    assert!(err.contains("vocab_size (300) must be at least the data's 70001 token ids"), "{err}");
}

#[test]
fn special_tokens_are_read_from_the_files_beside_the_tokenizer() {
    let read = |extra: &[(&str, &str)]| {
        let tmp = tempfile::tempdir().unwrap();
        TextTokenizer::from_file(&holey_tokenizer(tmp.path(), extra)).map(|t| t.special_tokens())
    };
    // generation_config.json's list, then config.json's ids (a number or a list).
    let special = read(&[
        ("generation_config.json", "{\"eos_token_id\": [9, 70000], \"bos_token_id\": 1}"),
        ("config.json", "{\"eos_token_id\": 5, \"pad_token_id\": 0}"),
    ])
    .unwrap();
    assert_eq!((special.bos, special.eos, special.pad), (Some(1), vec![9, 70_000, 5], Some(0)));
    // tokenizer_config.json comes first (a string or {"content": ...}).
    let special =
        read(&[("tokenizer_config.json", "{\"eos_token\": {\"content\": \"sun\"}, \"bos_token\": \"the\"}")]).unwrap();
    assert_eq!((special.bos, special.eos), (Some(1), vec![5]));
    let err = read(&[("tokenizer_config.json", "{\"eos_token\": \"</s>\"}")]).unwrap_err().to_string();
    assert!(err.contains("tokenizer_config.json names eos_token \"</s>\", which the tokenizer's vocabulary"), "{err}");
    // Saved into a run folder and read back, the special tokens survive.
    let tmp = tempfile::tempdir().unwrap();
    let path =
        holey_tokenizer(tmp.path(), &[("tokenizer_config.json", "{\"eos_token\": \"rises\", \"bos_token\": \"the\"}")]);
    let tokenizer = TextTokenizer::from_file(&path).unwrap();
    let run = tempfile::tempdir().unwrap();
    tokenizer.save_to_folder(run.path()).unwrap();
    let back = TextTokenizer::from_folder(run.path()).unwrap();
    assert_eq!(back.special_tokens(), tokenizer.special_tokens());
    assert_eq!(back.end_of_text(), Some(9));
}

#[test]
fn decoding_is_lossless_and_streams_whole_characters() {
    let tokenizer = TextTokenizer::train_bpe(&english(40), 300).unwrap();
    for text in ["naïve café", "déjà vu — ½ ∑ 東京 🙂", "Ünïcödé\n\nzwei Absätze", "e\u{301} combining"]
    {
        let ids: Vec<i64> = tokenizer.encode(text).unwrap().into_iter().map(i64::from).collect();
        assert_eq!(tokenizer.decode(&ids).unwrap(), text);
        for t in [&tokenizer, &TextTokenizer::Bytes] {
            let ids: Vec<i64> = t.encode(text).unwrap().into_iter().map(i64::from).collect();
            let mut stream = altup_moe::data::TextStream::new(t);
            let mut pieces = Vec::new();
            for &id in &ids {
                pieces.push(stream.push(id).unwrap());
            }
            pieces.push(stream.finish().unwrap());
            assert!(pieces.iter().all(|p| !p.contains('\u{fffd}')), "{text}: {pieces:?}");
            assert_eq!(pieces.concat(), text);
        }
    }
    // A stream cut inside a character shows it as U+FFFD only at the end.
    let mut stream = altup_moe::data::TextStream::new(&TextTokenizer::Bytes);
    assert_eq!(stream.push(0xC3).unwrap(), "");
    assert_eq!(stream.finish().unwrap(), "\u{fffd}");
}
