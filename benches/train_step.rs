//! One full training step (forward, backward, clipping, AdamW, metrics) of each stack at the
//! default small size (d = 128, 4 blocks, 16 × 128 bytes), CPU. Prints each stack's step time
//! relative to dense from the same run.
//!
//! `make bench` or `cargo bench --bench train_step`.

mod common;

use altup_moe::data::TokenDataset;
use altup_moe::model::{Arch, LanguageModel, ModelConfig};
use altup_moe::train::{TrainConfig, Trainer};
use common::{measuring, ratio};
use criterion::Criterion;
use std::time::Duration;
use tch::{nn::VarStore, Device};

const GROUP: &str = "train_step";

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group(GROUP);
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    let text: Vec<u8> = b"O Romeo, Romeo! wherefore art thou Romeo? Deny thy father and refuse thy name. ".repeat(400);
    let (train, val) = (TokenDataset::new(text.clone()), TokenDataset::new(text));
    for arch in Arch::ALL {
        let vs = VarStore::new(Device::Cpu);
        let model = LanguageModel::new(&vs.root(), &ModelConfig::preset(arch)).expect("model");
        let config = TrainConfig { steps: 1_000_000, seq_len: 128, eval_batches: 1, ..TrainConfig::default() };
        let mut trainer = Trainer::new(&vs, &model, &train, &val, config).expect("trainer");
        group.bench_function(arch.name(), |b| b.iter(|| trainer.step().expect("step")));
    }
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
    if measuring() {
        println!("\nTraining step time relative to dense (same run):");
        for arch in Arch::ALL {
            println!("{:>10}: {}", arch.name(), ratio(GROUP, arch.name(), "dense"));
        }
    }
}
