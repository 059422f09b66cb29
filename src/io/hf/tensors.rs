//! Tensor names and layouts: our parameters ↔ a Hugging Face Llama or Mixtral checkpoint.
//!
//! | ours | Hugging Face (as `save_pretrained` writes it, transformers 5.24) |
//! |---|---|
//! | `embed.weight` `[V, D]` | `model.embed_tokens.weight` |
//! | `blocks.{l}.attn_norm.weight` `[D]` | `model.layers.{l}.input_layernorm.weight` |
//! | `blocks.{l}.attn.qkv.weight` `[(H + 2·H_kv)·hd, D]` | rows of `self_attn.q_proj` `[H·hd, D]`, `k_proj`, `v_proj` `[H_kv·hd, D]` |
//! | `blocks.{l}.attn.out.weight` `[D, D]` | `self_attn.o_proj.weight` |
//! | `blocks.{l}.ffn_norm.weight` | `post_attention_layernorm.weight` |
//! | `blocks.{l}.ffn.{w_gate,w_in,w_out}.weight` | `mlp.{gate_proj,up_proj,down_proj}.weight` (Llama) |
//! | `blocks.{l}.moe.router.weight` `[E, D]` | `block_sparse_moe.gate.weight` (Mixtral) |
//! | `blocks.{l}.moe.experts.{w_gate,w_in}` `[E, D, F]` | `block_sparse_moe.experts.{e}.{w1,w3}.weight` `[F, D]`, transposed |
//! | `blocks.{l}.moe.experts.w_out` `[E, F, D]` | `block_sparse_moe.experts.{e}.w2.weight` `[D, F]`, transposed |
//! | `final_norm.weight` | `model.norm.weight` |
//! | `head.weight` `[V, D]` | `lm_head.weight` (absent when the embeddings are tied) |
//!
//! Mixtral files in transformers 5's in-memory layout (`save_pretrained(...,
//! save_original_format=False)`, and checkpoints converted by tools that follow it) hold each
//! layer's experts fused, and are read as well (export writes the per-expert layout above,
//! which every transformers release reads):
//!
//! | transformers 5 fused (`model.layers.{l}.mlp.…`) | per-expert equivalent |
//! |---|---|
//! | `mlp.gate.weight` `[E, D]` | `block_sparse_moe.gate.weight` |
//! | `mlp.experts.gate_up_proj` `[E, 2F, D]`: rows `0..F` gate, `F..2F` up | `experts.{e}.w1.weight`, `experts.{e}.w3.weight` `[F, D]` |
//! | `mlp.experts.down_proj` `[E, D, F]` | `experts.{e}.w2.weight` `[D, F]` |
//!
//! (transformers 5.24 `models/mixtral/modeling_mixtral.py`: `MixtralExperts` computes
//! `gate, up = linear(x, gate_up_proj[e]).chunk(2, dim=-1)`; `conversion_mapping.py` builds
//! `gate_up_proj` by concatenating the stacked `w1` and `w3` along dimension 1.)
//!
//! No row permutation is needed for the rotary embedding: Hugging Face's Llama checkpoints are
//! stored for the rotate-half pairing (`rotate_half` in `modeling_llama.py`; Meta's original
//! interleaved-pair weights are permuted by `convert_llama_weights_to_hf.py`), which is the one
//! [`crate::nn::Rope`] uses.

use crate::dtype::Cast;
use crate::error::{Error, Result};
use crate::io::hf::config::HfFormat;
use crate::model::ModelConfig;
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// How one of our parameters is made of Hugging Face tensors.
enum Layout {
    /// One tensor, same layout.
    Same(String),
    /// Rows stacked: `[q_proj; k_proj; v_proj]`.
    Rows(Vec<String>),
    /// `[E, a, b]` from `E` tensors `[b, a]` (transposed).
    ExpertsTransposed(Vec<String>),
}

/// One of our parameters: its name, shape and Hugging Face source.
struct Entry {
    ours: String,
    layout: Layout,
}

/// The shape every Hugging Face tensor of the checkpoint must have.
fn hf_shapes(config: &ModelConfig, format: HfFormat) -> BTreeMap<String, Vec<i64>> {
    let (v, d) = (config.vocab_size as i64, config.d_model as i64);
    let hd = d / config.attention.num_heads as i64;
    let (h, kv) = (config.attention.num_heads as i64, config.attention.kv_heads() as i64);
    let mut shapes = BTreeMap::new();
    shapes.insert("model.embed_tokens.weight".to_string(), vec![v, d]);
    shapes.insert("model.norm.weight".to_string(), vec![d]);
    if !config.tie_embeddings {
        shapes.insert("lm_head.weight".to_string(), vec![v, d]);
    }
    for l in 0..config.num_layers {
        let p = format!("model.layers.{l}");
        shapes.insert(format!("{p}.input_layernorm.weight"), vec![d]);
        shapes.insert(format!("{p}.post_attention_layernorm.weight"), vec![d]);
        shapes.insert(format!("{p}.self_attn.q_proj.weight"), vec![h * hd, d]);
        shapes.insert(format!("{p}.self_attn.k_proj.weight"), vec![kv * hd, d]);
        shapes.insert(format!("{p}.self_attn.v_proj.weight"), vec![kv * hd, d]);
        shapes.insert(format!("{p}.self_attn.o_proj.weight"), vec![d, d]);
        match (format, &config.moe) {
            (HfFormat::Mixtral, Some(moe)) => {
                let (e, f) = (moe.num_experts as i64, moe.d_ff as i64);
                shapes.insert(format!("{p}.block_sparse_moe.gate.weight"), vec![e, d]);
                for x in 0..moe.num_experts {
                    let q = format!("{p}.block_sparse_moe.experts.{x}");
                    shapes.insert(format!("{q}.w1.weight"), vec![f, d]);
                    shapes.insert(format!("{q}.w3.weight"), vec![f, d]);
                    shapes.insert(format!("{q}.w2.weight"), vec![d, f]);
                }
            }
            _ => {
                let f = config.ffn.d_ff as i64;
                shapes.insert(format!("{p}.mlp.gate_proj.weight"), vec![f, d]);
                shapes.insert(format!("{p}.mlp.up_proj.weight"), vec![f, d]);
                shapes.insert(format!("{p}.mlp.down_proj.weight"), vec![d, f]);
            }
        }
    }
    shapes
}

/// Our parameters and how each is made of Hugging Face tensors (the config must be exportable
/// as `format`, see [`crate::io::export_blockers`]).
fn entries(config: &ModelConfig, format: HfFormat) -> Vec<Entry> {
    let same = |ours: String, hf: String| Entry { ours, layout: Layout::Same(hf) };
    let mut out = vec![same("embed.weight".into(), "model.embed_tokens.weight".into())];
    for l in 0..config.num_layers {
        let (b, p) = (format!("blocks.{l}"), format!("model.layers.{l}"));
        out.push(same(format!("{b}.attn_norm.weight"), format!("{p}.input_layernorm.weight")));
        out.push(Entry {
            ours: format!("{b}.attn.qkv.weight"),
            layout: Layout::Rows(["q", "k", "v"].iter().map(|x| format!("{p}.self_attn.{x}_proj.weight")).collect()),
        });
        out.push(same(format!("{b}.attn.out.weight"), format!("{p}.self_attn.o_proj.weight")));
        out.push(same(format!("{b}.ffn_norm.weight"), format!("{p}.post_attention_layernorm.weight")));
        match (format, &config.moe) {
            (HfFormat::Mixtral, Some(moe)) => {
                let m = format!("{p}.block_sparse_moe");
                out.push(same(format!("{b}.moe.router.weight"), format!("{m}.gate.weight")));
                for (ours, hf) in [("w_gate", "w1"), ("w_in", "w3"), ("w_out", "w2")] {
                    let names = (0..moe.num_experts).map(|e| format!("{m}.experts.{e}.{hf}.weight")).collect();
                    out.push(Entry {
                        ours: format!("{b}.moe.experts.{ours}"),
                        layout: Layout::ExpertsTransposed(names),
                    });
                }
            }
            _ => {
                for (ours, hf) in [("w_gate", "gate_proj"), ("w_in", "up_proj"), ("w_out", "down_proj")] {
                    out.push(same(format!("{b}.ffn.{ours}.weight"), format!("{p}.mlp.{hf}.weight")));
                }
            }
        }
    }
    out.push(same("final_norm.weight".into(), "model.norm.weight".into()));
    if !config.tie_embeddings {
        out.push(same("head.weight".into(), "lm_head.weight".into()));
    }
    out
}

/// Rewrites a Mixtral checkpoint's fused expert tensors (transformers 5's in-memory layout, see
/// the module docs) into the per-expert names `save_pretrained` writes by default; tensors of
/// the per-expert layout pass unchanged. Returns whether any fused tensor was found.
///
/// # Errors
/// [`Error::Checkpoint`] naming a fused tensor whose shape is not `[E, 2F, D]` (`gate_up_proj`)
/// or `[E, D, F]` (`down_proj`) for the config's E, F and D.
fn unfuse_mixtral_experts(config: &ModelConfig, hf: &mut BTreeMap<String, Tensor>, origin: &str) -> Result<bool> {
    let Some(moe) = &config.moe else { return Ok(false) };
    let (e, f, d) = (moe.num_experts as i64, moe.d_ff as i64, config.d_model as i64);
    let mut fused = false;
    for l in 0..config.num_layers {
        let p = format!("model.layers.{l}");
        if let Some(router) = hf.remove(&format!("{p}.mlp.gate.weight")) {
            fused = true;
            hf.insert(format!("{p}.block_sparse_moe.gate.weight"), router);
        }
        let check = |name: &str, t: &Tensor, want: [i64; 3]| -> Result<()> {
            if t.size() != want {
                return Err(Error::Checkpoint(format!(
                    "{origin}: '{name}' has shape {:?}, the config needs [num_local_experts, {}] = {want:?}",
                    t.size(),
                    if name.ends_with("gate_up_proj") {
                        "2 · intermediate_size, hidden_size"
                    } else {
                        "hidden_size, intermediate_size"
                    }
                )));
            }
            Ok(())
        };
        let gate_up_name = format!("{p}.mlp.experts.gate_up_proj");
        if let Some(gate_up) = hf.remove(&gate_up_name) {
            fused = true;
            check(&gate_up_name, &gate_up, [e, 2 * f, d])?;
            for x in 0..e {
                let expert = gate_up.f_select(0, x)?;
                hf.insert(format!("{p}.block_sparse_moe.experts.{x}.w1.weight"), expert.f_narrow(0, 0, f)?);
                hf.insert(format!("{p}.block_sparse_moe.experts.{x}.w3.weight"), expert.f_narrow(0, f, f)?);
            }
        }
        let down_name = format!("{p}.mlp.experts.down_proj");
        if let Some(down) = hf.remove(&down_name) {
            fused = true;
            check(&down_name, &down, [e, d, f])?;
            for x in 0..e {
                hf.insert(format!("{p}.block_sparse_moe.experts.{x}.w2.weight"), down.f_select(0, x)?);
            }
        }
    }
    Ok(fused)
}

/// Up to five names, then how many more.
fn some_names<'a>(names: impl IntoIterator<Item = &'a String>) -> String {
    let names: Vec<&String> = names.into_iter().collect();
    let head = format!("{:?}", &names[..names.len().min(5)]);
    match names.len().saturating_sub(5) {
        0 => head,
        more => format!("{head} and {more} more"),
    }
}

/// Converts a Hugging Face checkpoint's tensors (any float dtype) into our parameters (f32,
/// our names and layouts). Mixtral's experts may be stored per expert or fused (see the module
/// docs). Rotary `inv_freq` buffers that old checkpoints hold are skipped; with tied embeddings
/// an `lm_head.weight` is ignored (transformers ties it to the embedding too).
///
/// # Errors
/// [`Error::Checkpoint`] listing missing and unexpected Hugging Face names, or naming the first
/// tensor whose shape differs from the config's or whose dtype is not floating point.
pub(crate) fn from_hf_tensors(
    config: &ModelConfig,
    format: HfFormat,
    mut hf: BTreeMap<String, Tensor>,
    origin: &str,
) -> Result<BTreeMap<String, Tensor>> {
    hf.retain(|name, _| !name.ends_with(".rotary_emb.inv_freq"));
    if config.tie_embeddings {
        hf.remove("lm_head.weight");
    }
    let fused = format == HfFormat::Mixtral && unfuse_mixtral_experts(config, &mut hf, origin)?;
    let shapes = hf_shapes(config, format);
    let missing: Vec<&String> = shapes.keys().filter(|k| !hf.contains_key(*k)).collect();
    let unexpected: Vec<&String> = hf.keys().filter(|k| !shapes.contains_key(*k)).collect();
    if !missing.is_empty() || !unexpected.is_empty() {
        return Err(Error::Checkpoint(format!(
            "{origin} does not hold the tensors of its config.json ({}{}): missing {}, unexpected {}",
            format.model_type(),
            if fused { ", fused experts read as their per-expert names" } else { "" },
            some_names(missing),
            some_names(unexpected)
        )));
    }
    for (name, want) in &shapes {
        let t = &hf[name];
        if t.size() != *want || !t.is_floating_point() {
            return Err(Error::Checkpoint(format!(
                "{origin}: '{name}' has shape {:?} and dtype {:?}, the config needs shape {want:?} and a float dtype",
                t.size(),
                t.kind()
            )));
        }
    }
    let f32 = |name: &String| -> Result<Tensor> { hf[name].cast(Kind::Float) };
    let mut ours = BTreeMap::new();
    for Entry { ours: name, layout } in entries(config, format) {
        let tensor = match &layout {
            Layout::Same(hf_name) => f32(hf_name)?,
            Layout::Rows(names) => Tensor::f_cat(&names.iter().map(f32).collect::<Result<Vec<_>>>()?, 0)?,
            Layout::ExpertsTransposed(names) => Tensor::f_stack(
                &names.iter().map(|n| Ok(f32(n)?.f_transpose(0, 1)?.f_contiguous()?)).collect::<Result<Vec<_>>>()?,
                0,
            )?,
        };
        ours.insert(name, tensor);
    }
    Ok(ours)
}

/// Converts our parameters (by name, as [`crate::io::named_variables`] gives them) into the
/// tensors of a Hugging Face checkpoint, f32 and contiguous, in name order.
///
/// # Errors
/// [`Error::Checkpoint`] listing missing and unexpected names when the parameters are not those
/// of `config`'s model, or naming a parameter whose shape differs.
pub(crate) fn to_hf_tensors(
    config: &ModelConfig,
    format: HfFormat,
    ours: &BTreeMap<String, Tensor>,
) -> Result<Vec<(String, Tensor)>> {
    let entries = entries(config, format);
    let expected: Vec<&String> = entries.iter().map(|e| &e.ours).collect();
    let missing: Vec<&String> = expected.iter().copied().filter(|n| !ours.contains_key(*n)).collect();
    let unexpected: Vec<&String> = ours.keys().filter(|n| !expected.contains(n)).collect();
    if !missing.is_empty() || !unexpected.is_empty() {
        return Err(Error::Checkpoint(format!(
            "the model's parameters do not match its config: missing {}, unexpected {}",
            some_names(missing),
            some_names(unexpected)
        )));
    }
    let shapes = hf_shapes(config, format);
    let mut out = BTreeMap::new();
    let mut put = |name: &String, t: Tensor| -> Result<()> {
        let want = &shapes[name];
        if t.size() != *want {
            return Err(Error::Checkpoint(format!(
                "'{name}' would have shape {:?}, the config needs {want:?}",
                t.size()
            )));
        }
        out.insert(name.clone(), t.cast(Kind::Float)?.f_contiguous()?);
        Ok(())
    };
    for Entry { ours: name, layout } in &entries {
        let t = &ours[name];
        match layout {
            Layout::Same(hf) => put(hf, t.shallow_clone())?,
            Layout::Rows(names) => {
                let mut start = 0;
                for hf in names {
                    let rows = shapes[hf][0];
                    if start + rows > t.size()[0] {
                        return Err(Error::Checkpoint(format!("'{name}' has shape {:?}, too few rows", t.size())));
                    }
                    put(hf, t.f_narrow(0, start, rows)?)?;
                    start += rows;
                }
            }
            Layout::ExpertsTransposed(names) => {
                if t.size().first() != Some(&(names.len() as i64)) {
                    return Err(Error::Checkpoint(format!(
                        "'{name}' has shape {:?}, expected {} experts",
                        t.size(),
                        names.len()
                    )));
                }
                for (e, hf) in names.iter().enumerate() {
                    put(hf, t.f_select(0, e as i64)?.f_transpose(0, 1)?)?;
                }
            }
        }
    }
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::named_variables;
    use crate::model::LanguageModel;
    use tch::{nn::VarStore, Device};

    /// Export then import gives back every parameter bit for bit, and the Hugging Face names
    /// are the ones `save_pretrained` writes.
    #[test]
    fn parameters_round_trip_through_hugging_face_names() {
        let mut small = ModelConfig::mixtral();
        small.d_model = 32;
        small.num_layers = 2;
        small.moe.as_mut().unwrap().num_experts = 3;
        for (config, format) in [(ModelConfig::llama(), HfFormat::Llama), (small, HfFormat::Mixtral)] {
            let vs = VarStore::new(Device::Cpu);
            let _model = LanguageModel::new(vs.root(), &config).unwrap();
            let ours = named_variables(&vs).unwrap();
            let hf: BTreeMap<String, Tensor> = to_hf_tensors(&config, format, &ours).unwrap().into_iter().collect();
            assert!(hf.contains_key("model.layers.1.self_attn.k_proj.weight"));
            if format == HfFormat::Mixtral {
                assert_eq!(hf["model.layers.0.block_sparse_moe.experts.2.w2.weight"].size(), vec![32, 352]);
                assert!(hf["model.layers.0.block_sparse_moe.experts.2.w1.weight"]
                    .equal(&ours["blocks.0.moe.experts.w_gate"].select(0, 2).transpose(0, 1)));
            }
            let back = from_hf_tensors(&config, format, hf, "test").unwrap();
            assert_eq!(back.len(), ours.len());
            for (name, t) in &ours {
                assert!(back[name].equal(t), "{name}");
            }
        }
    }

    /// The fused layout of transformers 5 (`mlp.experts.gate_up_proj` with the gate rows first,
    /// `mlp.experts.down_proj`, `mlp.gate`) reads as the per-expert one; a wrong fused shape is
    /// named.
    #[test]
    fn fused_mixtral_experts_read_like_per_expert_ones() {
        let mut config = ModelConfig::mixtral();
        config.d_model = 32;
        config.num_layers = 2;
        config.moe.as_mut().unwrap().num_experts = 3;
        let (e, f) = (3, config.moe.as_ref().unwrap().d_ff as i64);
        let vs = VarStore::new(Device::Cpu);
        let _model = LanguageModel::new(vs.root(), &config).unwrap();
        let ours = named_variables(&vs).unwrap();
        let per_expert: BTreeMap<String, Tensor> =
            to_hf_tensors(&config, HfFormat::Mixtral, &ours).unwrap().into_iter().collect();
        let mut fused = BTreeMap::new();
        for (name, t) in &per_expert {
            if !name.contains("block_sparse_moe") {
                fused.insert(name.clone(), t.shallow_clone());
            }
        }
        for l in 0..2 {
            let p = format!("model.layers.{l}");
            let expert = |x: i64, w: &str| per_expert[&format!("{p}.block_sparse_moe.experts.{x}.{w}.weight")].copy();
            let gate_up = Tensor::stack(
                &(0..e).map(|x| Tensor::cat(&[expert(x, "w1"), expert(x, "w3")], 0)).collect::<Vec<_>>(),
                0,
            );
            assert_eq!(gate_up.size(), vec![e, 2 * f, 32]);
            fused.insert(format!("{p}.mlp.experts.gate_up_proj"), gate_up);
            fused.insert(
                format!("{p}.mlp.experts.down_proj"),
                Tensor::stack(&(0..e).map(|x| expert(x, "w2")).collect::<Vec<_>>(), 0),
            );
            fused.insert(
                format!("{p}.mlp.gate.weight"),
                per_expert[&format!("{p}.block_sparse_moe.gate.weight")].copy(),
            );
        }
        let misshapen = fused.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect::<BTreeMap<_, _>>();
        let back = from_hf_tensors(&config, HfFormat::Mixtral, fused, "test").unwrap();
        assert_eq!(back.len(), ours.len());
        for (name, t) in &ours {
            assert!(back[name].equal(t), "{name}");
        }
        let mut misshapen = misshapen;
        let name = "model.layers.1.mlp.experts.gate_up_proj".to_string();
        let swapped = misshapen[&name].transpose(1, 2).contiguous();
        misshapen.insert(name, swapped);
        let err = from_hf_tensors(&config, HfFormat::Mixtral, misshapen, "dir").unwrap_err().to_string();
        assert!(err.contains("'model.layers.1.mlp.experts.gate_up_proj' has shape [3, 32, 704]"), "{err}");
    }

    #[test]
    fn missing_unexpected_and_misshapen_tensors_are_named() {
        let config = ModelConfig::llama();
        let vs = VarStore::new(Device::Cpu);
        let _model = LanguageModel::new(vs.root(), &config).unwrap();
        let hf: BTreeMap<String, Tensor> =
            to_hf_tensors(&config, HfFormat::Llama, &named_variables(&vs).unwrap()).unwrap().into_iter().collect();
        let mut broken = hf.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect::<BTreeMap<_, _>>();
        broken.remove("model.norm.weight");
        broken.insert("model.layers.0.self_attn.q_proj.bias".into(), Tensor::zeros([128], (Kind::Float, Device::Cpu)));
        let err = from_hf_tensors(&config, HfFormat::Llama, broken, "dir").unwrap_err().to_string();
        assert!(
            err.contains("missing [\"model.norm.weight\"], unexpected [\"model.layers.0.self_attn.q_proj.bias\"]"),
            "{err}"
        );
        let mut wrong = hf;
        wrong.insert(
            "model.layers.0.self_attn.k_proj.weight".into(),
            Tensor::zeros([128, 128], (Kind::Float, Device::Cpu)),
        );
        let err = from_hf_tensors(&config, HfFormat::Llama, wrong, "dir").unwrap_err().to_string();
        assert!(err.contains("'model.layers.0.self_attn.k_proj.weight' has shape [128, 128]"), "{err}");
        assert!(err.contains("needs shape [32, 128]"), "{err}");
    }
}
