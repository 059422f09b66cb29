//! AltUp overhead: a transformer block wrapped by AltUp (K blocks, static coefficients, fused
//! predict/correct) versus the plain block, forward + backward, at d ∈ {256, 512} and
//! K ∈ {2, 4}, 2,048 tokens (8 × 256), f32, CPU. Prints `AltUp / plain` from the same run.
//!
//! `make bench` or `cargo bench --bench altup_block`.

mod common;

use altup_moe::altup::{AltUp, Coefficients, ComputeInput};
use altup_moe::nn::{AttentionConfig, Block, BlockConfig, FeedForwardConfig, FfnConfig, InitScheme};
use common::{measuring, ratio};
use criterion::Criterion;
use std::hint::black_box;
use std::time::Duration;
use tch::{nn::VarStore, Device, Kind, Tensor};

const GROUP: &str = "altup_block_fwd_bwd";
const WIDTHS: [usize; 2] = [256, 512];
const BLOCKS: [usize; 2] = [2, 4];
const BATCH: i64 = 8;
const SEQ: i64 = 256;

fn bench(c: &mut Criterion) {
    let init = InitScheme::default();
    let mut group = c.benchmark_group(GROUP);
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for d in WIDTHS {
        let vs = VarStore::new(Device::Cpu);
        let config = BlockConfig {
            attention: AttentionConfig { num_heads: d / 64, ..Default::default() },
            ffn: FfnConfig::Dense(FeedForwardConfig { d_ff: 4 * d, ..Default::default() }),
            norm_eps: 1e-6,
        };
        let block = Block::new(&vs.root(), d, &config, &init).expect("block");
        let x = Tensor::randn([BATCH, SEQ, d as i64], (Kind::Float, Device::Cpu));
        let g = Tensor::randn([BATCH, SEQ, d as i64], (Kind::Float, Device::Cpu));
        group.bench_function(format!("plain/d{d}"), |b| {
            b.iter(|| {
                let (y, _) = block.forward_t(black_box(&x), None, true).expect("forward");
                (y * &g).sum(Kind::Float).backward();
            })
        });
        for k in BLOCKS {
            let altup =
                AltUp::new(&vs.root().sub(format!("altup{k}")), k, d, Coefficients::Static, ComputeInput::Input, &init)
                    .expect("altup");
            let wide = Tensor::randn([k as i64, BATCH, SEQ, d as i64], (Kind::Float, Device::Cpu));
            let wide_g = Tensor::randn([k as i64, BATCH, SEQ, d as i64], (Kind::Float, Device::Cpu));
            group.bench_function(format!("altup_k{k}/d{d}"), |b| {
                b.iter(|| {
                    let (y, _) = altup
                        .forward_t(black_box(&wide), 0, true, |a| block.forward_t(a, None, true))
                        .expect("forward");
                    (y * &wide_g).sum(Kind::Float).backward();
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
        println!("\nAltUp block / plain block, forward+backward, {BATCH}x{SEQ} tokens (same run):");
        println!("{:>5} {:>8} {:>8}", "d", "K=2", "K=4");
        for d in WIDTHS {
            let r = |k: usize| ratio(GROUP, &format!("altup_k{k}/d{d}"), &format!("plain/d{d}"));
            println!("{d:>5} {:>8} {:>8}", r(2), r(4));
        }
    }
}
