//! The training objective `L = L_LM + α · mean_l(lb_l) + β · mean_l(z_l)`: the LM loss plus the
//! load-balancing loss (Switch Transformer, arXiv 2101.03961, §2.2, α = 1e-2) and the router
//! z-loss (ST-MoE, arXiv 2202.08906, §3.3 eq. 5, β = 1e-3), each computed per MoE layer and
//! averaged over the MoE layers of every stack ([`crate::model::ModelAux`]).
//!
//! With gradient accumulation every term of every micro-batch is divided by the number of
//! micro-batches, so the auxiliary losses are scaled exactly like the LM loss; with `R` ranks each
//! rank back-propagates its share (the LM loss of its `B/R` sequences over `R`, and the MoE
//! layers' partial auxiliary losses, which add up over ranks to the whole batch's).

use crate::error::Result;
use crate::model::Trainable;
use crate::moe::Balancing;
use crate::train::task::TaskLoss;
use tch::Tensor;

/// The coefficients of the auxiliary losses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Objective {
    /// α, the load-balancing loss coefficient.
    pub load_balancing_coef: f64,
    /// β, the router z-loss coefficient.
    pub z_loss_coef: f64,
}

impl Objective {
    /// α of a model whose MoE layers balance with the loss (Switch Transformer §2.2).
    pub const LOAD_BALANCING_COEF: f64 = 1e-2;
    /// β (ST-MoE §3.3).
    pub const Z_LOSS_COEF: f64 = 1e-3;

    /// The defaults for `model`: α = 1e-2, or 0 when every MoE layer balances without the loss
    /// (aux-loss-free bias balancing, DeepSeek-V3 §2.1.2); β = 1e-3.
    pub fn for_model(model: &dyn Trainable) -> Self {
        let layers = model.moe_layers();
        let aux_free = !layers.is_empty()
            && layers.iter().all(|(_, _, m)| matches!(m.config().balancing, Balancing::AuxFree { .. }));
        Self {
            load_balancing_coef: if aux_free { 0.0 } else { Self::LOAD_BALANCING_COEF },
            z_loss_coef: Self::Z_LOSS_COEF,
        }
    }

    /// These coefficients with the given ones replacing them (`None` keeps a coefficient).
    pub fn with_overrides(self, load_balancing_coef: Option<f64>, z_loss_coef: Option<f64>) -> Self {
        Self {
            load_balancing_coef: load_balancing_coef.unwrap_or(self.load_balancing_coef),
            z_loss_coef: z_loss_coef.unwrap_or(self.z_loss_coef),
        }
    }

    /// What one rank back-propagates for one micro-batch: `(L_LM / R + α · lb + β · z) · scale`,
    /// with `scale = 1 / micro-batches` and the auxiliary means over the MoE layers of every stack
    /// (no auxiliary terms without MoE layers).
    ///
    /// # Shapes
    /// Scalars in, a scalar out (f32; f64 for an f64 model).
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    pub fn total(&self, loss: &TaskLoss, scale: f64, ranks: usize) -> Result<Tensor> {
        let total = loss.loss.f_mul_scalar(scale / ranks as f64)?;
        Ok(match (loss.aux.load_balancing_loss()?, loss.aux.z_loss()?) {
            (Some(lb), Some(z)) => total
                .f_add(&lb.f_mul_scalar(self.load_balancing_coef * scale)?)?
                .f_add(&z.f_mul_scalar(self.z_loss_coef * scale)?)?,
            _ => total,
        })
    }
}
