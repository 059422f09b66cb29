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

/// Every setting, in the order they apply (one that sets several fields comes before those that set
/// one of them alone: `d-model` before `d-ff`, `router` before `capacity-factor`).
pub const SETTINGS: &[Setting] = &[
    Setting {
        name: "arch",
        section: Section::Model,
        help: "Stack: dense, switch, altup or altup-moe.",
        value: Some("ARCH"),
        show: |_| Arch::default().to_string(),
        set: |w, s| {
            let max_seq_len = w.model.max_seq_len;
            w.model = ModelConfig { max_seq_len, ..ModelConfig::preset(s.parse()?) };
            Ok(())
        },
    },
    Setting {
        name: "d-model",
        section: Section::Model,
        help: "Model width d (FFN and experts 4·d wide unless --d-ff).",
        value: Some("D"),
        show: |r| r.model.d_model.to_string(),
        set: |w, s| {
            let d = positive(s)?;
            (w.model.d_model, w.model.ffn.d_ff) = (d, 4 * d);
            if let Some(m) = moe(w) {
                m.d_ff = 4 * d
            }
            Ok(())
        },
    },
    Setting {
        name: "layers",
        section: Section::Model,
        help: "Transformer blocks.",
        value: Some("N"),
        show: |r| r.model.num_layers.to_string(),
        set: |w, s| {
            w.model.num_layers = positive(s)?;
            Ok(())
        },
    },
    Setting {
        name: "heads",
        section: Section::Model,
        help: "Attention heads (must divide --d-model).",
        value: Some("H"),
        show: |r| r.model.attention.num_heads.to_string(),
        set: |w, s| {
            w.model.attention.num_heads = positive(s)?;
            Ok(())
        },
    },
    Setting {
        name: "d-ff",
        section: Section::Model,
        help: "Hidden width of the dense FFN and of each expert.",
        value: Some("F"),
        show: |r| r.model.ffn.d_ff.to_string(),
        set: |w, s| {
            let f = positive(s)?;
            w.model.ffn.d_ff = f;
            if let Some(m) = moe(w) {
                m.d_ff = f
            }
            Ok(())
        },
    },
    Setting {
        name: "activation",
        section: Section::Model,
        help: "FFN and expert non-linearity: gelu, relu or swiglu.",
        value: Some("ACT"),
        show: |r| r.model.ffn.activation.to_string(),
        set: |w, s| {
            let a = s.parse()?;
            w.model.ffn.activation = a;
            if let Some(m) = moe(w) {
                m.activation = a
            }
            Ok(())
        },
    },
    Setting {
        name: "residual",
        section: Section::Model,
        help: "How each sublayer connects to the residual stream: plain, hyper-connections[:N] (dynamic), \
               static-hyper-connections[:N], mhc[:N], or laurel[:rw+lr=R+lr-norm=R+pa=K] (default rw+lr=16); \
               N streams, default 4. With AltUp only LAuReL without pa.",
        value: Some("METHOD"),
        show: |r| r.model.residual.to_string(),
        set: |w, s| {
            w.model.residual = s.parse()?;
            Ok(())
        },
    },
    Setting {
        name: "sequence-stride",
        section: Section::Model,
        help: "Sequence-AltUp: every block runs on every N-th token only (0 or 1 = off).",
        value: Some("N"),
        show: |r| r.model.sequence_altup.as_ref().map_or(0, |c| c.stride).to_string(),
        set: |w, s| {
            let n: usize = number(s)?;
            w.model.sequence_altup = (n > 1).then_some(SequenceAltUpConfig { stride: n });
            Ok(())
        },
    },
    Setting {
        name: "steps",
        section: Section::Training,
        help: "Optimizer steps (warmup: 50, at most a tenth of them).",
        value: Some("N"),
        show: |r| r.train.steps.to_string(),
        set: |w, s| {
            let n = positive(s)? as u64;
            (w.train.steps, w.train.warmup_steps) = (n, TrainConfig::default_warmup(n));
            Ok(())
        },
    },
    Setting {
        name: "batch-size",
        section: Section::Training,
        help: "Sequences per micro-batch.",
        value: Some("B"),
        show: |r| r.train.batch_size.to_string(),
        set: |w, s| {
            w.train.batch_size = positive(s)?;
            Ok(())
        },
    },
    Setting {
        name: "grad-accum",
        section: Section::Training,
        help: "Micro-batches per optimizer step (gradient accumulation).",
        value: Some("N"),
        show: |r| r.train.grad_accum.to_string(),
        set: |w, s| {
            w.train.grad_accum = positive(s)?;
            Ok(())
        },
    },
    Setting {
        name: "seq-len",
        section: Section::Training,
        help: "Tokens per sequence (also the model's context).",
        value: Some("T"),
        show: |r| r.train.seq_len.to_string(),
        set: |w, s| {
            let t = positive(s)?;
            (w.train.seq_len, w.model.max_seq_len) = (t, t);
            Ok(())
        },
    },
    Setting {
        name: "lr",
        section: Section::Training,
        help: "Peak learning rate (linear warmup, cosine decay to a tenth).",
        value: Some("LR"),
        show: |r| r.train.lr.to_string(),
        set: |w, s| {
            w.train.lr = number(s)?;
            Ok(())
        },
    },
    Setting {
        name: "warmup-steps",
        section: Section::Training,
        help: "Warmup steps.",
        value: Some("N"),
        show: |r| r.train.warmup_steps.to_string(),
        set: |w, s| {
            w.train.warmup_steps = number(s)?;
            Ok(())
        },
    },
    Setting {
        name: "seed",
        section: Section::Training,
        help: "Seed of the initialisation and of the data order.",
        value: Some("S"),
        show: |r| r.train.seed.to_string(),
        set: |w, s| {
            *w = std::mem::take(w).with_seed(number(s)?);
            Ok(())
        },
    },
    Setting {
        name: "eval-every",
        section: Section::Training,
        help: "Evaluate every N steps (and after the last one).",
        value: Some("N"),
        show: |r| r.train.eval_every.to_string(),
        set: |w, s| {
            w.train.eval_every = positive(s)? as u64;
            Ok(())
        },
    },
    Setting {
        name: "log-every",
        section: Section::Training,
        help: "Read the steps' statistics back every N steps (and at evaluations and checkpoints); between reads the device runs ahead.",
        value: Some("N"),
        show: |r| r.train.log_every.to_string(),
        set: |w, s| {
            w.train.log_every = positive(s)? as u64;
            Ok(())
        },
    },
    Setting {
        name: "cuda-graph",
        section: Section::Training,
        help: "Capture the training step in a CUDA graph after 3 eager steps and replay it (CUDA; dense, AltUp and dropless MoE on the grouped kernel).",
        value: None,
        show: |_| String::new(),
        set: |w, _s| {
            w.train.cuda_graph = true;
            Ok(())
        },
    },
    Setting {
        name: "eval-batches",
        section: Section::Training,
        help: "Validation batches per evaluation.",
        value: Some("N"),
        show: |r| r.train.eval_batches.to_string(),
        set: |w, s| {
            w.train.eval_batches = positive(s)?;
            Ok(())
        },
    },
    Setting {
        name: "dtype",
        section: Section::Training,
        help: "Compute precision: f32, bf16, or bf16-mixed (bf16 sublayers, f32 residual); weights stay f32.",
        value: Some("DTYPE"),
        show: |r| r.model.precision.to_string(),
        set: |w, s| {
            w.model.precision = s.parse()?;
            Ok(())
        },
    },
    Setting {
        name: "tokenizer",
        section: Section::Training,
        help: "bytes, bpe:N (a byte-level BPE trained on the training split), or a tokenizer.json.",
        value: Some("SPEC"),
        show: |r| r.train.tokenizer.to_string(),
        set: |w, s| {
            w.train.tokenizer = s.parse()?;
            Ok(())
        },
    },
    Setting {
        name: "experts",
        section: Section::Moe,
        help: "Experts per MoE layer.",
        value: Some("E"),
        show: |r| show(moe_of(r).map(|m| m.num_experts)),
        set: |w, s| {
            let e = positive(s)?;
            if let Some(m) = moe(w) {
                m.num_experts = e
            }
            Ok(())
        },
    },
    Setting {
        name: "expert-d-ff",
        section: Section::Moe,
        help: "Hidden width of each expert (small with many experts: fine-grained MoE).",
        value: Some("F"),
        show: |r| show(moe_of(r).map(|m| m.d_ff)),
        set: |w, s| {
            let f = positive(s)?;
            if let Some(m) = moe(w) {
                m.d_ff = f
            }
            Ok(())
        },
    },
    Setting {
        name: "router",
        section: Section::Moe,
        help: "token-choice or expert-choice (which sees the whole window: future tokens leak into routing).",
        value: Some("KIND"),
        show: |r| show(moe_of(r).map(|m| m.router)),
        set: |w, s| {
            let router: crate::moe::RouterKind = s.parse()?;
            if let Some(m) = moe(w) {
                let cf = router.policy().default_capacity_factor();
                (m.router, m.capacity_factor, m.eval_capacity_factor) = (router, cf, cf);
            }
            Ok(())
        },
    },
    Setting {
        name: "top-k",
        section: Section::Moe,
        help: "Experts per token (token choice).",
        value: Some("K"),
        show: |r| show(moe_of(r).map(|m| m.top_k)),
        set: |w, s| {
            let k = positive(s)?;
            if let Some(m) = moe(w) {
                m.top_k = k
            }
            Ok(())
        },
    },
    Setting {
        name: "normalize-gates",
        section: Section::Moe,
        help: "Renormalise the top-k gates to sum to 1 (k > 1; Mixtral).",
        value: None,
        show: |_| String::new(),
        set: |w, _s| {
            if let Some(m) = moe(w) {
                m.normalize_gates = true
            }
            Ok(())
        },
    },
    Setting {
        name: "capacity-factor",
        section: Section::Moe,
        help: "Training capacity factor, or none (dropless); the evaluation one follows unless given.",
        value: Some("CF"),
        show: |r| show(moe_of(r).map(|m| show_cf(m.capacity_factor))),
        set: |w, s| {
            let cf = capacity(s)?;
            if let Some(m) = moe(w) {
                (m.capacity_factor, m.eval_capacity_factor) = (cf, cf)
            }
            Ok(())
        },
    },
    Setting {
        name: "eval-capacity-factor",
        section: Section::Moe,
        help: "Evaluation capacity factor, or none.",
        value: Some("CF"),
        show: |r| show(moe_of(r).map(|m| show_cf(m.eval_capacity_factor))),
        set: |w, s| {
            let cf = capacity(s)?;
            if let Some(m) = moe(w) {
                m.eval_capacity_factor = cf
            }
            Ok(())
        },
    },
    Setting {
        name: "priority",
        section: Section::Moe,
        help: "Capacity priority: position or confidence (batch prioritized routing).",
        value: Some("P"),
        show: |r| show(moe_of(r).map(|m| m.priority)),
        set: |w, s| {
            let p = s.parse()?;
            if let Some(m) = moe(w) {
                m.priority = p
            }
            Ok(())
        },
    },
    Setting {
        name: "jitter",
        section: Section::Moe,
        help: "Multiplicative router jitter in training (0 = off).",
        value: Some("EPS"),
        show: |r| show(moe_of(r).map(|m| m.jitter)),
        set: |w, s| {
            let j = number(s)?;
            if let Some(m) = moe(w) {
                m.jitter = j
            }
            Ok(())
        },
    },
    Setting {
        name: "shared-experts",
        section: Section::Moe,
        help: "Shared experts every token passes through (DeepSeekMoE).",
        value: Some("N"),
        show: |r| show(moe_of(r).map(|m| m.num_shared_experts)),
        set: |w, s| {
            let n = number(s)?;
            if let Some(m) = moe(w) {
                m.num_shared_experts = n
            }
            Ok(())
        },
    },
    Setting {
        name: "balancing",
        section: Section::Moe,
        help: "aux-loss (Switch), or aux-free[:RATE] (DeepSeek-V3 bias; no balancing loss by default).",
        value: Some("MODE"),
        show: |r| show(moe_of(r).map(|m| m.balancing)),
        set: |w, s| {
            let b: Balancing = s.parse()?;
            if let Some(m) = moe(w) {
                m.balancing = b
            }
            Ok(())
        },
    },
    Setting {
        name: "bias-update-rate",
        section: Section::Moe,
        help: "Bias update step of --balancing aux-free.",
        value: Some("RATE"),
        show: |_| Balancing::DEFAULT_BIAS_UPDATE_RATE.to_string(),
        set: |w, s| {
            let rate = number(s)?;
            if let Some(MoeConfig { balancing: Balancing::AuxFree { bias_update_rate }, .. }) = moe(w) {
                *bias_update_rate = rate;
            }
            Ok(())
        },
    },
    Setting {
        name: "aux-loss-coef",
        section: Section::Moe,
        help: "Load-balancing loss coefficient [default: 0.01; 0 with aux-free balancing].",
        value: Some("ALPHA"),
        show: |_| String::new(),
        set: |w, s| {
            w.train.load_balancing_coef = Some(number(s)?);
            Ok(())
        },
    },
    Setting {
        name: "z-loss-coef",
        section: Section::Moe,
        help: "Router z-loss coefficient [default: 0.001].",
        value: Some("BETA"),
        show: |_| String::new(),
        set: |w, s| {
            w.train.z_loss_coef = Some(number(s)?);
            Ok(())
        },
    },
    Setting {
        name: "moe-every",
        section: Section::Moe,
        help: "MoE on every N-th block (from the --arch preset's first MoE block unless --moe-offset)...",
        value: Some("N"),
        show: |r| every_offset(&r.model.moe_layers).0.to_string(),
        set: |w, s| {
            let (_, offset) = every_offset(&w.model.moe_layers);
            w.model.moe_layers = MoeLayers::Every { every: positive(s)?, offset };
            Ok(())
        },
    },
    Setting {
        name: "moe-offset",
        section: Section::Moe,
        help: "...starting at this block (the preset's: 0, or 1 for switch).",
        value: Some("N"),
        show: |r| every_offset(&r.model.moe_layers).1.to_string(),
        set: |w, s| {
            let (every, _) = every_offset(&w.model.moe_layers);
            w.model.moe_layers = MoeLayers::Every { every, offset: number(s)? };
            Ok(())
        },
    },
    Setting {
        name: "moe-layers",
        section: Section::Moe,
        help: "Explicit comma-separated MoE block indices (instead of --moe-every/--moe-offset).",
        value: Some("I,J"),
        show: |_| String::new(),
        set: |w, s| {
            let layers = s.split(',').map(|i| number(i.trim())).collect::<Result<Vec<usize>>>()?;
            w.model.moe_layers = MoeLayers::List { layers };
            Ok(())
        },
    },
    Setting {
        name: "altup-blocks",
        section: Section::AltUp,
        help: "AltUp blocks K.",
        value: Some("K"),
        show: |r| show(r.model.altup.as_ref().map(|a| a.num_blocks)),
        set: |w, s| {
            let k = positive(s)?;
            if let Some(a) = &mut w.model.altup {
                a.num_blocks = k
            }
            Ok(())
        },
    },
    Setting {
        name: "altup-mode",
        section: Section::AltUp,
        help: "AltUp coefficients: static (the paper) or input-dependent (Gemma 3n).",
        value: Some("MODE"),
        show: |_| "static".into(),
        set: |w, s| {
            let input_dependent = match s {
                "static" => false,
                "input-dependent" => true,
                _ => return Err(Error::Config(format!("'{s}' is not static or input-dependent"))),
            };
            if let Some(a) = &mut w.model.altup {
                a.coefficients = match (input_dependent, a.coefficients) {
                    (false, _) => Coefficients::Static,
                    (true, Coefficients::InputDependent { clip }) => Coefficients::InputDependent { clip },
                    (true, Coefficients::Static) => {
                        Coefficients::InputDependent { clip: Some(Coefficients::GEMMA_CLIP) }
                    }
                }
            }
            Ok(())
        },
    },
    Setting {
        name: "altup-clip",
        section: Section::AltUp,
        help: "Clip of the input-dependent coefficients in training, or none.",
        value: Some("CLIP"),
        show: |_| Coefficients::GEMMA_CLIP.to_string(),
        set: |w, s| {
            let clip = match s {
                "none" => None,
                _ => Some(number(s)?),
            };
            if let Some(a) = &mut w.model.altup {
                if let Coefficients::InputDependent { .. } = a.coefficients {
                    a.coefficients = Coefficients::InputDependent { clip };
                }
            }
            Ok(())
        },
    },
    Setting {
        name: "altup-selection",
        section: Section::AltUp,
        help: "Activated block per layer: alternating, same:N, or schedule:I,J,...",
        value: Some("SEL"),
        show: |r| show(r.model.altup.as_ref().map(|a| a.selection.clone())),
        set: |w, s| {
            let selection = s.parse()?;
            if let Some(a) = &mut w.model.altup {
                a.selection = selection
            }
            Ok(())
        },
    },
    Setting {
        name: "altup-compute",
        section: Section::AltUp,
        help: "What the layer computes on: input (the paper) or prediction (Gemma 3n).",
        value: Some("ON"),
        show: |r| show(r.model.altup.as_ref().map(|a| a.compute_on)),
        set: |w, s| {
            let on = s.parse()?;
            if let Some(a) = &mut w.model.altup {
                a.compute_on = on
            }
            Ok(())
        },
    },
    Setting {
        name: "altup-widening",
        section: Section::AltUp,
        help: "wide-embedding (K·d table), recycled (replicated embedding, summed output) or projected (Gemma 3n).",
        value: Some("W"),
        show: |r| show(r.model.altup.as_ref().map(|a| a.widening)),
        set: |w, s| {
            let widening = s.parse()?;
            if let Some(a) = &mut w.model.altup {
                a.widening = widening
            }
            Ok(())
        },
    },
    Setting {
        name: "recycled",
        section: Section::AltUp,
        help: "Shorthand for --altup-widening recycled (Recycled-AltUp).",
        value: None,
        show: |_| String::new(),
        set: |w, _s| {
            if let Some(a) = &mut w.model.altup {
                a.widening = Widening::Recycled
            }
            Ok(())
        },
    },
    Setting {
        name: "altup-output",
        section: Section::AltUp,
        help: "Output reduction of a wide embedding: sum, mean, block:N or projection.",
        value: Some("OUT"),
        show: |r| show(r.model.altup.as_ref().map(|a| a.output)),
        set: |w, s| {
            let output = s.parse()?;
            if let Some(a) = &mut w.model.altup {
                a.output = output
            }
            Ok(())
        },
    },
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
