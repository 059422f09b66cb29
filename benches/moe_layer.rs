//! MoE layer forward + backward against a dense FFN of equal active FLOPs (top-1, so one expert
//! of width F per token), with both expert kernels. Run with `make bench` or
//! `cargo bench --bench moe_layer`; compare the reported times within one run.

use altup_moe::moe::{ExpertBackend, MoeConfig, MoeLayer};
use altup_moe::nn::{FeedForward, FeedForwardConfig, InitScheme};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;
use tch::{nn::VarStore, Device, Kind, Tensor};

const D: i64 = 128;
const F: usize = 512;

fn bench(c: &mut Criterion) {
    let init = InitScheme::default();
    let mut group = c.benchmark_group("ffn_fwd_bwd_2048_tokens");
    group.sample_size(20);
    let x = Tensor::randn([16, 128, D], (Kind::Float, Device::Cpu));
    let g = Tensor::randn([16, 128, D], (Kind::Float, Device::Cpu));

    let vs = VarStore::new(Device::Cpu);
    let dense = FeedForward::new(&vs.root(), D as usize, &FeedForwardConfig { d_ff: F, ..Default::default() }, &init)
        .expect("dense FFN");
    group.bench_function("dense", |b| {
        b.iter(|| {
            let y = dense.forward(black_box(&x)).expect("forward");
            (y * &g).sum(Kind::Float).backward();
        })
    });

    for experts in [8usize, 64] {
        for backend in [ExpertBackend::GroupedMm, ExpertBackend::Loop] {
            let vs = VarStore::new(Device::Cpu);
            let config =
                MoeConfig { num_experts: experts, d_ff: F, capacity_factor: None, backend, ..Default::default() };
            let moe = MoeLayer::new(&vs.root(), D as usize, &config, &init).expect("MoE layer");
            group.bench_with_input(BenchmarkId::new(format!("moe_{backend:?}"), experts), &experts, |b, _| {
                b.iter(|| {
                    let (y, aux) = moe.forward_t(black_box(&x), true).expect("forward");
                    ((y * &g).sum(Kind::Float) + aux.load_balancing_loss * 0.01).backward();
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
