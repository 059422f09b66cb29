//! The model's command-line flags (stack, sizes, mixture of experts, AltUp), typed, and the
//! [`ModelConfig`] they describe. Each group is one clap argument group, so a program can tell
//! which of them were given (e.g. to warn that a resumed run ignores them).

use super::{parse_arch, parse_enum, parse_precision};
use altup_moe::altup::{
    AltUpConfig, BlockSelection, Coefficients, ComputeInput, OutputReduction, SequenceAltUpConfig, Widening,
};
use altup_moe::data::TokenizerSpec;
use altup_moe::model::MoeLayers;
use altup_moe::model::Precision;
use altup_moe::model::{Arch, ModelConfig};
use altup_moe::moe::{Balancing, CapacityPriority, MoeConfig, RouterKind};
use altup_moe::nn::{Activation, FeedForwardConfig};
use altup_moe::train::TrainConfig;
use clap::builder::TypedValueParser as _;
use clap::parser::ValueSource;
use clap::{ArgMatches, Command, ValueEnum};

/// The stack and its sizes.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelFlags {
    /// Stack to train: dense, switch, altup or altup-moe.
    #[arg(long, default_value = "altup-moe", value_parser = parse_arch)]
    pub arch: Arch,
    /// Model width d.
    #[arg(long, default_value_t = 128)]
    pub d_model: usize,
    /// Transformer blocks.
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    /// Attention heads (must divide --d-model).
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Hidden width of the dense FFN and of each expert [default: 4 × d-model].
    #[arg(long)]
    pub d_ff: Option<usize>,
    /// FFN and expert non-linearity: gelu, relu or swiglu.
    #[arg(long, default_value = "gelu", value_parser = parse_enum::<Activation>)]
    pub activation: Activation,
    /// Sequence-AltUp: run every block on every N-th token only (0 or 1 = off; any --arch).
    #[arg(long, default_value_t = 0)]
    pub sequence_stride: usize,
}

/// The training run's settings (taken from the checkpoint with --resume).
#[derive(Debug, Clone, clap::Args)]
pub struct ScheduleFlags {
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Compute precision of the activations: f32, bf16, or bf16-mixed (bf16 sublayers on an f32
    /// residual stream); weights stay f32.
    #[arg(long, default_value = "f32", value_parser = parse_precision)]
    pub dtype: Precision,
    /// Tokens per sequence (bytes with the default tokenizer; also the model's maximum context).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..).map(|v| v as usize))]
    pub seq_len: usize,
    /// Peak learning rate (linear warmup, cosine decay to 10%).
    #[arg(long, default_value_t = 3e-3, allow_negative_numbers = true)]
    pub lr: f64,
    /// Warmup steps [default: 50, at most a tenth of --steps].
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// Seed of the initialisation and the data order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Evaluate every this many steps (and after the last one).
    #[arg(long, default_value_t = 100)]
    pub eval_every: u64,
    /// Tokenizer: bytes (256 ids), bpe:N (a byte-level BPE of N ids trained on the training
    /// split, saved as tokenizer.json in the run folder), or the path of a tokenizer.json.
    #[arg(long, default_value = "bytes")]
    pub tokenizer: TokenizerSpec,
    /// Validation batches per evaluation.
    #[arg(long, default_value_t = 16)]
    pub eval_batches: usize,
}

impl ScheduleFlags {
    /// The training config of a new run of `steps` steps on the corpus described by `data`
    /// (the load-balancing and z-loss coefficients come from `moe`).
    pub fn train_config(&self, steps: u64, moe: &MoeFlags, data: &str) -> TrainConfig {
        TrainConfig {
            steps,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            seq_len: self.seq_len,
            lr: self.lr,
            warmup_steps: self.warmup_steps.unwrap_or(50.min(steps / 10)),
            eval_every: self.eval_every,
            eval_batches: self.eval_batches,
            seed: self.seed,
            load_balancing_coef: moe.aux_loss_coef,
            z_loss_coef: moe.z_loss_coef,
            data: data.to_string(),
            tokenizer: self.tokenizer.clone(),
            ..TrainConfig::default()
        }
    }
}

/// How the load of the experts is balanced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BalancingFlag {
    /// The load-balancing loss (Switch).
    AuxLoss,
    /// A per-expert selection bias nudged towards balance, no loss (DeepSeek-V3).
    AuxFree,
}

/// Mixture-of-experts flags (used by switch and altup-moe).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Mixture of experts")]
pub struct MoeFlags {
    /// Experts per MoE layer.
    #[arg(long, default_value_t = 8)]
    pub experts: usize,
    /// Hidden width of each expert [default: --d-ff]; small widths with many experts give
    /// fine-grained MoE.
    #[arg(long)]
    pub expert_d_ff: Option<usize>,
    /// MoE routing: token-choice or expert-choice (expert choice sees the whole batch window,
    /// so in a causal LM it leaks future tokens into routing).
    #[arg(long, default_value = "token-choice", value_parser = parse_enum::<RouterKind>)]
    pub router: RouterKind,
    /// Experts per token (token choice).
    #[arg(long, default_value_t = 1)]
    pub top_k: usize,
    /// Renormalise the top-k gates to sum to 1 (k > 1 only; Mixtral).
    #[arg(long)]
    pub normalize_gates: bool,
    /// Training capacity factor, or "none" for dropless [default: none; 2 for expert choice].
    #[arg(long, allow_hyphen_values = true, value_parser = parse_capacity)]
    pub capacity_factor: Option<Capacity>,
    /// Evaluation capacity factor, or "none" [default: the training one].
    #[arg(long, allow_hyphen_values = true, value_parser = parse_capacity)]
    pub eval_capacity_factor: Option<Capacity>,
    /// Capacity priority: position or confidence (batch prioritized routing).
    #[arg(long, default_value = "position", value_parser = parse_enum::<CapacityPriority>)]
    pub priority: CapacityPriority,
    /// Multiplicative router jitter ε in training (0 = off).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.0)]
    pub jitter: f64,
    /// Shared experts every token passes through (DeepSeekMoE).
    #[arg(long, default_value_t = 0)]
    pub shared_experts: usize,
    /// Load balancing.
    #[arg(long, value_enum, default_value_t = BalancingFlag::AuxLoss)]
    pub balancing: BalancingFlag,
    /// Bias update step γ for --balancing aux-free.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1e-3)]
    pub bias_update_rate: f64,
    /// Load-balancing loss coefficient α [default: 0.01; 0 with --balancing aux-free].
    #[arg(long, allow_negative_numbers = true)]
    pub aux_loss_coef: Option<f64>,
    /// Router z-loss coefficient β [default: 0.001].
    #[arg(long, allow_negative_numbers = true)]
    pub z_loss_coef: Option<f64>,
    /// MoE on every N-th block... [default: the preset's — switch: 2, altup-moe: 1]
    #[arg(long)]
    pub moe_every: Option<usize>,
    /// ...starting at this block [default: the preset's — switch: 1, altup-moe: 0].
    #[arg(long)]
    pub moe_offset: Option<usize>,
    /// Explicit comma-separated MoE block indices (overrides --moe-every/--moe-offset).
    #[arg(long, value_delimiter = ',')]
    pub moe_layers: Option<Vec<usize>>,
}

/// Where AltUp's coefficients come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AltUpMode {
    /// A learned K×K predictor and K gains (the paper).
    Static,
    /// Predicted per token from the input (Gemma 3n).
    InputDependent,
}

/// AltUp flags (used by altup and altup-moe).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "AltUp")]
pub struct AltUpFlags {
    /// AltUp blocks K.
    #[arg(long, default_value_t = 2)]
    pub altup_blocks: usize,
    /// AltUp coefficients.
    #[arg(long, value_enum, default_value_t = AltUpMode::Static)]
    pub altup_mode: AltUpMode,
    /// Clip of the input-dependent coefficients in training, or "none".
    #[arg(long, default_value = "120", value_parser = parse_clip)]
    pub altup_clip: Clip,
    /// Activated block per layer: alternating, same:N, or schedule:I,J,... (repeated over layers).
    #[arg(long, default_value = "alternating", value_parser = parse_selection)]
    pub altup_selection: BlockSelection,
    /// What the layer computes on: input (the paper) or prediction (Gemma 3n).
    #[arg(long, default_value = "input", value_parser = parse_enum::<ComputeInput>)]
    pub altup_compute: ComputeInput,
    /// Widening: wide-embedding (K·d table), recycled (replicated d-wide embedding, summed
    /// output), or projected (Gemma 3n projections with RMS matching).
    #[arg(long, default_value = "wide-embedding", value_parser = parse_enum::<Widening>)]
    pub altup_widening: Widening,
    /// Shorthand for --altup-widening recycled (Recycled-AltUp).
    #[arg(long)]
    pub recycled: bool,
    /// Output reduction of a wide embedding: sum, mean, block:N, or projection.
    #[arg(long, default_value = "mean", value_parser = parse_output)]
    pub altup_output: OutputReduction,
}

/// A capacity factor, or `None` for dropless ("none").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity(pub Option<f64>);

/// A clip of the input-dependent AltUp coefficients, or `None` ("none").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clip(pub Option<f64>);

fn parse_capacity(s: &str) -> Result<Capacity, String> {
    match s {
        "none" => Ok(Capacity(None)),
        _ => match s.parse::<f64>() {
            Ok(cf) if cf > 0.0 && cf.is_finite() => Ok(Capacity(Some(cf))),
            _ => Err(format!("'{s}' is not a positive capacity factor or 'none'")),
        },
    }
}

fn parse_clip(s: &str) -> Result<Clip, String> {
    match s {
        "none" => Ok(Clip(None)),
        _ => s.parse::<f64>().map(|c| Clip(Some(c))).map_err(|_| format!("'{s}' is not a number or 'none'")),
    }
}

fn parse_selection(s: &str) -> Result<BlockSelection, String> {
    let list = |v: &str| -> Result<Vec<usize>, String> {
        v.split(',').map(|i| i.trim().parse::<usize>().map_err(|e| format!("'{i}': {e}"))).collect()
    };
    match s.split_once(':') {
        None if s == "alternating" => Ok(BlockSelection::Alternating),
        Some(("same", n)) => n.parse().map(BlockSelection::Same).map_err(|e| format!("'{n}': {e}")),
        Some(("schedule", v)) => list(v).map(BlockSelection::Schedule),
        _ => Err(format!("unknown selection '{s}' (expected alternating, same:N or schedule:I,J,...)")),
    }
}

fn parse_output(s: &str) -> Result<OutputReduction, String> {
    match s.split_once(':') {
        Some(("block", n)) => n.parse().map(OutputReduction::Block).map_err(|e| format!("'{n}': {e}")),
        _ => parse_enum(s),
    }
}

/// The validated model config the flags describe, for sequences of `seq_len` tokens and the
/// initialisation seed `seed`.
///
/// # Errors
/// [`altup_moe::Error::Config`] naming the offending value.
pub fn model_config(
    model: &ModelFlags,
    moe_flags: &MoeFlags,
    altup_flags: &AltUpFlags,
    seq_len: usize,
    seed: u64,
) -> altup_moe::Result<ModelConfig> {
    let mut config = ModelConfig::preset(model.arch);
    let d_ff = model.d_ff.unwrap_or(4 * model.d_model);
    config.d_model = model.d_model;
    config.num_layers = model.layers;
    config.max_seq_len = seq_len;
    config.init_seed = seed;
    config.attention.num_heads = model.heads;
    config.ffn = FeedForwardConfig { d_ff, activation: model.activation };
    if let Some(moe) = &mut config.moe {
        (*moe, config.moe_layers) = moe_config(moe_flags, d_ff, model.activation, moe, &config.moe_layers);
    }
    if let Some(altup) = &mut config.altup {
        *altup = altup_config(altup_flags);
    }
    if model.sequence_stride > 1 {
        config.sequence_altup = Some(SequenceAltUpConfig { stride: model.sequence_stride });
    }
    config.validate()?;
    Ok(config)
}

/// The MoE layers the flags describe, for a model whose dense FFN is `d_ff` wide with
/// `activation` (the experts' defaults); fields without a flag come from `base`, the placement
/// from `base_layers` (`--moe-every` / `--moe-offset` replace its period / first block).
pub fn moe_config(
    m: &MoeFlags,
    d_ff: usize,
    activation: Activation,
    base: &MoeConfig,
    base_layers: &MoeLayers,
) -> (MoeConfig, MoeLayers) {
    let capacity_factor = m.capacity_factor.map_or(m.router.policy().default_capacity_factor(), |c| c.0);
    let moe = MoeConfig {
        num_experts: m.experts,
        top_k: m.top_k,
        d_ff: m.expert_d_ff.unwrap_or(d_ff),
        activation,
        router: m.router,
        capacity_factor,
        eval_capacity_factor: m.eval_capacity_factor.map_or(capacity_factor, |c| c.0),
        priority: m.priority,
        normalize_gates: m.normalize_gates,
        jitter: m.jitter,
        balancing: match m.balancing {
            BalancingFlag::AuxLoss => Balancing::AuxLoss,
            BalancingFlag::AuxFree => Balancing::AuxFree { bias_update_rate: m.bias_update_rate },
        },
        num_shared_experts: m.shared_experts,
        ..base.clone()
    };
    // A flag replaces its part of the preset's period / first block (of a list: Switch's 2 / 1).
    let (every, offset) = match base_layers {
        MoeLayers::Every { every, offset } => (*every, *offset),
        MoeLayers::List { .. } => (2, 1),
    };
    let layers = match &m.moe_layers {
        Some(layers) => MoeLayers::List { layers: layers.clone() },
        None if m.moe_every.is_none() && m.moe_offset.is_none() => base_layers.clone(),
        None => MoeLayers::Every { every: m.moe_every.unwrap_or(every), offset: m.moe_offset.unwrap_or(offset) },
    };
    (moe, layers)
}

/// The AltUp config the flags describe.
pub fn altup_config(a: &AltUpFlags) -> AltUpConfig {
    AltUpConfig {
        num_blocks: a.altup_blocks,
        selection: a.altup_selection.clone(),
        compute_on: a.altup_compute,
        coefficients: match a.altup_mode {
            AltUpMode::Static => Coefficients::Static,
            AltUpMode::InputDependent => Coefficients::InputDependent { clip: a.altup_clip.0 },
        },
        widening: if a.recycled { Widening::Recycled } else { a.altup_widening },
        output: a.altup_output,
    }
}

/// The flags of clap argument group `group` (a flattened struct's name, e.g. `"MoeFlags"`)
/// given on the command line, spelled as flags (`--top-k`).
pub fn given_flags(matches: &ArgMatches, command: &Command, group: &str) -> Vec<String> {
    let ids: Vec<_> = command.get_groups().filter(|g| g.get_id() == group).flat_map(|g| g.get_args()).collect();
    command
        .get_arguments()
        .filter(|a| {
            ids.contains(&a.get_id()) && matches.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine)
        })
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The flags of this file as one command.
    #[derive(Debug, Parser)]
    struct Args {
        #[command(flatten)]
        model: ModelFlags,
        #[command(flatten)]
        schedule: ScheduleFlags,
        #[command(flatten)]
        moe: MoeFlags,
        #[command(flatten)]
        altup: AltUpFlags,
    }

    fn args(extra: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("train").chain(extra.iter().copied()))
    }

    fn config(a: &Args) -> altup_moe::Result<ModelConfig> {
        model_config(&a.model, &a.moe, &a.altup, a.schedule.seq_len, a.schedule.seed)
    }

    #[test]
    fn bad_flag_values_are_rejected_with_their_value() {
        for (flags, expected) in [
            (vec!["--arch", "moe"], "unknown architecture 'moe' (expected one of: dense, switch, altup, altup-moe)"),
            (vec!["--capacity-factor", "0"], "'0' is not a positive capacity factor or 'none'"),
            (vec!["--activation", "tanh"], "unknown value `tanh`, expected one of `gelu`, `relu`, `swiglu`"),
            (vec!["--altup-selection", "sometimes"], "unknown selection 'sometimes'"),
            (vec!["--altup-output", "block:x"], "'x': invalid digit"),
            (vec!["--dtype", "f16"], "unknown precision 'f16' (expected f32, bf16 or bf16-mixed)"),
            (vec!["--balancing", "magic"], "invalid value 'magic' for '--balancing <BALANCING>'"),
            (vec!["--altup-mode", "dynamic"], "invalid value 'dynamic' for '--altup-mode <ALTUP_MODE>'"),
            (vec!["--altup-clip", "big"], "'big' is not a number or 'none'"),
            (vec!["--capacity-factor", "-1"], "'-1' is not a positive capacity factor or 'none'"),
            (vec!["--seq-len", "0"], "invalid value '0' for '--seq-len <SEQ_LEN>': 0 is not in 1.."),
        ] {
            let err = args(&flags).unwrap_err().to_string();
            assert!(err.contains(expected), "{flags:?}: {err}");
        }
    }

    #[test]
    fn flags_reach_the_model_config() {
        let a = args(&[
            "--arch",
            "altup-moe",
            "--experts",
            "16",
            "--top-k",
            "2",
            "--capacity-factor",
            "1.5",
            "--shared-experts",
            "1",
            "--altup-blocks",
            "3",
            "--altup-selection",
            "schedule:0,2",
            "--altup-mode",
            "input-dependent",
            "--recycled",
            "--sequence-stride",
            "2",
            "--moe-layers",
            "0,2",
        ])
        .unwrap();
        let c = config(&a).unwrap();
        let moe = c.moe.unwrap();
        assert_eq!((moe.num_experts, moe.top_k, moe.capacity_factor, moe.num_shared_experts), (16, 2, Some(1.5), 1));
        assert_eq!(moe.eval_capacity_factor, Some(1.5));
        assert_eq!(c.moe_layers, altup_moe::model::MoeLayers::List { layers: vec![0, 2] });
        let altup = c.altup.unwrap();
        assert_eq!(altup.num_blocks, 3);
        assert_eq!(altup.selection, altup_moe::altup::BlockSelection::Schedule(vec![0, 2]));
        assert_eq!(altup.widening, altup_moe::altup::Widening::Recycled);
        assert_eq!(altup.coefficients, altup_moe::altup::Coefficients::InputDependent { clip: Some(120.0) });
        assert_eq!(c.sequence_altup, Some(altup_moe::altup::SequenceAltUpConfig { stride: 2 }));
        let err = config(&args(&["--heads", "3"]).unwrap()).unwrap_err().to_string();
        assert_eq!(err, "invalid config: num_heads (3) must divide d_model (128)");
        // Without placement flags each preset keeps its own; --moe-every alone keeps the offset.
        let every = |extra: &[&str]| config(&args(extra).unwrap()).unwrap().moe_layers;
        assert_eq!(every(&[]), altup_moe::model::MoeLayers::Every { every: 1, offset: 0 });
        assert_eq!(every(&["--arch", "switch"]), altup_moe::model::MoeLayers::Every { every: 2, offset: 1 });
        assert_eq!(every(&["--moe-every", "2"]), altup_moe::model::MoeLayers::Every { every: 2, offset: 0 });
        // The coefficients are the library's unless given (Objective::for_model: 0 with aux-free).
        assert_eq!(args(&["--balancing", "aux-free"]).unwrap().moe.aux_loss_coef, None);
        assert_eq!(args(&["--aux-loss-coef", "0.5"]).unwrap().moe.aux_loss_coef, Some(0.5));
    }
}
