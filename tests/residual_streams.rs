//! Residual-stream methods (Hyper-Connections, mHC): one connection against its reference
//! implementation in the venv (forward and every gradient, float64), the mixing invariants, and
//! whole models: at initialisation each method gives the plain model's logits, cached decoding
//! equals the full pass, and a model with trained-away-from-init weights still does.

mod common;

use altup_moe::io::named_variables;
use altup_moe::model::{Arch, LanguageModel, ModelConfig};
use altup_moe::residual::{
    sinkhorn_knopp, HyperConnection, Laurel, ManifoldHyperConnection, ResidualConfig, SublayerConnection,
};
use common::{copy_shared, device, tiny};
use std::collections::BTreeMap;
use tch::{nn::VarStore, Device, Kind, Tensor};

const B: i64 = 2;
const T: i64 = 3;
const D: i64 = 8;

/// Sets every variable of `vs` to `N(mean, std²)` draws from the seeded global generator (the
/// parity tests must not run at the identity-like initialisation, where many terms vanish).
fn perturb(vs: &VarStore, std: f64) {
    tch::no_grad(|| {
        for (_, var) in named_variables(vs).unwrap() {
            let noise = Tensor::randn(var.size(), (var.kind(), var.device())) * std;
            let _ = var.shallow_clone().g_add_(&noise);
        }
    });
}

/// Runs `script` (tests/python) on `inputs` and returns its outputs.
fn reference(script: &str, inputs: &[(String, Tensor)], config: serde_json::Value) -> BTreeMap<String, Tensor> {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
    altup_moe::io::write_tensors(&input, inputs).unwrap();
    let run = std::process::Command::new(common::python())
        .arg(common::source_file(&format!("tests/python/{script}")))
        .arg(&input)
        .arg(&output)
        .arg(config.to_string())
        .output()
        .unwrap();
    assert!(run.status.success(), "{script}: {}", String::from_utf8_lossy(&run.stderr));
    altup_moe::io::read_tensors(&output).unwrap().into_iter().collect()
}

/// Our connection in float64 around the linear branch `x ↦ x Wᵀ`: the output streams and the
/// gradients of `(output · upstream).sum()` with respect to the streams, `W` and every parameter.
struct Run {
    output: Tensor,
    grads: BTreeMap<String, Tensor>,
    inputs: Vec<(String, Tensor)>,
}

fn run_ours(vs: &VarStore, connection: &dyn SublayerConnection, n: i64) -> Run {
    let streams = Tensor::randn([B, T, n, D], (Kind::Double, Device::Cpu)).set_requires_grad(true);
    let weight = (Tensor::randn([D, D], (Kind::Double, Device::Cpu)) * 0.3).set_requires_grad(true);
    let upstream = Tensor::randn([B, T, n, D], (Kind::Double, Device::Cpu));
    let output = connection.apply(&streams, &mut |x: &Tensor| Ok(x.matmul(&weight.tr()))).unwrap();
    (&output * &upstream).sum(Kind::Double).backward();
    let params = named_variables(vs).unwrap();
    let mut grads: BTreeMap<String, Tensor> =
        params.iter().map(|(name, p)| (name.clone(), p.grad().detach().copy())).collect();
    grads.insert("streams".into(), streams.grad().copy());
    grads.insert("branch.weight".into(), weight.grad().copy());
    let mut inputs: Vec<(String, Tensor)> = params.into_iter().map(|(name, p)| (name, p.detach().copy())).collect();
    inputs.push(("branch.weight".into(), weight.detach().copy()));
    inputs.push(("upstream".into(), upstream));
    inputs.push(("streams".into(), streams.detach().copy()));
    Run { output: output.detach(), grads, inputs }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// `[B, T, n, D]` ↔ the package's `[B·n, T, D]` (row `b·n + s`).
fn to_package(x: &Tensor) -> Tensor {
    let [b, t, n, d] = x.size()[..] else { panic!("{:?}", x.size()) };
    x.permute([0, 2, 1, 3]).reshape([b * n, t, d])
}

fn from_package(x: &Tensor, n: i64) -> Tensor {
    let [bn, t, d] = x.size()[..] else { panic!("{:?}", x.size()) };
    x.reshape([bn / n, n, t, d]).permute([0, 2, 1, 3])
}

/// Static and dynamic Hyper-Connections with 2 and 4 streams equal the `hyper-connections`
/// package's `HyperConnections` (forward and every gradient within 1e-10 in float64), and our
/// initial weights are the package's.
#[test]
fn hyper_connections_match_the_reference_package() {
    tch::manual_seed(1);
    for (n, dynamic, index) in [(2, false, 1), (4, false, 2), (2, true, 0), (4, true, 3)] {
        let what = format!("n = {n}, dynamic = {dynamic}");
        let mut vs = VarStore::new(Device::Cpu);
        let hc = HyperConnection::new(&vs.root(), D as usize, n as usize, dynamic, index).unwrap();
        let config = serde_json::json!({"n": n, "dim": D, "dynamic": dynamic, "layer_index": index});
        // The initial weights (before any perturbation) are the package's.
        let dir = tempfile::tempdir().unwrap();
        let init_path = dir.path().join("init.safetensors");
        let run = std::process::Command::new(common::python())
            .arg(common::source_file("tests/python/hyper_connections_reference.py"))
            .args(["--init", &config.to_string()])
            .arg(&init_path)
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let init: BTreeMap<String, Tensor> = altup_moe::io::read_tensors(&init_path).unwrap().into_iter().collect();
        let ours = named_variables(&vs).unwrap();
        assert_eq!(ours.keys().collect::<Vec<_>>(), init.keys().collect::<Vec<_>>(), "{what}: parameter names");
        for (name, value) in &ours {
            assert!(value.equal(&init[name].reshape(value.size())), "{what}: initial {name}");
        }

        vs.double();
        perturb(&vs, 0.5);
        let mine = run_ours(&vs, &hc, n);
        let inputs: Vec<(String, Tensor)> = mine
            .inputs
            .iter()
            .map(|(k, v)| {
                let v = if k == "streams" || k == "upstream" { to_package(v) } else { v.shallow_clone() };
                (k.clone(), v)
            })
            .collect();
        let theirs = reference("hyper_connections_reference.py", &inputs, config);
        let out_diff = max_diff(&mine.output, &from_package(&theirs["output"], n));
        assert!(out_diff < 1e-10, "{what}: output differs by {out_diff}");
        for (name, grad) in &mine.grads {
            let reference = &theirs[&format!("grad.{name}")];
            let reference = if name == "streams" { from_package(reference, n) } else { reference.reshape(grad.size()) };
            let diff = max_diff(grad, &reference);
            assert!(diff < 1e-10, "{what}: gradient of {name} differs by {diff}");
            assert!(grad.abs().max().double_value(&[]) > 1e-6, "{what}: the gradient of {name} is zero");
        }
    }
}

/// mHC equals a transcription of the paper's equations (tests/python/mhc_reference.py, §4.2
/// eq. 3, 7–9): forward, the three maps' effect and every gradient within 1e-10 in float64.
#[test]
fn mhc_matches_the_papers_equations() {
    tch::manual_seed(2);
    for (n, iters) in [(2, 20), (4, 20), (4, 3)] {
        let what = format!("n = {n}, {iters} Sinkhorn iterations");
        let mut vs = VarStore::new(Device::Cpu);
        let eps = 1e-6;
        let mhc = ManifoldHyperConnection::new(&vs.root(), D as usize, n as usize, iters, eps).unwrap();
        vs.double();
        perturb(&vs, 0.3);
        let mine = run_ours(&vs, &mhc, n);
        let config = serde_json::json!({"n": n, "dim": D, "impl": "paper", "sinkhorn_iters": iters, "rms_eps": eps});
        let theirs = reference("mhc_reference.py", &mine.inputs, config);
        let out_diff = max_diff(&mine.output, &theirs["output"]);
        assert!(out_diff < 1e-10, "{what}: output differs by {out_diff}");
        for (name, grad) in &mine.grads {
            let diff = max_diff(grad, &theirs[&format!("grad.{name}")].reshape(grad.size()));
            assert!(diff < 1e-10, "{what}: gradient of {name} differs by {diff}");
            assert!(grad.abs().max().double_value(&[]) > 1e-8, "{what}: the gradient of {name} is zero");
        }
    }
}

/// Sinkhorn–Knopp gives non-negative matrices whose rows sum to 1 (to rounding) and whose
/// columns sum to 1 within 1e-4 after the paper's 20 iterations, for logits of the scale the
/// initialisation gives and well beyond; mHC's read and write weights are non-negative.
#[test]
fn the_mixing_matrix_is_doubly_stochastic_and_the_maps_non_negative() {
    tch::manual_seed(3);
    let logits =
        Tensor::randn([64, 4, 4], (Kind::Double, Device::Cpu)) - Tensor::eye(4, (Kind::Double, Device::Cpu)) * 4.0;
    let m = sinkhorn_knopp(&logits, 20).unwrap();
    let rows = (m.sum_dim_intlist(-1, false, Kind::Double) - 1.0).abs().max().double_value(&[]);
    let columns = (m.sum_dim_intlist(-2, false, Kind::Double) - 1.0).abs().max().double_value(&[]);
    assert!(rows < 1e-12, "rows off by {rows}");
    assert!(columns < 1e-4, "columns off by {columns}");
    assert!(m.min().double_value(&[]) >= 0.0);
    // Fewer iterations converge less: the test can tell.
    let m1 = sinkhorn_knopp(&logits, 1).unwrap();
    let columns1 = (m1.sum_dim_intlist(-2, false, Kind::Double) - 1.0).abs().max().double_value(&[]);
    assert!(columns1 > 1e-3, "one iteration already converged ({columns1})");

    let vs = VarStore::new(Device::Cpu);
    let mhc = ManifoldHyperConnection::new(&vs.root(), D as usize, 4, 20, 1e-6).unwrap();
    perturb(&vs, 1.0);
    let maps = mhc.maps(&Tensor::randn([B, T, 4, D], (Kind::Float, Device::Cpu))).unwrap();
    assert!(maps.pre.min().double_value(&[]) >= 0.0 && maps.post.min().double_value(&[]) >= 0.0);
    assert!(maps.post.max().double_value(&[]) <= 2.0);
    let rows = (maps.res.sum_dim_intlist(-1, false, Kind::Float) - 1.0).abs().max().double_value(&[]);
    assert!(rows < 1e-5, "rows off by {rows}");
}

/// LAuReL-LR in Gemma 3n's form equals transformers' `Gemma3nTextLaurelBlock` (forward and
/// every gradient within 1e-10 in float64), under transformers' parameter names.
#[test]
fn laurel_low_rank_matches_gemma_3n() {
    tch::manual_seed(5);
    let mut vs = VarStore::new(Device::Cpu);
    let (rank, eps) = (3, 1e-6);
    let laurel = Laurel::new(&vs.root(), D as usize, false, (rank, true), 0, eps).unwrap();
    vs.double();
    perturb(&vs, 0.3);
    let x = Tensor::randn([B, T, D], (Kind::Double, Device::Cpu)).set_requires_grad(true);
    let upstream = Tensor::randn([B, T, D], (Kind::Double, Device::Cpu));
    let output = laurel.augment(&x).unwrap();
    (&output * &upstream).sum(Kind::Double).backward();
    let params = named_variables(&vs).unwrap();
    let mut inputs: Vec<(String, Tensor)> = params.iter().map(|(n, p)| (n.clone(), p.detach().copy())).collect();
    inputs.push(("x".into(), x.detach().copy()));
    inputs.push(("upstream".into(), upstream));
    let config = serde_json::json!({"dim": D, "rank": rank, "rms_norm_eps": eps});
    let theirs = reference("laurel_reference.py", &inputs, config);
    assert!(max_diff(&output.detach(), &theirs["output"]) < 1e-10);
    assert!(max_diff(&x.grad(), &theirs["grad.x"]) < 1e-10);
    assert_eq!(params.len(), 3);
    for (name, p) in &params {
        let diff = max_diff(&p.grad(), &theirs[&format!("grad.{name}")]);
        assert!(diff < 1e-10, "gradient of {name} differs by {diff}");
        assert!(p.grad().abs().max().double_value(&[]) > 1e-8, "the gradient of {name} is zero");
    }
}

/// LAuReL's variants by hand: RW is `2σ(a)·f(x) + 2σ(b)·(x + B A x)`, PA adds `γ_j` times the
/// residual `j` sublayers ago and shifts the slots.
#[test]
fn laurel_variants_follow_their_equations() {
    tch::manual_seed(6);
    let mut vs = VarStore::new(Device::Cpu);
    let laurel = Laurel::new(&vs.root(), D as usize, true, (2, false), 3, 1e-6).unwrap();
    vs.double();
    perturb(&vs, 0.4);
    let p = named_variables(&vs).unwrap();
    let stream = Tensor::randn([B, T, 3, D], (Kind::Double, Device::Cpu));
    let weight = Tensor::randn([D, D], (Kind::Double, Device::Cpu));
    let f = |x: &Tensor| x.matmul(&weight.tr());
    let out = laurel.apply(&stream, &mut |x: &Tensor| Ok(f(x))).unwrap();
    let x = stream.select(2, 0);
    let low_rank = x.matmul(&p["linear_left.weight"].tr()).matmul(&p["linear_right.weight"].tr());
    let gamma = &p["gamma"];
    let previous = stream.select(2, 1) * gamma.get(0) + stream.select(2, 2) * gamma.get(1);
    let alpha = p["alpha"].sigmoid() * 2.0;
    let beta = p["beta"].sigmoid() * 2.0;
    let expected = f(&x) * alpha + (&x + low_rank + previous) * beta;
    assert!(max_diff(&out.select(2, 0), &expected) < 1e-12);
    assert!(max_diff(&out.narrow(2, 1, 2), &stream.narrow(2, 0, 2)) == 0.0, "the slots shift by one");
    // At initialisation LR's B is zero and A is the column-orthogonal pattern 1/√(rD).
    let fresh = VarStore::new(Device::Cpu);
    let _ = Laurel::new(&fresh.root(), D as usize, true, (2, false), 3, 1e-6).unwrap();
    let init = named_variables(&fresh).unwrap();
    let left = &init["linear_left.weight"];
    let expected_left = Tensor::from_slice(&[0.25f32, 0.0, 0.25, 0.0, 0.25, 0.0, 0.25, 0.0]);
    assert!(left.get(0).equal(&expected_left), "{left}");
    assert_eq!(init["linear_right.weight"].abs().max().double_value(&[]), 0.0);
}

/// Every method, with and without MoE.
fn methods() -> Vec<(String, ModelConfig)> {
    let mut out = Vec::new();
    for arch in [Arch::Dense, Arch::Switch] {
        for residual in [
            ResidualConfig::HyperConnections { streams: 2, dynamic: false },
            ResidualConfig::HyperConnections { streams: 4, dynamic: true },
            ResidualConfig::Mhc { streams: 4, sinkhorn_iters: 20 },
            ResidualConfig::Laurel { rw: true, rank: 4, post_norm: false, previous: 0 },
            ResidualConfig::Laurel { rw: false, rank: 0, post_norm: false, previous: 3 },
        ] {
            let config = ModelConfig { residual, ..tiny(arch) };
            out.push((format!("{arch} + {residual:?}"), config));
        }
    }
    out
}

/// At initialisation every method gives the plain model's logits (same seed, so the same block
/// weights): Hyper-Connections read one stream, write to all and do not mix; mHC reads `1/n` of
/// each, writes weight 1 and mixes with rows summing to 1, and the streams, all equal, average to
/// the plain residual. The methods' own weights are the only extra parameters.
#[test]
fn every_method_starts_as_the_plain_model() {
    let tokens = Tensor::randint(256, [2, 10], (Kind::Int64, device()));
    for (name, config) in methods() {
        let plain_config = ModelConfig { residual: ResidualConfig::Plain, ..config.clone() };
        let (vs, plain_vs) = (VarStore::new(device()), VarStore::new(device()));
        let model = LanguageModel::new(&vs.root(), &config).unwrap();
        let plain = LanguageModel::new(&plain_vs.root(), &plain_config).unwrap();
        let extra = copy_shared(&plain_vs, &vs);
        assert!(!extra.is_empty() && extra.iter().all(|n| n.contains(".residual.")), "{name}: {extra:?}");
        let counted = config.param_counts().residual;
        let created: i64 = extra.iter().map(|n| named_variables(&vs).unwrap()[n].numel() as i64).sum();
        assert_eq!(counted as i64, created, "{name}: param_counts().residual");
        assert_eq!(config.param_counts().total - counted, plain_config.param_counts().total, "{name}");
        let a = model.forward_t(&tokens, false).unwrap().logits;
        let b = plain.forward_t(&tokens, false).unwrap().logits;
        let diff = max_diff(&a, &b);
        assert!(diff < 1e-5, "{name}: logits differ from the plain model's by {diff}");
        // Away from the initialisation the method is not the plain model any more.
        perturb(&vs, 0.2);
        let c = model.forward_t(&tokens, false).unwrap().logits;
        assert!(max_diff(&c, &b) > 1e-3, "{name}");
    }
}

/// Prefill then one token at a time equals the full pass, with the methods' weights away from
/// their initialisation (the dynamic weights are per token, so caching keys and values is exact).
#[test]
fn cached_decoding_equals_the_full_pass() {
    tch::manual_seed(4);
    let gemma = ResidualConfig::Laurel { rw: true, rank: 4, post_norm: true, previous: 2 };
    let with_gemma = std::iter::once((
        "dense + Gemma 3n's LAuReL".to_string(),
        ModelConfig { residual: gemma, ..tiny(Arch::Dense) },
    ));
    for (name, config) in methods().into_iter().chain(with_gemma) {
        let vs = VarStore::new(device());
        let model = LanguageModel::new(&vs.root(), &config).unwrap();
        perturb(&vs, 0.05);
        let tokens = Tensor::randint(256, [2, 11], (Kind::Int64, device()));
        let full = model.forward_t(&tokens, false).unwrap().logits;
        let mut cache = model.new_cache();
        let mut pieces = vec![model.forward_cached(&tokens.narrow(1, 0, 4), &mut cache).unwrap().logits];
        for t in 4..11 {
            pieces.push(model.forward_cached(&tokens.narrow(1, t, 1), &mut cache).unwrap().logits);
        }
        let diff = max_diff(&Tensor::cat(&pieces, 1), &full);
        assert!(diff < 1e-5, "{name}: cached decoding differs by {diff}");
    }
}

/// A residual-stream method cannot be combined with AltUp, and bad settings are named.
#[test]
fn bad_settings_are_refused_by_name() {
    let altup =
        ModelConfig { residual: ResidualConfig::HyperConnections { streams: 2, dynamic: false }, ..tiny(Arch::AltUp) };
    let err = altup.validate().unwrap_err().to_string();
    assert!(
        err.contains("residual static-hyper-connections:2 keeps several streams and cannot be combined with AltUp"),
        "{err}"
    );
    for (residual, expected) in [
        (ResidualConfig::HyperConnections { streams: 0, dynamic: true }, "residual streams (0) must be at least 1"),
        (ResidualConfig::Laurel { rw: false, rank: 0, post_norm: false, previous: 1 }, "LAuReL needs at least one"),
        (ResidualConfig::Laurel { rw: true, rank: 0, post_norm: true, previous: 0 }, "post_norm needs the low-rank"),
        (ResidualConfig::Mhc { streams: 1, sinkhorn_iters: 20 }, "mHC needs at least 2 residual streams, got 1"),
        (ResidualConfig::Mhc { streams: 4, sinkhorn_iters: 0 }, "residual sinkhorn_iters (0) must be at least 1"),
    ] {
        let err = ModelConfig { residual, ..tiny(Arch::Dense) }.validate().unwrap_err().to_string();
        assert!(err.contains(expected), "{residual:?}: {err}");
    }
}
