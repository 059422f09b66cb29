//! AltUp predict / compute / correct around one transformer layer (Baykal et al. 2023,
//! arXiv 2301.13310, §3.1, Algorithm 1).
//!
//! With the representation `x = (x_1, ..., x_K)` of `K` blocks of width `D`, learned scalars
//! `P ∈ R^{K×K}` (predictor) and `g ∈ R^K` (corrector), and the layer `L`:
//!
//! 1. predict:  `x̂_i = Σ_j P[i,j] · x_j`
//! 2. compute:  `x̃ = L(x_{j*})` on the activated block `j*`
//! 3. correct:  `y_i = x̂_i + g_i · (x̃ − x̂_{j*})`
//!
//! The layer runs once at width `D`; AltUp adds `O(K²·D)` multiply-adds per token. The mixing
//! arithmetic runs in f32 (f64 stays f64) and the result returns in the activations' dtype.
//! Initialisation is the identity predictor and unit gains: with `K = 1` AltUp is exactly the
//! wrapped layer.

use crate::error::{Error, Result};
use crate::shape::accumulate_kind;
use tch::{nn, Kind, Tensor};

/// AltUp's per-layer predictor and corrector.
///
/// Parameters: `predictor` `[K, K]` (identity at init), `corrector` `[K]` (ones at init).
#[derive(Debug)]
pub struct AltUp {
    /// Predictor `P`, `[K, K]`: row `i` mixes the blocks into prediction `i`.
    pub predictor: Tensor,
    /// Corrector gains `g`, `[K]`.
    pub corrector: Tensor,
    num_blocks: i64,
}

impl AltUp {
    /// Creates `<path>.predictor` (identity) and `<path>.corrector` (ones).
    ///
    /// # Errors
    /// [`Error::Config`] if `num_blocks` is 0.
    pub fn new(path: &nn::Path, num_blocks: usize) -> Result<Self> {
        crate::error::ensure_config(num_blocks > 0, || "altup num_blocks (K = 0) must be positive".into())?;
        let k = num_blocks as i64;
        let predictor = path.f_var_copy("predictor", &Tensor::f_eye(k, (Kind::Float, path.device()))?)?;
        let corrector = path.f_ones("corrector", &[k])?;
        Ok(Self { predictor, corrector, num_blocks: k })
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

    /// Prediction step: `x̂_i = Σ_j P[i,j] · x_j`.
    ///
    /// # Shapes
    /// `x`: `[K, ...]` (e.g. `[K, B, T, D]`) → same shape and dtype.
    ///
    /// # Errors
    /// [`Error::Shape`] if the leading dimension is not `K`.
    pub fn predict(&self, x: &Tensor) -> Result<Tensor> {
        self.check_wide(x, "AltUp input")?;
        let acc = accumulate_kind(x);
        let flat = x.f_to_kind(acc)?.f_reshape([self.num_blocks, -1])?;
        let mixed = self.predictor.f_to_kind(acc)?.f_matmul(&flat)?;
        Ok(mixed.f_view(x.size().as_slice())?.f_to_kind(x.kind())?)
    }

    /// Correction step: `y_i = x̂_i + g_i · (x̃ − x̂_{j*})`.
    ///
    /// # Shapes
    /// `predicted`: `[K, ...]`; `computed`: `predicted[active]`'s shape (e.g. `[B, T, D]`) →
    /// `[K, ...]` in `predicted`'s dtype.
    ///
    /// # Errors
    /// [`Error::Shape`] if `active >= K` or the shapes disagree.
    pub fn correct(&self, predicted: &Tensor, computed: &Tensor, active: usize) -> Result<Tensor> {
        self.check_wide(predicted, "AltUp prediction")?;
        if active as i64 >= self.num_blocks {
            return Err(Error::Shape(format!("active block ({active}) must be < K ({})", self.num_blocks)));
        }
        if computed.size()[..] != predicted.size()[1..] {
            return Err(Error::Shape(format!(
                "AltUp computed block has shape {:?}, expected {:?}",
                computed.size(),
                &predicted.size()[1..]
            )));
        }
        let acc = accumulate_kind(predicted);
        let pred = predicted.f_to_kind(acc)?;
        let delta = computed.f_to_kind(acc)?.f_sub(&pred.f_select(0, active as i64)?)?;
        let mut gain_shape = vec![self.num_blocks];
        gain_shape.extend(std::iter::repeat_n(1, computed.dim()));
        let gains = self.corrector.f_to_kind(acc)?.f_view(gain_shape.as_slice())?;
        Ok(pred.f_add(&gains.f_mul(&delta.f_unsqueeze(0)?)?)?.f_to_kind(predicted.kind())?)
    }

    /// Predict, run `layer` on the activated block `x_{active}` (the paper's choice of input),
    /// and correct. `layer`'s auxiliary output is passed through.
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
        layer: impl FnOnce(&Tensor) -> Result<(Tensor, A)>,
    ) -> Result<(Tensor, A)> {
        self.check_wide(x, "AltUp input")?;
        if active as i64 >= self.num_blocks {
            return Err(Error::Shape(format!("active block ({active}) must be < K ({})", self.num_blocks)));
        }
        let predicted = self.predict(x)?;
        let (computed, aux) = layer(&x.f_select(0, active as i64)?)?;
        Ok((self.correct(&predicted, &computed, active)?, aux))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn predict_and_correct_by_hand() {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut altup = AltUp::new(&vs.root(), 2).unwrap();
        tch::no_grad(|| {
            altup.predictor.copy_(&Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]));
            altup.corrector.copy_(&Tensor::from_slice(&[0.5f32, 2.0]));
        });
        // Two blocks of one scalar each: x = (1, 10).
        let x = Tensor::from_slice(&[1.0f32, 10.0]).view([2, 1]);
        let pred = altup.predict(&x).unwrap(); // (1 + 20, 3 + 40) = (21, 43)
        assert_eq!(Vec::<f32>::try_from(pred.view([-1])).unwrap(), vec![21.0, 43.0]);
        // Layer output on block 1 is 50: y = (21 + 0.5 (50 - 43), 43 + 2 (50 - 43)) = (24.5, 57).
        let y = altup.correct(&pred, &Tensor::from_slice(&[50.0f32]), 1).unwrap();
        assert_eq!(Vec::<f32>::try_from(y.view([-1])).unwrap(), vec![24.5, 57.0]);
    }

    #[test]
    fn identity_init_with_identity_layer_changes_nothing() {
        let vs = nn::VarStore::new(Device::Cpu);
        let altup = AltUp::new(&vs.root(), 3).unwrap();
        let x = Tensor::randn([3, 2, 4, 5], (Kind::Float, Device::Cpu));
        let (y, ()) = altup.forward_t(&x, 1, |a| Ok((a.shallow_clone(), ()))).unwrap();
        assert!(y.allclose(&x, 1e-6, 1e-6, false));
    }

    #[test]
    fn predictor_and_corrector_get_gradients() {
        let vs = nn::VarStore::new(Device::Cpu);
        let altup = AltUp::new(&vs.root(), 2).unwrap();
        let x = Tensor::randn([2, 1, 3, 4], (Kind::Float, Device::Cpu));
        let (y, ()) = altup.forward_t(&x, 0, |a| Ok((a.tanh() * 2.0, ()))).unwrap();
        (y * Tensor::randn([2, 1, 3, 4], (Kind::Float, Device::Cpu))).sum(Kind::Float).backward();
        assert!(altup.predictor.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
        assert!(altup.corrector.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    #[test]
    fn wrong_block_count_is_a_shape_error() {
        let vs = nn::VarStore::new(Device::Cpu);
        let altup = AltUp::new(&vs.root(), 2).unwrap();
        let err = altup.predict(&Tensor::zeros([3, 4], (Kind::Float, Device::Cpu))).unwrap_err();
        assert!(err.to_string().contains("[K = 2, ...]"), "{err}");
    }
}
