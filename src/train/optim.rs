//! AdamW written over the `VarStore` (Loshchilov & Hutter 2019, "Decoupled Weight Decay
//! Regularization", arXiv 1711.05101, Algorithm 2), with gradient-norm clipping.
//!
//! libtorch's C++ AdamW keeps its state out of reach, so resumable training needs this one: its
//! moments are plain tensors, named after their parameters. The update itself is libtorch's fused
//! AdamW kernel (`_fused_adamw_`, the kernel behind `torch.optim.AdamW(fused=True)`), one call
//! per weight-decay group, and clipping uses multi-tensor norm and scaling: zeroing, clipping and
//! updating launch a fixed number of operations whatever the number of parameter tensors.

use crate::dtype::Cast;
use crate::error::{ensure_config, Result};
use crate::host;
use crate::native::{self, AdamWCoefficients, AdamWGroup};
use crate::nn::role::{roles, ParamRole};
use crate::parallel::ProcessGroup;
use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Device, Kind, Tensor};

/// AdamW hyper-parameters (the learning rate comes from the schedule at each step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    /// First-moment decay β₁.
    pub beta1: f64,
    /// Second-moment decay β₂.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay λ, applied to the parameters created with decay (projections,
    /// embeddings, routers, experts; not norms or AltUp coefficients — see
    /// [`crate::nn::ParamRole`]).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }
    }
}

#[derive(Debug)]
struct ParamState {
    name: String,
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Fixed where the parameter was created ([`ParamRole`]).
    role: ParamRole,
}

/// AdamW over every trainable variable of a `VarStore`, in name order.
#[derive(Debug)]
pub struct AdamW {
    params: Vec<ParamState>,
    config: AdamWConfig,
    /// Updates applied: the kernel's step count `t` (bias correction), a scalar f32 tensor on the
    /// parameters' device, advanced on the device (so that a skipped update leaves it unchanged
    /// without a host read).
    step: Tensor,
    /// The learning rate the next update uses, a scalar f32 tensor on the device
    /// ([`AdamW::set_lr`]).
    lr: Tensor,
    device: Device,
}

impl AdamW {
    /// Collects the trainable variables of `vs` (sorted by name) and zero moments.
    ///
    /// # Errors
    /// [`crate::Error::Config`] for β outside `[0, 1)`, a non-positive eps or a negative decay.
    pub fn new(vs: &VarStore, config: AdamWConfig) -> Result<Self> {
        for (name, b) in [("beta1", config.beta1), ("beta2", config.beta2)] {
            ensure_config((0.0..1.0).contains(&b), || format!("{name} ({b}) must be in [0, 1)"))?;
        }
        ensure_config(config.eps > 0.0, || format!("eps ({}) must be positive", config.eps))?;
        ensure_config(config.weight_decay >= 0.0 && config.weight_decay.is_finite(), || {
            format!("weight_decay ({}) must be >= 0", config.weight_decay)
        })?;
        let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let roles = roles(vs);
        let params = named
            .into_iter()
            .map(|(name, param)| {
                Ok(ParamState {
                    role: roles.get(&name).copied().unwrap_or_default(),
                    exp_avg: param.f_zeros_like()?,
                    exp_avg_sq: param.f_zeros_like()?,
                    name,
                    param,
                })
            })
            .collect::<Result<_>>()?;
        let device = vs.device();
        let scalar = || Tensor::f_zeros([], (Kind::Float, device));
        Ok(Self { params, config, step: scalar()?, lr: scalar()?, device })
    }

    /// Number of updates applied so far (one host read).
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    pub fn step_count(&self) -> Result<u64> {
        Ok(host::f64_scalar(&self.step)? as u64)
    }

    /// Names of the parameters that get weight decay.
    pub fn decayed_parameters(&self) -> Vec<&str> {
        self.params.iter().filter(|p| p.role.weight_decay).map(|p| p.name.as_str()).collect()
    }

    /// The optimizer state as named tensors: `step` (`[1]` i64), and `exp_avg.<param>` /
    /// `exp_avg_sq.<param>` for every parameter (on the CPU).
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![("step".to_string(), Tensor::from_slice(&[self.step_count()? as i64]))];
        for p in &self.params {
            out.push((format!("exp_avg.{}", p.name), host::to_cpu(&p.exp_avg)?));
            out.push((format!("exp_avg_sq.{}", p.name), host::to_cpu(&p.exp_avg_sq)?));
        }
        Ok(out)
    }

    /// Whether the state tensor `name` (from [`AdamW::state_tensors`]) belongs to a parameter
    /// sharded over expert-parallel ranks.
    pub fn is_sharded_state(&self, name: &str) -> bool {
        self.params.iter().any(|p| {
            p.role.sharded && (name == format!("exp_avg.{}", p.name) || name == format!("exp_avg_sq.{}", p.name))
        })
    }

    /// Restores the state written by [`AdamW::state_tensors`] (e.g. read back from a safetensors
    /// file), after checking that it holds exactly this optimizer's parameters with the same
    /// shapes and dtypes.
    ///
    /// # Errors
    /// [`crate::Error::Checkpoint`] naming missing, unexpected or mismatched entries.
    pub fn load_state(&mut self, state: &std::collections::BTreeMap<String, Tensor>) -> Result<()> {
        let expected: Vec<String> = std::iter::once("step".to_string())
            .chain(self.params.iter().flat_map(|p| [format!("exp_avg.{}", p.name), format!("exp_avg_sq.{}", p.name)]))
            .collect();
        let missing: Vec<&String> = expected.iter().filter(|n| !state.contains_key(*n)).collect();
        let unexpected: Vec<&String> = state.keys().filter(|k| !expected.contains(k)).collect();
        if !missing.is_empty() || !unexpected.is_empty() {
            return Err(crate::Error::Checkpoint(format!(
                "optimizer state does not match the model: missing {missing:?}, unexpected {unexpected:?}"
            )));
        }
        for p in &self.params {
            for (kind, target) in [("exp_avg", &p.exp_avg), ("exp_avg_sq", &p.exp_avg_sq)] {
                let src = &state[&format!("{kind}.{}", p.name)];
                if src.size() != target.size() || src.kind() != target.kind() {
                    return Err(crate::Error::Checkpoint(format!(
                        "optimizer state '{kind}.{}' has shape {:?} and dtype {:?}, the parameter has {:?} and {:?}",
                        p.name,
                        src.size(),
                        src.kind(),
                        target.size(),
                        target.kind()
                    )));
                }
            }
        }
        let step = &state["step"];
        let step_value = if step.numel() == 1 && step.kind() == Kind::Int64 { host::i64_scalar(step)? } else { -1 };
        if step_value < 0 {
            return Err(crate::Error::Checkpoint(format!(
                "optimizer 'step' must be one non-negative i64, got {step:?}"
            )));
        }
        tch::no_grad(|| -> Result<()> {
            for p in &mut self.params {
                p.exp_avg.f_copy_(&state[&format!("exp_avg.{}", p.name)])?;
                p.exp_avg_sq.f_copy_(&state[&format!("exp_avg_sq.{}", p.name)])?;
            }
            let _ = self.step.f_fill_(step_value)?;
            Ok(())
        })?;
        Ok(())
    }

    /// The defined gradients, with the parameters, moments and roles they belong to.
    fn with_grads(&self) -> impl Iterator<Item = (&ParamState, Tensor)> {
        self.params.iter().map(|p| (p, p.param.grad())).filter(|(_, g)| g.defined())
    }

    fn grads(&self) -> Vec<Tensor> {
        self.with_grads().map(|(_, g)| g).collect()
    }

    /// Sets every gradient to zero, in place (one multi-tensor operation).
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    pub fn zero_grad(&mut self) -> Result<()> {
        native::foreach_zero_(&self.grads())
    }

    /// Global L2 norm of all gradients, a scalar f32 tensor on the parameters' device (not read
    /// back to the host): the norm of the per-tensor norms (one multi-tensor norm).
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    pub fn grad_norm(&self) -> Result<Tensor> {
        let grads = self.grads();
        if grads.is_empty() {
            return Ok(Tensor::f_zeros([], (Kind::Float, self.device))?);
        }
        native::foreach_norm(&grads, None)?.f_norm()?.cast(Kind::Float)
    }

    /// Makes the gradients those of the whole batch over `group` (the replicated parameters'
    /// gradients summed over ranks; nothing to do in a group of one), then scales all gradients so
    /// that their global norm is at most `max_norm` (no-op for `max_norm <= 0`), on the device.
    /// Returns the global norm before clipping (scalar f32 tensor, not read back).
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure; transport errors.
    pub fn clip_grad_norm(&mut self, group: &ProcessGroup, max_norm: f64) -> Result<Tensor> {
        let replicated: Vec<&Tensor> = self.params.iter().filter(|p| !p.role.sharded).map(|p| &p.param).collect();
        group.all_reduce_grads(&replicated)?;
        let norm = group.global_norm(|| self.grad_norm(), || self.grad_square_sums())?;
        self.clip_to(&norm, max_norm)?;
        Ok(norm)
    }

    /// Sums of squared gradient entries `[replicated, sharded]` (f64, on the device), split by
    /// the parameters' roles (for a global norm over expert-parallel ranks that hold different
    /// slices of the sharded parameters).
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    pub fn grad_square_sums(&self) -> Result<Tensor> {
        let square_sum = |sharded: bool| -> Result<Tensor> {
            let grads: Vec<Tensor> =
                self.with_grads().filter(|(p, _)| p.role.sharded == sharded).map(|(_, g)| g).collect();
            if grads.is_empty() {
                return Ok(Tensor::f_zeros([], (Kind::Double, self.device))?);
            }
            Ok(native::foreach_norm(&grads, Some(Kind::Double))?.f_square()?.f_sum(Kind::Double)?)
        };
        Ok(Tensor::f_stack(&[square_sum(false)?, square_sum(true)?], 0)?)
    }

    /// Scales all gradients by `max_norm / norm` when the global `norm` (a scalar tensor,
    /// computed here or over several ranks) exceeds `max_norm > 0`; nothing is read back to the
    /// host (the scale is `1` otherwise, and for a non-finite norm).
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    pub fn clip_to(&mut self, norm: &Tensor, max_norm: f64) -> Result<()> {
        if max_norm <= 0.0 {
            return Ok(());
        }
        let norm = norm.cast(Kind::Float)?.f_to_device(self.device)?;
        let clip = norm.f_gt(max_norm)?.f_logical_and(&norm.f_isfinite()?)?;
        let scale = norm.f_add_scalar(1e-6)?.f_reciprocal()?.f_mul_scalar(max_norm)?;
        native::foreach_mul_(&self.grads(), &scale.f_where_scalarother(&clip, 1.0)?)
    }

    /// One AdamW update with learning rate `lr`:
    /// `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`, `θ ← θ(1 − lr·λ) − (lr / (1−β₁ᵗ)) · m / (√v / √(1−β₂ᵗ) + ε)`
    /// (bias-corrected moments; `torch.optim.AdamW`'s formula). Parameters without a gradient
    /// are skipped. When `skip` (a scalar f32 tensor on the device, 0 or 1) holds 1, nothing
    /// changes — the step count included — decided on the device without a host read.
    /// [`AdamW::set_lr`] followed by [`AdamW::apply`].
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    pub fn step(&mut self, lr: f64, skip: Option<&Tensor>) -> Result<()> {
        self.set_lr(lr)?;
        self.apply(skip)
    }

    /// Sets the learning rate of the next [`AdamW::apply`] (one fill of a device scalar: a step
    /// captured in a CUDA graph reads the new value at its next replay).
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        let _ = self.lr.f_fill_(lr)?;
        Ok(())
    }

    /// One update with the learning rate last set ([`AdamW::step`] without setting it): only
    /// device work, so that it can be captured.
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    pub fn apply(&mut self, skip: Option<&Tensor>) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            let _ = self.step.f_add_scalar_(1.0)?;
            if let Some(skip) = skip {
                let _ = self.step.f_sub_(skip)?;
            }
            Ok(())
        })?;
        let c = &self.config;
        // One kernel call per weight-decay group and dtype (the kernel takes one of each).
        let mut groups: Vec<((bool, Kind), AdamWGroup)> = Vec::new();
        for (p, g) in self.with_grads() {
            let key = (p.role.weight_decay && c.weight_decay > 0.0, p.param.kind());
            let at = groups.iter().position(|(k, _)| *k == key).unwrap_or_else(|| {
                groups.push((key, AdamWGroup::default()));
                groups.len() - 1
            });
            groups[at].1.push(&p.param, g, &p.exp_avg, &p.exp_avg_sq);
        }
        for ((decay, _), group) in &groups {
            let weight_decay = if *decay { c.weight_decay } else { 0.0 };
            let coefficients = AdamWCoefficients { beta1: c.beta1, beta2: c.beta2, weight_decay, eps: c.eps };
            group.step(&self.step, &self.lr, coefficients, skip)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn first_step_moves_each_weight_by_lr_against_its_gradient_sign() {
        // With bias correction, step 1 gives m̂ = g and v̂ = g², so the update is lr·sign(g).
        let vs = VarStore::new(Device::Cpu);
        let w = vs.root().f_var_copy("w", &Tensor::from_slice(&[1.0f32, -2.0, 3.0])).unwrap();
        let mut opt = AdamW::new(&vs, AdamWConfig { weight_decay: 0.0, ..Default::default() }).unwrap();
        (&w * Tensor::from_slice(&[2.0f32, -0.5, 0.0])).sum(Kind::Float).backward();
        opt.step(0.1, None).unwrap();
        let got = Vec::<f32>::try_from(&w).unwrap();
        assert!((got[0] - 0.9).abs() < 1e-6 && (got[1] + 1.9).abs() < 1e-6 && (got[2] - 3.0).abs() < 1e-6, "{got:?}");
    }

    #[test]
    fn decay_follows_the_role_a_parameter_was_created_with() {
        let vs = VarStore::new(Device::Cpu);
        let block = vs.root() / "blocks" / 0;
        let _ = (&block / "ffn" / "w_in").f_zeros("weight", &[2, 2]);
        let _ = ParamRole::NO_DECAY.on(&(&block / "attn_norm")).f_zeros("weight", &[2]);
        let _ = ParamRole::NO_DECAY.on(&(&block / "ffn")).f_zeros("gain", &[2, 2]);
        let opt = AdamW::new(&vs, AdamWConfig::default()).unwrap();
        assert_eq!(opt.decayed_parameters(), vec!["blocks.0.ffn.w_in.weight"]);
    }

    #[test]
    fn clipping_caps_the_global_norm() {
        let vs = VarStore::new(Device::Cpu);
        let w = vs.root().f_zeros("w", &[2]).unwrap();
        let mut opt = AdamW::new(&vs, AdamWConfig::default()).unwrap();
        (&w * Tensor::from_slice(&[3.0f32, 4.0])).sum(Kind::Float).backward();
        assert!((opt.clip_grad_norm(&ProcessGroup::single(), 1.0).unwrap().double_value(&[]) - 5.0).abs() < 1e-6);
        assert!((opt.grad_norm().unwrap().double_value(&[]) - 1.0).abs() < 1e-5);
        // Below the limit, and for a non-finite norm, nothing is scaled.
        let _ = opt.clip_to(&Tensor::from(0.5f32), 1.0);
        let _ = opt.clip_to(&Tensor::from(f32::NAN), 1.0);
        assert!((opt.grad_norm().unwrap().double_value(&[]) - 1.0).abs() < 1e-5);
    }
}
