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
use crate::model::{ModelConfig, Trainable};
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
        Self::for_balancing(model.moe_layers().iter().map(|(_, _, m)| m.config().balancing))
    }

    /// [`Objective::for_model`] from a model's configuration, before the model is built.
    pub fn for_config(config: &ModelConfig) -> Self {
        let moe_layers = (0..config.num_layers).filter(|&l| config.is_moe_layer(l));
        Self::for_balancing(moe_layers.filter_map(|_| config.moe.as_ref().map(|m| m.balancing)))
    }

    fn for_balancing(mut layers: impl Iterator<Item = Balancing>) -> Self {
        let first = layers.next();
        let aux_free = first.is_some_and(|b| b.is_aux_free()) && layers.all(|b| b.is_aux_free());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Arch, LanguageModel, LayerAux, ModelAux, ModelConfig, StackKind};
    use crate::moe::MoeAux;
    use tch::{nn::VarStore, Device, Kind};

    fn model(balancing: Balancing, vs: &VarStore) -> LanguageModel {
        let mut config = ModelConfig::preset(Arch::Switch);
        (config.d_model, config.num_layers, config.ffn.d_ff) = (16, 2, 32);
        config.attention.num_heads = 2;
        if let Some(m) = &mut config.moe {
            (m.num_experts, m.d_ff, m.balancing) = (2, 32, balancing);
        }
        LanguageModel::new(&vs.root(), &config).unwrap()
    }

    #[test]
    fn aux_free_balancing_drops_the_balancing_loss_unless_given() {
        let vs = VarStore::new(Device::Cpu);
        let aux_loss = Objective::for_model(&model(Balancing::AuxLoss, &vs));
        assert_eq!((aux_loss.load_balancing_coef, aux_loss.z_loss_coef), (1e-2, 1e-3));
        let vs = VarStore::new(Device::Cpu);
        let aux_free = Objective::for_model(&model(Balancing::AuxFree { bias_update_rate: 1e-3 }, &vs));
        assert_eq!((aux_free.load_balancing_coef, aux_free.z_loss_coef), (0.0, 1e-3));
        let set = aux_free.with_overrides(Some(0.5), None);
        assert_eq!((set.load_balancing_coef, set.z_loss_coef), (0.5, 1e-3));
    }

    /// The defaults read off a configuration are the ones read off the model built from it, for
    /// every balancing and for a model without MoE layers.
    #[test]
    fn the_defaults_from_a_config_match_the_defaults_from_its_model() {
        let coefs = |o: Objective| (o.load_balancing_coef, o.z_loss_coef);
        for balancing in [Balancing::AuxLoss, Balancing::AuxFree { bias_update_rate: 1e-3 }] {
            let vs = VarStore::new(Device::Cpu);
            let model = model(balancing, &vs);
            assert_eq!(coefs(Objective::for_config(model.config())), coefs(Objective::for_model(&model)));
        }
        let dense = ModelConfig::preset(Arch::Dense);
        assert_eq!(coefs(Objective::for_config(&dense)), (1e-2, 1e-3));
    }

    /// A training configuration written before the coefficients became optional (both spelled
    /// out, precision recorded) acts like today's default one, and an aux-free model's default
    /// differs from an explicit α = 1e-2.
    #[test]
    fn old_and_new_spellings_of_the_same_training_compare_equal() {
        use crate::train::TrainConfig;
        let mut config = ModelConfig::preset(Arch::Switch);
        let today = TrainConfig::default();
        let legacy = TrainConfig {
            load_balancing_coef: Some(1e-2),
            z_loss_coef: Some(1e-3),
            precision: Some(config.precision),
            ..today.clone()
        };
        assert_ne!(legacy, today);
        assert_eq!(legacy.effective(&config), today.effective(&config));
        if let Some(m) = &mut config.moe {
            m.balancing = Balancing::AuxFree { bias_update_rate: 1e-3 };
        }
        assert_eq!(today.effective(&config).load_balancing_coef, Some(0.0));
        assert_ne!(legacy.effective(&config), today.effective(&config));
    }

    /// `(L / R + α · mean(lb) + β · mean(z)) · scale`, by hand, over two MoE layers of two stacks.
    #[test]
    fn the_total_is_the_lm_share_plus_the_scaled_layer_means() {
        let layer = |stack, lb: f64, z: f64| LayerAux {
            stack,
            layer: 0,
            moe: Some(MoeAux {
                load_balancing_loss: Tensor::from(lb),
                z_loss: Tensor::from(z),
                assignments_per_expert: Tensor::from_slice(&[1i64]),
                dropped_fraction: Tensor::from(0.0),
                router_entropy: Tensor::from(0.0),
                capacity: None,
                num_real_tokens: 1,
            }),
        };
        let aux = ModelAux { layers: vec![layer(StackKind::Encoder, 1.0, 4.0), layer(StackKind::Decoder, 3.0, 8.0)] };
        let loss = TaskLoss { loss: Tensor::from(2.0f64), tokens: 1, aux };
        let objective = Objective { load_balancing_coef: 0.1, z_loss_coef: 0.01 };
        let total = objective.total(&loss, 0.5, 2).unwrap().to_kind(Kind::Double).double_value(&[]);
        let expected = 2.0 * 0.5 / 2.0 + 0.1 * 0.5 * 2.0 + 0.01 * 0.5 * 6.0;
        assert!((total - expected).abs() < 1e-12, "{total} vs {expected}");
        let dense = TaskLoss { loss: Tensor::from(2.0f64), tokens: 1, aux: ModelAux::default() };
        assert_eq!(objective.total(&dense, 1.0, 1).unwrap().double_value(&[]), 2.0, "no MoE layers: the LM loss");
    }
}
