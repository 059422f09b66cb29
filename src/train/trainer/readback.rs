//! What a training step copies to the host, and how it is unpacked: every micro-batch's LM loss
//! and MoE-layer losses, the gradient norm, and the last micro-batch's per-layer statistics stay
//! on the device during the step and come back in one copy after the backward ([`StepReadback`]),
//! which is also when the non-finite guard looks at them ([`StepValues`]).

use crate::dtype::Cast;
use crate::error::Result;
use crate::host;
use crate::model::{ModelAux, StackKind};
use crate::parallel::ProcessGroup;
use crate::train::stats::{MoeLayerMetrics, StepStats};
use crate::train::task::TaskLoss;
use tch::{Kind, Tensor};

/// One MoE layer's statistics of a forward pass, still on the device.
struct LayerRecord {
    stack: StackKind,
    layer: usize,
    /// `[balance, z-loss, entropy]`, detached, f32.
    losses: Tensor,
    /// Assignments per expert, `[E]` i64.
    assignments_per_expert: Tensor,
    dropped_fraction: f64,
}

impl LayerRecord {
    /// The MoE layers of one forward pass of every stack.
    fn of(aux: &ModelAux) -> Result<Vec<Self>> {
        aux.moe_layers_by_stack()
            .map(|(stack, layer, m)| {
                let parts = [&m.load_balancing_loss, &m.z_loss, &m.router_entropy];
                let losses = Tensor::f_stack(
                    &parts.map(|t| t.f_detach()?.cast(Kind::Float)).into_iter().collect::<Result<Vec<_>>>()?,
                    0,
                )?;
                Ok(Self {
                    stack,
                    layer,
                    losses,
                    assignments_per_expert: m.assignments_per_expert.shallow_clone(),
                    dropped_fraction: m.dropped_fraction,
                })
            })
            .collect()
    }

    /// The metrics from the values read back: `losses` = balance, z-loss, entropy.
    fn metrics(&self, losses: &[f64], per_expert: &[f64]) -> MoeLayerMetrics {
        let assignments_per_expert: Vec<i64> = per_expert.iter().map(|&v| v as i64).collect();
        let mean = assignments_per_expert.iter().sum::<i64>() as f64 / assignments_per_expert.len().max(1) as f64;
        let max = assignments_per_expert.iter().copied().max().unwrap_or(0) as f64;
        MoeLayerMetrics {
            stack: self.stack,
            layer: self.layer,
            load_balancing_loss: losses[0],
            z_loss: losses[1],
            dropped_fraction: self.dropped_fraction,
            router_entropy: losses[2],
            max_load: if mean > 0.0 { max / mean } else { 0.0 },
            assignments_per_expert,
        }
    }
}

/// A step's figures on the device, gathered micro-batch by micro-batch.
#[derive(Default)]
pub(super) struct StepReadback {
    /// LM loss per micro-batch, `[1]` f64 each.
    losses: Vec<Tensor>,
    /// Per micro-batch and MoE layer: `[balance, z-loss]` f32.
    routers: Vec<Tensor>,
    /// The last micro-batch's MoE layers.
    layers: Vec<LayerRecord>,
    /// Sum over micro-batches of the mean dropped fraction over MoE layers (host values).
    dropped_sum: f64,
}

impl StepReadback {
    /// Records one micro-batch's loss and MoE-layer statistics (nothing is read).
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    pub(super) fn add(&mut self, loss: &TaskLoss) -> Result<()> {
        self.losses.push(loss.loss.f_detach()?.cast(Kind::Double)?.f_reshape([1])?);
        self.dropped_sum += loss.aux.dropped_fraction().unwrap_or(0.0);
        self.layers = LayerRecord::of(&loss.aux)?;
        for layer in &self.layers {
            self.routers.push(layer.losses.f_narrow(0, 0, 2)?);
        }
        Ok(())
    }

    /// The step's one read: `[losses (micro-batches), grad norm, routers (micro-batches × layers
    /// × 2), the last micro-batch's layers (balance, z-loss, entropy, tokens per expert)]`.
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    pub(super) fn read(self, grad_norm: &Tensor) -> Result<StepValues> {
        let accum = self.losses.len();
        let mut parts: Vec<Tensor> = self.losses;
        parts.push(grad_norm.cast(Kind::Double)?.f_reshape([1])?);
        for r in &self.routers {
            parts.push(r.cast(Kind::Double)?);
        }
        for layer in &self.layers {
            parts.push(layer.losses.cast(Kind::Double)?);
            parts.push(layer.assignments_per_expert.cast(Kind::Double)?);
        }
        let values = host::f64s(&Tensor::f_cat(&parts, 0)?)?;
        let (micro_losses, rest) = values.split_at(accum);
        let (grad_norm, rest) = (rest[0], &rest[1..]);
        let per_micro = self.layers.len();
        let (routers, mut rest) = rest.split_at(accum * per_micro * 2);
        let layers = self
            .layers
            .iter()
            .map(|layer| {
                let e = layer.assignments_per_expert.numel();
                let (losses, after) = rest.split_at(3);
                let (per_expert, after) = after.split_at(e);
                rest = after;
                layer.metrics(losses, per_expert)
            })
            .collect();
        Ok(StepValues {
            micro_losses: micro_losses.to_vec(),
            grad_norm,
            routers: routers.to_vec(),
            stacks: self.layers.iter().map(|l| (l.stack, l.layer)).collect(),
            layers,
            dropped_sum: self.dropped_sum,
        })
    }
}

/// A step's figures on the host.
pub(super) struct StepValues {
    micro_losses: Vec<f64>,
    /// The global gradient norm before clipping.
    pub(super) grad_norm: f64,
    /// Per micro-batch and MoE layer: balance, z-loss.
    routers: Vec<f64>,
    /// Stack and block of each MoE layer.
    stacks: Vec<(StackKind, usize)>,
    layers: Vec<MoeLayerMetrics>,
    dropped_sum: f64,
}

impl StepValues {
    /// The first micro-batch whose LM loss or some router went non-finite, and what went bad.
    pub(super) fn first_non_finite(&self) -> Option<(usize, String)> {
        let per_micro = self.stacks.len();
        self.micro_losses.iter().enumerate().find_map(|(micro, loss)| {
            let routers = &self.routers[micro * per_micro * 2..(micro + 1) * per_micro * 2];
            let router = routers.chunks(2).position(|v| !v[0].is_finite() || !v[1].is_finite());
            match router {
                _ if !loss.is_finite() => Some((micro, format!("LM loss ({loss})"))),
                Some(i) => Some((micro, format!("router of {} block {}", self.stacks[i].0, self.stacks[i].1))),
                None => None,
            }
        })
    }

    /// The step's statistics over the whole batch: the mean LM loss over ranks and the ranks'
    /// partial auxiliary losses summed (each the identity in a group of one).
    ///
    /// # Errors
    /// Transport errors.
    pub(super) fn into_stats(self, group: &ProcessGroup, step: u64, lr: f64, tokens: usize) -> Result<StepStats> {
        let per_micro = self.stacks.len();
        let scale = 1.0 / self.micro_losses.len() as f64;
        let (mut lb_sum, mut z_sum) = (0.0, 0.0);
        if per_micro > 0 {
            for micro in self.routers.chunks(per_micro * 2) {
                lb_sum += micro.iter().step_by(2).sum::<f64>() / per_micro as f64;
                z_sum += micro.iter().skip(1).step_by(2).sum::<f64>() / per_micro as f64;
            }
        }
        let loss_sum = self.micro_losses.iter().sum::<f64>();
        let mut v = vec![loss_sum / group.world_size() as f64, lb_sum, z_sum];
        for m in &self.layers {
            v.extend([m.load_balancing_loss, m.z_loss, m.router_entropy]);
        }
        group.all_reduce_sum(&mut v)?;
        let mut moe_layers = self.layers;
        for (m, chunk) in moe_layers.iter_mut().zip(v[3..].chunks(3)) {
            (m.load_balancing_loss, m.z_loss, m.router_entropy) = (chunk[0], chunk[1], chunk[2]);
        }
        let moe_mean = |sum: f64| (per_micro > 0).then_some(sum * scale);
        Ok(StepStats {
            step,
            loss: v[0] * scale,
            load_balancing_loss: moe_mean(v[1]),
            z_loss: moe_mean(v[2]),
            dropped_fraction: moe_mean(self.dropped_sum),
            moe_layers,
            lr,
            grad_norm: self.grad_norm,
            tokens,
        })
    }
}
