//! AdamW on libtorch's fused kernel: equal to `torch.optim.AdamW` (the venv's PyTorch, its
//! single-tensor code path) and to the update written out formula by formula, over 100 steps
//! with a changing learning rate, two weight-decay groups and a parameter that never gets a
//! gradient; a skipped update changes nothing; and zeroing, clipping and updating dispatch the
//! same number of ATen operations whatever the number of parameter tensors.

mod common;

use altup_moe::io::named_variables;
use altup_moe::nn::ParamRole;
use altup_moe::parallel::ProcessGroup;
use altup_moe::runtime::OpCounter;
use altup_moe::train::{AdamW, AdamWConfig};
use std::collections::BTreeMap;
use tch::{nn::VarStore, Device, Kind, Tensor};

const STEPS: usize = 100;
const TOLERANCE: f64 = 1e-6;

/// The test's parameters: `(name, shape, decayed)`; `unused.w` never gets a gradient.
const PARAMS: [(&str, &[i64], bool); 5] = [
    ("layers.0.w", &[4, 3], true),
    ("layers.0.b", &[3], false),
    ("norm.weight", &[5], false),
    ("head.w", &[2, 2, 2], true),
    ("unused.w", &[3], true),
];

fn config() -> AdamWConfig {
    AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }
}

/// Warm-up then decay, as a schedule gives it.
fn lr_at(step: usize) -> f64 {
    if step < 10 {
        1e-2 * (step + 1) as f64 / 10.0
    } else {
        1e-2 * (1.0 - (step - 10) as f64 / STEPS as f64)
    }
}

/// Deterministic values in `[-1, 1]` of `shape`, different for each `seed`, drawn without
/// libtorch's global generator (tests run in parallel threads that share it).
fn values(shape: &[i64], seed: f64) -> Tensor {
    let n: i64 = shape.iter().product();
    (Tensor::arange(n, (Kind::Double, Device::Cpu)) * 0.618_034 + seed).sin().sin().to_kind(Kind::Float).view(shape)
}

/// A variable store with the test's parameters.
fn store() -> VarStore {
    let vs = VarStore::new(Device::Cpu);
    for (i, (name, shape, decayed)) in PARAMS.into_iter().enumerate() {
        let (path, leaf) = name.rsplit_once('.').unwrap();
        let mut at = vs.root();
        for part in path.split('.') {
            at = &at / part;
        }
        let at = if decayed { at } else { ParamRole::NO_DECAY.on(&at) };
        let _ = at.var_copy(leaf, &(values(shape, i as f64) * 2.0));
    }
    vs
}

/// Every step's gradient of every parameter but `unused.w`, `[STEPS, *shape]` (magnitudes
/// spread over three orders).
fn gradients() -> BTreeMap<String, Tensor> {
    PARAMS
        .iter()
        .enumerate()
        .filter(|(_, (name, _, _))| *name != "unused.w")
        .map(|(i, (name, shape, _))| {
            let mut full = vec![STEPS as i64];
            full.extend_from_slice(shape);
            let scale = Tensor::logspace(-2.0, 1.0, STEPS as i64, 10.0, (Kind::Float, Device::Cpu));
            let view: Vec<i64> = std::iter::once(STEPS as i64).chain(shape.iter().map(|_| 1)).collect();
            (name.to_string(), values(&full, 100.0 + i as f64) * scale.view(view.as_slice()))
        })
        .collect()
}

/// Our AdamW, each step's gradient put in place by a backward pass of `Σ p · g`.
fn ours(vs: &VarStore, grads: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    let params = named_variables(vs).unwrap();
    let mut optimizer = AdamW::new(vs, config()).unwrap();
    for step in 0..STEPS {
        optimizer.zero_grad().unwrap();
        let loss = grads.iter().map(|(name, g)| (&params[name] * g.get(step as i64)).sum(Kind::Float));
        loss.reduce(|a, b| a + b).unwrap().backward();
        optimizer.step(lr_at(step), None).unwrap();
    }
    assert_eq!(optimizer.step_count().unwrap(), STEPS as u64);
    named_variables(vs).unwrap().into_iter().map(|(n, t)| (n, t.detach().copy())).collect()
}

/// The update written out tensor by tensor (the formula of Loshchilov & Hutter's Algorithm 2
/// with bias correction, as this crate computed it before the fused kernel).
fn by_formula(vs: &VarStore, grads: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    let c = config();
    let decayed: Vec<&str> = PARAMS.iter().filter(|p| p.2).map(|p| p.0).collect();
    let mut out = BTreeMap::new();
    for (name, param) in named_variables(vs).unwrap() {
        let mut p = param.detach().copy();
        if let Some(g) = grads.get(&name) {
            let (mut m, mut v) = (p.zeros_like(), p.zeros_like());
            for step in 0..STEPS {
                let (g, lr, t) = (g.get(step as i64), lr_at(step), (step + 1) as i32);
                m = &m * c.beta1 + &g * (1.0 - c.beta1);
                v = &v * c.beta2 + g.square() * (1.0 - c.beta2);
                if decayed.contains(&name.as_str()) {
                    p = &p * (1.0 - lr * c.weight_decay);
                }
                let denom = (&v / (1.0 - c.beta2.powi(t))).sqrt() + c.eps;
                p = &p - &m / denom * (lr / (1.0 - c.beta1.powi(t)));
            }
        }
        out.insert(name, p);
    }
    out
}

/// `torch.optim.AdamW` in the venv (tests/python/adamw_reference.py).
fn torch_adamw(vs: &VarStore, grads: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
    let mut tensors: Vec<(String, Tensor)> =
        named_variables(vs).unwrap().into_iter().map(|(n, t)| (format!("param.{n}"), t.detach().copy())).collect();
    tensors.extend(grads.iter().map(|(n, g)| (format!("grad.{n}"), g.shallow_clone())));
    altup_moe::io::write_tensors(&input, &tensors).unwrap();
    let c = config();
    let config = serde_json::json!({
        "names": PARAMS.iter().map(|p| p.0).collect::<Vec<_>>(),
        "decayed": PARAMS.iter().filter(|p| p.2).map(|p| p.0).collect::<Vec<_>>(),
        "lr": (0..STEPS).map(lr_at).collect::<Vec<_>>(),
        "beta1": c.beta1, "beta2": c.beta2, "eps": c.eps, "weight_decay": c.weight_decay,
    });
    let script = common::source_file("tests/python/adamw_reference.py");
    let run = std::process::Command::new(common::python())
        .arg(&script)
        .arg(&input)
        .arg(&output)
        .arg(config.to_string())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    altup_moe::io::read_tensors(&output).unwrap().into_iter().collect()
}

fn max_diff(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> f64 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter().map(|(n, t)| (t - &b[n]).abs().max().double_value(&[])).fold(0.0, f64::max)
}

#[test]
fn a_hundred_steps_equal_torch_adamw_and_the_formula() {
    let grads = gradients();
    let reference = torch_adamw(&store(), &grads);
    let formula = by_formula(&store(), &grads);
    let vs = store();
    let initial: BTreeMap<String, Tensor> =
        named_variables(&vs).unwrap().into_iter().map(|(n, t)| (n, t.detach().copy())).collect();
    let ours = ours(&vs, &grads);
    eprintln!(
        "max |ours − torch| = {:.2e}, max |ours − formula| = {:.2e}",
        max_diff(&ours, &reference),
        max_diff(&ours, &formula)
    );
    assert!(max_diff(&ours, &reference) < TOLERANCE, "vs torch.optim.AdamW: {}", max_diff(&ours, &reference));
    assert!(max_diff(&ours, &formula) < TOLERANCE, "vs the formula: {}", max_diff(&ours, &formula));
    // The comparison can fail: the parameters moved far beyond the tolerance, but not the one
    // without a gradient.
    assert!(max_diff(&ours, &initial) > 0.05, "{}", max_diff(&ours, &initial));
    assert!((&ours["unused.w"] - &initial["unused.w"]).abs().max().double_value(&[]) == 0.0);
}

#[test]
fn a_skipped_update_changes_nothing_and_a_kept_one_is_a_plain_update() {
    let vs = store();
    let params = named_variables(&vs).unwrap();
    let grads = gradients();
    let mut optimizer = AdamW::new(&vs, config()).unwrap();
    let backward = |step: i64| {
        let loss = grads.iter().map(|(name, g)| (&params[name] * g.get(step)).sum(Kind::Float));
        loss.reduce(|a, b| a + b).unwrap().backward();
    };
    backward(0);
    optimizer.step(1e-2, None).unwrap();
    let snapshot = |o: &AdamW| -> Vec<(String, Tensor)> {
        let mut s: Vec<(String, Tensor)> =
            named_variables(&vs).unwrap().into_iter().map(|(n, t)| (n, t.copy())).collect();
        s.extend(o.state_tensors().unwrap());
        s
    };
    let before = snapshot(&optimizer);
    optimizer.zero_grad().unwrap();
    backward(1);
    optimizer.step(1e-2, Some(&Tensor::from(1.0f32))).unwrap();
    let after = snapshot(&optimizer);
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        assert!(a.equal(b), "{name} changed in a skipped update");
    }
    // A kept update (flag 0) equals one without a flag.
    let twin = store();
    let mut plain = AdamW::new(&twin, config()).unwrap();
    let twin_params = named_variables(&twin).unwrap();
    for step in 0..2 {
        plain.zero_grad().unwrap();
        let loss = grads.iter().map(|(name, g)| (&twin_params[name] * g.get(step)).sum(Kind::Float));
        loss.reduce(|a, b| a + b).unwrap().backward();
        plain.step(1e-2, None).unwrap();
    }
    optimizer.step(1e-2, Some(&Tensor::from(0.0f32))).unwrap();
    for (name, p) in named_variables(&vs).unwrap() {
        assert!(p.equal(&twin_params[&name]), "{name}");
    }
    assert_eq!(optimizer.step_count().unwrap(), 2);
}

/// Zeroing, clipping (with the norm) and one update of `n` parameter tensors: the ATen
/// operations dispatched.
fn optimizer_ops(n: usize) -> i64 {
    let vs = VarStore::new(Device::Cpu);
    let params: Vec<Tensor> = (0..n)
        .map(|i| {
            let at = if i % 2 == 0 { vs.root() / "w" } else { ParamRole::NO_DECAY.on(&(vs.root() / "g")) };
            at.var_copy(&i.to_string(), &values(&[8, 4], i as f64))
        })
        .collect();
    let mut optimizer = AdamW::new(&vs, config()).unwrap();
    params.iter().map(|p| p.square().sum(Kind::Float)).reduce(|a, b| a + b).unwrap().backward();
    let counter = OpCounter::start().unwrap();
    optimizer.zero_grad().unwrap();
    let norm = optimizer.clip_grad_norm(&ProcessGroup::single(), 1.0).unwrap();
    optimizer.step(1e-3, Some(&norm.isfinite().logical_not().to_kind(Kind::Float))).unwrap();
    counter.counts().top_level
}

#[test]
fn zeroing_clipping_and_updating_dispatch_a_fixed_number_of_operations() {
    let (few, many) = (optimizer_ops(4), optimizer_ops(64));
    eprintln!("operations: {few} for 4 parameter tensors, {many} for 64");
    assert_eq!(few, many, "operations for 4 and 64 parameter tensors");
    assert!(few <= 24, "{few} operations");
}
