//! What the reproduction trains, in parts (each split by seed into pieces of at most about an
//! hour on 2 cores): the five stacks of the claims, the placement study of AltUp + MoE, the size
//! trend of AltUp, and AltUp's successors on the residual stream (with and without MoE).

use altup_moe::altup::{AltUpConfig, BlockSelection};
use altup_moe::model::{Arch, ModelConfig, MoeLayers};
use altup_moe::moe::MoeConfig;

/// A part of the study (`--part`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Dense, AltUp K = 2, Recycled-AltUp K = 2, Switch E = 8 and AltUp K = 2 + Switch E = 8
    /// at d = 128 (the claims, and the speed-up table).
    Claims,
    /// AltUp K = 2 + Switch E = 8 with the MoE blocks placed so that they compute on both
    /// sub-blocks, and Switch with MoE on every block.
    Placement,
    /// Dense and AltUp K = 2 at the small width (d = 64).
    SizeSmall,
    /// Dense and AltUp K = 2 at the large width (d = 256).
    SizeLarge,
    /// Recycled-AltUp K = 2 at the large width.
    SizeLargeRecycled,
    /// The residual-stream methods at d = 128 against dense and AltUp (the claims' runs):
    /// Hyper-Connections n = 4 static and dynamic, mHC n = 4, LAuReL RW+LR.
    Residual,
    /// The residual-stream methods with Switch E = 8 on every block, against Switch alone on
    /// every block (the placement part's `switch-e8-every`); `--stack` picks the best two.
    ResidualMoe,
}

impl Part {
    /// Every part, in the order `make reproduce` runs them.
    pub const ALL: [Part; 7] = [
        Part::Claims,
        Part::Placement,
        Part::SizeSmall,
        Part::SizeLarge,
        Part::SizeLargeRecycled,
        Part::Residual,
        Part::ResidualMoe,
    ];
}

/// The widths of the size trend: small, base (the claims' runs), large.
pub fn sizes(quick: bool) -> [usize; 3] {
    if quick {
        [32, 64, 128]
    } else {
        [64, 128, 256]
    }
}

/// One stack of the study.
#[derive(Debug, Clone)]
pub struct Stack {
    /// Name in the report and the records (`altup-k2-d256`).
    pub name: String,
    /// The model, before the seed is set.
    pub config: ModelConfig,
}

/// A stack of width `d` (4 blocks, 4 heads, F = 4d): `arch` with Switch E = 8 (top-1) on every
/// other block and AltUp K = 2 — the placement of the claims' runs, fixed here whatever the
/// presets say (the `altup-moe` preset moved to MoE on every block after the placement study).
fn base(arch: Arch, d: usize) -> ModelConfig {
    let mut c = ModelConfig::preset(arch);
    c.moe_layers = MoeLayers::Every { every: 2, offset: 1 };
    c.d_model = d;
    c.ffn.d_ff = 4 * d;
    c.max_seq_len = 128;
    if c.moe.is_some() {
        c.moe = Some(MoeConfig { num_experts: 8, d_ff: 4 * d, ..MoeConfig::default() });
    }
    if c.altup.is_some() {
        c.altup = Some(AltUpConfig { num_blocks: 2, ..AltUpConfig::default() });
    }
    c
}

fn stack(name: String, config: ModelConfig) -> Stack {
    Stack { name, config }
}

/// The name of a stack of the size trend at width `d` (the base width keeps the claims' names).
pub fn sized(name: &str, d: usize, base_width: usize) -> String {
    if d == base_width {
        name.to_string()
    } else {
        format!("{name}-d{d}")
    }
}

/// The stacks a part trains.
pub fn stacks(part: Part, quick: bool) -> Vec<Stack> {
    let [small, base_width, large] = sizes(quick);
    let d = base_width;
    match part {
        Part::Claims => {
            let mut recycled = base(Arch::AltUp, d);
            recycled.altup = Some(AltUpConfig::recycled(2));
            vec![
                stack("dense".into(), base(Arch::Dense, d)),
                stack("altup-k2".into(), base(Arch::AltUp, d)),
                stack("recycled-altup-k2".into(), recycled),
                stack("switch-e8".into(), base(Arch::Switch, d)),
                stack("altup-k2+switch-e8".into(), base(Arch::AltUpMoe, d)),
            ]
        }
        Part::Placement => {
            let every = MoeLayers::Every { every: 1, offset: 0 };
            let mut moe_every = base(Arch::AltUpMoe, d);
            moe_every.moe_layers = every.clone();
            let mut schedule = base(Arch::AltUpMoe, d);
            if let Some(a) = &mut schedule.altup {
                a.selection = BlockSelection::Schedule(vec![0, 0, 1, 1]);
            }
            let mut moe_0_3 = base(Arch::AltUpMoe, d);
            moe_0_3.moe_layers = MoeLayers::List { layers: vec![0, 3] };
            let mut switch_every = base(Arch::Switch, d);
            switch_every.moe_layers = every;
            vec![
                stack(PLACEMENTS[0].0.into(), moe_every),
                stack(PLACEMENTS[1].0.into(), schedule),
                stack(PLACEMENTS[2].0.into(), moe_0_3),
                stack("switch-e8-every".into(), switch_every),
            ]
        }
        Part::SizeSmall => vec![
            stack(sized("dense", small, d), base(Arch::Dense, small)),
            stack(sized("altup-k2", small, d), base(Arch::AltUp, small)),
        ],
        Part::SizeLarge => vec![
            stack(sized("dense", large, d), base(Arch::Dense, large)),
            stack(sized("altup-k2", large, d), base(Arch::AltUp, large)),
        ],
        Part::SizeLargeRecycled => {
            let mut recycled = base(Arch::AltUp, large);
            recycled.altup = Some(AltUpConfig::recycled(2));
            vec![stack(sized("recycled-altup-k2", large, d), recycled)]
        }
        Part::Residual => RESIDUAL_METHODS
            .iter()
            .map(|&(name, method)| stack(name.into(), with_residual(base(Arch::Dense, d), method)))
            .collect(),
        Part::ResidualMoe => {
            let switch_every =
                || ModelConfig { moe_layers: MoeLayers::Every { every: 1, offset: 0 }, ..base(Arch::Switch, d) };
            RESIDUAL_METHODS
                .iter()
                .map(|&(name, method)| stack(format!("{name}+switch-e8-every"), with_residual(switch_every(), method)))
                .collect()
        }
    }
}

/// The residual-stream methods of the study: name in the report, `--residual` form.
pub const RESIDUAL_METHODS: [(&str, &str); 4] = [
    ("hc4-static", "static-hyper-connections:4"),
    ("hc4-dynamic", "hyper-connections:4"),
    ("mhc4", "mhc:4"),
    ("laurel-rw-lr16", "laurel:rw+lr=16"),
];

fn with_residual(config: ModelConfig, method: &str) -> ModelConfig {
    ModelConfig { residual: method.parse().expect("the study's methods parse"), ..config }
}

/// The placements of AltUp + MoE besides the claims' (MoE on blocks 1 and 3, alternating
/// selection: both MoE blocks compute on sub-block 1), with what each changes.
pub const PLACEMENTS: [(&str, &str); 3] = [
    ("altup-k2+switch-e8-every", "MoE on every block, alternating selection (MoE on sub-blocks 0, 1, 0, 1)"),
    ("altup-k2+switch-e8-sched0011", "MoE on blocks 1 and 3, selection 0, 0, 1, 1 (MoE on sub-blocks 0 and 1)"),
    ("altup-k2+switch-e8-moe03", "MoE on blocks 0 and 3, alternating selection (MoE on sub-blocks 0 and 1)"),
];
