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

/// What to generate: how many new tokens at most, how each is drawn, and which ids end it.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// New tokens to generate at most.
    pub max_new_tokens: usize,
    /// How each token is drawn.
    pub sampling: Sampling,
    /// Ids that end generation once drawn (kept as the last token, as transformers does): the
    /// tokenizer's end-of-sequence ids ([`crate::data::TextTokenizer::special_tokens`]) and any
    /// the user adds. Empty: always `max_new_tokens`.
    pub stop_ids: Vec<i64>,
}

impl Generation {
    /// `max_new_tokens` tokens drawn with `sampling`, no stop ids.
    pub fn new(max_new_tokens: usize, sampling: Sampling) -> Self {
        Self { max_new_tokens, sampling, stop_ids: Vec::new() }
    }

    /// The same request, ending at any of `stop_ids`.
    pub fn stop_at(mut self, stop_ids: impl IntoIterator<Item = i64>) -> Self {
        self.stop_ids.extend(stop_ids);
        self
    }

    /// The checks every generation path makes before decoding.
    fn check(&self, prompt: &[i64]) -> Result<()> {
        if prompt.is_empty() {
            return Err(Error::Input("the prompt must hold at least one token".into()));
        }
        self.sampling.validate()
    }
}

impl LanguageModel {
    /// Extends `prompt` by up to `generation.max_new_tokens` sampled tokens, stopping after a
    /// stop id, in evaluation mode under `no_grad`; the random draws come from `rng`, so a
    /// seeded `rng` gives a reproducible sample. Returns the prompt and the new tokens.
    ///
    /// Decoding is incremental with a key/value cache ([`LanguageModel::forward_cached`]) while
    /// the sequence fits in `max_seq_len` and the cache gives the full pass's logits; for the
    /// models [`ModelConfig::cache_blockers`](crate::model::ModelConfig::cache_blockers) lists
    /// (Sequence-AltUp, expert-choice routing, an evaluation capacity limit), and past
    /// `max_seq_len`, each token is predicted from the last `max_seq_len` tokens, recomputed — so
    /// the result always equals [`LanguageModel::generate_uncached`]'s.
    ///
    /// # Errors
    /// [`Error::Input`] for an empty prompt, an id outside the vocabulary, a negative or
    /// non-finite temperature, `top_k = 0`, `top_p` outside `(0, 1]`, or logits that are not
    /// finite (a model with NaN weights).
    pub fn generate(&self, prompt: &[i64], generation: &Generation, rng: &mut impl Rng) -> Result<Vec<i64>> {
        self.generate_streaming(prompt, generation, rng, &mut |_| Ok(()))
    }

    /// [`LanguageModel::generate`], calling `on_token` with each new token as soon as it is
    /// drawn (for streaming output); an error from `on_token` stops generation and is returned.
    ///
    /// # Errors
    /// As [`LanguageModel::generate`], and `on_token`'s errors.
    pub fn generate_streaming(
        &self,
        prompt: &[i64],
        generation: &Generation,
        rng: &mut impl Rng,
        on_token: &mut dyn FnMut(i64) -> Result<()>,
    ) -> Result<Vec<i64>> {
        generation.check(prompt)?;
        let device = self.device();
        let max_len = self.config().max_seq_len;
        let mut tokens = prompt.to_vec();
        let cached = self.config().cache_blockers().is_empty() && prompt.len() < max_len;
        let mut cache = self.new_cache();
        let last_logits = |t: ModelOutput| -> Result<Tensor> { Ok(t.logits.f_select(1, -1)?.f_squeeze_dim(0)?) };
        tch::no_grad(|| -> Result<()> {
            let mut next = if cached {
                let input = Tensor::from_slice(&tokens).f_view([1, -1])?.f_to_device(device)?;
                Some(last_logits(self.forward_cached(&input, &mut cache)?)?)
            } else {
                None
            };
            for _ in 0..generation.max_new_tokens {
                let logits = match next.take() {
                    Some(l) => l,
                    None => {
                        let context = &tokens[tokens.len().saturating_sub(max_len)..];
                        let input = Tensor::from_slice(context).f_view([1, -1])?.f_to_device(device)?;
                        last_logits(self.forward_t(&input, false)?)?
                    }
                };
                let token = sample(&logits, generation.sampling, rng)?;
                tokens.push(token);
                on_token(token)?;
                if generation.stop_ids.contains(&token) {
                    break;
                }
                if cached && (cache.len as usize) < max_len {
                    let input = Tensor::from_slice(&[token]).f_view([1, 1])?.f_to_device(device)?;
                    next = Some(last_logits(self.forward_cached(&input, &mut cache)?)?);
                }
            }
            Ok(())
        })?;
        Ok(tokens)
    }

    /// [`LanguageModel::generate`] without the key/value cache: every new token recomputes the
    /// whole (windowed) context. The reference for tests and benchmarks of the cached path.
    ///
    /// # Errors
    /// As [`LanguageModel::generate`].
    pub fn generate_uncached(&self, prompt: &[i64], generation: &Generation, rng: &mut impl Rng) -> Result<Vec<i64>> {
        generation.check(prompt)?;
        let device = self.device();
        let max_len = self.config().max_seq_len;
        let mut tokens = prompt.to_vec();
        tch::no_grad(|| -> Result<()> {
            for _ in 0..generation.max_new_tokens {
                let context = &tokens[tokens.len().saturating_sub(max_len)..];
                let input = Tensor::from_slice(context).f_view([1, -1])?.f_to_device(device)?;
                let logits = self.forward_t(&input, false)?.logits.f_select(1, -1)?.f_squeeze_dim(0)?;
                let token = sample(&logits, generation.sampling, rng)?;
                tokens.push(token);
                if generation.stop_ids.contains(&token) {
                    break;
                }
            }
            Ok(())
        })?;
        Ok(tokens)
    }
}

/// Draws one token from next-token logits `[V]`.
///
/// Rules (as transformers' `generate`): at temperature 0 the first of equal maxima (the lowest
/// id, as `argmax`); otherwise top-k keeps every token whose logit is at least the k-th largest
/// (ties at the boundary all kept), the kept logits are divided by the temperature and
/// softmaxed, and top-p keeps, in order of probability (ties in id order), the tokens up to and
/// including the one whose cumulative probability reaches `top_p`.
///
/// # Errors
/// [`Error::Input`] when a logit is NaN or every logit is −∞.
pub(crate) fn sample(logits: &Tensor, sampling: Sampling, rng: &mut impl Rng) -> Result<i64> {
    let logits = host::f64s(logits)?;
    if logits.iter().any(|x| x.is_nan()) || logits.iter().all(|&x| x == f64::NEG_INFINITY) {
        return Err(Error::Input(
            "the model's next-token logits are not finite (NaN weights?): nothing to sample from".into(),
        ));
    }
    if sampling.temperature == 0.0 {
        let mut best = 0;
        for (i, &x) in logits.iter().enumerate() {
            if x > logits[best] {
                best = i;
            }
        }
        return Ok(best as i64);
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if let Some(k) = sampling.top_k.filter(|&k| k < logits.len()) {
        let kth = logits[order[k - 1]];
        let keep = order.iter().position(|&i| logits[i] < kth).unwrap_or(order.len());
        order.truncate(keep);
    }
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
    fn ties_follow_transformers() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        // Greedy: the first of equal maxima (torch.argmax), wherever the maxima are.
        for (logits, best) in [(vec![1.0, 3.0, 3.0, 0.0], 1), (vec![5.0, 5.0], 0), (vec![0.0, -1.0, 2.0, 2.0, 2.0], 2)]
        {
            let greedy = Sampling { temperature: 0.0, top_k: None, top_p: None };
            assert_eq!(sample(&Tensor::from_slice(&logits), greedy, &mut rng).unwrap(), best, "{logits:?}");
        }
        // Top-k keeps every token tied with the k-th largest logit.
        let tied = [0.4, 0.2, 0.2, 0.2];
        let counts = draws(&tied, Sampling { temperature: 1.0, top_k: Some(2), top_p: None }, 3000);
        assert!(counts.iter().all(|&n| n > 0), "{counts:?}");
        let counts = draws(&[0.4, 0.3, 0.2, 0.1], Sampling { temperature: 1.0, top_k: Some(2), top_p: None }, 3000);
        assert_eq!(&counts[2..], &[0, 0]);
        // Non-finite logits are an error, not a token.
        let nan = Tensor::from_slice(&[0.0, f64::NAN]);
        let err = sample(&nan, Sampling::default(), &mut rng).unwrap_err().to_string();
        assert!(err.contains("logits are not finite"), "{err}");
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
