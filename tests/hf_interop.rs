//! Hugging Face interoperability against transformers itself (the venv's pinned 5.24, and the
//! last 4.x release that `make transformers4` installs beside it): tiny random
//! `LlamaForCausalLM` / `MixtralForCausalLM` checkpoints made by `tests/python/hf_models.py` at
//! test time (Mixtral in both expert layouts transformers 5 writes) are imported and must give
//! transformers' logits (within 1e-4, f32) and its 32 greedy tokens; our models exported with
//! `export_hf` must give ours when transformers 5.24 and 4.57 load them, and a subword export
//! must load with `AutoTokenizer` and `pipeline("text-generation")`. Each failure class the test
//! models are built to show (rotary row pairing, the order key/value heads are repeated in,
//! RMSNorm epsilon, Mixtral's renormalised gates, the untied head) is checked to move the logits
//! far beyond the tolerance.

mod common;

use altup_moe::data::TextTokenizer;
use altup_moe::io::{export_blockers, export_hf, from_hf_config, to_hf_config, HfFormat};
use altup_moe::io::{named_variables, Loaded};
use altup_moe::model::{Generation, LanguageModel, ModelConfig, Sampling};
use common::{device, python};
use rand::SeedableRng;
use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;
use tch::{nn::VarStore, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;
/// A wrong port must miss the reference by at least this much.
const BROKEN: f64 = 1e-2;

/// Runs `tests/python/hf_models.py` with `args` under the venv's transformers; returns its
/// standard output.
fn hf_models(args: &[&Path]) -> String {
    hf_models_under(Reader::Transformers5, args)
}

/// The transformers release a script runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    /// The venv's (the pinned 5.24).
    Transformers5,
    /// The 4.x release `make transformers4` installs beside the venv's packages.
    Transformers4,
}

impl Reader {
    /// The version prefix the script must report.
    fn version(self) -> &'static str {
        match self {
            Reader::Transformers5 => "5.24.",
            Reader::Transformers4 => "4.57.",
        }
    }
}

/// The folder `make transformers4` installs transformers 4.x into: `transformers4` inside the
/// venv of the tests' Python.
///
/// # Panics
/// When it is missing, saying how to install it (the check is never skipped).
fn transformers4_dir() -> std::path::PathBuf {
    let python = python();
    let venv = match python.parent().and_then(Path::parent) {
        Some(venv) if python.components().count() > 2 => venv.to_path_buf(),
        _ => common::source_file(".venv"),
    };
    let dir = venv.join("transformers4");
    assert!(
        dir.join(".installed").is_file(),
        "transformers 4.x is not installed at {}: run `make transformers4` (`make test` does) to install the pinned \
         release the export checks need",
        dir.display()
    );
    dir
}

/// Runs `tests/python/hf_models.py` with `args` under `reader`; returns its standard output.
fn hf_models_under(reader: Reader, args: &[&Path]) -> String {
    let script = common::source_file("tests/python/hf_models.py");
    let mut command = std::process::Command::new(python());
    command.arg(&script).args(args);
    if reader == Reader::Transformers4 {
        command.env("PYTHONPATH", transformers4_dir());
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{reader:?}: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// The folder holding `llama/`, `mixtral/` and their `*_reference.safetensors`, made once per
/// test process.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        hf_models(&[Path::new("make"), dir.path()]);
        dir
    })
    .path()
}

fn read(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_device(tch::Device::Cpu).to_kind(Kind::Double) - b.to_device(tch::Device::Cpu).to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

fn logits(model: &LanguageModel, tokens: &Tensor) -> Tensor {
    tch::no_grad(|| model.forward_t(&tokens.to_device(model.device()), false).unwrap().logits)
}

fn greedy(model: &LanguageModel, prompt: &Tensor, new_tokens: usize) -> Vec<i64> {
    let prompt = Vec::<i64>::try_from(prompt.view([-1])).unwrap();
    let sampling = Sampling { temperature: 0.0, top_k: None, top_p: None };
    model.generate(&prompt, &Generation::new(new_tokens, sampling), &mut rand::rngs::StdRng::seed_from_u64(0)).unwrap()
}

/// The same weights in a model built from `config` (a changed copy of `loaded`'s).
fn rebuilt(loaded: &Loaded<LanguageModel>, config: &ModelConfig) -> (VarStore, LanguageModel) {
    let vs = VarStore::new(device());
    let model = LanguageModel::new(vs.root(), config).unwrap();
    let ours = named_variables(&loaded.vs).unwrap();
    tch::no_grad(|| {
        for (name, mut var) in named_variables(&vs).unwrap() {
            var.copy_(&ours[&name]);
        }
    });
    (vs, model)
}

/// Applies `change` to parameter `name` of a copy of `loaded` and returns the copy's logits.
fn logits_with(
    loaded: &Loaded<LanguageModel>,
    tokens: &Tensor,
    name: &str,
    change: impl Fn(&Tensor) -> Tensor,
) -> Tensor {
    let (vs, model) = rebuilt(loaded, loaded.model.config());
    let mut var = named_variables(&vs).unwrap()[name].shallow_clone();
    let changed = change(&var.detach());
    tch::no_grad(|| var.copy_(&changed));
    logits(&model, tokens)
}

/// `w`'s query and key rows of every head reordered from rotate-half pairs `(i, i + hd/2)` to
/// interleaved pairs `(2i, 2i + 1)`: what a port gets wrong when it skips (or wrongly applies)
/// the permutation between the two rotary conventions.
fn interleave_qk_rows(w: &Tensor, heads: i64, kv_heads: i64, head_dim: i64) -> Tensor {
    let half = head_dim / 2;
    let perm: Vec<i64> = (0..head_dim).map(|j| if j % 2 == 0 { j / 2 } else { half + j / 2 }).collect();
    let mut rows = Vec::new();
    for head in 0..heads + kv_heads {
        rows.extend(perm.iter().map(|p| head * head_dim + p));
    }
    let total = w.size()[0];
    rows.extend((heads + kv_heads) * head_dim..total);
    w.index_select(0, &Tensor::from_slice(&rows).to_device(w.device()))
}

/// Swaps key/value heads 0 and 1 (keys and values): query heads meet the other group's
/// key/value head, as with a wrong repeat order.
fn swap_kv_heads(w: &Tensor, heads: i64, head_dim: i64) -> Tensor {
    let mut rows: Vec<i64> = (0..w.size()[0]).collect();
    for start in [heads * head_dim, (heads + 2) * head_dim] {
        for j in 0..head_dim {
            rows.swap((start + j) as usize, (start + head_dim + j) as usize);
        }
    }
    w.index_select(0, &Tensor::from_slice(&rows).to_device(w.device()))
}

fn check_import(name: &str) {
    let dir = fixtures();
    let reference = read(&dir.join(format!("{name}_reference.safetensors")));
    let loaded = LanguageModel::from_hf(&dir.join(name), device()).unwrap();
    let config = loaded.model.config().clone();
    let tokens = &reference["tokens"];
    let ours = logits(&loaded.model, tokens);
    let diff = max_diff(&ours, &reference["logits"]);
    let scale = reference["logits"].abs().max().double_value(&[]);
    println!("{name} import: max |logit difference| {diff:.3e} (logits up to {scale:.2})");
    assert!(diff <= TOLERANCE, "{name}: imported logits differ from transformers' by {diff}");
    let generated = greedy(&loaded.model, &reference["prompt"], 32);
    assert_eq!(generated, Vec::<i64>::try_from(reference["generated"].view([-1])).unwrap(), "{name}: greedy tokens");

    // The test model can show each failure class: a wrong port misses by far more than the tolerance.
    let (h, kv) = (config.attention.num_heads as i64, config.attention.kv_heads() as i64);
    let hd = (config.d_model / config.attention.num_heads) as i64;
    assert!(hd >= 8 && h == 8 && kv == 2, "the fixture must have head_dim >= 8, 8 heads, 2 key/value heads");
    let mut failures: Vec<(&str, Tensor)> = vec![
        (
            "interleaved rotary pairs",
            logits_with(&loaded, tokens, "blocks.0.attn.qkv.weight", |w| interleave_qk_rows(w, h, kv, hd)),
        ),
        (
            "key/value heads in another order",
            logits_with(&loaded, tokens, "blocks.0.attn.qkv.weight", |w| swap_kv_heads(w, h, hd)),
        ),
    ];
    let mut default_eps = config.clone();
    default_eps.norm_eps = ModelConfig::default().norm_eps;
    assert_ne!(default_eps.norm_eps, config.norm_eps);
    failures.push(("our default RMSNorm epsilon", logits(&rebuilt(&loaded, &default_eps).1, tokens)));
    let untied_head = named_variables(&loaded.vs).unwrap()["embed.weight"].detach();
    failures
        .push(("a head tied to the embedding", logits_with(&loaded, tokens, "head.weight", |_| untied_head.copy())));
    if let Some(moe) = &config.moe {
        let mut raw_gates = config.clone();
        raw_gates.moe.as_mut().unwrap().normalize_gates = false;
        assert!(moe.normalize_gates);
        failures.push(("top-2 gates not renormalised", logits(&rebuilt(&loaded, &raw_gates).1, tokens)));
    }
    for (what, wrong) in failures {
        let miss = max_diff(&wrong, &reference["logits"]);
        println!("{name} with {what}: max |logit difference| {miss:.3e}");
        assert!(miss > BROKEN, "{name}: {what} should change the logits, but they move by only {miss}");
    }
}

#[test]
fn imported_llama_gives_the_logits_and_greedy_tokens_of_transformers() {
    check_import("llama");
}

#[test]
fn imported_mixtral_gives_the_logits_and_greedy_tokens_of_transformers() {
    check_import("mixtral");
}

/// The same Mixtral saved by transformers 5.24 in its fused layout
/// (`mlp.experts.gate_up_proj` / `down_proj`, `save_original_format=False`).
#[test]
fn imported_fused_mixtral_gives_the_logits_and_greedy_tokens_of_transformers() {
    check_import("mixtral_fused");
}

/// A small model of `format` with the test models' shapes, non-default θ and ε, weights drawn
/// large enough that every sublayer matters.
fn small(format: HfFormat) -> ModelConfig {
    let mut c = match format {
        HfFormat::Llama => ModelConfig::llama(),
        HfFormat::Mixtral => ModelConfig::mixtral(),
    };
    c.d_model = 64;
    c.num_layers = 2;
    c.max_seq_len = 64;
    c.ffn.d_ff = 96;
    c.attention.rope_theta = 500.0;
    c.init_std = 0.125;
    c.init_seed = 7;
    if let Some(moe) = &mut c.moe {
        moe.num_experts = 4;
        moe.d_ff = 96;
    }
    c
}

fn check_export(format: HfFormat) {
    // Seeded: with random weights two logits can lie closer than the ports' float difference,
    // and greedy decoding then takes either (the test was flaky unseeded).
    tch::manual_seed(11);
    let config = small(format);
    let vs = VarStore::new(device());
    let model = LanguageModel::new(vs.root(), &config).unwrap();
    let out = tempfile::tempdir().unwrap();
    let folder = out.path().join("model");
    export_hf(&model, &vs, &TextTokenizer::Bytes, format, &folder).unwrap();
    let json = read_json(&folder.join("config.json"));
    assert_eq!(json["vocab_size"], 256);
    assert_eq!(json["num_key_value_heads"], 2);
    // What transformers 4.x reads (it ignores rope_parameters) and 5 reads.
    assert_eq!(
        (json["rope_theta"].as_f64(), json["rope_parameters"]["rope_theta"].as_f64()),
        (Some(500.0), Some(500.0))
    );
    assert_eq!((&json["torch_dtype"], &json["dtype"]), (&serde_json::json!("float32"), &serde_json::json!("float32")));
    assert!(json["rope_scaling"].is_null() && json.get("rope_scaling").is_some());
    // Byte-level documents end with the ETX byte 3: transformers stops there as we do.
    assert_eq!(json["eos_token_id"], 3, "bytes end documents with ETX");
    let generation = read_json(&folder.join("generation_config.json"));
    assert_eq!(generation["do_sample"], false);
    assert_eq!((&generation["eos_token_id"], &generation["pad_token_id"]), (&3.into(), &3.into()));
    assert!(generation["bos_token_id"].is_null(), "{generation}");
    assert!(!folder.join("tokenizer.json").exists(), "bytes need no tokenizer.json");
    assert!(!folder.join("tokenizer_config.json").exists(), "bytes need no tokenizer_config.json");

    let tokens = Tensor::randint(256, [2, 24], (Kind::Int64, tch::Device::Cpu));
    let prompt = Tensor::randint(256, [1, 8], (Kind::Int64, tch::Device::Cpu));
    let inputs = out.path().join("inputs.safetensors");
    Tensor::write_safetensors(&[("tokens", &tokens), ("prompt", &prompt)], &inputs).unwrap();
    let ours = logits(&model, &tokens);
    let our_tokens = greedy(&model, &prompt, 32);
    for reader in [Reader::Transformers5, Reader::Transformers4] {
        let outputs = out.path().join(format!("outputs_{reader:?}.safetensors"));
        let stdout = hf_models_under(reader, &[Path::new("check"), &folder, &inputs, &outputs]);
        let expected = format!("class {} transformers {}", format.architecture(), reader.version());
        assert!(stdout.contains(&expected), "{reader:?} should report '{expected}': {stdout}");
        assert!(stdout.contains(r#"metadata {"format": "pt"}"#), "{reader:?}: {stdout}");
        let theirs = read(&outputs);
        let diff = max_diff(&ours, &theirs["logits"]);
        let scale = theirs["logits"].abs().max().double_value(&[]);
        println!("{format} export read by {reader:?}: max |logit difference| {diff:.3e} (logits up to {scale:.2})");
        assert!(diff <= TOLERANCE, "{format}, {reader:?}: transformers' logits differ from ours by {diff}");
        assert_eq!(our_tokens, Vec::<i64>::try_from(theirs["generated"].view([-1])).unwrap(), "{reader:?}");
    }

    // Importing the export gives back the same model.
    let back = LanguageModel::from_hf(&folder, device()).unwrap();
    assert_eq!(back.model.config(), &ModelConfig { init_seed: 0, ..config.clone() });
    assert_eq!(max_diff(&logits(&back.model, &tokens), &logits(&model, &tokens)), 0.0);
}

#[test]
fn exported_llama_gives_our_logits_and_greedy_tokens_in_transformers() {
    check_export(HfFormat::Llama);
}

#[test]
fn exported_mixtral_gives_our_logits_and_greedy_tokens_in_transformers() {
    check_export(HfFormat::Mixtral);
}

/// A config the formats cannot express gets one error listing every reason.
#[test]
fn export_refusal_lists_everything_that_prevents_it() {
    use altup_moe::altup::{AltUpConfig, SequenceAltUpConfig};
    use altup_moe::moe::{MoeConfig, RouterKind};
    use altup_moe::nn::Activation;
    let mut c = ModelConfig::mixtral();
    c.altup = Some(AltUpConfig::default());
    c.sequence_altup = Some(SequenceAltUpConfig { stride: 2 });
    c.moe = Some(MoeConfig {
        router: RouterKind::ExpertChoice,
        capacity_factor: Some(2.0),
        eval_capacity_factor: Some(2.0),
        num_shared_experts: 1,
        activation: Activation::Gelu,
        top_k: 1,
        ..MoeConfig::mixtral(8, 64)
    });
    c.tie_embeddings = false;
    c.moe_layers = altup_moe::model::MoeLayers::Every { every: 2, offset: 1 };
    c.validate().unwrap();
    let err = to_hf_config(&c, HfFormat::Mixtral).unwrap_err().to_string();
    for reason in [
        "altup (AltUp with K = 2 blocks)",
        "sequence_altup (stride 2)",
        "moe_layers (every 2 from 1) leaves blocks [0, 2] dense",
        "moe.router (ExpertChoice)",
        "moe.activation (Gelu)",
        "moe.capacity_factor (2)",
        "moe.eval_capacity_factor (2)",
        "moe.num_shared_experts (1)",
    ] {
        assert!(err.contains(reason), "missing '{reason}' in: {err}");
    }
    assert_eq!(export_blockers(&c, HfFormat::Mixtral).len(), 8, "{err}");
    let mut dense = ModelConfig::default();
    dense.ffn.activation = Activation::Gelu;
    let err = to_hf_config(&dense, HfFormat::Llama).unwrap_err().to_string();
    assert!(err.contains("ffn.activation (Gelu): Llama's MLP is SwiGLU"), "{err}");
    let err = to_hf_config(&ModelConfig::mixtral(), HfFormat::Llama).unwrap_err().to_string();
    assert!(err.contains("hf-llama is dense"), "{err}");
    let mut top1 = ModelConfig::mixtral();
    top1.moe.as_mut().unwrap().top_k = 1;
    assert!(to_hf_config(&top1, HfFormat::Mixtral).unwrap_err().to_string().contains("moe.top_k (1)"));
}

/// Fields whose meaning we do not reproduce are errors naming them, all at once.
#[test]
fn import_names_every_unsupported_field() {
    let base = to_hf_config(&ModelConfig::mixtral(), HfFormat::Mixtral).unwrap();
    let mut bad = base.clone();
    bad["sliding_window"] = 4096.into();
    bad["hidden_act"] = "gelu".into();
    bad["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": 2.0});
    bad["rope_parameters"]["rope_type"] = "yarn".into();
    bad["quantization_config"] = serde_json::json!({});
    let err = from_hf_config(&bad).unwrap_err().to_string();
    for field in [
        "sliding_window (4096)",
        "hidden_act (\"gelu\")",
        "rope_scaling ({\"factor\":2.0,\"rope_type\":\"linear\"}) is not supported: rope_type \"linear\" is position \
         interpolation",
        "rope_parameters ({\"rope_theta\":1000000.0,\"rope_type\":\"yarn\"}) is not supported: rope_type \"yarn\" is YaRN",
        "quantization_config ({}) is not a field altup-moe can reproduce for mixtral",
    ] {
        assert!(err.contains(field), "missing '{field}' in: {err}");
    }
    let mut llama = to_hf_config(&ModelConfig::llama(), HfFormat::Llama).unwrap();
    llama["attention_bias"] = true.into();
    llama["mlp_bias"] = true.into();
    llama["head_dim"] = 32.into();
    let err = from_hf_config(&llama).unwrap_err().to_string();
    for field in ["attention_bias (true)", "mlp_bias (true)", "head_dim (32)"] {
        assert!(err.contains(field), "missing '{field}' in: {err}");
    }
    let mut other = base;
    other["model_type"] = "qwen2".into();
    assert!(from_hf_config(&other).unwrap_err().to_string().contains("model_type (\"qwen2\") is not supported"));
    // A folder without weights says so.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), llama_json().to_string()).unwrap();
    let err = LanguageModel::from_hf(dir.path(), device()).unwrap_err().to_string();
    assert!(err.contains("neither model.safetensors nor model.safetensors.index.json"), "{err}");
}

fn llama_json() -> serde_json::Value {
    to_hf_config(&ModelConfig::llama(), HfFormat::Llama).unwrap()
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A subword model exports its tokenizer.json and a tokenizer_config.json that make
/// `AutoTokenizer` encode exactly as we do (no beginning-of-sequence id, none past the
/// vocabulary), with the end-of-text id as `eos_token_id` everywhere; `pipeline("text-generation")`
/// (transformers 5.24 and 4.57) generates our greedy continuation, and a model whose greedy
/// choice is end-of-text stops there in every reader.
#[test]
fn subword_models_export_their_tokenizer() {
    tch::manual_seed(13);
    let text = "the quick brown fox jumps over the lazy dog. ".repeat(40);
    let tokenizer = TextTokenizer::train_bpe(&text, 300).unwrap();
    let mut config = small(HfFormat::Llama);
    config.vocab_size = tokenizer.vocab_size();
    let vs = VarStore::new(device());
    let model = LanguageModel::new(vs.root(), &config).unwrap();
    let out = tempfile::tempdir().unwrap();
    export_hf(&model, &vs, &tokenizer, HfFormat::Llama, out.path()).unwrap();
    let t = tokenizer.hf().expect("a BPE");
    let eos = t.token_to_id(altup_moe::data::END_OF_TEXT).unwrap();
    let json = read_json(&out.path().join("config.json"));
    assert_eq!(json["vocab_size"], config.vocab_size);
    assert_eq!(json["eos_token_id"], eos);
    assert_eq!(json["bos_token_id"], serde_json::Value::Null);
    let generation = read_json(&out.path().join("generation_config.json"));
    assert_eq!((&generation["eos_token_id"], &generation["pad_token_id"]), (&eos.into(), &eos.into()));
    assert_eq!(generation["bos_token_id"], serde_json::Value::Null);
    let tokenizer_config = read_json(&out.path().join("tokenizer_config.json"));
    assert_eq!(tokenizer_config["model_max_length"], config.max_seq_len);
    let back = LanguageModel::from_hf(out.path(), device()).unwrap();
    assert_eq!(back.tokenizer.encode("the fox").unwrap(), tokenizer.encode("the fox").unwrap());

    pipeline_tokens(&model, &tokenizer, out.path(), eos);

    // The same model made to put all its probability on end-of-text: every reader stops after one
    // new token, where 12 were allowed.
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            if name.starts_with("blocks.") {
                let _ = var.zero_();
            } else if name == "embed.weight" || name == "head.weight" {
                let _ = var.fill_(0.1);
                let _ = var.get(i64::from(eos)).fill_(0.2);
            }
        }
    });
    export_hf(&model, &vs, &tokenizer, HfFormat::Llama, out.path()).unwrap();
    assert_eq!(pipeline_tokens(&model, &tokenizer, out.path(), eos), Some(1));
}

/// Greedy continuations of a prompt by `model` and by `pipeline("text-generation")` on its
/// export in `dir` (transformers 5.24 and 4.57), asserted equal up to and including the first
/// end-of-text id, where both stop; also AutoTokenizer's ids and special tokens. Returns how many
/// new tokens were generated when generation stopped at end-of-text (`None`: it did not).
fn pipeline_tokens(model: &LanguageModel, tokenizer: &TextTokenizer, dir: &Path, eos: u32) -> Option<usize> {
    let prompt_text = "the lazy dog jumps";
    let ids: Vec<i64> = tokenizer.encode(prompt_text).unwrap().into_iter().map(i64::from).collect();
    let new_tokens = 12;
    let ours = greedy(model, &Tensor::from_slice(&ids).view([1, -1]), new_tokens);
    // Generation stops after the first end-of-text among the new tokens.
    let stop_at = ours[ids.len()..].iter().position(|&i| i == i64::from(eos));
    let expected = &ours[..stop_at.map_or(ours.len(), |p| ids.len() + p + 1)];
    for reader in [Reader::Transformers5, Reader::Transformers4] {
        let report = dir.join(format!("pipeline_{reader:?}.json"));
        let count = new_tokens.to_string();
        hf_models_under(reader, &[Path::new("pipeline"), dir, Path::new(prompt_text), Path::new(&count), &report]);
        let report = read_json(&report);
        println!("{reader:?} pipeline: {report}");
        assert!(report["transformers"].as_str().unwrap().starts_with(reader.version()), "{report}");
        assert_eq!(report["ids"], serde_json::json!(ids), "{reader:?}: AutoTokenizer's ids (no BOS) differ from ours");
        assert_eq!(report["bos_token_id"], serde_json::Value::Null, "{reader:?}");
        assert_eq!((&report["eos_token_id"], &report["generation_eos_token_id"]), (&eos.into(), &eos.into()));
        assert_eq!(report["vocab"], tokenizer.vocab_size(), "{reader:?}: the tokenizer added ids past the vocabulary");
        assert_eq!(report["generated_ids"], serde_json::json!(expected), "{reader:?}: the pipeline's greedy tokens");
        assert_eq!(report["generated_text"], tokenizer.decode(expected).unwrap(), "{reader:?}: the pipeline's text");
    }
    stop_at.map(|p| p + 1)
}
