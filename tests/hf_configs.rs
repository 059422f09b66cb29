//! Imports of public Llama / Mixtral configs: the `config.json` files of
//! `tests/fixtures/hf_configs/` (as published on the Hugging Face Hub, see the README there) are
//! each imported, with the sizes and parameter count transformers builds from them, or refused
//! with a message naming the real feature we do not reproduce — never a harmless key. Keys of
//! `io::HARMLESS_KEYS` are accepted at any value (or at their one harmless value); at a value
//! that matters they are refused, naming key and value. Random small-weight models of the
//! published configs (sizes shrunk, every other key as published) made by transformers 5.24
//! give its logits (within 1e-4, f32) and greedy tokens once imported.

mod common;

use altup_moe::io::{from_hf_config, HfFormat, HARMLESS_KEYS};
use altup_moe::model::{Generation, LanguageModel, Sampling};
use common::{device, python};
use rand::SeedableRng;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tch::{Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

fn fixture_dir() -> PathBuf {
    common::source_file("tests/fixtures/hf_configs")
}

fn published(name: &str) -> Value {
    let path = fixture_dir().join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// Runs `tests/python/hf_models.py` with `args` (the venv's transformers); its standard output.
fn hf_models(args: &[&str]) -> String {
    let script = common::source_file("tests/python/hf_models.py");
    let output = std::process::Command::new(python()).arg(&script).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// The problems of a refusal, without their numbers: "(1) a; (2) b" → ["a", "b"].
fn problems(message: &str) -> Vec<String> {
    let list = message.split_once("cannot be imported: ").map_or(message, |(_, l)| l);
    let mut out = Vec::new();
    let mut rest = list;
    for n in 1.. {
        let Some(start) = rest.find(&format!("({n}) ")) else { break };
        let body = &rest[start + format!("({n}) ").len()..];
        let end = body.find(&format!("; ({}) ", n + 1)).unwrap_or(body.len());
        out.push(body[..end].to_string());
        rest = &body[end..];
    }
    out
}

/// Every published config is either imported — with transformers' parameter count and the
/// sizes of the file — or refused for a real feature, and only for it.
#[test]
fn published_configs_are_imported_or_refused_for_a_real_reason() {
    let mut names: Vec<String> = std::fs::read_dir(fixture_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "Llama-3.2-1B.json",
            "Mixtral-8x7B-v0.1-transformers5.json",
            "Mixtral-8x7B-v0.1.json",
            "SmolLM2-135M.json",
            "TinyLlama-1.1B-Chat-v1.0.json"
        ],
        "a new fixture needs its expectation below"
    );
    // transformers' own parameter counts of the models it builds from the files.
    let paths: Vec<String> = names.iter().map(|n| fixture_dir().join(n).display().to_string()).collect();
    let mut args = vec!["count"];
    args.extend(paths.iter().map(String::as_str));
    let counts: BTreeMap<String, u64> = serde_json::from_str(&hf_models(&args)).unwrap();
    let count = |name: &str| counts[&fixture_dir().join(name).display().to_string()];

    // Llama 3.2 scales its rotary frequencies (rope_type llama3): refused for that alone.
    let err = from_hf_config(&published("Llama-3.2-1B.json")).unwrap_err().to_string();
    let why = problems(&err);
    assert_eq!(why.len(), 1, "{err}");
    assert!(why[0].starts_with("rope_scaling ({\"factor\":32.0,"), "{err}");
    assert!(why[0].contains("rope_type \"llama3\" is Llama 3's frequency-dependent scaling"), "{err}");
    assert_eq!(count("Llama-3.2-1B.json"), 1_235_814_400);

    // SmolLM2 (nanotron's is_llama_config and rope_interleaved false, an integer rope_theta).
    let (smol, format) = from_hf_config(&published("SmolLM2-135M.json")).unwrap();
    assert_eq!(format, HfFormat::Llama);
    assert_eq!((smol.vocab_size, smol.d_model, smol.num_layers, smol.ffn.d_ff), (49152, 576, 30, 1536));
    assert_eq!((smol.attention.num_heads, smol.attention.kv_heads()), (9, 3));
    assert_eq!((smol.max_seq_len, smol.attention.rope_theta, smol.norm_eps), (8192, 1e5, 1e-5));
    assert!(smol.tie_embeddings && smol.moe.is_none());
    assert_eq!(smol.init_std, 0.041666666666666664);
    assert_eq!(smol.param_counts().total as u64, count("SmolLM2-135M.json"));

    let (tiny, _) = from_hf_config(&published("TinyLlama-1.1B-Chat-v1.0.json")).unwrap();
    assert_eq!((tiny.vocab_size, tiny.d_model, tiny.num_layers, tiny.ffn.d_ff), (32000, 2048, 22, 5632));
    assert_eq!((tiny.attention.num_heads, tiny.attention.kv_heads()), (32, 4));
    assert_eq!((tiny.max_seq_len, tiny.attention.rope_theta, tiny.norm_eps), (2048, 1e4, 1e-5));
    assert!(!tiny.tie_embeddings);
    assert_eq!(tiny.param_counts().total as u64, count("TinyLlama-1.1B-Chat-v1.0.json"));

    let (mixtral, format) = from_hf_config(&published("Mixtral-8x7B-v0.1.json")).unwrap();
    assert_eq!(format, HfFormat::Mixtral);
    let moe = mixtral.moe.as_ref().unwrap();
    assert_eq!((moe.num_experts, moe.top_k, moe.d_ff, moe.normalize_gates), (8, 2, 14336, true));
    assert_eq!((mixtral.d_model, mixtral.num_layers, mixtral.attention.kv_heads()), (4096, 32, 8));
    assert_eq!((mixtral.max_seq_len, mixtral.attention.rope_theta), (32768, 1e6));
    assert!((0..32).all(|l| mixtral.is_moe_layer(l)));
    assert_eq!(mixtral.param_counts().total as u64, count("Mixtral-8x7B-v0.1.json"));
    // The same model as transformers 5 writes its config: the same import.
    let (mixtral5, _) = from_hf_config(&published("Mixtral-8x7B-v0.1-transformers5.json")).unwrap();
    assert_eq!(mixtral5, mixtral);
    assert_eq!(count("Mixtral-8x7B-v0.1-transformers5.json"), 46_702_792_704);
}

/// Every allow-listed key is accepted at any value (or at its one harmless value) without
/// changing the import; at a value that matters it is refused naming key and value, as are
/// unknown keys and a top-level θ that disagrees with `rope_parameters`.
#[test]
fn harmless_keys_are_accepted_and_values_that_matter_are_named() {
    let base = published("SmolLM2-135M.json");
    let (expected, _) = from_hf_config(&base).unwrap();
    let mut everything = base.clone();
    for h in HARMLESS_KEYS {
        everything[h.key] = match h.only {
            Some(value) => serde_json::from_str(value).unwrap(),
            None => json!({"any": ["value", 7]}),
        };
    }
    assert_eq!(from_hf_config(&everything).unwrap().0, expected);
    let mut nulls = base.clone();
    for h in HARMLESS_KEYS {
        nulls[h.key] = Value::Null;
    }
    assert_eq!(from_hf_config(&nulls).unwrap().0, expected);

    let mut bad = base.clone();
    bad["rope_interleaved"] = true.into();
    bad["pruned_heads"] = json!({"0": [1]});
    bad["is_encoder_decoder"] = true.into();
    bad["add_cross_attention"] = true.into();
    bad["partial_rotary_factor"] = 0.5.into();
    bad["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 10000.0});
    let err = from_hf_config(&bad).unwrap_err().to_string();
    let why = problems(&err);
    for expected in [
        "rope_interleaved (true) is not supported: only false (or null) is",
        "pruned_heads ({\"0\":[1]}) is not supported: only {} (or null) is",
        "is_encoder_decoder (true) is not supported: only false (or null) is",
        "add_cross_attention (true) is not supported: only false (or null) is",
        "partial_rotary_factor (0.5) is not a field altup-moe can reproduce for llama",
        "rope_theta (100000) and rope_parameters.rope_theta (10000) differ",
    ] {
        assert!(why.iter().any(|w| w.starts_with(expected)), "missing '{expected}' in: {err}");
    }
    assert_eq!(why.len(), 6, "{err}");
    // transformers 5 spells the rotary embedding in rope_parameters: the same θ is accepted.
    let mut v5 = base;
    v5["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 100000.0});
    assert_eq!(from_hf_config(&v5).unwrap().0, expected);
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_device(tch::Device::Cpu).to_kind(Kind::Double) - b.to_device(tch::Device::Cpu).to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// A random model of the published config `name` with `overrides` (sizes only) made and run by
/// transformers 5.24; ours, imported from its folder, must give the same logits and greedy
/// tokens.
fn check_shrunk(name: &str, overrides: Value) {
    let out = tempfile::tempdir().unwrap();
    let config = fixture_dir().join(name).display().to_string();
    let folder = out.path().display().to_string();
    hf_models(&["shrunk", &config, &overrides.to_string(), &folder]);
    // Every key but the sizes is as published.
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("model/config.json")).unwrap()).unwrap();
    let published = published(name);
    for (key, value) in published.as_object().unwrap() {
        if overrides.get(key).is_none() {
            assert_eq!(&written[key], value, "{name}: {key}");
        }
    }
    let reference: BTreeMap<String, Tensor> =
        Tensor::read_safetensors(out.path().join("reference.safetensors")).unwrap().into_iter().collect();
    let loaded = LanguageModel::from_hf(&out.path().join("model"), device()).unwrap();
    let tokens = reference["tokens"].to_device(device());
    let ours = tch::no_grad(|| loaded.model.forward_t(&tokens, false).unwrap().logits);
    let diff = max_diff(&ours, &reference["logits"]);
    let scale = reference["logits"].abs().max().double_value(&[]);
    println!("{name} shrunk to {overrides}: max |logit difference| {diff:.3e} (logits up to {scale:.2})");
    assert!(diff <= TOLERANCE, "{name}: imported logits differ from transformers' by {diff}");
    let prompt = Vec::<i64>::try_from(reference["prompt"].view([-1])).unwrap();
    let sampling = Sampling { temperature: 0.0, top_k: None, top_p: None };
    let generated = loaded
        .model
        .generate(&prompt, &Generation::new(32, sampling), &mut rand::rngs::StdRng::seed_from_u64(0))
        .unwrap();
    assert_eq!(generated, Vec::<i64>::try_from(reference["generated"].view([-1])).unwrap(), "{name}: greedy tokens");
}

/// Sizes of a two-block model with head_dim 8 and a vocabulary of 512.
fn shrink(hidden: usize, heads: usize, kv_heads: usize, intermediate: usize) -> Value {
    json!({
        "hidden_size": hidden, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "intermediate_size": intermediate, "num_hidden_layers": 2, "vocab_size": 512,
    })
}

#[test]
fn shrunk_smollm2_gives_the_logits_of_transformers() {
    // 9 query heads over 3 key/value heads as published; tied embeddings, θ = 10⁵.
    check_shrunk("SmolLM2-135M.json", shrink(72, 9, 3, 96));
}

#[test]
fn shrunk_tinyllama_gives_the_logits_of_transformers() {
    // 8 query heads per key/value head as published (32 / 4).
    check_shrunk("TinyLlama-1.1B-Chat-v1.0.json", shrink(128, 16, 2, 96));
}

#[test]
fn shrunk_mixtral_gives_the_logits_of_transformers() {
    // 8 experts, top-2, 4 query heads per key/value head as published.
    check_shrunk("Mixtral-8x7B-v0.1.json", shrink(64, 8, 2, 32));
    check_shrunk("Mixtral-8x7B-v0.1-transformers5.json", shrink(64, 8, 2, 32));
}

/// `problems` splits what it should (the test above depends on it).
#[test]
fn refusals_are_numbered() {
    let message = "invalid config: the Hugging Face llama config cannot be imported: (1) a (x); y; (2) b";
    assert_eq!(problems(message), ["a (x); y", "b"]);
}
