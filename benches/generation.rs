//! Cached versus uncached generation of 256 new tokens with the default `altup-moe` language
//! model (d = 128, 4 blocks, context 512), greedy, CPU. Prints the speed-up from the same run.
//!
//! `make bench` or `cargo bench --bench generation`.

mod common;

use altup_moe::model::{Arch, LanguageModel, ModelConfig};
use altup_moe::model::{Generation, Sampling};
use common::{measuring, ratio};
use criterion::Criterion;
use rand::SeedableRng;
use std::time::Duration;
use tch::{nn::VarStore, Device};

const GROUP: &str = "generate_256";

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group(GROUP);
    group.sample_size(10).warm_up_time(Duration::from_millis(200)).measurement_time(Duration::from_secs(5));
    for arch in [Arch::Dense, Arch::AltUpMoe] {
        let mut config = ModelConfig::preset(arch);
        config.max_seq_len = 512;
        let vs = VarStore::new(Device::Cpu);
        let model = LanguageModel::new(&vs.root(), &config).expect("model");
        let prompt: Vec<i64> = b"To be, or not to be, that is the question:".iter().map(|&b| b as i64).collect();
        let greedy = Sampling { temperature: 0.0, top_k: None, top_p: None };
        group.bench_function(format!("cached_{arch}"), |b| {
            b.iter(|| {
                model
                    .generate(&prompt, &Generation::new(256, greedy), &mut rand::rngs::StdRng::seed_from_u64(0))
                    .expect("generate")
            })
        });
        group.bench_function(format!("uncached_{arch}"), |b| {
            b.iter(|| {
                model
                    .generate_uncached(
                        &prompt,
                        &Generation::new(256, greedy),
                        &mut rand::rngs::StdRng::seed_from_u64(0),
                    )
                    .expect("generate")
            })
        });
    }
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
    if measuring() {
        println!("\nGeneration of 256 tokens, uncached time / cached time (same run):");
        for arch in [Arch::Dense, Arch::AltUpMoe] {
            println!("{arch:>10}: {}", ratio(GROUP, &format!("uncached_{arch}"), &format!("cached_{arch}")));
        }
    }
}
