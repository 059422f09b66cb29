//! MoE components on their own, forward + backward where they have parameters: the router
//! (scores and top-k), planning + dispatch + combine, and the experts with each kernel.
//! D = 256, F = 1024, 4,096 tokens, E ∈ {8, 64}, top-1, f32, CPU.
//!
//! `make bench` or `cargo bench --bench components`.

use altup_moe::moe::{
    plan_token_choice, select_top_k, Choice, ExpertBackend, Experts, MoeConfig, Router, RoutingPolicy, SortDispatcher,
    TokenChoice, TokenDispatcher,
};
use altup_moe::nn::{Activation, InitScheme, VarBuilder};
use criterion::{BenchmarkId, Criterion};
use std::hint::black_box;
use std::time::Duration;
use tch::{nn::VarStore, Device, Kind, Tensor};

const D: i64 = 256;
const F: usize = 1024;
const N: i64 = 4096;

fn bench(c: &mut Criterion) {
    let init = InitScheme::default();
    let mut group = c.benchmark_group("moe_components");
    group.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    let x = Tensor::randn([N, D], (Kind::Float, Device::Cpu));
    let g = Tensor::randn([N, D], (Kind::Float, Device::Cpu));
    for e in [8usize, 64] {
        let vs = VarStore::new(Device::Cpu);
        let config = MoeConfig { num_experts: e, ..Default::default() };
        let options = config.routing_options();
        let router = Router::new(VarBuilder::new(&vs.root()).with_init(init), D as usize, &config).expect("router");
        group.bench_with_input(BenchmarkId::new("router_fwd_bwd", e), &e, |b, _| {
            b.iter(|| {
                let scores = router.scores(black_box(&x), true).expect("scores");
                let selection = TokenChoice.select(&scores, None, None, &options).expect("select");
                let Choice::Tokens { gate, .. } = &selection.choice else { unreachable!("token choice") };
                (gate.sum(Kind::Float) + scores.logits.logsumexp([-1], false).square().mean(Kind::Float)).backward();
            })
        });
        let probs = router.scores(&x, false).expect("scores").probs.detach();
        let (index, gate) = select_top_k(&probs, 1, false, None).expect("top-k");
        group.bench_with_input(BenchmarkId::new("plan_dispatch_combine_fwd_bwd", e), &e, |b, _| {
            b.iter(|| {
                let xg = x.detach().set_requires_grad(true);
                let plan = plan_token_choice(&index, &gate, e as i64, None, None, None).expect("plan");
                let rows = SortDispatcher.dispatch(&xg, &plan).expect("dispatch");
                (SortDispatcher.combine(&rows, &plan).expect("combine") * &g).sum(Kind::Float).backward();
            })
        });
        let plan = plan_token_choice(&index, &gate, e as i64, None, None, None).expect("plan");
        let rows = SortDispatcher.dispatch(&x, &plan).expect("dispatch");
        let rows_g = Tensor::randn([plan.num_kept(), D], (Kind::Float, Device::Cpu));
        for (backend, name) in
            [(ExpertBackend::GroupedMm, "experts_grouped_fwd_bwd"), (ExpertBackend::Loop, "experts_loop_fwd_bwd")]
        {
            let vs = VarStore::new(Device::Cpu);
            let experts =
                Experts::new(VarBuilder::new(&vs.root()).with_init(init), e, D as usize, F, Activation::Gelu, backend)
                    .expect("experts");
            group.bench_with_input(BenchmarkId::new(name, e), &e, |b, _| {
                b.iter(|| {
                    (experts.forward(black_box(&rows), &plan.group_sizes).expect("experts") * &rows_g)
                        .sum(Kind::Float)
                        .backward()
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
}
