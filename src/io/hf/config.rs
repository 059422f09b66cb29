//! The Hugging Face `config.json` of a Llama or Mixtral model ↔ [`ModelConfig`]: which of our
//! configs the two formats can express (and everything that prevents an export), and which
//! Hugging Face fields we can reproduce exactly (and every field that prevents an import).
//!
//! Sources: transformers 5.24 `models/llama/configuration_llama.py` and
//! `models/mixtral/configuration_mixtral.py` (field names and defaults), and the modelling files
//! beside them for the semantics checked here (see the crate's `hf` module docs).

use crate::error::{Error, Result};
use crate::model::{ModelConfig, MoeLayers, Precision};
use crate::moe::{Balancing, MoeConfig, RouterKind};
use crate::nn::{Activation, AttentionConfig, FeedForwardConfig};
use serde_json::{json, Map, Value};
use std::fmt;
use std::str::FromStr;

/// A Hugging Face checkpoint format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HfFormat {
    /// `LlamaForCausalLM` (`model_type` `"llama"`): a dense pre-norm transformer with SwiGLU MLPs.
    Llama,
    /// `MixtralForCausalLM` (`model_type` `"mixtral"`): Llama's attention with a dropless top-k
    /// MoE of SwiGLU experts in every block.
    Mixtral,
}

impl HfFormat {
    /// Both formats, in a stable order.
    pub const ALL: [HfFormat; 2] = [HfFormat::Llama, HfFormat::Mixtral];

    /// The command-line name: `hf-llama` or `hf-mixtral`.
    pub fn name(self) -> &'static str {
        match self {
            HfFormat::Llama => "hf-llama",
            HfFormat::Mixtral => "hf-mixtral",
        }
    }

    /// The `model_type` of its `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            HfFormat::Llama => "llama",
            HfFormat::Mixtral => "mixtral",
        }
    }

    /// The transformers class `AutoModelForCausalLM` builds for it.
    pub fn architecture(self) -> &'static str {
        match self {
            HfFormat::Llama => "LlamaForCausalLM",
            HfFormat::Mixtral => "MixtralForCausalLM",
        }
    }
}

impl fmt::Display for HfFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HfFormat {
    type Err = Error;

    /// Parses `hf-llama` or `hf-mixtral`.
    fn from_str(s: &str) -> Result<Self> {
        HfFormat::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| {
            Error::Config(format!("unknown export format '{s}' (expected one of: hf-llama, hf-mixtral)"))
        })
    }
}

/// Everything in `config` that `format` cannot express, one reason per entry (empty when the
/// model can be exported). Logits of an exported model equal ours exactly when this is empty.
///
/// Checked: AltUp and Sequence-AltUp, a residual-stream method, cross-attention, bidirectional attention; for `hf-llama`
/// a SwiGLU dense FFN and no MoE; for `hf-mixtral` an MoE FFN in every block with token-choice
/// top-k (k ≥ 2) routing whose gates are renormalised, SwiGLU experts, no capacity limit in
/// training or evaluation, no shared experts, no aux-loss-free selection bias and no router
/// jitter (transformers' Mixtral jitters the experts' input too, ours only the router's copy).
pub fn export_blockers(config: &ModelConfig, format: HfFormat) -> Vec<String> {
    let mut why = Vec::new();
    let target = format.name();
    if let Some(a) = &config.altup {
        why.push(format!("altup (AltUp with K = {} blocks) has no {target} equivalent", a.num_blocks));
    }
    if let Some(s) = &config.sequence_altup {
        why.push(format!("sequence_altup (stride {}) has no {target} equivalent", s.stride));
    }
    if !config.residual.is_plain() {
        why.push(format!("residual ({:?}) has no {target} equivalent", config.residual));
    }
    if config.cross_attention {
        why.push(format!("cross_attention (an encoder-decoder's decoder) has no {target} equivalent"));
    }
    if !config.attention.causal {
        why.push(format!("attention.causal is false: {target} is a causal language model"));
    }
    match format {
        HfFormat::Llama => {
            if config.ffn.activation != Activation::SwiGlu {
                why.push(format!("ffn.activation ({:?}): Llama's MLP is SwiGLU", config.ffn.activation));
            }
            if let Some(moe) = &config.moe {
                why.push(format!(
                    "moe ({} experts on blocks {:?}): hf-llama is dense (export an MoE in every block as hf-mixtral)",
                    moe.num_experts,
                    (0..config.num_layers).filter(|&l| config.is_moe_layer(l)).collect::<Vec<_>>()
                ));
            }
        }
        HfFormat::Mixtral => match &config.moe {
            None => why.push("moe is not set: hf-mixtral has an MoE FFN in every block".into()),
            Some(moe) => {
                let dense: Vec<usize> = (0..config.num_layers).filter(|&l| !config.is_moe_layer(l)).collect();
                if !dense.is_empty() {
                    why.push(format!(
                        "moe_layers ({}) leaves blocks {dense:?} dense: Mixtral has an MoE FFN in every block",
                        describe_layers(&config.moe_layers)
                    ));
                }
                why.extend(mixtral_moe_blockers(moe));
            }
        },
    }
    why
}

fn describe_layers(layers: &MoeLayers) -> String {
    match layers {
        MoeLayers::Every { every, offset } => format!("every {every} from {offset}"),
        MoeLayers::List { layers } => format!("{layers:?}"),
    }
}

/// What in an MoE config Mixtral's `MixtralSparseMoeBlock` cannot express.
fn mixtral_moe_blockers(moe: &MoeConfig) -> Vec<String> {
    let mut why = Vec::new();
    if moe.router != RouterKind::TokenChoice {
        why.push(format!("moe.router ({:?}): Mixtral routes by token choice", moe.router));
    } else if moe.top_k < 2 {
        why.push(format!(
            "moe.top_k ({}): Mixtral renormalises the top-k gates, so a single gate would be 1, while ours keeps \
             the raw probability for k = 1",
            moe.top_k
        ));
    } else if !moe.normalize_gates {
        why.push("moe.normalize_gates is false: Mixtral renormalises the top-k gates to sum to 1".into());
    }
    if moe.activation != Activation::SwiGlu {
        why.push(format!("moe.activation ({:?}): Mixtral's experts are SwiGLU", moe.activation));
    }
    if let Some(cf) = moe.capacity_factor {
        why.push(format!("moe.capacity_factor ({cf}): Mixtral is dropless (no capacity limit)"));
    }
    if let Some(cf) = moe.eval_capacity_factor {
        why.push(format!("moe.eval_capacity_factor ({cf}): Mixtral is dropless (no capacity limit)"));
    }
    if moe.num_shared_experts > 0 {
        why.push(format!("moe.num_shared_experts ({}): Mixtral has no shared experts", moe.num_shared_experts));
    }
    if let Balancing::AuxFree { .. } = moe.balancing {
        why.push("moe.balancing (aux_free): Mixtral's router has no expert selection bias".into());
    }
    if moe.jitter != 0.0 {
        why.push(format!(
            "moe.jitter ({}): Mixtral's router_jitter_noise also scales the experts' input, ours only the router's copy",
            moe.jitter
        ));
    }
    why
}

/// The transformers release whose file layout [`to_hf_config`] and [`crate::io::export_hf`]
/// follow (their `transformers_version`), the one the tests load the exports with.
pub const TRANSFORMERS_VERSION: &str = "5.24.0";

/// The `config.json` of `config` exported as `format` (float32 weights), readable by
/// transformers 5 and 4.x alike.
///
/// Both spellings of the rotary embedding are written: `rope_parameters` (`{"rope_type":
/// "default", "rope_theta": θ}`, transformers 5) and the top-level `rope_theta` with
/// `rope_scaling: null` (transformers 4.x, which ignores `rope_parameters` and would otherwise
/// fall back to its default θ); the weights' dtype as `dtype` (transformers 5) and
/// `torch_dtype` (4.x), both `"float32"`. Everything a reader might otherwise default is
/// explicit: `head_dim`, `tie_word_embeddings`, `attention_dropout` 0, Llama's
/// `attention_bias` / `mlp_bias` false and `pretraining_tp` 1, Mixtral's `sliding_window` null
/// and `router_jitter_noise` 0. `bos_token_id`, `eos_token_id` and `pad_token_id` are null here;
/// [`crate::io::export_hf`] sets `eos_token_id` to a subword tokenizer's end-of-text id.
///
/// # Errors
/// [`Error::Config`] listing every entry of [`export_blockers`] when there is any, and
/// validation errors of `config`.
pub fn to_hf_config(config: &ModelConfig, format: HfFormat) -> Result<Value> {
    config.validate()?;
    let blockers = export_blockers(config, format);
    if !blockers.is_empty() {
        return Err(Error::Config(format!(
            "the model cannot be exported as {format}: {}",
            blockers.iter().enumerate().map(|(i, b)| format!("({}) {b}", i + 1)).collect::<Vec<_>>().join("; ")
        )));
    }
    let a = &config.attention;
    let mut out = json!({
        "architectures": [format.architecture()],
        "model_type": format.model_type(),
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": a.num_heads,
        "num_key_value_heads": a.kv_heads(),
        "head_dim": config.d_model / a.num_heads,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "initializer_range": config.init_std,
        "rms_norm_eps": config.norm_eps,
        "tie_word_embeddings": config.tie_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": a.rope_theta},
        "rope_theta": a.rope_theta,
        "rope_scaling": null,
        "attention_dropout": 0.0,
        "bos_token_id": null,
        "eos_token_id": null,
        "pad_token_id": null,
        "use_cache": true,
        "dtype": "float32",
        "torch_dtype": "float32",
        "transformers_version": TRANSFORMERS_VERSION,
    });
    let fields = out.as_object_mut().ok_or_else(|| Error::Config("config.json is not an object".into()))?;
    match (format, &config.moe) {
        (HfFormat::Mixtral, Some(moe)) => {
            fields.insert("intermediate_size".into(), json!(moe.d_ff));
            fields.insert("num_local_experts".into(), json!(moe.num_experts));
            fields.insert("num_experts_per_tok".into(), json!(moe.top_k));
            fields.insert("router_jitter_noise".into(), json!(0.0));
            fields.insert("sliding_window".into(), Value::Null);
            fields.insert("output_router_logits".into(), json!(false));
        }
        _ => {
            fields.insert("intermediate_size".into(), json!(config.ffn.d_ff));
            fields.insert("attention_bias".into(), json!(false));
            fields.insert("mlp_bias".into(), json!(false));
            fields.insert("pretraining_tp".into(), json!(1));
        }
    }
    Ok(out)
}

/// Fields read from a Hugging Face config, or checked to have the one value we reproduce.
const READ: &[&str] = &[
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "tie_word_embeddings",
    "rope_theta",
    "rope_parameters",
    "rope_scaling",
    "attention_dropout",
    "attention_bias",
    "mlp_bias",
    "sliding_window",
    "num_local_experts",
    "num_experts_per_tok",
    "router_jitter_noise",
];

/// A `config.json` key that does not change a Llama's or Mixtral's computation, which
/// [`from_hf_config`] therefore accepts (see [`HARMLESS_KEYS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HarmlessKey {
    /// The key.
    pub key: &'static str,
    /// The one value (JSON) the key may hold besides null, when other values would change the
    /// computation; `None` when every value is harmless.
    pub only: Option<&'static str>,
    /// Why the key (at that value) does not change the computation.
    pub why: &'static str,
}

const fn any(key: &'static str, why: &'static str) -> HarmlessKey {
    HarmlessKey { key, only: None, why }
}

const fn only(key: &'static str, value: &'static str, why: &'static str) -> HarmlessKey {
    HarmlessKey { key, only: Some(value), why }
}

const BOOKKEEPING: &str = "bookkeeping of the writer (names, versions, where it was loaded from)";
const DTYPE: &str = "the stored weights' dtype: import makes f32 masters whatever the files hold";
const TOKENS: &str = "special token ids of the tokenizer and of generation, not of the network";
const OUTPUTS: &str = "output and framework switches (what a forward returns, caching, TorchScript, TensorFlow)";
const TASKS: &str = "labels and task metadata of other heads (sequence classification, fine-tuning tasks)";
const GENERATION: &str =
    "a generation default that transformers 4.x wrote into config.json: it picks tokens from the logits, it does \
     not change them";
const NO_ENCODER: &str = "encoder-decoder settings that a decoder-only Llama / Mixtral does not read";

/// Keys of public Llama / Mixtral `config.json` files that do not change the computation, with
/// the value each must hold when other values would (for example `rope_interleaved`, which
/// nanotron writes: `false` is the rotate-half pairing transformers' Llama and ours use, `true`
/// means the weights were stored for interleaved pairs). [`from_hf_config`] accepts these
/// (checking the value where one is given) besides the fields it reads; every other key is an
/// error naming it, since it may change the model.
pub const HARMLESS_KEYS: &[HarmlessKey] = &[
    any("architectures", BOOKKEEPING),
    any("_name_or_path", BOOKKEEPING),
    any("transformers_version", BOOKKEEPING),
    any("_commit_hash", BOOKKEEPING),
    any("is_llama_config", "a marker nanotron writes into the Llama configs it exports (SmolLM, SmolLM2)"),
    only(
        "rope_interleaved",
        "false",
        "nanotron's rotary pairing: false is the rotate-half pairing (i, i + head_dim / 2) of transformers' Llama \
         and of ours; true means weights stored for interleaved pairs (2i, 2i + 1), which transformers' Llama would \
         silently compute wrongly",
    ),
    any(
        "pretraining_tp",
        "the tensor-parallel degree of pretraining: early transformers 4.x releases split the same matmuls into \
         that many slices (equal up to rounding), 4.57 and 5.24 do not read it",
    ),
    any(
        "max_sequence_length",
        "an old duplicate of max_position_embeddings in LLaMA-1 conversions, read by no transformers release",
    ),
    any("dtype", DTYPE),
    any("torch_dtype", DTYPE),
    any("bos_token_id", TOKENS),
    any("eos_token_id", TOKENS),
    any("pad_token_id", TOKENS),
    any("sep_token_id", TOKENS),
    any("decoder_start_token_id", TOKENS),
    any("tokenizer_class", "the tokenizer's class, not the network's"),
    any("use_cache", OUTPUTS),
    any("output_hidden_states", OUTPUTS),
    any("output_attentions", OUTPUTS),
    any("output_router_logits", OUTPUTS),
    any("return_dict", OUTPUTS),
    any("torchscript", OUTPUTS),
    any("use_bfloat16", OUTPUTS),
    any("tf_legacy_loss", OUTPUTS),
    any("_attn_implementation_autoset", "which attention kernel transformers picks: the same mathematics"),
    any(
        "chunk_size_feed_forward",
        "feed-forward chunking, which Llama and Mixtral do not apply (and which would not change the result)",
    ),
    any("router_aux_loss_coef", "the load-balancing loss coefficient of training: the trainer sets its own"),
    any("id2label", TASKS),
    any("label2id", TASKS),
    any("problem_type", TASKS),
    any("finetuning_task", TASKS),
    any("prefix", TASKS),
    any("task_specific_params", TASKS),
    only("is_encoder_decoder", "false", NO_ENCODER),
    only("add_cross_attention", "false", NO_ENCODER),
    any("is_decoder", NO_ENCODER),
    any("cross_attention_hidden_size", NO_ENCODER),
    any("tie_encoder_decoder", NO_ENCODER),
    only("pruned_heads", "{}", "attention heads removed after training: none may be"),
    any("max_length", GENERATION),
    any("min_length", GENERATION),
    any("do_sample", GENERATION),
    any("early_stopping", GENERATION),
    any("num_beams", GENERATION),
    any("num_beam_groups", GENERATION),
    any("diversity_penalty", GENERATION),
    any("temperature", GENERATION),
    any("top_k", GENERATION),
    any("top_p", GENERATION),
    any("typical_p", GENERATION),
    any("repetition_penalty", GENERATION),
    any("length_penalty", GENERATION),
    any("no_repeat_ngram_size", GENERATION),
    any("encoder_no_repeat_ngram_size", GENERATION),
    any("bad_words_ids", GENERATION),
    any("num_return_sequences", GENERATION),
    any("output_scores", GENERATION),
    any("return_dict_in_generate", GENERATION),
    any("forced_bos_token_id", GENERATION),
    any("forced_eos_token_id", GENERATION),
    any("remove_invalid_values", GENERATION),
    any("exponential_decay_length_penalty", GENERATION),
    any("suppress_tokens", GENERATION),
    any("begin_suppress_tokens", GENERATION),
];

/// Up to 80 characters of a JSON value, for messages.
fn short(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(80) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

/// Reads a Hugging Face config's fields, collecting every problem.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    problems: Vec<String>,
}

impl<'a> Fields<'a> {
    /// The value of `key`, `None` when absent or null.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn usize_or(&mut self, key: &str, default: Option<usize>) -> usize {
        match (self.get(key), default) {
            (Some(v), _) => match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
                Some(n) => n,
                None => {
                    self.problems.push(format!("{key} ({v}) must be a non-negative integer"));
                    0
                }
            },
            (None, Some(d)) => d,
            (None, None) => {
                self.problems.push(format!("{key} is missing"));
                0
            }
        }
    }

    fn f64_or(&mut self, key: &str, default: f64) -> f64 {
        match self.get(key) {
            Some(v) => v.as_f64().unwrap_or_else(|| {
                self.problems.push(format!("{key} ({v}) must be a number"));
                default
            }),
            None => default,
        }
    }

    fn bool_or(&mut self, key: &str, default: bool) -> bool {
        match self.get(key) {
            Some(v) => v.as_bool().unwrap_or_else(|| {
                self.problems.push(format!("{key} ({v}) must be true or false"));
                default
            }),
            None => default,
        }
    }

    /// Records a problem unless `key` is absent, null or equal to `expected`.
    fn expect(&mut self, key: &str, expected: &Value, why: &str) {
        if let Some(v) = self.get(key) {
            let same = match (v.as_f64(), expected.as_f64()) {
                (Some(a), Some(b)) => a == b,
                _ => v == expected,
            };
            if !same {
                self.problems.push(format!("{key} ({v}) is not supported: {why}"));
            }
        }
    }
}

/// What a rotary `rope_type` other than `"default"` does, for messages.
fn rope_type_meaning(t: &str) -> &'static str {
    match t {
        "llama3" => "Llama 3's frequency-dependent scaling of the rotary frequencies",
        "linear" => "position interpolation (positions divided by a factor)",
        "dynamic" => "dynamic NTK scaling of the rotary base",
        "yarn" => "YaRN scaling of the rotary frequencies",
        "longrope" => "LongRoPE's per-frequency scaling",
        _ => "a scaled rotary embedding",
    }
}

/// Checks the rotary-parameter object under `key` (`rope_parameters`, transformers 5, or the
/// older `rope_scaling`, which transformers 5 reads the same way): only the default rotary
/// embedding is reproduced. Returns its `rope_theta`, when it has one.
fn rope_object(f: &mut Fields, key: &str) -> Option<f64> {
    let value = f.get(key)?.clone();
    let Some(params) = value.as_object() else {
        f.problems.push(format!("{key} ({}) must be an object", short(&value)));
        return None;
    };
    match params.get("rope_type").or_else(|| params.get("type")) {
        None => {}
        Some(Value::String(t)) if t == "default" => {}
        Some(Value::String(t)) => {
            f.problems.push(format!(
                "{key} ({}) is not supported: rope_type \"{t}\" is {}; only the default rotary embedding \
                 (rope_type \"default\") is reproduced",
                short(&value),
                rope_type_meaning(t)
            ));
            return None;
        }
        Some(other) => {
            f.problems.push(format!("{key}.rope_type ({other}) must be a string"));
            return None;
        }
    }
    let mut theta = None;
    for (field, v) in params {
        match (field.as_str(), v.as_f64()) {
            ("rope_type" | "type", _) => {}
            ("rope_theta", Some(t)) => theta = Some(t),
            _ => f.problems.push(format!(
                "{key}.{field} ({}) is not supported: only the default rotary embedding (rope_type \"default\" with a \
                 rope_theta) is",
                short(v)
            )),
        }
    }
    theta
}

/// The rotary θ of a Hugging Face config: `rope_parameters.rope_theta` (transformers 5), else
/// `rope_scaling.rope_theta`, else the top-level `rope_theta` (transformers 4.x), else the
/// format's default. A top-level θ that differs from the one in `rope_parameters` is a problem:
/// transformers 4.x and 5 would read different values.
fn rope_theta(f: &mut Fields, default: f64) -> f64 {
    let top = f.get("rope_theta").cloned();
    let top = top.and_then(|v| {
        let t = v.as_f64();
        if t.is_none() {
            f.problems.push(format!("rope_theta ({}) must be a number", short(&v)));
        }
        t
    });
    let nested = rope_object(f, "rope_parameters");
    let scaling = rope_object(f, "rope_scaling");
    for (key, inner) in [("rope_parameters", nested), ("rope_scaling", scaling)] {
        if let (Some(t), Some(inner)) = (top, inner) {
            if t != inner {
                f.problems.push(format!(
                    "rope_theta ({t}) and {key}.rope_theta ({inner}) differ: transformers 4.x would use the first, \
                     transformers 5 the second"
                ));
            }
        }
    }
    nested.or(scaling).or(top).unwrap_or(default)
}

/// The [`ModelConfig`] of a Hugging Face Llama or Mixtral `config.json` (parsed), and its
/// format.
///
/// The defaults of absent fields are transformers 5.24's (Llama: θ = 10⁴, ε = 10⁻⁶, 2048
/// positions; Mixtral: θ = 10⁶, ε = 10⁻⁵, 131072 positions, 8 experts, top-2); an absent
/// `num_key_value_heads` means `num_attention_heads`. Mixtral becomes an MoE in every block with
/// token-choice top-k, renormalised gates, SwiGLU experts and no capacity limit.
///
/// # Errors
/// [`Error::Config`] naming every problem at once, numbered `(1) …; (2) …`: a `model_type` other than `llama` or
/// `mixtral`; fields whose value we do not reproduce — `hidden_act` other than `silu`,
/// `attention_bias` / `mlp_bias` true, `rope_scaling` or a non-default `rope_parameters`,
/// `sliding_window`, `attention_dropout` or `router_jitter_noise` not 0, a `head_dim` other than
/// `hidden_size / num_attention_heads`, `num_experts_per_tok` 1, a top-level `rope_theta` that
/// differs from `rope_parameters.rope_theta`; a [`HARMLESS_KEYS`] key at a value that matters
/// (`rope_interleaved` true, non-empty `pruned_heads`, ...); any other key, which may change the
/// computation (`quantization_config`, `partial_rotary_factor`, ...); missing or mistyped sizes;
/// then anything [`ModelConfig::validate`] rejects. Keys of [`HARMLESS_KEYS`] (bookkeeping,
/// token ids, dtypes, generation defaults, output switches, ...) are accepted whatever their
/// value, or at their one harmless value.
pub fn from_hf_config(json: &Value) -> Result<(ModelConfig, HfFormat)> {
    let map =
        json.as_object().ok_or_else(|| Error::Config("a Hugging Face config.json must be a JSON object".into()))?;
    let format = match map.get("model_type").and_then(Value::as_str) {
        Some("llama") => HfFormat::Llama,
        Some("mixtral") => HfFormat::Mixtral,
        other => {
            return Err(Error::Config(format!(
                "model_type ({}) is not supported (expected \"llama\" or \"mixtral\")",
                other.map_or_else(
                    || map.get("model_type").map_or("missing".into(), Value::to_string),
                    |s| format!("\"{s}\"")
                )
            )))
        }
    };
    let mut f = Fields { map, problems: Vec::new() };
    for (key, value) in map {
        let other_format = match format {
            HfFormat::Llama => ["sliding_window", "num_local_experts", "num_experts_per_tok", "router_jitter_noise"]
                .contains(&key.as_str()),
            HfFormat::Mixtral => ["attention_bias", "mlp_bias"].contains(&key.as_str()),
        };
        if READ.contains(&key.as_str()) && !other_format {
            continue;
        }
        match HARMLESS_KEYS.iter().find(|h| h.key == key) {
            Some(HarmlessKey { only: None, .. }) => {}
            Some(HarmlessKey { only: Some(expected), why, .. }) => {
                let expected: Value = serde_json::from_str(expected).unwrap_or(Value::Null);
                if !value.is_null() && *value != expected {
                    f.problems.push(format!(
                        "{key} ({}) is not supported: only {expected} (or null) is ({why})",
                        short(value)
                    ));
                }
            }
            None => f.problems.push(format!(
                "{key} ({}) is not a field altup-moe can reproduce for {} (it may change the computation)",
                short(value),
                format.model_type()
            )),
        }
    }
    let mixtral = format == HfFormat::Mixtral;
    let vocab_size = f.usize_or("vocab_size", None);
    let d_model = f.usize_or("hidden_size", None);
    let d_ff = f.usize_or("intermediate_size", None);
    let num_layers = f.usize_or("num_hidden_layers", None);
    let num_heads = f.usize_or("num_attention_heads", None);
    let num_kv_heads = f.usize_or("num_key_value_heads", Some(num_heads));
    if let Some(head_dim) = f.get("head_dim").cloned() {
        if num_heads > 0 && head_dim.as_u64() != Some((d_model / num_heads) as u64) {
            f.problems.push(format!(
                "head_dim ({head_dim}) is not supported: it must be hidden_size / num_attention_heads ({d_model} / \
                 {num_heads})"
            ));
        }
    }
    let max_seq_len = f.usize_or("max_position_embeddings", Some(if mixtral { 4096 * 32 } else { 2048 }));
    let init_std = f.f64_or("initializer_range", 0.02);
    let norm_eps = f.f64_or("rms_norm_eps", if mixtral { 1e-5 } else { 1e-6 });
    let tie_embeddings = f.bool_or("tie_word_embeddings", false);
    let rope_theta = rope_theta(&mut f, if mixtral { 1e6 } else { 1e4 });
    match f.get("hidden_act").cloned() {
        None => {}
        Some(Value::String(a)) if a == "silu" || a == "swish" => {}
        Some(other) => {
            f.problems.push(format!("hidden_act ({other}) is not supported: only SwiGLU with silu (\"silu\") is"))
        }
    }
    if let Some(window) = f.get("sliding_window").cloned() {
        f.problems.push(format!("sliding_window ({window}) is not supported: attention is over the whole context"));
    }
    f.expect("attention_bias", &json!(false), "our projections have no bias");
    f.expect("mlp_bias", &json!(false), "our projections have no bias");
    f.expect("attention_dropout", &json!(0.0), "our attention has no dropout");
    f.expect(
        "router_jitter_noise",
        &json!(0.0),
        "transformers' jitter scales the experts' input too, ours only the router's copy",
    );
    let moe = if mixtral {
        let num_experts = f.usize_or("num_local_experts", Some(8));
        let top_k = f.usize_or("num_experts_per_tok", Some(2));
        if top_k == 1 {
            f.problems.push(
                "num_experts_per_tok (1) is not supported: Mixtral renormalises a single gate to 1, our top-1 gate is \
                 the raw router probability"
                    .into(),
            );
        }
        Some(MoeConfig { top_k, ..MoeConfig::mixtral(num_experts, d_ff) })
    } else {
        None
    };
    if !f.problems.is_empty() {
        return Err(Error::Config(format!(
            "the Hugging Face {} config cannot be imported: {}",
            format.model_type(),
            f.problems.iter().enumerate().map(|(i, p)| format!("({}) {p}", i + 1)).collect::<Vec<_>>().join("; ")
        )));
    }
    let config = ModelConfig {
        vocab_size,
        d_model,
        num_layers,
        max_seq_len,
        attention: AttentionConfig {
            num_heads,
            num_kv_heads: (num_kv_heads != num_heads).then_some(num_kv_heads),
            rope_theta,
            causal: true,
        },
        ffn: FeedForwardConfig { d_ff, activation: Activation::SwiGlu },
        moe,
        moe_layers: if mixtral { MoeLayers::Every { every: 1, offset: 0 } } else { MoeLayers::default() },
        altup: None,
        sequence_altup: None,
        residual: crate::residual::ResidualConfig::Plain,
        cross_attention: false,
        norm_eps,
        tie_embeddings,
        init_std,
        init_seed: 0,
        precision: Precision::F32,
    };
    config.validate()?;
    Ok((config, format))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every allow-listed key is listed once, is not also a field we read, and its one harmless
    /// value (where it has one) is JSON.
    #[test]
    fn harmless_keys_are_well_formed() {
        let mut seen = std::collections::BTreeSet::new();
        for h in HARMLESS_KEYS {
            assert!(seen.insert(h.key), "{} listed twice", h.key);
            assert!(!READ.contains(&h.key), "{} is read, not ignored", h.key);
            assert!(!h.why.is_empty());
            if let Some(value) = h.only {
                assert!(serde_json::from_str::<Value>(value).is_ok(), "{}: {value}", h.key);
            }
        }
    }

    #[test]
    fn presets_export_and_come_back() {
        for (config, format) in [(ModelConfig::llama(), HfFormat::Llama), (ModelConfig::mixtral(), HfFormat::Mixtral)] {
            assert_eq!(export_blockers(&config, format), Vec::<String>::new());
            let json = to_hf_config(&config, format).unwrap();
            let (back, back_format) = from_hf_config(&json).unwrap();
            assert_eq!(back_format, format);
            assert_eq!(back, config);
        }
        assert_eq!("hf-mixtral".parse::<HfFormat>().unwrap(), HfFormat::Mixtral);
        // The export reads back whatever transformers 4.x keys it adds.
        let json = to_hf_config(&ModelConfig::llama(), HfFormat::Llama).unwrap();
        assert_eq!((json["rope_theta"].as_f64(), &json["rope_scaling"]), (Some(1e4), &Value::Null));
        assert_eq!((&json["torch_dtype"], &json["dtype"]), (&json!("float32"), &json!("float32")));
        assert!("llama".parse::<HfFormat>().unwrap_err().to_string().contains("'llama'"));
    }
}
