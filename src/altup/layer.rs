//! AltUp predict / compute / correct around one transformer layer (Baykal et al. 2023,
//! arXiv 2301.13310, §3.1, Algorithm 1), with static or input-dependent (Gemma 3n) coefficients.
//!
//! With the representation `x = (x_1, ..., x_K)` of `K` blocks of width `D` and the layer `L`:
//!
//! * static:  `x̂_i = Σ_j P[i,j] x_j`,  `x̃ = L(x_{j*})` (or `L(x̂_{j*})`),  `y_i = x̂_i + g_i (x̃ − x̂_{j*})`;
//! * input-dependent (Hugging Face `Gemma3nTextAltUp`): `m(v) = tanh(W_r · RMSNorm(v) / D)`,
//!   `x̂_i = x_i + Σ_j C[i,j] x_j` with `C = reshape(W_p m(x_{j*}), [K, K])` (row `i` feeds
//!   output `i`), `y_i = x̂_i + (1 + (W_c m(x̃))_i) (x̃ − x̂_{j*})`.
//!
//! The layer runs once at width `D`; AltUp adds `O(K²·D)` multiply-adds per token. The mixing
//! arithmetic runs in f32 (f64 stays f64) and results return in the activations' dtype.
//!
//! Static mode is fused: `y = x̂ + g ⊗ (x̃ − x̂_{j*}) = Q·x + g ⊗ x̃` with the `K×K` matrix
//! `Q = P − g ⊗ P[j*]`, so one matmul and one in-place rank-1 update produce all `K` outputs
//! (the prediction `x̂_{j*}` is only materialised when the layer computes on it).
//! Initialisation is the identity (`P = I`, `g = 1`; `W_p = W_c = 0`): with `K = 1` AltUp is
//! exactly the wrapped layer.

use crate::altup::config::{AltUpConfig, Coefficients, ComputeInput};
use crate::dtype::{accumulate_kind, Cast};
use crate::error::{Error, Result};
use crate::nn::norm::RmsNorm;
use crate::nn::role::ParamRole;
use crate::nn::var_builder::VarBuilder;
use tch::{Kind, Tensor};

/// Coefficient parameters of one AltUp layer.
#[derive(Debug)]
pub enum AltUpCoefficients {
    /// Learned scalars.
    Static {
        /// Predictor `P`, `[K, K]`: row `i` mixes the blocks into prediction `i`.
        predictor: Tensor,
        /// Corrector gains `g`, `[K]`.
        corrector: Tensor,
    },
    /// Gemma 3n's per-token coefficients.
    InputDependent {
        /// RMSNorm of the modality router's input (`router_norm.weight` `[D]`).
        modality_norm: RmsNorm,
        /// `W_r`, `[K, D]` (`router.weight`, Hugging Face's name): Gemma's "router" of
        /// modalities, which mixes AltUp coefficients — not an MoE router.
        modality_router: Tensor,
        /// `W_p`, `[K², K]`.
        prediction_coefs: Tensor,
        /// `W_c`, `[K, K]`.
        correction_coefs: Tensor,
        /// Functional clamp of `W_p`, `W_c` in training.
        clip: Option<f64>,
    },
}

/// AltUp's per-layer predictor and corrector.
///
/// Parameters (static): `predictor` `[K, K]`, `corrector` `[K]`. Input-dependent:
/// `router_norm.weight` `[D]`, `router.weight` `[K, D]`, `prediction_coefs.weight` `[K², K]`,
/// `correction_coefs.weight` `[K, K]` (Hugging Face's names).
#[derive(Debug)]
pub struct AltUp {
    /// The coefficients.
    pub coefficients: AltUpCoefficients,
    compute_on: ComputeInput,
    num_blocks: i64,
}

impl AltUp {
    /// Creates the parameters of one layer under `path` from `config`'s block count, coefficient
    /// mode and compute input (selection, widening and output belong to the stack). Every
    /// parameter is created without weight decay ([`ParamRole::NO_DECAY`]): the predictor and
    /// corrector start at the identity and decay would pull them to zero.
    ///
    /// # Errors
    /// [`Error::Config`] from [`AltUpConfig::validate`].
    pub fn new<'a>(vb: impl Into<VarBuilder<'a>>, d_model: usize, config: &AltUpConfig) -> Result<Self> {
        config.validate()?;
        let (num_blocks, coefficients, compute_on) = (config.num_blocks, config.coefficients, config.compute_on);
        let vb = vb.into().with_role(ParamRole::NO_DECAY);
        let path = vb.path();
        let k = num_blocks as i64;
        let coefficients = match coefficients {
            Coefficients::Static => AltUpCoefficients::Static {
                predictor: path.f_var_copy("predictor", &Tensor::f_eye(k, (Kind::Float, path.device()))?)?,
                corrector: path.f_ones("corrector", &[k])?,
            },
            Coefficients::InputDependent { clip } => AltUpCoefficients::InputDependent {
                modality_norm: RmsNorm::new(&vb / "router_norm", d_model as i64, 1e-6)?,
                modality_router: (&vb / "router").normal("weight", &[k, d_model as i64], vb.init().std)?,
                prediction_coefs: (path / "prediction_coefs").f_zeros("weight", &[k * k, k])?,
                correction_coefs: (path / "correction_coefs").f_zeros("weight", &[k, k])?,
                clip,
            },
        };
        Ok(Self { coefficients, compute_on, num_blocks: k })
    }

    /// Number of blocks `K`.
    pub fn num_blocks(&self) -> i64 {
        self.num_blocks
    }

    fn check_wide(&self, x: &Tensor, what: &str) -> Result<()> {
        if x.dim() < 2 || x.size()[0] != self.num_blocks {
            return Err(Error::Shape(format!(
                "{what} must have shape [K = {}, ...], got {:?}",
                self.num_blocks,
                x.size()
            )));
        }
        Ok(())
    }

    fn check_active(&self, active: usize) -> Result<()> {
        if active as i64 >= self.num_blocks {
            return Err(Error::Shape(format!("active block ({active}) must be < K ({})", self.num_blocks)));
        }
        Ok(())
    }

    /// Gemma 3n's router modalities `m(v) = tanh(W_r · RMSNorm(v) / D)`, in f32.
    ///
    /// # Shapes
    /// `v`: `[..., D]` → `[..., K]`.
    fn modalities(modality_norm: &RmsNorm, modality_router: &Tensor, v: &Tensor) -> Result<Tensor> {
        let acc = accumulate_kind(v);
        let d = v.size().last().copied().unwrap_or(1) as f64;
        let normed = modality_norm.forward(v)?.cast(acc)?.f_div_scalar(d)?;
        Ok(normed.f_linear::<Tensor>(&modality_router.cast(acc)?, None)?.f_tanh()?)
    }

    fn clipped(w: &Tensor, clip: Option<f64>, train: bool) -> Result<Tensor> {
        match clip {
            Some(c) if train => Ok(w.f_clamp(-c, c)?),
            _ => Ok(w.shallow_clone()),
        }
    }

    /// Prediction step for all blocks (static: `Σ_j P[i,j] x_j`; input-dependent:
    /// `x_i + Σ_j C[i,j] x_j` with coefficients from block `active`).
    ///
    /// # Shapes
    /// `x`: `[K, B, T, D]` → same shape and dtype.
    ///
    /// # Errors
    /// [`Error::Shape`] if the leading dimension is not `K` or `active >= K`.
    pub fn predict(&self, x: &Tensor, active: usize, train: bool) -> Result<Tensor> {
        self.check_wide(x, "AltUp input")?;
        self.check_active(active)?;
        let acc = accumulate_kind(x);
        let size = x.size();
        let x32 = x.cast(acc)?;
        let pred = match &self.coefficients {
            AltUpCoefficients::Static { predictor, .. } => {
                predictor.cast(acc)?.f_matmul(&x32.f_reshape([self.num_blocks, -1])?)?.f_view(size.as_slice())?
            }
            AltUpCoefficients::InputDependent { modality_norm, modality_router, prediction_coefs, clip, .. } => {
                let k = self.num_blocks;
                let m = Self::modalities(modality_norm, modality_router, &x.f_select(0, active as i64)?)?; // [B, T, K]
                let w = Self::clipped(prediction_coefs, *clip, train)?.cast(acc)?;
                let lead: Vec<i64> = size[1..size.len() - 1].to_vec();
                let mut c_shape = lead.clone();
                c_shape.extend([k, k]);
                let c = m.f_linear::<Tensor>(&w, None)?.f_view(c_shape.as_slice())?; // [B, T, K, K]
                let moved = x32.f_movedim([0], [-2])?; // [B, T, K, D]
                let mixed = c.f_matmul(&moved)?.f_add(&moved)?; // x_i + Σ_j C[i,j] x_j
                mixed.f_movedim([-2], [0])?
            }
        };
        pred.like(x)
    }

    /// Correction step: `y_i = x̂_i + gain_i · (x̃ − x̂_{active})` with static gains `g` or
    /// input-dependent gains `1 + W_c m(x̃)`.
    ///
    /// # Shapes
    /// `predicted`: `[K, B, T, D]`; `computed`: `[B, T, D]` → `[K, B, T, D]` in `predicted`'s dtype.
    ///
    /// # Errors
    /// [`Error::Shape`] if `active >= K` or the shapes disagree.
    pub fn correct(&self, predicted: &Tensor, computed: &Tensor, active: usize, train: bool) -> Result<Tensor> {
        self.check_wide(predicted, "AltUp prediction")?;
        self.check_active(active)?;
        if computed.size()[..] != predicted.size()[1..] {
            return Err(Error::Shape(format!(
                "AltUp computed block has shape {:?}, expected {:?}",
                computed.size(),
                &predicted.size()[1..]
            )));
        }
        let acc = accumulate_kind(predicted);
        let pred = predicted.cast(acc)?;
        let delta = computed.cast(acc)?.f_sub(&pred.f_select(0, active as i64)?)?;
        let gains = self.gains(computed, train)?; // [K, B, T, 1] or [K, 1, 1, 1]
        pred.f_add(&gains.f_mul(&delta.f_unsqueeze(0)?)?)?.like(predicted)
    }

    /// Corrector gains broadcastable against `[K, B, T, D]`.
    fn gains(&self, computed: &Tensor, train: bool) -> Result<Tensor> {
        let acc = accumulate_kind(computed);
        match &self.coefficients {
            AltUpCoefficients::Static { corrector, .. } => {
                let mut shape = vec![self.num_blocks];
                shape.extend(std::iter::repeat_n(1, computed.dim()));
                Ok(corrector.cast(acc)?.f_view(shape.as_slice())?)
            }
            AltUpCoefficients::InputDependent { modality_norm, modality_router, correction_coefs, clip, .. } => {
                let m = Self::modalities(modality_norm, modality_router, computed)?; // [B, T, K]
                let w = Self::clipped(correction_coefs, *clip, train)?.cast(acc)?;
                let g = m.f_linear::<Tensor>(&w, None)?.f_add_scalar(1.0)?; // [B, T, K]
                Ok(g.f_movedim([-1], [0])?.f_unsqueeze(-1)?)
            }
        }
    }

    /// Predict, run `layer` on the activated block (its input or its prediction, per
    /// [`ComputeInput`]), and correct. `layer`'s auxiliary output is passed through.
    ///
    /// # Shapes
    /// `x`: `[K, B, T, D]` → `[K, B, T, D]`; `layer`: `[B, T, D]` → `[B, T, D]`.
    ///
    /// # Errors
    /// [`Error::Shape`] on shape mismatches, and any error of `layer`.
    pub fn forward_t<A>(
        &self,
        x: &Tensor,
        active: usize,
        train: bool,
        layer: impl FnOnce(&Tensor) -> Result<(Tensor, A)>,
    ) -> Result<(Tensor, A)> {
        self.check_wide(x, "AltUp input")?;
        self.check_active(active)?;
        match &self.coefficients {
            AltUpCoefficients::Static { predictor, corrector } => {
                // Fused: y = x̂ + g ⊗ (x̃ − x̂_{j*}) = Q·x + g ⊗ x̃ with the K×K matrix
                // Q = P − g ⊗ P[j*]: one matmul and one in-place rank-1 update over the K blocks.
                let acc = accumulate_kind(x);
                let size = x.size();
                let flat = x.cast(acc)?.f_reshape([self.num_blocks, -1])?;
                let p = predictor.cast(acc)?;
                let g = corrector.cast(acc)?.f_unsqueeze(1)?; // [K, 1]
                let p_active = p.f_narrow(0, active as i64, 1)?; // [1, K]
                let input = match self.compute_on {
                    ComputeInput::Input => x.f_select(0, active as i64)?,
                    ComputeInput::Prediction => p_active.f_matmul(&flat)?.f_view(&size[1..])?.like(x)?,
                };
                let (computed, aux) = layer(&input)?;
                let q = p.f_sub(&g.f_mul(&p_active)?)?;
                let mut y = q.f_matmul(&flat)?;
                let _ = y.f_addmm_(&g, &computed.cast(acc)?.f_reshape([1, -1])?)?;
                Ok((y.f_view(size.as_slice())?.like(x)?, aux))
            }
            AltUpCoefficients::InputDependent { .. } => {
                let predicted = self.predict(x, active, train)?;
                let input = match self.compute_on {
                    ComputeInput::Input => x.f_select(0, active as i64)?,
                    ComputeInput::Prediction => predicted.f_select(0, active as i64)?,
                };
                let (computed, aux) = layer(&input)?;
                Ok((self.correct(&predicted, &computed, active, train)?, aux))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn;
    use tch::Device;

    fn altup(k: usize, coefficients: Coefficients, compute_on: ComputeInput) -> (nn::VarStore, AltUp) {
        let vs = nn::VarStore::new(Device::Cpu);
        let config = AltUpConfig { num_blocks: k, coefficients, compute_on, ..Default::default() };
        let a = AltUp::new(&vs.root(), 4, &config).unwrap();
        (vs, a)
    }

    fn set_static(a: &AltUp, p: &[f32], g: &[f32]) {
        let AltUpCoefficients::Static { predictor, corrector } = &a.coefficients else { unreachable!() };
        let k = g.len() as i64;
        tch::no_grad(|| {
            predictor.shallow_clone().copy_(&Tensor::from_slice(p).view([k, k]));
            corrector.shallow_clone().copy_(&Tensor::from_slice(g));
        });
    }

    #[test]
    fn predict_and_correct_by_hand() {
        let (_vs, a) = altup(2, Coefficients::Static, ComputeInput::Input);
        set_static(&a, &[1.0, 2.0, 3.0, 4.0], &[0.5, 2.0]);
        // Two blocks of one scalar each: x = (1, 10).
        let x = Tensor::from_slice(&[1.0f32, 10.0]).view([2, 1]);
        let pred = a.predict(&x, 1, true).unwrap(); // (1 + 20, 3 + 40) = (21, 43)
        assert_eq!(Vec::<f32>::try_from(pred.view([-1])).unwrap(), vec![21.0, 43.0]);
        // Layer output on block 1 is 50: y = (21 + 0.5 (50 - 43), 43 + 2 (50 - 43)) = (24.5, 57).
        let y = a.correct(&pred, &Tensor::from_slice(&[50.0f32]), 1, true).unwrap();
        assert_eq!(Vec::<f32>::try_from(y.view([-1])).unwrap(), vec![24.5, 57.0]);
    }

    #[test]
    fn fused_forward_equals_predict_then_correct() {
        for compute_on in [ComputeInput::Input, ComputeInput::Prediction] {
            let (_vs, a) = altup(3, Coefficients::Static, compute_on);
            set_static(&a, &[0.9, 0.1, -0.2, 0.3, 1.1, 0.0, 0.05, -0.4, 0.8], &[1.0, 0.7, -0.3]);
            let x = Tensor::randn([3, 2, 5, 4], (Kind::Float, Device::Cpu));
            let layer = |v: &Tensor| Ok((v.tanh() * 1.5 + 0.2, ()));
            let (fused, ()) = a.forward_t(&x, 2, true, layer).unwrap();
            let pred = a.predict(&x, 2, true).unwrap();
            let input = if compute_on == ComputeInput::Input { x.get(2) } else { pred.get(2) };
            let reference = a.correct(&pred, &layer(&input).unwrap().0, 2, true).unwrap();
            assert!(fused.allclose(&reference, 1e-5, 1e-5, false), "{compute_on:?}");
        }
    }

    #[test]
    fn identity_init_with_identity_layer_changes_nothing() {
        for coefficients in [Coefficients::Static, Coefficients::InputDependent { clip: None }] {
            let (_vs, a) = altup(3, coefficients, ComputeInput::Input);
            let x = Tensor::randn([3, 2, 4, 4], (Kind::Float, Device::Cpu));
            let (y, ()) = a.forward_t(&x, 1, true, |v| Ok((v.shallow_clone(), ()))).unwrap();
            assert!(y.allclose(&x, 1e-6, 1e-6, false), "{coefficients:?}");
        }
    }

    #[test]
    fn predictor_and_corrector_get_gradients() {
        for coefficients in [Coefficients::Static, Coefficients::InputDependent { clip: Some(0.5) }] {
            let (vs, a) = altup(2, coefficients, ComputeInput::Prediction);
            if let AltUpCoefficients::InputDependent { prediction_coefs, correction_coefs, .. } = &a.coefficients {
                tch::no_grad(|| {
                    prediction_coefs.shallow_clone().copy_(&(Tensor::randn([4, 2], (Kind::Float, Device::Cpu)) * 0.1));
                    correction_coefs.shallow_clone().copy_(&(Tensor::randn([2, 2], (Kind::Float, Device::Cpu)) * 0.1));
                });
            }
            let x = Tensor::randn([2, 1, 3, 4], (Kind::Float, Device::Cpu));
            let (y, ()) = a.forward_t(&x, 0, true, |v| Ok((v.tanh() * 2.0, ()))).unwrap();
            (y * Tensor::randn([2, 1, 3, 4], (Kind::Float, Device::Cpu))).sum(Kind::Float).backward();
            for (name, var) in vs.variables() {
                assert!(
                    var.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0,
                    "{coefficients:?}: {name} has no gradient"
                );
            }
        }
    }

    #[test]
    fn bf16_activations_are_mixed_in_f32() {
        for coefficients in [Coefficients::Static, Coefficients::InputDependent { clip: None }] {
            let (_vs, a) = altup(4, coefficients, ComputeInput::Input);
            if let AltUpCoefficients::Static { .. } = a.coefficients {
                set_static(
                    &a,
                    &[0.7, 0.1, 0.1, 0.1, 0.2, 0.6, 0.1, 0.1, 0.0, 0.3, 0.5, 0.2, 0.1, 0.1, 0.1, 0.7],
                    &[1.0, 0.5, 0.25, 2.0],
                );
            }
            let x =
                Tensor::randn([4, 2, 3, 4], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16).to_kind(Kind::Float);
            let layer = |v: &Tensor| Ok((v * 0.5, ()));
            let (y16, ()) = a.forward_t(&x.to_kind(Kind::BFloat16), 1, true, layer).unwrap();
            let (y32, ()) = a.forward_t(&x, 1, true, layer).unwrap();
            assert_eq!(y16.kind(), Kind::BFloat16);
            // One bf16 rounding of the f32 result (relative 2^-8), not an accumulation of them.
            let err = (y16.to_kind(Kind::Float) - &y32).abs() - y32.abs() * (1.0 / 256.0) - 1e-6;
            assert!(err.max().double_value(&[]) <= 0.0, "{coefficients:?}");
        }
    }

    #[test]
    fn clipping_is_functional() {
        let (_vs, a) = altup(2, Coefficients::InputDependent { clip: Some(0.1) }, ComputeInput::Input);
        let AltUpCoefficients::InputDependent { prediction_coefs, .. } = &a.coefficients else { unreachable!() };
        tch::no_grad(|| {
            let _ = prediction_coefs.shallow_clone().fill_(5.0);
        });
        let x = Tensor::randn([2, 1, 3, 4], (Kind::Float, Device::Cpu));
        let train = a.predict(&x, 0, true).unwrap();
        let eval = a.predict(&x, 0, false).unwrap();
        assert!(!train.allclose(&eval, 1e-4, 1e-4, false), "the clamp applies in training");
        assert_eq!(prediction_coefs.max().double_value(&[]), 5.0, "the parameter itself is untouched");
    }

    #[test]
    fn wrong_block_count_is_a_shape_error() {
        let (_vs, a) = altup(2, Coefficients::Static, ComputeInput::Input);
        let err = a.predict(&Tensor::zeros([3, 4], (Kind::Float, Device::Cpu)), 0, true).unwrap_err();
        assert!(err.to_string().contains("[K = 2, ...]"), "{err}");
        let err = a.predict(&Tensor::zeros([2, 4], (Kind::Float, Device::Cpu)), 2, true).unwrap_err();
        assert!(err.to_string().contains("active block (2) must be < K (2)"), "{err}");
    }
}
