//! What a training step leaves on the device for the host, and how it comes back.
//!
//! Every micro-batch's LM loss and MoE-layer losses, the gradient norm, the dropped fractions and
//! the last micro-batch's per-layer statistics are packed after the backward into one f64 row
//! per step ([`StepRecord::pack`]), together with the step's non-finite flag as the device-side
//! guard decided it. The rows of the steps since the last read stay on the device and come back
//! in one copy ([`PendingSteps::read`]), where they are unpacked ([`StepValues`]) into statistics
//! — or into the error of the first skipped step.

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
    /// `[balance, z-loss, entropy, dropped fraction]`, detached, f64.
    values: Tensor,
    /// Assignments per expert, `[E]` i64.
    assignments_per_expert: Tensor,
}

impl LayerRecord {
    /// The MoE layers of one forward pass of every stack.
    fn of(aux: &ModelAux) -> Result<Vec<Self>> {
        aux.moe_layers_by_stack()
            .map(|(stack, layer, m)| {
                let parts = [&m.load_balancing_loss, &m.z_loss, &m.router_entropy, &m.dropped_fraction];
                let values = parts.map(|t| t.f_detach()?.cast(Kind::Double)?.f_reshape([1]).map_err(Into::into));
                Ok(Self {
                    stack,
                    layer,
                    values: Tensor::f_cat(&values.into_iter().collect::<Result<Vec<_>>>()?, 0)?,
                    assignments_per_expert: m.assignments_per_expert.shallow_clone(),
                })
            })
            .collect()
    }
}

/// Where the parts of a step's row lie: `[micro losses, grad norm, routers (micro × layers ×
/// [balance, z-loss]), dropped (micro), layers' values (4 each) and assignments (E each),
/// skipped]`.
#[derive(Debug, Clone)]
struct Layout {
    micro_batches: usize,
    /// Stack, block and number of experts of each MoE layer.
    layers: Vec<(StackKind, usize, usize)>,
}

impl Layout {
    /// The leading entries the guard looks at: losses, gradient norm and routers.
    fn guarded(&self) -> usize {
        self.micro_batches * (1 + 2 * self.layers.len()) + 1
    }

    fn width(&self) -> usize {
        let layers: usize = self.layers.iter().map(|(_, _, e)| 4 + e).sum();
        self.guarded() + self.micro_batches + layers + 1
    }
}

/// A step's figures on the device, gathered micro-batch by micro-batch.
#[derive(Default)]
pub(super) struct StepRecord {
    /// LM loss per micro-batch, `[1]` f64 each.
    losses: Vec<Tensor>,
    /// Per micro-batch and MoE layer: `[balance, z-loss]` f64.
    routers: Vec<Tensor>,
    /// Per micro-batch: the mean dropped fraction over MoE layers, `[1]` f64.
    dropped: Vec<Tensor>,
    /// The last micro-batch's MoE layers.
    layers: Vec<LayerRecord>,
}

impl StepRecord {
    /// Records one micro-batch's loss and MoE-layer statistics (nothing is read).
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    pub(super) fn add(&mut self, loss: &TaskLoss) -> Result<()> {
        self.losses.push(loss.loss.f_detach()?.cast(Kind::Double)?.f_reshape([1])?);
        let dropped = match loss.aux.dropped_fraction()? {
            Some(mean) => mean.cast(Kind::Double)?,
            None => Tensor::f_zeros([], (Kind::Double, loss.loss.device()))?,
        };
        self.dropped.push(dropped.f_reshape([1])?);
        self.layers = LayerRecord::of(&loss.aux)?;
        for layer in &self.layers {
            self.routers.push(layer.values.f_narrow(0, 0, 2)?);
        }
        Ok(())
    }

    /// The step's row without its skip flag, and whether any loss, router or the gradient norm
    /// is non-finite (scalar f32 on the device, 0 or 1).
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    pub(super) fn pack(self, grad_norm: &Tensor) -> Result<PackedStep> {
        let micro_batches = self.losses.len();
        let mut parts: Vec<Tensor> = self.losses;
        parts.push(grad_norm.cast(Kind::Double)?.f_reshape([1])?);
        parts.extend(self.routers);
        parts.extend(self.dropped);
        for layer in &self.layers {
            parts.push(layer.values.shallow_clone());
            parts.push(layer.assignments_per_expert.cast(Kind::Double)?);
        }
        let layout = Layout {
            micro_batches,
            layers: self.layers.iter().map(|l| (l.stack, l.layer, l.assignments_per_expert.numel())).collect(),
        };
        let row = Tensor::f_cat(&parts, 0)?;
        let non_finite =
            row.f_narrow(0, 0, layout.guarded() as i64)?.f_isfinite()?.f_all()?.f_logical_not()?.cast(Kind::Float)?;
        Ok(PackedStep { row, layout, non_finite })
    }
}

/// A step's row before its skip flag is known.
pub(super) struct PackedStep {
    row: Tensor,
    layout: Layout,
    /// Whether this rank saw a non-finite value, scalar f32.
    pub(super) non_finite: Tensor,
}

impl PackedStep {
    /// The row with `skipped` (scalar f32: whether the guard skipped the update) appended.
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    pub(super) fn finish(self, skipped: &Tensor) -> Result<StepRow> {
        let row = Tensor::f_cat(&[self.row, skipped.cast(Kind::Double)?.f_reshape([1])?], 0)?;
        Ok(StepRow { row, layout: self.layout })
    }
}

/// A step's figures on the device, in one f64 row.
pub(super) struct StepRow {
    row: Tensor,
    layout: Layout,
}

impl StepRow {
    /// A copy in fresh memory (a captured step's row is overwritten by the next replay).
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    pub(super) fn copy(&self) -> Result<Self> {
        let mut row = self.row.f_empty_like()?;
        row.f_copy_(&self.row)?;
        Ok(Self { row, layout: self.layout.clone() })
    }
}

/// A step done on the device, waiting to be read.
struct Pending {
    step: u64,
    lr: f64,
    tokens: usize,
    row: StepRow,
}

/// The steps since the last read.
#[derive(Default)]
pub(super) struct PendingSteps(Vec<Pending>);

impl PendingSteps {
    /// Keeps step `step`'s row.
    pub(super) fn push(&mut self, step: u64, lr: f64, tokens: usize, row: StepRow) {
        self.0.push(Pending { step, lr, tokens, row });
    }

    /// Number of steps waiting.
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// Forgets the waiting steps.
    pub(super) fn clear(&mut self) {
        self.0.clear();
    }

    /// Reads every waiting step in one copy, in step order (nothing to read: no copy).
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    pub(super) fn read(&mut self) -> Result<Vec<StepValues>> {
        let pending = std::mem::take(&mut self.0);
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<&Tensor> = pending.iter().map(|p| &p.row.row).collect();
        let values = host::f64s(&Tensor::f_cat(&rows, 0)?)?;
        let mut rest = values.as_slice();
        Ok(pending
            .into_iter()
            .map(|p| {
                let (row, after) = rest.split_at(p.row.layout.width());
                rest = after;
                StepValues::unpack(p.step, p.lr, p.tokens, &p.row.layout, row)
            })
            .collect())
    }
}

/// A step's figures on the host.
pub(super) struct StepValues {
    pub(super) step: u64,
    lr: f64,
    tokens: usize,
    micro_losses: Vec<f64>,
    /// The global gradient norm before clipping.
    pub(super) grad_norm: f64,
    /// Per micro-batch and MoE layer: balance, z-loss.
    routers: Vec<f64>,
    /// Stack and block of each MoE layer.
    stacks: Vec<(StackKind, usize)>,
    layers: Vec<MoeLayerMetrics>,
    dropped_sum: f64,
    /// Whether the guard skipped this step's update.
    pub(super) skipped: bool,
}

impl StepValues {
    fn unpack(step: u64, lr: f64, tokens: usize, layout: &Layout, row: &[f64]) -> Self {
        let m = layout.micro_batches;
        let (micro_losses, rest) = row.split_at(m);
        let (grad_norm, rest) = (rest[0], &rest[1..]);
        let (routers, rest) = rest.split_at(m * layout.layers.len() * 2);
        let (dropped, mut rest) = rest.split_at(m);
        let layers = layout
            .layers
            .iter()
            .map(|&(stack, layer, experts)| {
                let (values, after) = rest.split_at(4);
                let (per_expert, after) = after.split_at(experts);
                rest = after;
                let assignments_per_expert: Vec<i64> = per_expert.iter().map(|&v| v as i64).collect();
                let mean = assignments_per_expert.iter().sum::<i64>() as f64 / experts.max(1) as f64;
                let max = assignments_per_expert.iter().copied().max().unwrap_or(0) as f64;
                MoeLayerMetrics {
                    stack,
                    layer,
                    load_balancing_loss: values[0],
                    z_loss: values[1],
                    router_entropy: values[2],
                    dropped_fraction: values[3],
                    max_load: if mean > 0.0 { max / mean } else { 0.0 },
                    assignments_per_expert,
                }
            })
            .collect();
        Self {
            step,
            lr,
            tokens,
            micro_losses: micro_losses.to_vec(),
            grad_norm,
            routers: routers.to_vec(),
            stacks: layout.layers.iter().map(|&(s, l, _)| (s, l)).collect(),
            layers,
            dropped_sum: dropped.iter().sum(),
            skipped: rest[0] != 0.0,
        }
    }

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
    pub(super) fn into_stats(self, group: &ProcessGroup) -> Result<StepStats> {
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
            step: self.step,
            loss: v[0] * scale,
            load_balancing_loss: moe_mean(v[1]),
            z_loss: moe_mean(v[2]),
            dropped_fraction: moe_mean(self.dropped_sum),
            moe_layers,
            lr: self.lr,
            grad_norm: self.grad_norm,
            tokens: self.tokens,
        })
    }
}
