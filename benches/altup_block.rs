//! AltUp overhead per block: a stack of 4 transformer blocks, plain (`[B, T, D]`) versus wrapped by
//! AltUp (`[K, B, T, D]`, static coefficients, fused predict/correct, alternating blocks,
//! collapsed by the mean at the end), forward + backward, at d ∈ {256, 512} and K ∈ {2, 4},
//! 2,048 tokens (8 × 256), f32, CPU. Prints `AltUp stack / plain stack` from the same run.
//!
//! `make bench` or `cargo bench --bench altup_block`.

mod common;

use altup_moe::altup::{AltUp, AltUpConfig};
use altup_moe::model::{Block, BlockConfig, FfnConfig};
use altup_moe::nn::{AttentionConfig, FeedForwardConfig, InitScheme, VarBuilder};
use common::{measuring, ratio};
use criterion::{BenchmarkId, Criterion};
use std::hint::black_box;
use std::time::Duration;
use tch::{nn::VarStore, Device, Kind, Tensor};

const GROUP: &str = "altup_stack_fwd_bwd";
const WIDTHS: [usize; 2] = [256, 512];
const BLOCKS: [usize; 2] = [2, 4];
const LAYERS: usize = 4;
const BATCH: i64 = 8;
const SEQ: i64 = 256;

fn bench(c: &mut Criterion) {
    let init = InitScheme::default();
    let mut group = c.benchmark_group(GROUP);
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(4));
    for d in WIDTHS {
        let vs = VarStore::new(Device::Cpu);
        let config = BlockConfig {
            attention: AttentionConfig { num_heads: d / 64, ..Default::default() },
            cross_attention: false,
            ffn: FfnConfig::Dense(FeedForwardConfig { d_ff: 4 * d, ..Default::default() }),
            norm_eps: 1e-6,
            residual: altup_moe::residual::ResidualConfig::Plain,
            index: 0,
        };
        let blocks: Vec<Block> = (0..LAYERS)
            .map(|l| {
                Block::new(VarBuilder::new(&(vs.root() / "blocks" / l)).with_init(init), d, &config).expect("block")
            })
            .collect();
        let x = Tensor::randn([BATCH, SEQ, d as i64], (Kind::Float, Device::Cpu));
        let g = Tensor::randn([BATCH, SEQ, d as i64], (Kind::Float, Device::Cpu));
        group.bench_function(BenchmarkId::new("plain", format!("d{d}")), |b| {
            b.iter(|| {
                let mut h = black_box(&x).shallow_clone();
                for block in &blocks {
                    h = block.forward_t(&h, None, true).expect("forward").0;
                }
                (h * &g).sum(Kind::Float).backward();
            })
        });
        for k in BLOCKS {
            let altups: Vec<AltUp> = (0..LAYERS)
                .map(|l| {
                    let path = vs.root() / format!("altup{k}") / l;
                    AltUp::new(
                        VarBuilder::new(&path).with_init(init),
                        d,
                        &AltUpConfig { num_blocks: k, ..Default::default() },
                    )
                    .expect("altup")
                })
                .collect();
            let wide = Tensor::randn([k as i64, BATCH, SEQ, d as i64], (Kind::Float, Device::Cpu));
            group.bench_function(BenchmarkId::new(format!("altup_k{k}"), format!("d{d}")), |b| {
                b.iter(|| {
                    let mut h = black_box(&wide).shallow_clone();
                    for (l, (block, altup)) in blocks.iter().zip(&altups).enumerate() {
                        h = altup.forward_t(&h, l % k, true, |a| block.forward_t(a, None, true)).expect("forward").0;
                    }
                    (h.mean_dim(0, false, Kind::Float) * &g).sum(Kind::Float).backward();
                })
            });
        }
    }
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
    if measuring() {
        println!("\nAltUp stack / plain stack ({LAYERS} blocks), forward+backward, {BATCH}x{SEQ} tokens (same run):");
        println!("{:>5} {:>8} {:>8}", "d", "K=2", "K=4");
        for d in WIDTHS {
            let r = |k: usize| ratio(GROUP, &format!("altup_k{k}/d{d}"), &format!("plain/d{d}"));
            println!("{d:>5} {:>8} {:>8}", r(2), r(4));
        }
    }
}
