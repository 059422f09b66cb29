//! Autoregressive sampling from a [`LanguageModel`] (temperature and top-k).

use crate::error::{Error, Result};
use crate::model::lm::LanguageModel;
use rand::Rng;
use tch::{Kind, Tensor};

/// How the next token is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; `0` picks the most likely token (greedy).
    pub temperature: f64,
    /// Keep only the `top_k` most likely tokens before sampling (`None` = all).
    pub top_k: Option<usize>,
}

impl Default for Sampling {
    fn default() -> Self {
        Self { temperature: 0.8, top_k: Some(40) }
    }
}

impl LanguageModel {
    /// Extends `prompt` by `max_new_tokens` sampled tokens. The context is cropped to the last
    /// `max_seq_len` tokens; the whole context is recomputed for each new token (no cache).
    /// Runs in evaluation mode under `no_grad`; the random draws come from `rng`, so a seeded
    /// `rng` gives a reproducible sample.
    ///
    /// # Errors
    /// [`Error::Input`] for an empty prompt, an id outside the vocabulary, a negative or
    /// non-finite temperature, or `top_k = 0`.
    pub fn generate(
        &self,
        prompt: &[i64],
        max_new_tokens: usize,
        sampling: Sampling,
        rng: &mut impl Rng,
    ) -> Result<Vec<i64>> {
        if prompt.is_empty() {
            return Err(Error::Input("the prompt must hold at least one token".into()));
        }
        if !(sampling.temperature >= 0.0 && sampling.temperature.is_finite()) {
            return Err(Error::Input(format!("temperature ({}) must be finite and >= 0", sampling.temperature)));
        }
        if sampling.top_k == Some(0) {
            return Err(Error::Input("top_k (0) must be positive".into()));
        }
        let device = self.blocks()[0].attn_norm.weight.device();
        let max_len = self.config().max_seq_len;
        let mut tokens = prompt.to_vec();
        tch::no_grad(|| -> Result<()> {
            for _ in 0..max_new_tokens {
                let context = &tokens[tokens.len().saturating_sub(max_len)..];
                let input = Tensor::from_slice(context).f_view([1, -1])?.f_to_device(device)?;
                let logits = self.forward_t(&input, false)?.logits.f_select(1, -1)?.f_squeeze_dim(0)?;
                tokens.push(sample(&logits, sampling, rng)?);
            }
            Ok(())
        })?;
        Ok(tokens)
    }
}

fn sample(logits: &Tensor, sampling: Sampling, rng: &mut impl Rng) -> Result<i64> {
    let logits = Vec::<f64>::try_from(logits.f_to_kind(Kind::Double)?.f_to_device(tch::Device::Cpu)?)?;
    if sampling.temperature == 0.0 {
        let best = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0);
        return Ok(best as i64);
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    order.truncate(sampling.top_k.unwrap_or(logits.len()).min(logits.len()));
    let max = logits[order[0]];
    let weights: Vec<f64> = order.iter().map(|&i| ((logits[i] - max) / sampling.temperature).exp()).collect();
    let mut r = rng.random::<f64>() * weights.iter().sum::<f64>();
    for (&i, w) in order.iter().zip(&weights) {
        if r < *w {
            return Ok(i as i64);
        }
        r -= w;
    }
    Ok(*order.last().unwrap_or(&0) as i64)
}
