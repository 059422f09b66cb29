//! Expert parallelism is exact: R ranks give the single-process results, for one MoE layer and
//! for three training steps of a model — as threads of one process ([`ThreadGroup`]) and, with
//! the cargo feature `mpi`, as processes (the tests launch this test binary under `mpirun`).
//!
//! Every rank runs on the test device (`ALTUP_MOE_TEST_DEVICE`, see `common::device`): thread
//! ranks share it, and `mpirun`'s processes inherit the variable, so that the ranks and the
//! single-process reference always compute on the same kind of device.

mod common;

use altup_moe::data::{SpanCorruption, TokenDataset};
use altup_moe::model::{Arch, LanguageModel, ModelConfig};
use altup_moe::model::{Seq2SeqConfig, Seq2SeqModel};
use altup_moe::moe::{MoeAux, MoeConfig, MoeLayer};
use altup_moe::nn::{Activation, InitScheme, VarBuilder};
use altup_moe::parallel::{
    all_gather_tensor, all_reduce_tensor, Collectives, ExchangeTape, ProcessGroup, SingleProcess, ThreadGroup,
};
use altup_moe::train::{run, CheckpointMeta, RunOptions, Silent, SpanCorruptionTask, Task, TrainConfig, Trainer};
use common::{device, seeded_normal};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use tch::{nn::VarStore, Kind, Tensor};

const D: i64 = 8;
const INIT: InitScheme = InitScheme { std: 0.3, residual_std: 0.3, seed: 11 };

/// A scenario: the layer config, the global token count, and how tokens split over ranks.
fn scenario(name: &str) -> (MoeConfig, i64) {
    let base = MoeConfig { num_experts: 4, d_ff: 12, min_capacity: 1, ..Default::default() };
    match name {
        "dropless" => (base, 24),
        "capacity" => (MoeConfig { top_k: 2, capacity_factor: Some(0.75), activation: Activation::SwiGlu, ..base }, 24),
        "idle-expert" => (base, 24),
        "empty-rank" => (base, 12),
        other => panic!("unknown scenario {other}"),
    }
}

/// Global inputs and cotangents, identical on every rank, on the test device.
fn data(n: i64) -> (Tensor, Tensor) {
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(5);
    (seeded_normal(&mut rng, &[n, D]), seeded_normal(&mut rng, &[n, D]))
}

/// Rows of the global batch that rank `r` of `ranks` holds (the last rank takes the remainder;
/// in "empty-rank" rank 1 holds nothing).
fn shard(name: &str, n: i64, r: usize, ranks: usize) -> (i64, i64) {
    if name == "empty-rank" {
        return if r == 0 { (0, n) } else { (n, 0) };
    }
    let per = n / ranks as i64;
    (r as i64 * per, per)
}

fn bias_towards_three_experts(layer: &MoeLayer) {
    tch::no_grad(|| {
        let _ = layer.router.weight.shallow_clone().get(3).fill_(-5.0); // expert 3 gets no token
    });
}

/// The objective each rank minimises: its share of `(y·g).sum() + 0.3·balance + 0.2·z`.
fn objective(y: &Tensor, g: &Tensor, aux: &MoeAux) -> Tensor {
    (y * g).sum(Kind::Float) + &aux.load_balancing_loss * 0.3 + &aux.z_loss * 0.2
}

/// What the training scenarios train.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Trained {
    /// AltUp K = 2 with top-2 capacity-limited MoE on every other block, aux-free balancing on
    /// top of the load-balancing loss (no jitter: its noise is drawn per rank).
    AltUpMoe,
    /// A Switch encoder-decoder (top-1 MoE on block 1 of each stack) on span corruption.
    EncoderDecoder,
    /// A dense model: data parallelism through the same group.
    Dense,
    /// mHC with 2 streams around top-2 capacity-limited MoE on every other block: a
    /// multi-stream residual (`[B, T, n, D]` at every graph cut) with expert parallelism.
    MhcMoe,
}

impl Trained {
    const ALL: [Trained; 4] = [Trained::AltUpMoe, Trained::EncoderDecoder, Trained::Dense, Trained::MhcMoe];

    /// The scenario's name (for the MPI child).
    fn scenario(self) -> &'static str {
        match self {
            Trained::AltUpMoe => "train",
            Trained::EncoderDecoder => "train-seq2seq",
            Trained::Dense => "train-dense",
            Trained::MhcMoe => "train-mhc",
        }
    }

    fn from_scenario(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.scenario() == name)
    }

    /// MoE layers whose metrics are compared.
    fn moe_layers(self) -> usize {
        match self {
            Trained::Dense => 0,
            _ => 2,
        }
    }

    fn language_model(self) -> ModelConfig {
        let mut c = common::tiny(match self {
            Trained::Dense => Arch::Dense,
            Trained::MhcMoe => Arch::Switch,
            _ => Arch::AltUpMoe,
        });
        if self == Trained::MhcMoe {
            c.residual = altup_moe::residual::ResidualConfig::Mhc { streams: 2, sinkhorn_iters: 20 };
        }
        c.max_seq_len = 16;
        c.num_layers = 4;
        if c.moe.is_some() {
            c.moe = Some(MoeConfig {
                num_experts: 4,
                d_ff: 32,
                top_k: 2,
                capacity_factor: Some(1.0),
                min_capacity: 1,
                ..Default::default()
            });
        }
        c
    }

    fn encoder_decoder() -> Seq2SeqConfig {
        let mut c = Seq2SeqConfig::preset(Arch::Switch, SpanCorruption::default().vocab_size());
        for stack in [&mut c.encoder, &mut c.decoder] {
            let base = common::tiny(Arch::Switch);
            (stack.d_model, stack.num_layers, stack.max_seq_len) = (base.d_model, 2, 32);
            stack.attention.num_heads = base.attention.num_heads;
            stack.ffn = base.ffn.clone();
            stack.moe = base.moe.clone();
        }
        c.encoder.moe.as_mut().unwrap().capacity_factor = Some(1.0); // capacity across ranks
        c
    }
}

fn train_data() -> (TokenDataset, TokenDataset) {
    common::text_splits("Now is the winter of our discontent made glorious summer by this sun of York. ", 30)
}

fn train_config(kind: Trained) -> TrainConfig {
    TrainConfig {
        steps: 3,
        batch_size: 4,
        grad_accum: 2,
        seq_len: if kind == Trained::EncoderDecoder { 24 } else { 16 },
        lr: 5e-3,
        warmup_steps: 1,
        eval_every: 1,
        eval_batches: 2,
        seed: 3,
        ..Default::default()
    }
}

/// Trains `kind` for 3 steps into `out`: straight through in one process
/// ([`ProcessGroup::single`]), or in a group that exchanges rows with a stop after step 2 and a
/// restore from that checkpoint into a fresh model.
fn train_run(kind: Trained, out: &Path, group: ProcessGroup) {
    let (train, val) = train_data();
    let config = train_config(kind);
    let session = |stop: Option<u64>, restore: bool| {
        let vs = VarStore::new(device());
        let vb = VarBuilder::new(&vs.root()).with_group(group.clone());
        match kind {
            Trained::EncoderDecoder => {
                let c = Trained::encoder_decoder();
                let model = Seq2SeqModel::new(&vb, &c).unwrap();
                let task = SpanCorruptionTask { model: &model, corruption: SpanCorruption::default(), eval_seed: 0 };
                drive(&vs, &task, (&train, &val), config.clone(), out, stop, restore);
            }
            _ => {
                let c = kind.language_model();
                let model = LanguageModel::new(&vb, &c).unwrap();
                drive(&vs, &model, (&train, &val), config.clone(), out, stop, restore);
            }
        }
    };
    if group.exchanges_rows() {
        session(Some(2), false);
        session(None, true);
    } else {
        session(None, false);
    }
}

/// Runs `task`'s trainer into `out` until `stop` (or the end), after restoring the last
/// checkpoint when `restore`.
fn drive<T: Task>(
    vs: &VarStore,
    task: &T,
    (train, val): (&TokenDataset, &TokenDataset),
    config: TrainConfig,
    out: &Path,
    stop_after: Option<u64>,
    restore: bool,
) {
    let options =
        RunOptions { out_dir: out.to_path_buf(), save_every: None, keep_checkpoints: 3, stop_after, overwrite: false };
    let mut trainer = Trainer::new(vs, task, train, val, config).unwrap();
    let resumed = restore.then(|| trainer.restore(&CheckpointMeta::read(out).unwrap()).unwrap());
    run(&mut trainer, resumed, &options, &mut Silent).unwrap();
}

/// The training scenarios with one rank through the expert-parallel path equal plain training.
#[test]
fn single_process_expert_parallel_training_equals_plain_training() {
    for kind in Trained::ALL {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        train_run(kind, a.path(), ProcessGroup::single());
        train_run(kind, b.path(), ProcessGroup::new(Arc::new(SingleProcess)));
        compare_runs(kind, a.path(), b.path(), 1e-5, "R=1");
    }
}

/// Compares two training runs: every metric in `metrics.jsonl` (except wall-clock ones) and
/// every tensor of the final checkpoint (weights and optimizer moments), within `tol`.
fn compare_runs(kind: Trained, want: &Path, got: &Path, tol: f64, what: &str) {
    let what = &format!("{kind:?} {what}");
    let metrics = |dir: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (mw, mg) = (metrics(want), metrics(got));
    assert_eq!(mw.len(), 3, "{what}: one evaluation per step");
    assert_eq!(mw.len(), mg.len(), "{what}: evaluations");
    let mut worst_metric = 0.0f64;
    for (w, g) in mw.iter().zip(&mg) {
        let mut close = |key: &str, a: &serde_json::Value, b: &serde_json::Value| {
            let (a, b) = (a.as_f64().unwrap_or_else(|| panic!("{key} missing in {w}")), b.as_f64().unwrap());
            worst_metric = worst_metric.max((a - b).abs() / a.abs().max(1.0));
            assert!((a - b).abs() <= tol * a.abs().max(1.0), "{what}: {key} {a} vs {b} at step {}", w["step"]);
        };
        for key in ["train_loss", "val_loss", "load_balancing_loss", "z_loss", "dropped_fraction", "lr"] {
            if kind.moe_layers() > 0 || !["load_balancing_loss", "z_loss", "dropped_fraction"].contains(&key) {
                close(key, &w[key], &g[key]);
            }
        }
        let (lw, lg) = (w["moe_layers"].as_array().unwrap(), g["moe_layers"].as_array().unwrap());
        assert_eq!(lw.len(), kind.moe_layers(), "{what}: MoE layers");
        assert_eq!(lw.len(), lg.len());
        for (a, b) in lw.iter().zip(lg) {
            for key in ["load_balancing_loss", "z_loss", "router_entropy", "dropped_fraction"] {
                close(key, &a[key], &b[key]);
            }
            assert_eq!(a["assignments_per_expert"], b["assignments_per_expert"], "{what}: tokens per expert");
        }
    }
    let tensors = |dir: &Path, file: &str| -> std::collections::BTreeMap<String, Tensor> {
        let meta = CheckpointMeta::read(dir).unwrap();
        assert_eq!(meta.state.step, 3);
        Tensor::read_safetensors(meta.dir.join(file)).unwrap().into_iter().collect()
    };
    let mut worst = 0.0f64;
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let (w, g) = (tensors(want, file), tensors(got, file));
        assert_eq!(w.keys().collect::<Vec<_>>(), g.keys().collect::<Vec<_>>(), "{what}: {file} names");
        for (name, t) in &w {
            assert_eq!(t.size(), g[name].size(), "{what}: {name} shape");
            let diff = (t.to_kind(Kind::Double) - g[name].to_kind(Kind::Double)).abs().max().double_value(&[]);
            worst = worst.max(diff);
            assert!(diff <= tol, "{what}: {file} {name} differs by {diff}");
        }
    }
    eprintln!("{what}: worst metric rel. diff {worst_metric:e}, worst checkpoint |diff| {worst:e}");
}

/// One process, one rank: the expert-parallel path (exchanges, tape, segmented backward) equals
/// the local layer.
#[test]
fn single_process_expert_parallel_equals_the_local_layer() {
    for name in ["dropless", "capacity", "idle-expert"] {
        let (config, n) = scenario(name);
        let (x, g) = data(n);
        let local_vs = VarStore::new(device());
        let local = MoeLayer::new(VarBuilder::new(&local_vs.root()).with_init(INIT), D as usize, &config).unwrap();
        let ep_vs = VarStore::new(device());
        let tape = ExchangeTape::new();
        let group = ProcessGroup::with_tape(Arc::new(SingleProcess), tape.clone());
        let ep = MoeLayer::new(VarBuilder::new(&ep_vs.root()).with_init(INIT).with_group(group), D as usize, &config)
            .unwrap();
        if name == "idle-expert" {
            bias_towards_three_experts(&local);
            bias_towards_three_experts(&ep);
        }
        let (xa, xb) = (x.copy().set_requires_grad(true), x.copy().set_requires_grad(true));
        let (ya, aux_a) = local.forward_t(&xa, true).unwrap();
        let (yb, aux_b) = ep.forward_t(&xb, true).unwrap();
        assert_eq!(tape.exchanges(), 2, "{name}: one exchange out, one back");
        assert_eq!(tape.len(), 3, "{name}: and the cut at the layer input");
        assert!(ya.allclose(&yb, 1e-6, 1e-6, false), "{name}: outputs");
        assert_eq!(aux_a.dropped_fraction.double_value(&[]), aux_b.dropped_fraction.double_value(&[]), "{name}");
        objective(&ya, &g, &aux_a).backward();
        tape.backward(&SingleProcess, &objective(&yb, &g, &aux_b)).unwrap();
        assert!(tape.is_empty());
        assert!(xa.grad().allclose(&xb.grad(), 1e-5, 1e-5, false), "{name}: input gradients");
        for (a, b, what) in [
            (&local.experts.w_in, &ep.experts.w_in, "w_in"),
            (&local.experts.w_out, &ep.experts.w_out, "w_out"),
            (&local.router.weight, &ep.router.weight, "router"),
        ] {
            assert!(a.grad().allclose(&b.grad(), 1e-5, 1e-5, false), "{name}: {what} gradients");
        }
    }
}

/// One rank of a layer scenario over `world`: forward, this rank's share of the objective,
/// backward through the exchanges; returns the results gathered over ranks (on every rank).
fn layer_rank(name: &str, world: Arc<dyn Collectives>) -> Vec<(&'static str, Tensor)> {
    let (r, ranks) = (world.rank(), world.world_size());
    let (config, n) = scenario(name);
    let (x, g) = data(n);
    let (start, len) = shard(name, n, r, ranks);
    let x_local = x.narrow(0, start, len).copy().set_requires_grad(true);
    let g_local = g.narrow(0, start, len);
    let vs = VarStore::new(device());
    let tape = ExchangeTape::new();
    let group = ProcessGroup::with_tape(world.clone(), tape.clone());
    let layer =
        MoeLayer::new(VarBuilder::new(&vs.root()).with_init(INIT).with_group(group), D as usize, &config).unwrap();
    if name == "idle-expert" {
        bias_towards_three_experts(&layer);
    }
    let (y, aux) = layer.forward_t(&x_local, true).unwrap();
    tape.backward(world.as_ref(), &objective(&y, &g_local, &aux)).unwrap();
    // Gather everything on every rank (uneven shards: pad to the largest and cut).
    let gather_rows = |t: &Tensor| -> Tensor {
        let mut lens = vec![0.0f64; ranks];
        lens[r] = len as f64;
        world.all_reduce_sum_f64(&mut lens).unwrap();
        let max = lens.iter().cloned().fold(0.0, f64::max) as i64;
        let padded = Tensor::zeros([max, D], (Kind::Float, device()));
        if len > 0 {
            padded.narrow(0, 0, len).copy_(t);
        }
        let all = all_gather_tensor(world.as_ref(), &padded).unwrap();
        let pieces: Vec<Tensor> = (0..ranks).map(|s| all.narrow(0, s as i64 * max, lens[s] as i64)).collect();
        Tensor::cat(&pieces, 0)
    };
    let results = [
        ("y", gather_rows(&y.detach())),
        ("x_grad", gather_rows(&x_local.grad())),
        ("w_in_grad", all_gather_tensor(world.as_ref(), &layer.experts.w_in.grad()).unwrap()),
        ("w_out_grad", all_gather_tensor(world.as_ref(), &layer.experts.w_out.grad()).unwrap()),
        ("router_grad", all_reduce_tensor(world.as_ref(), &layer.router.weight.grad()).unwrap()),
        ("dropped", aux.dropped_fraction.reshape([1]).to_device(device())),
        ("assignments_per_expert", aux.assignments_per_expert.to_kind(Kind::Float)),
    ];
    results.into()
}

/// Asserts that gathered results equal the single-process ones within 1e-5 (results read back
/// from an MPI rank's file are on the CPU: compare on the reference's device).
fn assert_matches_reference(name: &str, ranks: usize, got: &HashMap<String, Tensor>, how: &str) {
    for (key, want) in reference(name) {
        let diff = (&got[key].to_device(want.device()) - &want).abs().max().double_value(&[]);
        eprintln!("{name} R={ranks} ({how}) {key}: max |diff| = {diff:e}");
        assert!(diff <= 1e-5, "{name} with {ranks} ranks ({how}): {key} differs by {diff}");
    }
}

/// Several ranks as threads of this process (the multi-device backend, here with every rank on
/// the test device): every layer scenario equals the single-process layer with 2 and 4 ranks.
#[test]
fn thread_group_ranks_equal_one_process() {
    for ranks in [2, 4] {
        for name in ["dropless", "capacity", "idle-expert", "empty-rank"] {
            if name == "empty-rank" && ranks != 2 {
                continue;
            }
            let results = ThreadGroup::run(&vec![device(); ranks], |p, _| {
                Ok(layer_rank(name, p.comm_arc())
                    .into_iter()
                    .map(|(k, t)| (k.to_string(), t))
                    .collect::<HashMap<_, _>>())
            })
            .unwrap();
            let rank0 = results.into_iter().next().unwrap().unwrap();
            assert_matches_reference(name, ranks, &rank0, "threads");
        }
    }
}

/// Three training steps with 2 and 4 thread ranks (checkpoint, stop and restore included)
/// equal one process: the AltUp + MoE language model, the encoder-decoder, a dense model
/// (data parallelism) and mHC with MoE.
#[test]
fn thread_group_training_equals_one_process() {
    let root = tempfile::tempdir().unwrap();
    for kind in Trained::ALL {
        let single = root.path().join(format!("{kind:?}-single"));
        train_run(kind, &single, ProcessGroup::single());
        for ranks in [2, 4] {
            let dir = root.path().join(format!("{kind:?}-threads-{ranks}"));
            for result in ThreadGroup::run(&vec![device(); ranks], |p, _| {
                train_run(kind, &dir, p);
                Ok(())
            })
            .unwrap()
            {
                result.unwrap();
            }
            compare_runs(kind, &single, &dir, 1e-5, &format!("threads R={ranks}"));
        }
    }
}

/// A rank that runs its forward pass without gradients while the others record theirs would
/// miss exchanges in the backward: every rank gets an error naming the disagreement, none hangs.
#[test]
fn ranks_that_disagree_on_gradients_fail_together() {
    let results = ThreadGroup::run(&[device(); 2], |p, _| {
        let (config, n) = scenario("dropless");
        let (x, _) = data(n);
        let vs = VarStore::new(device());
        let layer =
            MoeLayer::new(VarBuilder::new(&vs.root()).with_init(INIT).with_group(p.clone()), D as usize, &config)?;
        let x = x.narrow(0, p.rank() as i64 * n / 2, n / 2);
        let forward = || layer.forward_t(&x, true).map(|_| ());
        if p.rank() == 1 {
            tch::no_grad(forward)
        } else {
            forward()
        }
    })
    .unwrap();
    for (rank, result) in results.into_iter().enumerate() {
        let err = result.expect_err("the ranks disagree").to_string();
        assert!(err.contains("disagree on whether the MoE layer's pass records gradients"), "rank {rank}: {err}");
    }
}

/// The single-process results of a layer scenario.
fn reference(name: &str) -> HashMap<&'static str, Tensor> {
    let (config, n) = scenario(name);
    let (x, g) = data(n);
    let vs = VarStore::new(device());
    let layer = MoeLayer::new(VarBuilder::new(&vs.root()).with_init(INIT), D as usize, &config).unwrap();
    if name == "idle-expert" {
        bias_towards_three_experts(&layer);
    }
    let x = x.set_requires_grad(true);
    let (y, aux) = layer.forward_t(&x, true).unwrap();
    objective(&y, &g, &aux).backward();
    HashMap::from([
        ("y", y.detach()),
        ("x_grad", x.grad()),
        ("w_in_grad", layer.experts.w_in.grad()),
        ("w_out_grad", layer.experts.w_out.grad()),
        ("router_grad", layer.router.weight.grad()),
        ("dropped", aux.dropped_fraction.reshape([1]).to_device(device())),
        ("assignments_per_expert", aux.assignments_per_expert.to_kind(Kind::Float)),
    ])
}

#[cfg(feature = "mpi")]
mod mpi_ranks {
    use super::*;
    use altup_moe::parallel::MpiWorld;
    use std::path::PathBuf;
    use std::process::Command;
    use std::time::{Duration, Instant};

    /// The child process: one rank of `mpirun`. Writes the gathered results (rank 0).
    #[test]
    #[ignore = "run under mpirun by the expert-parallel tests"]
    fn ep_child() {
        let name = std::env::var("ALTUP_MOE_EP_SCENARIO").expect("set by the parent test");
        let out = PathBuf::from(std::env::var("ALTUP_MOE_EP_OUT").expect("set by the parent test"));
        if std::env::var("ALTUP_MOE_EP_DIE").is_ok() {
            let world = MpiWorld::init().unwrap();
            if world.rank() == 1 {
                std::process::exit(3); // dies without finalising MPI
            }
            let mut v = [1.0];
            let _ = world.all_reduce_sum_f64(&mut v); // the others must not hang here
            return;
        }
        let world: Arc<dyn Collectives> = Arc::new(MpiWorld::init().unwrap());
        if let Some(kind) = Trained::from_scenario(&name) {
            return train_run(kind, &out, ProcessGroup::new(world));
        }
        let results = layer_rank(&name, world.clone());
        if world.rank() == 0 {
            let named: Vec<(&str, Tensor)> = results.iter().map(|(n, t)| (*n, t.contiguous())).collect();
            Tensor::write_safetensors(&named, out.join(format!("{name}-{}.safetensors", world.world_size()))).unwrap();
        }
    }
    fn mpirun(ranks: usize, env: &[(&str, &str)]) -> std::process::ExitStatus {
        let mut cmd = Command::new("mpirun");
        cmd.args(["--allow-run-as-root", "--oversubscribe", "-np", &ranks.to_string()])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", "mpi_ranks::ep_child", "--ignored", "--test-threads=1", "--nocapture"]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("mpirun (install openmpi-bin)");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("mpirun did not finish within 120 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn check(name: &str, ranks: usize, dir: &Path) {
        let status = mpirun(ranks, &[("ALTUP_MOE_EP_SCENARIO", name), ("ALTUP_MOE_EP_OUT", dir.to_str().unwrap())]);
        assert!(status.success(), "{name} with {ranks} ranks: mpirun failed ({status})");
        let got: HashMap<String, Tensor> =
            Tensor::read_safetensors(dir.join(format!("{name}-{ranks}.safetensors"))).unwrap().into_iter().collect();
        assert_matches_reference(name, ranks, &got, "MPI");
    }

    #[test]
    fn two_and_four_ranks_equal_one() {
        let dir = tempfile::tempdir().unwrap();
        for ranks in [2, 4] {
            for name in ["dropless", "capacity", "idle-expert"] {
                check(name, ranks, dir.path());
            }
        }
        check("empty-rank", 2, dir.path());
    }

    /// Three optimizer steps — with a checkpoint, a stop and a restore on the expert-parallel
    /// side — give the single-process metrics, weights and optimizer state with 2 and 4 ranks:
    /// an AltUp + top-2 MoE language model, a Switch encoder-decoder, a dense model, mHC (2 streams) + top-2 MoE.
    #[test]
    fn expert_parallel_training_equals_one_process() {
        let root = tempfile::tempdir().unwrap();
        for kind in Trained::ALL {
            let single = root.path().join(format!("{kind:?}-single"));
            train_run(kind, &single, ProcessGroup::single());
            for ranks in [2, 4] {
                let dir = root.path().join(format!("{kind:?}-ranks-{ranks}"));
                let env = [("ALTUP_MOE_EP_SCENARIO", kind.scenario()), ("ALTUP_MOE_EP_OUT", dir.to_str().unwrap())];
                let status = mpirun(ranks, &env);
                assert!(status.success(), "{kind:?} training with {ranks} ranks: mpirun failed ({status})");
                compare_runs(kind, &single, &dir, 1e-5, &format!("MPI R={ranks}"));
            }
        }
    }

    #[test]
    fn a_dead_rank_stops_the_job() {
        let started = Instant::now();
        let status = mpirun(
            2,
            &[("ALTUP_MOE_EP_SCENARIO", "dropless"), ("ALTUP_MOE_EP_OUT", "/tmp"), ("ALTUP_MOE_EP_DIE", "1")],
        );
        assert!(!status.success(), "the job must fail when a rank dies");
        assert!(started.elapsed() < Duration::from_secs(60));
    }
}
