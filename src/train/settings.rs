//! The named settings of a run configuration: what a command line spells as flags (`--top-k 2`,
//! `--arch switch`, `--recycled`), each standing for a field — or a few fields that go together
//! (`seq-len` is the training context and the model's) — of [`RunConfig`], with the library's
//! defaults shown in help texts and values parsed by the config types' `FromStr`. A command line
//! applies the given ones in [`SETTINGS`] order; [`RunConfig::set`] reaches every other field.

use crate::altup::{Coefficients, SequenceAltUpConfig, Widening};
use crate::error::{Error, Result};
use crate::model::{Arch, ModelConfig, MoeLayers};
use crate::moe::{Balancing, MoeConfig};
use crate::train::config::TrainConfig;
use crate::train::objective::Objective;
use crate::train::run_config::RunConfig;

/// The part of the configuration a setting belongs to (a command line's `--help` section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// The stack and its sizes.
    Model,
    /// The training run.
    Training,
    /// Mixture of experts (changes nothing for a model without MoE layers).
    Moe,
    /// AltUp (changes nothing for a model without AltUp).
    AltUp,
}

/// A named setting: the flag a command line spells it as (`--top-k`), its section and help, the
/// name of its value (`None`: a switch, applied with any value), how its current value reads, and
/// how a value changes the configuration.
pub struct Setting {
    /// The name (`top-k`; the flag `--top-k`).
    pub name: &'static str,
    /// The part of the configuration it belongs to.
    pub section: Section,
    /// One line of help.
    pub help: &'static str,
    /// The name of its value in help texts (`K`); `None` for a switch.
    pub value: Option<&'static str>,
    /// Its value in a configuration, as it would be given (empty when it has none to show).
    pub show: fn(&RunConfig) -> String,
    /// Applies a value (parsed with the config types' `FromStr`), changing every field the
    /// setting stands for.
    pub set: fn(&mut RunConfig, &str) -> Result<()>,
}

fn number<T: std::str::FromStr>(s: &str) -> Result<T> {
    s.parse().map_err(|_| Error::Config(format!("'{s}' is not a valid number")))
}

fn positive(s: &str) -> Result<usize> {
    match number::<usize>(s)? {
        0 => Err(Error::Config(format!("'{s}' must be at least 1"))),
        n => Ok(n),
    }
}

/// A positive capacity factor, or `none` (dropless).
fn capacity(s: &str) -> Result<Option<f64>> {
    match s {
        "none" => Ok(None),
        _ => match s.parse::<f64>() {
            Ok(cf) if cf > 0.0 && cf.is_finite() => Ok(Some(cf)),
            _ => Err(Error::Config(format!("'{s}' is not a positive capacity factor or 'none'"))),
        },
    }
}

fn show<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(String::new, |v| v.to_string())
}

/// The MoE config, when the model has one (the flags of a dense model change nothing).
fn moe(run: &mut RunConfig) -> Option<&mut MoeConfig> {
    run.model.moe.as_mut()
}

fn moe_of(run: &RunConfig) -> Option<&MoeConfig> {
    run.model.moe.as_ref()
}

/// Every `every` blocks from `offset` (a list counts as Switch's every other block from 1).
fn every_offset(layers: &MoeLayers) -> (usize, usize) {
    match layers {
        MoeLayers::Every { every, offset } => (*every, *offset),
        MoeLayers::List { .. } => (2, 1),
    }
}

macro_rules! setting {
    ($name:literal, $group:ident, $value:expr, $help:literal, |$r:ident| $show:expr, |$w:ident, $s:ident| $set:expr) => {
        Setting {
            name: $name,
            section: Section::$group,
            help: $help,
            value: $value,
            show: |$r: &RunConfig| {
                let _ = $r;
                $show
            },
            set: |$w: &mut RunConfig, $s: &str| -> Result<()> {
                $set;
                Ok(())
            },
        }
    };
}

/// Every setting, in the order they apply (one that sets several fields comes before those that set
/// one of them alone: `d-model` before `d-ff`, `router` before `capacity-factor`).
pub const SETTINGS: &[Setting] = &[
    setting!("arch", Model, Some("ARCH"), "Stack: dense, switch, altup or altup-moe.", |r| Arch::default().to_string(), |w, s| {
        let max_seq_len = w.model.max_seq_len;
        w.model = ModelConfig { max_seq_len, ..ModelConfig::preset(s.parse()?) }
    }),
    setting!("d-model", Model, Some("D"), "Model width d (FFN and experts 4·d wide unless --d-ff).", |r| r.model.d_model.to_string(), |w, s| {
        let d = positive(s)?;
        (w.model.d_model, w.model.ffn.d_ff) = (d, 4 * d);
        if let Some(m) = moe(w) { m.d_ff = 4 * d }
    }),
    setting!("layers", Model, Some("N"), "Transformer blocks.", |r| r.model.num_layers.to_string(), |w, s| w.model.num_layers = positive(s)?),
    setting!("heads", Model, Some("H"), "Attention heads (must divide --d-model).", |r| r.model.attention.num_heads.to_string(), |w, s| w.model.attention.num_heads = positive(s)?),
    setting!("d-ff", Model, Some("F"), "Hidden width of the dense FFN and of each expert.", |r| r.model.ffn.d_ff.to_string(), |w, s| {
        let f = positive(s)?;
        w.model.ffn.d_ff = f;
        if let Some(m) = moe(w) { m.d_ff = f }
    }),
    setting!("activation", Model, Some("ACT"), "FFN and expert non-linearity: gelu, relu or swiglu.", |r| r.model.ffn.activation.to_string(), |w, s| {
        let a = s.parse()?;
        w.model.ffn.activation = a;
        if let Some(m) = moe(w) { m.activation = a }
    }),
    setting!("sequence-stride", Model, Some("N"), "Sequence-AltUp: every block runs on every N-th token only (0 or 1 = off).", |r| r.model.sequence_altup.as_ref().map_or(0, |c| c.stride).to_string(), |w, s| {
        let n: usize = number(s)?;
        w.model.sequence_altup = (n > 1).then_some(SequenceAltUpConfig { stride: n })
    }),
    setting!("steps", Training, Some("N"), "Optimizer steps (warmup: 50, at most a tenth of them).", |r| r.train.steps.to_string(), |w, s| {
        let n = positive(s)? as u64;
        (w.train.steps, w.train.warmup_steps) = (n, TrainConfig::default_warmup(n))
    }),
    setting!("batch-size", Training, Some("B"), "Sequences per micro-batch.", |r| r.train.batch_size.to_string(), |w, s| w.train.batch_size = positive(s)?),
    setting!("grad-accum", Training, Some("N"), "Micro-batches per optimizer step (gradient accumulation).", |r| r.train.grad_accum.to_string(), |w, s| w.train.grad_accum = positive(s)?),
    setting!("seq-len", Training, Some("T"), "Tokens per sequence (also the model's context).", |r| r.train.seq_len.to_string(), |w, s| {
        let t = positive(s)?;
        (w.train.seq_len, w.model.max_seq_len) = (t, t)
    }),
    setting!("lr", Training, Some("LR"), "Peak learning rate (linear warmup, cosine decay to a tenth).", |r| r.train.lr.to_string(), |w, s| w.train.lr = number(s)?),
    setting!("warmup-steps", Training, Some("N"), "Warmup steps.", |r| r.train.warmup_steps.to_string(), |w, s| w.train.warmup_steps = number(s)?),
    setting!("seed", Training, Some("S"), "Seed of the initialisation and of the data order.", |r| r.train.seed.to_string(), |w, s| {
        let seed = number(s)?;
        (w.train.seed, w.model.init_seed) = (seed, seed)
    }),
    setting!("eval-every", Training, Some("N"), "Evaluate every N steps (and after the last one).", |r| r.train.eval_every.to_string(), |w, s| w.train.eval_every = positive(s)? as u64),
    setting!("eval-batches", Training, Some("N"), "Validation batches per evaluation.", |r| r.train.eval_batches.to_string(), |w, s| w.train.eval_batches = positive(s)?),
    setting!("dtype", Training, Some("DTYPE"), "Compute precision: f32, bf16, or bf16-mixed (bf16 sublayers, f32 residual); weights stay f32.", |r| r.model.precision.to_string(), |w, s| w.model.precision = s.parse()?),
    setting!("tokenizer", Training, Some("SPEC"), "bytes, bpe:N (a byte-level BPE trained on the training split), or a tokenizer.json.", |r| r.train.tokenizer.to_string(), |w, s| w.train.tokenizer = s.parse()?),
    setting!("experts", Moe, Some("E"), "Experts per MoE layer.", |r| show(moe_of(r).map(|m| m.num_experts)), |w, s| {
        let e = positive(s)?;
        if let Some(m) = moe(w) { m.num_experts = e }
    }),
    setting!("expert-d-ff", Moe, Some("F"), "Hidden width of each expert (small with many experts: fine-grained MoE).", |r| show(moe_of(r).map(|m| m.d_ff)), |w, s| {
        let f = positive(s)?;
        if let Some(m) = moe(w) { m.d_ff = f }
    }),
    setting!("router", Moe, Some("KIND"), "token-choice or expert-choice (expert choice sees the whole window: it leaks future tokens into routing in a causal LM).", |r| show(moe_of(r).map(|m| m.router)), |w, s| {
        let router: crate::moe::RouterKind = s.parse()?;
        if let Some(m) = moe(w) {
            let cf = router.policy().default_capacity_factor();
            (m.router, m.capacity_factor, m.eval_capacity_factor) = (router, cf, cf);
        }
    }),
    setting!("top-k", Moe, Some("K"), "Experts per token (token choice).", |r| show(moe_of(r).map(|m| m.top_k)), |w, s| {
        let k = positive(s)?;
        if let Some(m) = moe(w) { m.top_k = k }
    }),
    setting!("normalize-gates", Moe, None, "Renormalise the top-k gates to sum to 1 (k > 1; Mixtral).", |r| String::new(), |w, _s| {
        if let Some(m) = moe(w) { m.normalize_gates = true }
    }),
    setting!("capacity-factor", Moe, Some("CF"), "Training capacity factor, or none (dropless); the evaluation one follows unless given.", |r| show(moe_of(r).map(|m| show_cf(m.capacity_factor))), |w, s| {
        let cf = capacity(s)?;
        if let Some(m) = moe(w) { (m.capacity_factor, m.eval_capacity_factor) = (cf, cf) }
    }),
    setting!("eval-capacity-factor", Moe, Some("CF"), "Evaluation capacity factor, or none.", |r| show(moe_of(r).map(|m| show_cf(m.eval_capacity_factor))), |w, s| {
        let cf = capacity(s)?;
        if let Some(m) = moe(w) { m.eval_capacity_factor = cf }
    }),
    setting!("priority", Moe, Some("P"), "Capacity priority: position or confidence (batch prioritized routing).", |r| show(moe_of(r).map(|m| m.priority)), |w, s| {
        let p = s.parse()?;
        if let Some(m) = moe(w) { m.priority = p }
    }),
    setting!("jitter", Moe, Some("EPS"), "Multiplicative router jitter in training (0 = off).", |r| show(moe_of(r).map(|m| m.jitter)), |w, s| {
        let j = number(s)?;
        if let Some(m) = moe(w) { m.jitter = j }
    }),
    setting!("shared-experts", Moe, Some("N"), "Shared experts every token passes through (DeepSeekMoE).", |r| show(moe_of(r).map(|m| m.num_shared_experts)), |w, s| {
        let n = number(s)?;
        if let Some(m) = moe(w) { m.num_shared_experts = n }
    }),
    setting!("balancing", Moe, Some("MODE"), "aux-loss (Switch), or aux-free[:RATE] (DeepSeek-V3 bias; no balancing loss by default).", |r| show(moe_of(r).map(|m| m.balancing)), |w, s| {
        let b: Balancing = s.parse()?;
        if let Some(m) = moe(w) { m.balancing = b }
    }),
    setting!("bias-update-rate", Moe, Some("RATE"), "Bias update step of --balancing aux-free.", |r| Balancing::DEFAULT_BIAS_UPDATE_RATE.to_string(), |w, s| {
        let rate = number(s)?;
        if let Some(MoeConfig { balancing: Balancing::AuxFree { bias_update_rate }, .. }) = moe(w) { *bias_update_rate = rate }
    }),
    setting!("aux-loss-coef", Moe, Some("ALPHA"), "Load-balancing loss coefficient [default: 0.01; 0 with aux-free balancing].", |r| String::new(), |w, s| w.train.load_balancing_coef = Some(number(s)?)),
    setting!("z-loss-coef", Moe, Some("BETA"), "Router z-loss coefficient.", |r| Objective::Z_LOSS_COEF.to_string(), |w, s| w.train.z_loss_coef = Some(number(s)?)),
    setting!("moe-every", Moe, Some("N"), "MoE on every N-th block...", |r| every_offset(&r.model.moe_layers).0.to_string(), |w, s| {
        let (_, offset) = every_offset(&w.model.moe_layers);
        w.model.moe_layers = MoeLayers::Every { every: positive(s)?, offset }
    }),
    setting!("moe-offset", Moe, Some("N"), "...starting at this block.", |r| every_offset(&r.model.moe_layers).1.to_string(), |w, s| {
        let (every, _) = every_offset(&w.model.moe_layers);
        w.model.moe_layers = MoeLayers::Every { every, offset: number(s)? }
    }),
    setting!("moe-layers", Moe, Some("I,J"), "Explicit comma-separated MoE block indices (instead of --moe-every/--moe-offset).", |r| String::new(), |w, s| {
        let layers = s.split(',').map(|i| number(i.trim())).collect::<Result<Vec<usize>>>()?;
        w.model.moe_layers = MoeLayers::List { layers }
    }),
    setting!("altup-blocks", AltUp, Some("K"), "AltUp blocks K.", |r| show(r.model.altup.as_ref().map(|a| a.num_blocks)), |w, s| {
        let k = positive(s)?;
        if let Some(a) = &mut w.model.altup { a.num_blocks = k }
    }),
    setting!("altup-mode", AltUp, Some("MODE"), "AltUp coefficients: static (the paper) or input-dependent (Gemma 3n).", |r| "static".into(), |w, s| {
        let input_dependent = match s {
            "static" => false,
            "input-dependent" => true,
            _ => return Err(Error::Config(format!("'{s}' is not static or input-dependent"))),
        };
        if let Some(a) = &mut w.model.altup {
            a.coefficients = match (input_dependent, a.coefficients) {
                (false, _) => Coefficients::Static,
                (true, Coefficients::InputDependent { clip }) => Coefficients::InputDependent { clip },
                (true, Coefficients::Static) => Coefficients::InputDependent { clip: Some(Coefficients::GEMMA_CLIP) },
            }
        }
    }),
    setting!("altup-clip", AltUp, Some("CLIP"), "Clip of the input-dependent coefficients in training, or none.", |r| Coefficients::GEMMA_CLIP.to_string(), |w, s| {
        let clip = match s { "none" => None, _ => Some(number(s)?) };
        if let Some(a) = &mut w.model.altup {
            if let Coefficients::InputDependent { .. } = a.coefficients { a.coefficients = Coefficients::InputDependent { clip } }
        }
    }),
    setting!("altup-selection", AltUp, Some("SEL"), "Activated block per layer: alternating, same:N, or schedule:I,J,...", |r| show(r.model.altup.as_ref().map(|a| a.selection.clone())), |w, s| {
        let selection = s.parse()?;
        if let Some(a) = &mut w.model.altup { a.selection = selection }
    }),
    setting!("altup-compute", AltUp, Some("ON"), "What the layer computes on: input (the paper) or prediction (Gemma 3n).", |r| show(r.model.altup.as_ref().map(|a| a.compute_on)), |w, s| {
        let on = s.parse()?;
        if let Some(a) = &mut w.model.altup { a.compute_on = on }
    }),
    setting!("altup-widening", AltUp, Some("W"), "wide-embedding (K·d table), recycled (replicated embedding, summed output) or projected (Gemma 3n).", |r| show(r.model.altup.as_ref().map(|a| a.widening)), |w, s| {
        let widening = s.parse()?;
        if let Some(a) = &mut w.model.altup { a.widening = widening }
    }),
    setting!("recycled", AltUp, None, "Shorthand for --altup-widening recycled (Recycled-AltUp).", |r| String::new(), |w, _s| {
        if let Some(a) = &mut w.model.altup { a.widening = Widening::Recycled }
    }),
    setting!("altup-output", AltUp, Some("OUT"), "Output reduction of a wide embedding: sum, mean, block:N or projection.", |r| show(r.model.altup.as_ref().map(|a| a.output)), |w, s| {
        let output = s.parse()?;
        if let Some(a) = &mut w.model.altup { a.output = output }
    }),
];

fn show_cf(cf: Option<f64>) -> String {
    cf.map_or_else(|| "none".into(), |c| c.to_string())
}

impl RunConfig {
    /// Applies the setting `name` (see [`SETTINGS`]) with `value`.
    ///
    /// # Errors
    /// [`Error::Config`] naming the setting and the value, or an unknown setting.
    pub fn apply(&mut self, name: &str, value: &str) -> Result<()> {
        let setting = SETTINGS
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::Config(format!("there is no setting '{name}'")))?;
        (setting.set)(self, value).map_err(|e| Error::Config(format!("--{name} {value}: {}", short(&e))))
    }
}

/// An error's message without its kind prefix.
pub(crate) fn short(e: &Error) -> String {
    e.to_string().trim_start_matches("invalid config: ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_change_their_fields_and_reject_bad_values_naming_them() {
        let mut run = RunConfig::default();
        for (name, value) in [("arch", "switch"), ("d-model", "64"), ("top-k", "2"), ("seq-len", "32"), ("steps", "30")]
        {
            run.apply(name, value).unwrap();
        }
        let moe = run.model.moe.as_ref().unwrap();
        assert_eq!((run.model.d_model, run.model.ffn.d_ff, moe.d_ff, moe.top_k), (64, 256, 256, 2));
        assert_eq!((run.train.seq_len, run.model.max_seq_len, run.train.warmup_steps), (32, 32, 3));
        assert_eq!(run.model.moe_layers, MoeLayers::Every { every: 2, offset: 1 }, "switch's placement");
        for (name, value, expected) in [
            ("arch", "moe", "unknown architecture 'moe' (expected one of: dense, switch, altup, altup-moe)"),
            ("capacity-factor", "0", "'0' is not a positive capacity factor or 'none'"),
            ("activation", "tanh", "unknown value `tanh`, expected one of `gelu`, `relu`, `swiglu`"),
            ("altup-selection", "sometimes", "unknown selection 'sometimes'"),
            ("altup-output", "block:x", "'x' is not a number"),
            ("dtype", "f16", "unknown precision 'f16' (expected f32, bf16 or bf16-mixed)"),
            ("balancing", "magic", "unknown balancing 'magic'"),
            ("altup-mode", "dynamic", "'dynamic' is not static or input-dependent"),
            ("altup-clip", "big", "'big' is not a valid number"),
            ("seq-len", "0", "'0' must be at least 1"),
        ] {
            let err = RunConfig::default().apply(name, value).unwrap_err().to_string();
            assert!(err.contains(&format!("--{name} {value}")) && err.contains(expected), "{name} {value}: {err}");
        }
        assert!(RunConfig::default().apply("nope", "1").is_err());
    }

    #[test]
    fn every_setting_shows_a_value_its_own_parser_accepts() {
        let defaults = RunConfig::default();
        for s in SETTINGS {
            let shown = (s.show)(&defaults);
            if !shown.is_empty() && s.value.is_some() {
                let mut run = RunConfig::default();
                run.apply(s.name, &shown).unwrap_or_else(|e| panic!("{}: {shown}: {e}", s.name));
                assert_eq!(run, defaults, "{} {shown} is the default, and changes nothing", s.name);
            }
        }
    }
}
