//! The MoE layers' auxiliary losses and statistics inside a training step: the mean of a
//! per-layer loss over the layers (the objective's `mean_layers`, Switch Transformer §2.2,
//! ST-MoE §3.3), and each layer's statistics kept on the device until the step's single
//! read-back.

use crate::error::Result;
use crate::model::{ModelAux, StackKind};
use crate::train::stats::MoeLayerMetrics;
use tch::{Kind, Tensor};

/// Mean over the MoE layers of all stacks of one per-layer scalar; `None` without MoE layers.
pub(super) fn mean_over_moe_layers(
    records: &[&ModelAux],
    pick: impl Fn(&crate::moe::MoeAux) -> &Tensor,
) -> Result<Option<Tensor>> {
    let values: Vec<&Tensor> = records.iter().flat_map(|a| a.moe_layers().map(|(_, m)| pick(m))).collect();
    if values.is_empty() {
        return Ok(None);
    }
    let stacked = Tensor::f_stack(&values, 0)?;
    Ok(Some(stacked.f_mean(stacked.kind())?))
}

/// One MoE layer's statistics of a forward pass, still on the device.
pub(super) struct LayerRecord {
    pub(super) stack: StackKind,
    pub(super) layer: usize,
    /// `[balance, z-loss, entropy]`, detached.
    pub(super) losses: Tensor,
    /// Assignments per expert, `[E]` i64.
    pub(super) assignments_per_expert: Tensor,
    pub(super) dropped_fraction: f64,
}

impl LayerRecord {
    /// The MoE layers of one forward pass of every stack.
    pub(super) fn of(aux: &[(StackKind, ModelAux)]) -> Result<Vec<Self>> {
        aux.iter()
            .flat_map(|(stack, a)| a.moe_layers().map(move |(layer, m)| (*stack, layer, m)))
            .map(|(stack, layer, m)| {
                let parts = [&m.load_balancing_loss, &m.z_loss, &m.router_entropy];
                let losses = Tensor::f_stack(
                    &parts
                        .map(|t| t.f_detach().and_then(|t| t.f_to_kind(Kind::Float)))
                        .into_iter()
                        .collect::<std::result::Result<Vec<_>, _>>()?,
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
    pub(super) fn metrics(&self, losses: &[f64], per_expert: &[f64]) -> MoeLayerMetrics {
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
