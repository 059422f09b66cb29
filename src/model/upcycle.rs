//! Sparse upcycling (Komatsuzaki et al. 2022, "Sparse Upcycling: Training Mixture-of-Experts from
//! Dense Checkpoints", arXiv 2212.05055, §3) and its AltUp counterpart: a trained dense
//! [`LanguageModel`] becomes an MoE, AltUp or AltUp+MoE model that computes the same function at
//! step 0, and training continues from there.
//!
//! * **MoE.** Every expert of an MoE block is a copy of that block's dense FFN. With top-k ≥ 2
//!   and renormalised gates the gates of a token sum to 1 and identical experts give the dense
//!   output whatever the router says, so the router keeps its random initialisation. Without
//!   renormalisation (Switch's top-1 keeps the raw probability, so that the router gets a
//!   gradient) the router starts at zero — every token's `k` gates are exactly `1/E` — and each
//!   expert's output projection is scaled by `E/k`, the inverse of the gates' sum: the output is
//!   again the dense one (bitwise when `E/k` is a power of two). A zero router ties every
//!   token onto the same experts at step 0; the first steps break the tie. Either way routing
//!   must be dropless in training and evaluation (no capacity factor): a capacity limit drops
//!   assignments the dense FFN computes.
//! * **AltUp** (Baykal et al. 2023, arXiv 2301.13310, §3; the predictor starts at the identity
//!   and the corrector gains at 1). A wide embedding's `K` blocks are copies of the dense
//!   embedding (Recycled-AltUp replicates it anyway). Equal blocks stay equal through every layer —
//!   the prediction of block `i` is block `i`, and the correction adds the computed block's
//!   change to every block — so every block follows the dense residual stream; a mean, one-block
//!   or projection (initialised to the mean) collapse returns it exactly. A sum (Recycled-AltUp's
//!   collapse) returns `K` times it, which the final RMSNorm undoes up to its epsilon (the logits
//!   agree to about `eps/mean(x²)` relative).
//! * **A residual-stream method** (Hyper-Connections, mHC, LAuReL: [`crate::residual`]). Each
//!   starts as the plain residual, so the dense model's weights go in unchanged and the method's
//!   own weights keep their initialisation — except LAuReL in Gemma 3n's form (`post_norm`),
//!   whose normed low-rank term is not zero at initialisation.

use crate::dtype::Cast;
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::lm::LanguageModel;
use crate::moe::RouterKind;
use std::collections::{BTreeSet, HashMap};
use tch::nn::VarStore;
use tch::Tensor;

/// Builds `target` in `vs` from the dense model `dense_config` whose parameters are in `dense`
/// (see the module docs for how each part is initialised).
///
/// `target` must equal `dense_config` except in `moe`, `moe_layers`, `altup`, `residual` and,
/// from a tied dense model, `tie_embeddings = false` (the head then starts as a copy of the
/// embedding).
///
/// # Errors
/// [`Error::Config`] listing *every* reason the target cannot reproduce the dense model: a
/// source that already has MoE or AltUp, other fields that differ (named), Sequence-AltUp,
/// expert-choice routing, shared experts, experts of another width or activation than the
/// dense FFN, projected widening (its learned projections do not start as copies), and a
/// capacity factor in training or evaluation (it drops assignments); [`Error::Shape`] naming a parameter of `dense`
/// whose shape does not match `dense_config`; errors of [`LanguageModel::new`].
pub fn upcycle(
    dense: &VarStore,
    dense_config: &ModelConfig,
    target: &ModelConfig,
    vs: &VarStore,
) -> Result<LanguageModel> {
    check_upcycle(dense_config, target)?;
    let model = LanguageModel::new(vs.root(), target)?;
    let source = dense.variables();
    let mut used = BTreeSet::new();
    let mut take = |name: &str, shape: &[i64]| -> Result<Tensor> {
        let t = source.get(name).ok_or_else(|| Error::Shape(format!("the dense model has no parameter {name}")))?;
        if t.size() != shape {
            return Err(Error::Shape(format!("dense parameter {name} has shape {:?}, expected {shape:?}", t.size())));
        }
        used.insert(name.to_string());
        Ok(t.shallow_clone())
    };
    let mut unmatched = Vec::new();
    tch::no_grad(|| -> Result<()> {
        for (name, mut var) in vs.variables() {
            let value = match upcycled_value(&name, &var, target, dense_config, &source, &mut take)? {
                Some(v) => v,
                None => {
                    // AltUp's and the residual method's own parameters and routers keep their
                    // (identity / random) init.
                    let own = name.contains(".altup.") || name.contains(".residual.") || name.starts_with("collapse.");
                    if !(own || name.ends_with("router.weight")) {
                        unmatched.push(name);
                    }
                    continue;
                }
            };
            var.f_copy_(&value.f_to_device(var.device())?.like(&var)?)?;
        }
        Ok(())
    })?;
    let unused: Vec<&String> = source.keys().filter(|k| !used.contains(*k)).collect();
    if !unmatched.is_empty() || !unused.is_empty() {
        return Err(Error::Shape(format!(
            "upcycling could not match parameters: target without a source {unmatched:?}, dense parameters left \
             over {unused:?}"
        )));
    }
    Ok(model)
}

/// The value a parameter of the upcycled model starts from, or `None` to keep its init.
fn upcycled_value(
    name: &str,
    var: &Tensor,
    target: &ModelConfig,
    dense_config: &ModelConfig,
    source: &HashMap<String, Tensor>,
    take: &mut impl FnMut(&str, &[i64]) -> Result<Tensor>,
) -> Result<Option<Tensor>> {
    let (d, f) = (dense_config.d_model as i64, dense_config.ffn.d_ff as i64);
    let shape = var.size();
    if name == "embed.weight" {
        let e = take(name, &[dense_config.vocab_size as i64, d])?;
        let k = shape[1] / d;
        return Ok(Some(if k > 1 { e.f_repeat([1, k])? } else { e }));
    }
    if name == "head.weight" && dense_config.tie_embeddings {
        return Ok(Some(take("embed.weight", &shape)?));
    }
    // blocks.{l}.moe.{router.weight | experts.w_in | experts.w_gate | experts.w_out}
    if let Some((block, part)) = name.strip_prefix("blocks.").and_then(|r| r.split_once(".moe.")) {
        let moe = target.moe.as_ref().ok_or_else(|| Error::Config(format!("{name} without an MoE config")))?;
        let e = moe.num_experts as i64;
        let ffn = |w: &str| format!("blocks.{block}.ffn.{w}.weight");
        let rescale = !(moe.normalize_gates && moe.top_k >= 2);
        return Ok(Some(match part {
            "router.weight" if rescale => var.f_zeros_like()?,
            "router.weight" => return Ok(None),
            // Experts hold input-major weights, [E, D, F] and [E, F, D]; a Linear is [out, in].
            "experts.w_in" | "experts.w_gate" => {
                let w = take(&ffn(&part["experts.".len()..]), &[f, d])?;
                w.f_transpose(0, 1)?.f_unsqueeze(0)?.f_expand([e, d, f], false)?.f_contiguous()?
            }
            "experts.w_out" => {
                let w = take(&ffn("w_out"), &[d, f])?.f_transpose(0, 1)?;
                let w = if rescale { w.f_mul_scalar(moe.num_experts as f64 / moe.top_k as f64)? } else { w };
                w.f_unsqueeze(0)?.f_expand([e, f, d], false)?.f_contiguous()?
            }
            _ => return Ok(None),
        }));
    }
    Ok(match source.get(name) {
        Some(_) => Some(take(name, &shape)?),
        None => None,
    })
}

/// Every reason `target` cannot be upcycled from `dense` with the same function at step 0.
///
/// # Errors
/// [`Error::Config`] listing them (see [`upcycle`]).
pub fn check_upcycle(dense: &ModelConfig, target: &ModelConfig) -> Result<()> {
    let mut problems = Vec::new();
    if dense.moe.is_some() {
        problems.push("the source model already has MoE layers (moe is set)".to_string());
    }
    if dense.altup.is_some() {
        problems.push("the source model already uses AltUp".to_string());
    }
    if !dense.residual.is_plain() {
        problems.push(format!("the source model already uses a residual-stream method ({})", dense.residual));
    }
    if let crate::residual::ResidualConfig::Laurel { post_norm: true, .. } = target.residual {
        problems.push(format!(
            "residual {}: Gemma 3n's normed low-rank term (lr-norm) is not zero at initialisation",
            target.residual
        ));
    }
    if dense.sequence_altup.is_some() || target.sequence_altup.is_some() {
        problems.push("Sequence-AltUp changes which positions the layers compute on".to_string());
    }
    // Everything but the upcycled parts must be the dense model's.
    let mut same = target.clone();
    same.moe = dense.moe.clone();
    same.moe_layers = dense.moe_layers.clone();
    same.altup = dense.altup.clone();
    same.sequence_altup = dense.sequence_altup.clone();
    same.residual = dense.residual;
    if dense.tie_embeddings && !target.tie_embeddings {
        same.tie_embeddings = true;
    }
    if let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(&same), serde_json::to_value(dense))
    {
        for (key, value) in &a {
            if b.get(key) != Some(value) {
                problems.push(format!(
                    "{key} differs from the dense model's ({} vs {})",
                    value,
                    b.get(key).cloned().unwrap_or_default()
                ));
            }
        }
    }
    if let Some(moe) = &target.moe {
        if moe.router != RouterKind::TokenChoice {
            problems.push(format!(
                "router {:?}: expert choice gives a token 0..E experts, not the dense FFN once",
                moe.router
            ));
        }
        if moe.num_shared_experts > 0 {
            problems.push(format!("num_shared_experts ({}) would add to the copied FFN", moe.num_shared_experts));
        }
        if moe.d_ff != dense.ffn.d_ff {
            problems.push(format!("expert d_ff ({}) differs from the dense FFN's ({})", moe.d_ff, dense.ffn.d_ff));
        }
        if moe.activation != dense.ffn.activation {
            problems.push(format!(
                "expert activation {:?} differs from the dense FFN's {:?}",
                moe.activation, dense.ffn.activation
            ));
        }
        for (name, factor) in
            [("capacity_factor", moe.capacity_factor), ("eval_capacity_factor", moe.eval_capacity_factor)]
        {
            if let Some(factor) = factor {
                problems.push(format!(
                    "{name} {factor}: a capacity limit drops expert assignments the dense FFN computes for every \
                     token (a zero router ties every token onto the same experts; a random one overfills some), \
                     so the logits differ at step 0: use dropless routing ({name} null, --capacity-factor none)"
                ));
            }
        }
    }
    if let Some(altup) = &target.altup {
        if altup.widening == crate::altup::Widening::Projected {
            problems.push("projected widening: its learned projections do not start as copies of the embedding".into());
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Config(format!("cannot upcycle to this config: {}", problems.join("; "))))
    }
}
