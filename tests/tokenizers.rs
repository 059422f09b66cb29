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
    let corpus = Corpus::from_path(&tmp.path().join("corpus.txt"), None).unwrap();
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
    let TextTokenizer::Hf(hf) = &tokenizer else { panic!("a BPE") };
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

#[test]
fn evaluation_reports_bits_per_byte_of_the_validation_text() {
    let tokenizer = TextTokenizer::train_bpe(&english(40), 300).unwrap();
    let train = tokenizer.dataset(english(40).as_bytes()).unwrap();
    let val = tokenizer.dataset(english(10).as_bytes()).unwrap();
    assert!(val.bytes_per_token() > 1.5, "{}", val.bytes_per_token());
    let (vs, model) = tiny_model(tokenizer.vocab_size());
    let trainer = Trainer::new(&vs, &model, &train, &val, tiny_train_config()).unwrap();
    let eval = trainer.evaluate().unwrap();
    let expected = eval.loss / std::f64::consts::LN_2 / val.bytes_per_token();
    assert!((eval.bits_per_byte - expected).abs() < 1e-12, "{} vs {expected}", eval.bits_per_byte);
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
    let err = TextTokenizer::Bytes.decode(&[65, 300]).unwrap_err().to_string();
    assert!(err.contains("token id 300 is outside the tokenizer's 256 ids"), "{err}");
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
