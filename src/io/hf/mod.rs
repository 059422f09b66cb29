//! Hugging Face interoperability: Llama and Mixtral checkpoints in and out, with logit parity.
//!
//! * [`LanguageModel::from_hf`](crate::model::LanguageModel::from_hf) reads a
//!   `LlamaForCausalLM` / `MixtralForCausalLM` folder (`config.json` + safetensors, sharded or
//!   not; Mixtral's experts one tensor per expert or fused as transformers 5 holds them) into a
//!   [`crate::model::LanguageModel`];
//! * [`export_hf`] writes one of our models as such a folder, which
//!   `transformers.AutoModelForCausalLM.from_pretrained` loads, transformers 5 and 4.x alike
//!   (`config.json` with both spellings of the rotary θ and dtype, `model.safetensors` with
//!   `{"format": "pt"}` metadata, `generation_config.json`, and for a subword tokenizer
//!   `tokenizer.json` + `tokenizer_config.json` for `AutoTokenizer` / `pipeline`);
//!   [`export_blockers`] lists what in a config the format cannot express;
//! * [`to_hf_config`] / [`from_hf_config`] translate the configs. Public `config.json` files are
//!   read as published: keys that do not change the computation ([`HARMLESS_KEYS`]: bookkeeping,
//!   dtypes, token ids, generation defaults, nanotron's `is_llama_config` and
//!   `rope_interleaved: false`, ...) are accepted; anything else that we do not reproduce (a
//!   scaled rotary embedding such as Llama 3's `rope_scaling` of type `llama3`, biases, a sliding
//!   window, quantization, unknown keys, a harmless key at a value that matters) is an error
//!   naming key and value. `tests/hf_configs.rs` checks Llama 3.2 1B (refused: `llama3` rope
//!   scaling), SmolLM2-135M, TinyLlama-1.1B and Mixtral-8x7B (accepted, in transformers 4 and 5
//!   spellings).
//!
//! What the formats need, and how our model expresses it (transformers 5.24,
//! `models/llama/modeling_llama.py`, `models/mixtral/modeling_mixtral.py`):
//!
//! | Llama / Mixtral | altup-moe |
//! |---|---|
//! | `num_key_value_heads` (grouped-query attention, head `h` uses key/value head `h / (H / H_kv)`) | [`crate::nn::AttentionConfig::num_kv_heads`] |
//! | rotate-half rotary embedding, `rope_theta` | [`crate::nn::Rope`] (the same pairing), `attention.rope_theta` |
//! | `rms_norm_eps`, `y = w · x / rms(x)` in f32 | `norm_eps`, [`crate::nn::RmsNorm`] (the same formula) |
//! | `tie_word_embeddings` (false: a separate `lm_head`) | `tie_embeddings` |
//! | SwiGLU MLP `down(silu(gate(x)) · up(x))` | [`crate::nn::Activation::SwiGlu`] (`w_out(silu(w_gate x) · w_in x)`) |
//! | Mixtral router: softmax, top-k, renormalised; dropless; MoE in every block | [`crate::moe::MoeConfig::mixtral`], `moe_layers` every block |
//! | no embedding scaling, no biases, attention scale `1/√hd` | the same |
//!
//! [`crate::model::ModelConfig::llama`] and [`crate::model::ModelConfig::mixtral`] are small
//! presets of the two formats.

pub(crate) mod config;
pub(crate) mod export;
pub(crate) mod import;
pub(crate) mod tensors;

pub use config::{
    export_blockers, from_hf_config, to_hf_config, HarmlessKey, HfFormat, HARMLESS_KEYS, TRANSFORMERS_VERSION,
};
pub use export::export_hf;
