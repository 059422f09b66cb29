//! MoE layer forward + backward against a dense FFN of equal active FLOPs (a dense FFN of width
//! `k·F` for top-k experts of width `F`), for E ∈ {1, 8, 64}, k ∈ {1, 2}, at 2,048 and 16,384
//! tokens, with both expert kernels (grouped matmul, per-expert loop). D = 256, F = 1024, f32,
//! CPU. After the criterion runs it prints each configuration's time relative to the dense FFN
//! measured in the same run.
//!
//! `make bench` or `cargo bench --bench moe_layer` (a few minutes on 2 cores).

mod common;

use altup_moe::moe::{ExpertBackend, MoeConfig, MoeLayer};
use altup_moe::nn::{FeedForward, FeedForwardConfig, InitScheme, VarBuilder};
use common::{measuring, ratio};
use criterion::{BenchmarkId, Criterion};
use std::hint::black_box;
use std::time::Duration;
use tch::{nn::VarStore, Device, Kind, Tensor};

const D: i64 = 256;
const F: usize = 1024;
const TOKENS: [i64; 2] = [2048, 16384];
const EXPERTS: [usize; 3] = [1, 8, 64];
const TOP_K: [usize; 2] = [1, 2];
const BACKENDS: [(ExpertBackend, &str); 2] = [(ExpertBackend::GroupedMm, "grouped"), (ExpertBackend::Loop, "loop")];
const GROUP: &str = "moe_fwd_bwd";

fn dense_id(tokens: i64, k: usize) -> String {
    format!("dense_k{k}/{tokens}")
}

fn moe_id(tokens: i64, e: usize, k: usize, backend: &str) -> String {
    format!("moe_{backend}_e{e}_k{k}/{tokens}")
}

fn bench(c: &mut Criterion) {
    let init = InitScheme::default();
    let mut group = c.benchmark_group(GROUP);
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for tokens in TOKENS {
        let x = Tensor::randn([tokens, D], (Kind::Float, Device::Cpu));
        let g = Tensor::randn([tokens, D], (Kind::Float, Device::Cpu));
        for k in TOP_K {
            let vs = VarStore::new(Device::Cpu);
            let config = FeedForwardConfig { d_ff: k * F, ..Default::default() };
            let dense =
                FeedForward::new(VarBuilder::new(&vs.root()).with_init(init), D as usize, &config).expect("dense FFN");
            let (name, param) =
                dense_id(tokens, k).split_once('/').map(|(a, b)| (a.to_string(), b.to_string())).unwrap();
            group.bench_function(BenchmarkId::new(name, param), |b| {
                b.iter(|| {
                    let y = dense.forward(black_box(&x)).expect("forward");
                    (y * &g).sum(Kind::Float).backward();
                })
            });
            for e in EXPERTS.into_iter().filter(|&e| e >= k) {
                for (backend, backend_name) in BACKENDS {
                    let vs = VarStore::new(Device::Cpu);
                    let config = MoeConfig { num_experts: e, top_k: k, d_ff: F, backend, ..Default::default() };
                    let moe = MoeLayer::new(VarBuilder::new(&vs.root()).with_init(init), D as usize, &config)
                        .expect("MoE layer");
                    let id = moe_id(tokens, e, k, backend_name);
                    let (name, param) = id.split_once('/').unwrap();
                    group.bench_function(BenchmarkId::new(name, param), |b| {
                        b.iter(|| {
                            let (y, aux) = moe.forward_t(black_box(&x), true).expect("forward");
                            ((y * &g).sum(Kind::Float) + aux.load_balancing_loss * 0.01).backward();
                        })
                    });
                }
            }
        }
    }
    group.finish();
}

fn print_ratios() {
    println!("\nMoE forward+backward time / dense FFN of equal active FLOPs (same run; D={D}, F={F}):");
    println!("{:>7} {:>3} {:>3} {:>9} {:>9}", "tokens", "E", "k", "grouped", "loop");
    for tokens in TOKENS {
        for k in TOP_K {
            for e in EXPERTS.into_iter().filter(|&e| e >= k) {
                let r = |backend: &str| ratio(GROUP, &moe_id(tokens, e, k, backend), &dense_id(tokens, k));
                println!("{tokens:>7} {e:>3} {k:>3} {:>9} {:>9}", r("grouped"), r("loop"));
            }
        }
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
    if measuring() {
        print_ratios();
    }
}
