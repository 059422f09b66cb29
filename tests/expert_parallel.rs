//! Expert parallelism is exact: R ranks give the single-process results. The multi-process tests
//! (cargo feature `mpi`) launch this test binary under `mpirun` as a child.

use altup_moe::moe::{ExchangeTape, MoeAux, MoeConfig, MoeLayer, SingleProcess};
use altup_moe::nn::{Activation, InitScheme};
use std::sync::Arc;
use tch::{nn::VarStore, Device, Kind, Tensor};

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

/// Global inputs and cotangents, identical on every rank.
fn data(n: i64) -> (Tensor, Tensor) {
    tch::manual_seed(5);
    (Tensor::randn([n, D], (Kind::Float, Device::Cpu)), Tensor::randn([n, D], (Kind::Float, Device::Cpu)))
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

/// One process, one rank: the expert-parallel path (exchanges, tape, segmented backward) equals
/// the local layer.
#[test]
fn single_process_expert_parallel_equals_the_local_layer() {
    for name in ["dropless", "capacity", "idle-expert"] {
        let (config, n) = scenario(name);
        let (x, g) = data(n);
        let local_vs = VarStore::new(Device::Cpu);
        let local = MoeLayer::new(&local_vs.root(), D as usize, &config, &INIT).unwrap();
        let ep_vs = VarStore::new(Device::Cpu);
        let tape = ExchangeTape::new();
        let ep = MoeLayer::new_expert_parallel(&ep_vs.root(), D as usize, &config, &INIT, Arc::new(SingleProcess), tape.clone()).unwrap();
        if name == "idle-expert" {
            bias_towards_three_experts(&local);
            bias_towards_three_experts(&ep);
        }
        let (xa, xb) = (x.copy().set_requires_grad(true), x.copy().set_requires_grad(true));
        let (ya, aux_a) = local.forward_t(&xa, true).unwrap();
        let (yb, aux_b) = ep.forward_t(&xb, true).unwrap();
        assert_eq!(tape.len(), 2, "{name}: one exchange out, one back");
        assert!(ya.allclose(&yb, 1e-6, 1e-6, false), "{name}: outputs");
        assert_eq!(aux_a.dropped_fraction, aux_b.dropped_fraction, "{name}");
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

#[cfg(feature = "mpi")]
mod mpi_ranks {
    use super::*;
    use altup_moe::moe::parallel::{all_gather_tensor, all_reduce_tensor, MpiWorld};
    use altup_moe::moe::Collectives;
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
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
        let (r, ranks) = (world.rank(), world.world_size());
        let (config, n) = scenario(&name);
        let (x, g) = data(n);
        let (start, len) = shard(&name, n, r, ranks);
        let x_local = x.narrow(0, start, len).copy().set_requires_grad(true);
        let g_local = g.narrow(0, start, len);
        let vs = VarStore::new(Device::Cpu);
        let tape = ExchangeTape::new();
        let layer = MoeLayer::new_expert_parallel(&vs.root(), D as usize, &config, &INIT, world.clone(), tape.clone()).unwrap();
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
            let padded = Tensor::zeros([max, D], (Kind::Float, Device::Cpu));
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
            ("dropped", Tensor::from_slice(&[aux.dropped_fraction])),
            ("tokens_per_expert", aux.tokens_per_expert.to_kind(Kind::Float)),
        ];
        if r == 0 {
            let named: Vec<(&str, Tensor)> = results.iter().map(|(n, t)| (*n, t.contiguous())).collect();
            Tensor::write_safetensors(&named, out.join(format!("{name}-{ranks}.safetensors"))).unwrap();
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

    fn reference(name: &str) -> HashMap<&'static str, Tensor> {
        let (config, n) = scenario(name);
        let (x, g) = data(n);
        let vs = VarStore::new(Device::Cpu);
        let layer = MoeLayer::new(&vs.root(), D as usize, &config, &INIT).unwrap();
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
            ("dropped", Tensor::from_slice(&[aux.dropped_fraction])),
            ("tokens_per_expert", aux.tokens_per_expert.to_kind(Kind::Float)),
        ])
    }

    fn check(name: &str, ranks: usize, dir: &Path) {
        let status = mpirun(ranks, &[("ALTUP_MOE_EP_SCENARIO", name), ("ALTUP_MOE_EP_OUT", dir.to_str().unwrap())]);
        assert!(status.success(), "{name} with {ranks} ranks: mpirun failed ({status})");
        let got: HashMap<String, Tensor> =
            Tensor::read_safetensors(dir.join(format!("{name}-{ranks}.safetensors"))).unwrap().into_iter().collect();
        for (key, want) in reference(name) {
            let diff = (&got[key] - &want).abs().max().double_value(&[]);
            eprintln!("{name} R={ranks} {key}: max |diff| = {diff:e}");
            assert!(diff <= 1e-5, "{name} with {ranks} ranks: {key} differs by {diff}");
        }
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

    #[test]
    fn a_dead_rank_stops_the_job() {
        let started = Instant::now();
        let status = mpirun(2, &[("ALTUP_MOE_EP_SCENARIO", "dropless"), ("ALTUP_MOE_EP_OUT", "/tmp"), ("ALTUP_MOE_EP_DIE", "1")]);
        assert!(!status.success(), "the job must fail when a rank dies");
        assert!(started.elapsed() < Duration::from_secs(60));
    }
}
