//! Autoregressive sampling from a [`LanguageModel`] (temperature, top-k and nucleus / top-p).

use crate::error::{Error, Result};
use crate::host;
use crate::model::lm::LanguageModel;
use crate::model::output::ModelOutput;
use rand::Rng;
use tch::Tensor;

/// How the next token is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; `0` picks the most likely token (greedy).
    pub temperature: f64,
    /// Keep only the `top_k` most likely tokens before sampling (`None` = all).
    pub top_k: Option<usize>,
    /// Nucleus sampling (Holtzman et al. 2020, arXiv 1904.09751): keep the smallest set of most
    /// likely tokens whose probability (after temperature and top-k) reaches `top_p` ∈ (0, 1]
    /// (`None` = no cut).
    pub top_p: Option<f64>,
}

impl Sampling {
    /// # Errors
    /// [`Error::Input`] for a negative or non-finite temperature, `top_k = 0`, or `top_p`
    /// outside `(0, 1]`.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::Input(format!("temperature ({}) must be finite and >= 0", self.temperature)));
        }
        if self.top_k == Some(0) {
            return Err(Error::Input("top_k (0) must be positive".into()));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::Input(format!("top_p ({p}) must be in (0, 1]")));
            }
        }
        Ok(())
    }
}

impl Default for Sampling {
    fn default() -> Self {
        Self { temperature: 0.8, top_k: Some(40), top_p: None }
    }
}

/// The checks both generation paths make before decoding.
fn check_request(prompt: &[i64], sampling: Sampling) -> Result<()> {
    if prompt.is_empty() {
        return Err(Error::Input("the prompt must hold at least one token".into()));
    }
    sampling.validate()
}

impl LanguageModel {
    /// Extends `prompt` by `max_new_tokens` sampled tokens, in evaluation mode under `no_grad`;
    /// the random draws come from `rng`, so a seeded `rng` gives a reproducible sample.
    ///
    /// While the sequence fits in `max_seq_len`, decoding is incremental with a key/value cache
    /// ([`LanguageModel::forward_cached`]); past that (or for Sequence-AltUp models) each token is
    /// predicted from the last `max_seq_len` tokens, recomputed.
    ///
    /// # Errors
    /// [`Error::Input`] for an empty prompt, an id outside the vocabulary, a negative or
    /// non-finite temperature, `top_k = 0`, or `top_p` outside `(0, 1]`.
    pub fn generate(
        &self,
        prompt: &[i64],
        max_new_tokens: usize,
        sampling: Sampling,
        rng: &mut impl Rng,
    ) -> Result<Vec<i64>> {
        check_request(prompt, sampling)?;
        let device = self.device();
        let max_len = self.config().max_seq_len;
        let mut tokens = prompt.to_vec();
        let cached = self.config().sequence_altup.is_none() && prompt.len() < max_len;
        let mut cache = self.new_cache();
        let last_logits = |t: ModelOutput| -> Result<Tensor> { Ok(t.logits.f_select(1, -1)?.f_squeeze_dim(0)?) };
        tch::no_grad(|| -> Result<()> {
            let mut next = if cached {
                let input = Tensor::from_slice(&tokens).f_view([1, -1])?.f_to_device(device)?;
                Some(last_logits(self.forward_cached(&input, &mut cache)?)?)
            } else {
                None
            };
            for _ in 0..max_new_tokens {
                let logits = match next.take() {
                    Some(l) => l,
                    None => {
                        let context = &tokens[tokens.len().saturating_sub(max_len)..];
                        let input = Tensor::from_slice(context).f_view([1, -1])?.f_to_device(device)?;
                        last_logits(self.forward_t(&input, false)?)?
                    }
                };
                let token = sample(&logits, sampling, rng)?;
                tokens.push(token);
                if cached && (cache.len as usize) < max_len {
                    let input = Tensor::from_slice(&[token]).f_view([1, 1])?.f_to_device(device)?;
                    next = Some(last_logits(self.forward_cached(&input, &mut cache)?)?);
                }
            }
            Ok(())
        })?;
        Ok(tokens)
    }
}

impl LanguageModel {
    /// [`LanguageModel::generate`] without the key/value cache: every new token recomputes the
    /// whole (windowed) context. The reference for tests and benchmarks of the cached path.
    ///
    /// # Errors
    /// As [`LanguageModel::generate`].
    pub fn generate_uncached(
        &self,
        prompt: &[i64],
        max_new_tokens: usize,
        sampling: Sampling,
        rng: &mut impl Rng,
    ) -> Result<Vec<i64>> {
        check_request(prompt, sampling)?;
        let device = self.device();
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

/// Draws one token from next-token logits `[V]` (greedy at temperature 0).
pub(crate) fn sample(logits: &Tensor, sampling: Sampling, rng: &mut impl Rng) -> Result<i64> {
    let logits = host::f64s(logits)?;
    if sampling.temperature == 0.0 {
        let best = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0);
        return Ok(best as i64);
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    order.truncate(sampling.top_k.unwrap_or(logits.len()).min(logits.len()));
    let max = logits[order[0]];
    let mut weights: Vec<f64> = order.iter().map(|&i| ((logits[i] - max) / sampling.temperature).exp()).collect();
    if let Some(p) = sampling.top_p {
        // The most likely tokens up to and including the one that reaches mass p.
        let total: f64 = weights.iter().sum();
        let mut mass = 0.0;
        let keep = weights.iter().position(|w| {
            mass += w / total;
            mass >= p
        });
        let keep = keep.map_or(weights.len(), |i| i + 1);
        order.truncate(keep);
        weights.truncate(keep);
    }
    let mut r = rng.random::<f64>() * weights.iter().sum::<f64>();
    for (&i, w) in order.iter().zip(&weights) {
        if r < *w {
            return Ok(i as i64);
        }
        r -= w;
    }
    Ok(*order.last().unwrap_or(&0) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn draws(probs: &[f64], sampling: Sampling, n: usize) -> Vec<usize> {
        let logits = Tensor::from_slice(&probs.iter().map(|p| p.ln()).collect::<Vec<_>>());
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut counts = vec![0; probs.len()];
        for _ in 0..n {
            counts[sample(&logits, sampling, &mut rng).unwrap() as usize] += 1;
        }
        counts
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus_and_renormalises() {
        let probs = [0.5, 0.3, 0.15, 0.05];
        let at = |top_k, top_p| Sampling { temperature: 1.0, top_k, top_p };
        // Mass 0.5 < 0.75 <= 0.8: tokens 0 and 1, in proportion 5 : 3.
        let c = draws(&probs, at(None, Some(0.75)), 4000);
        assert_eq!(&c[2..], &[0, 0]);
        let share = c[0] as f64 / 4000.0;
        assert!((share - 0.625).abs() < 0.03, "{c:?}");
        // A nucleus inside the first token, and top-k applied first.
        assert_eq!(draws(&probs, at(None, Some(0.4)), 200), vec![200, 0, 0, 0]);
        assert_eq!(&draws(&probs, at(Some(3), Some(1.0)), 2000)[3..], &[0]);
        // Without a cut every token appears.
        assert!(draws(&probs, at(None, None), 4000).iter().all(|&n| n > 0));
    }

    #[test]
    fn bad_sampling_settings_are_named() {
        let bad = |s: Sampling| s.validate().unwrap_err().to_string();
        let base = Sampling::default();
        assert_eq!(bad(Sampling { top_p: Some(0.0), ..base }), "invalid input: top_p (0) must be in (0, 1]");
        assert_eq!(bad(Sampling { top_p: Some(1.5), ..base }), "invalid input: top_p (1.5) must be in (0, 1]");
        assert_eq!(bad(Sampling { top_k: Some(0), ..base }), "invalid input: top_k (0) must be positive");
        assert_eq!(
            bad(Sampling { temperature: -1.0, ..base }),
            "invalid input: temperature (-1) must be finite and >= 0"
        );
    }
}
