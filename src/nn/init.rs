//! Weight initialisation, as data in one place.
//!
//! GPT-2 scheme (Radford et al. 2019, §2.3): every matrix `N(0, std²)`; projections that write
//! into the residual stream (attention output, FFN/expert output) use `std / sqrt(2 · layers)`.
//! Norm gains start at 1; AltUp's predictor at the identity and its corrector gains at 1.
//! Batched expert weights `[E, D, F]` use the same explicit normal (libtorch's Kaiming
//! initialisers get the fan-in of 3-D weights wrong).
//!
//! Random values come from a Rust RNG seeded by `(seed, full parameter name)`, not from
//! libtorch's global generator: a parameter's initial value depends only on the seed and its
//! name — not on construction order, other threads, or the device — so the same seed gives the
//! same model on CPU and CUDA, and a slice of experts equals the same slice of the full tensor.

use crate::error::Result;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

/// Standard deviations and seed used to initialise a model's matrices.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InitScheme {
    /// Std of embeddings, input projections and the router.
    pub std: f64,
    /// Std of projections that write into the residual stream.
    pub residual_std: f64,
    /// Seed of every random initial value.
    pub seed: u64,
}

impl InitScheme {
    /// GPT-2 scheme: `residual_std = std / sqrt(2 · num_layers)`.
    pub fn gpt2(std: f64, num_layers: usize, seed: u64) -> Self {
        Self { std, residual_std: std / (2.0 * num_layers.max(1) as f64).sqrt(), seed }
    }

    /// Creates the trainable variable `<path>.<name>` of shape `dims` with entries drawn from
    /// `N(0, std²)`, seeded by `(self.seed, full name)`.
    ///
    /// # Errors
    /// [`crate::Error::Torch`] if allocation fails.
    pub fn normal(&self, path: &nn::Path, name: &str, dims: &[i64], std: f64) -> Result<Tensor> {
        let values = normal_values(&path.path(name), self.seed, dims, std)?;
        Ok(path.f_var_copy(name, &values)?)
    }
}

impl InitScheme {
    /// Like [`InitScheme::normal`], but the variable holds rows `range` (along dimension 0) of
    /// the tensor of shape `full_dims` that [`InitScheme::normal`] would create: a slice of experts
    /// gets exactly the values those experts have in the full model.
    ///
    /// # Errors
    /// [`crate::Error::Torch`] if allocation fails.
    pub fn normal_slice(
        &self,
        path: &nn::Path,
        name: &str,
        full_dims: &[i64],
        std: f64,
        range: std::ops::Range<i64>,
    ) -> Result<Tensor> {
        let values = normal_values(&path.path(name), self.seed, full_dims, std)?;
        Ok(path.f_var_copy(name, &values.f_narrow(0, range.start, range.end - range.start)?)?)
    }
}

impl Default for InitScheme {
    fn default() -> Self {
        Self { std: 0.02, residual_std: 0.02, seed: 0 }
    }
}

/// A CPU f32 tensor of shape `dims` with `N(0, std²)` entries, a pure function of `(key, seed)`.
///
/// # Errors
/// [`crate::Error::Torch`] if the tensor cannot be built.
pub fn normal_values(key: &str, seed: u64, dims: &[i64], std: f64) -> Result<Tensor> {
    // FNV-1a of the key, mixed with the seed (SplitMix64 finaliser).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = h ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    let mut rng = rand::rngs::StdRng::seed_from_u64(z ^ (z >> 31));
    let n: i64 = dims.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| {
            let z: f64 = StandardNormal.sample(&mut rng);
            (std * z) as f32
        })
        .collect();
    Ok(Tensor::from_slice(&values).f_view(dims)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn values_depend_on_name_and_seed_only_and_have_the_requested_std() {
        let a = normal_values("blocks.0.ffn.w_in.weight", 1, &[64, 64], 0.5).unwrap();
        assert!(a.equal(&normal_values("blocks.0.ffn.w_in.weight", 1, &[64, 64], 0.5).unwrap()));
        assert!(!a.equal(&normal_values("blocks.1.ffn.w_in.weight", 1, &[64, 64], 0.5).unwrap()));
        assert!(!a.equal(&normal_values("blocks.0.ffn.w_in.weight", 2, &[64, 64], 0.5).unwrap()));
        let std = a.std(true).double_value(&[]);
        let mean = a.mean(Kind::Float).double_value(&[]);
        assert!((std - 0.5).abs() < 0.02 && mean.abs() < 0.02, "std {std}, mean {mean}");
    }
}
