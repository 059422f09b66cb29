//! T5's span-corruption objective (Raffel et al. 2020, arXiv 1910.10683, §3.1.4): about 15% of
//! the tokens (bytes, or a tokenizer's ids), in spans of mean length 3, are replaced in the input
//! by sentinel ids (one per span, after the text's ids, like T5's `<extra_id_N>`); the target
//! lists each sentinel followed by the tokens it replaced, and ends with one more sentinel.
//!
//! Ids: text `0..V` (`V` = [`SpanCorruption::text_vocab`]: 256 for bytes, the tokenizer's size
//! otherwise), sentinels `V..V+S`, decoder start `V+S`; vocabulary `V+S+1`.
//!
//! ```text
//! tokens  a b c d e f g h i j        noise mask  . . # # . . . # . .
//! input   a b <0> e f g <1> i j
//! target  <0> c d <1> h <2>
//! ```

use crate::data::dataset::TokenDataset;
use crate::error::{ensure_config, Error, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

/// Span-corruption settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpanCorruption {
    /// Fraction of tokens corrupted (T5: 0.15).
    pub noise_density: f64,
    /// Mean span length (T5: 3).
    pub mean_span_length: f64,
    /// Number of sentinel ids.
    pub num_sentinels: usize,
    /// Ids of the text, below the sentinels: 256 for bytes, the tokenizer's vocabulary size for
    /// subword data (default 256).
    pub text_vocab: usize,
}

impl Default for SpanCorruption {
    fn default() -> Self {
        Self { noise_density: 0.15, mean_span_length: 3.0, num_sentinels: 64, text_vocab: 256 }
    }
}

/// A batch of span-corruption examples.
#[derive(Debug)]
pub struct Seq2SeqBatch {
    /// Corrupted inputs, `[B, S]` i64.
    pub src: Tensor,
    /// Decoder inputs (start id, then the target shifted right), `[B, T]` i64.
    pub tgt_in: Tensor,
    /// Targets, `[B, T]` i64.
    pub tgt_out: Tensor,
}

impl SpanCorruption {
    /// # Errors
    /// [`Error::Config`] for a density outside `(0, 1)`, a mean span length below 1, fewer
    /// than 2 sentinels, or no text ids.
    pub fn validate(&self) -> Result<()> {
        ensure_config(self.noise_density > 0.0 && self.noise_density < 1.0, || {
            format!("noise_density ({}) must be in (0, 1)", self.noise_density)
        })?;
        ensure_config(self.mean_span_length >= 1.0 && self.mean_span_length.is_finite(), || {
            format!("mean_span_length ({}) must be >= 1", self.mean_span_length)
        })?;
        ensure_config(self.num_sentinels >= 2, || {
            format!("num_sentinels ({}) must be at least 2", self.num_sentinels)
        })?;
        ensure_config(self.text_vocab >= 1, || "text_vocab (0) must be positive".into())
    }

    /// Id of sentinel `i`.
    pub fn sentinel(&self, i: usize) -> i64 {
        (self.text_vocab + i) as i64
    }

    /// Whether `id` is one of the sentinels (`text_vocab ≤ id < text_vocab + num_sentinels`).
    pub fn is_sentinel(&self, id: i64) -> bool {
        id >= self.text_vocab as i64 && id < (self.text_vocab + self.num_sentinels) as i64
    }

    /// The decoder's start id.
    pub fn decoder_start(&self) -> i64 {
        (self.text_vocab + self.num_sentinels) as i64
    }

    /// Vocabulary size: text ids, sentinels and the start id.
    pub fn vocab_size(&self) -> usize {
        self.text_vocab + self.num_sentinels + 1
    }

    /// Numbers of noise tokens and spans for a window of `len` tokens (T5's rounding).
    fn counts(&self, len: usize) -> Result<(usize, usize)> {
        if len < 2 {
            return Err(Error::Input(format!("span corruption needs at least 2 tokens, got {len}")));
        }
        let noise = ((len as f64 * self.noise_density).round() as usize).clamp(1, len - 1);
        let spans = ((noise as f64 / self.mean_span_length).round() as usize).clamp(1, noise.min(len - noise));
        let spans = spans.min(self.num_sentinels - 1);
        Ok((noise, spans))
    }

    /// Input and target lengths for a window of `len` tokens (the same for every window).
    ///
    /// # Errors
    /// [`Error::Input`] if `len < 2`.
    pub fn lengths(&self, len: usize) -> Result<(usize, usize)> {
        let (noise, spans) = self.counts(len)?;
        Ok((len - noise + spans, noise + spans + 1))
    }

    /// A random noise mask of `len` tokens: `spans` noise runs interleaved with as many
    /// non-noise runs, starting with non-noise, run lengths drawn by random segmentation (T5's
    /// `random_spans_noise_mask`).
    ///
    /// # Errors
    /// [`Error::Input`] if `len < 2`.
    pub fn noise_mask(&self, len: usize, rng: &mut impl Rng) -> Result<Vec<bool>> {
        let (noise, spans) = self.counts(len)?;
        let noise_runs = segment(noise, spans, rng);
        let clean_runs = segment(len - noise, spans, rng);
        let mut mask = Vec::with_capacity(len);
        for (clean, noisy) in clean_runs.into_iter().zip(noise_runs) {
            mask.extend(std::iter::repeat_n(false, clean));
            mask.extend(std::iter::repeat_n(true, noisy));
        }
        Ok(mask)
    }

    /// Applies a noise mask: each maximal noise run becomes one sentinel in the input; the target
    /// is each sentinel followed by its run, then a final sentinel.
    ///
    /// # Errors
    /// [`Error::Input`] if the mask length differs from the tokens', a token is not a text id
    /// (`0..text_vocab`), or there are more runs than sentinels allow.
    pub fn apply(&self, tokens: &[i64], noise: &[bool]) -> Result<(Vec<i64>, Vec<i64>)> {
        if tokens.len() != noise.len() {
            return Err(Error::Input(format!("noise mask has {} entries for {} tokens", noise.len(), tokens.len())));
        }
        if let Some((i, bad)) = tokens.iter().enumerate().find(|(_, &t)| t < 0 || t >= self.text_vocab as i64) {
            return Err(Error::Input(format!(
                "token {bad} at position {i} is not a text id (0..{}); sentinels start there",
                self.text_vocab
            )));
        }
        let (mut input, mut target) = (Vec::new(), Vec::new());
        let mut span = 0;
        for (i, (&t, &is_noise)) in tokens.iter().zip(noise).enumerate() {
            if !is_noise {
                input.push(t);
                continue;
            }
            if i == 0 || !noise[i - 1] {
                if span + 1 >= self.num_sentinels {
                    return Err(Error::Input(format!("more than {} noise spans", self.num_sentinels - 1)));
                }
                input.push(self.sentinel(span));
                target.push(self.sentinel(span));
                span += 1;
            }
            target.push(t);
        }
        target.push(self.sentinel(span));
        Ok((input, target))
    }

    /// A batch of `batch_size` random windows of `window` tokens, corrupted.
    ///
    /// # Errors
    /// [`Error::Data`] if no shard of the dataset holds a window; [`Error::Input`] for ids at or
    /// above [`SpanCorruption::text_vocab`].
    pub fn batch(
        &self,
        data: &TokenDataset,
        batch_size: usize,
        window: usize,
        rng: &mut impl Rng,
        device: Device,
    ) -> Result<Seq2SeqBatch> {
        let windows = data.random_windows(batch_size, window, rng)?;
        self.corrupt(&windows, window, rng, device)
    }

    /// Up to `max_batches` batches of non-overlapping windows spread over the dataset, corrupted
    /// with the given generator (seed it for fixed evaluation batches).
    ///
    /// # Errors
    /// As [`SpanCorruption::batch`].
    pub fn eval_batches(
        &self,
        data: &TokenDataset,
        batch_size: usize,
        window: usize,
        max_batches: usize,
        rng: &mut impl Rng,
        device: Device,
    ) -> Result<Vec<Seq2SeqBatch>> {
        let windows = data.spread_windows(batch_size * max_batches, window)?;
        windows.chunks(batch_size).map(|chunk| self.corrupt(chunk, window, rng, device)).collect()
    }

    /// Corrupts windows of `window` tokens into one batch.
    fn corrupt(&self, windows: &[Vec<i64>], window: usize, rng: &mut impl Rng, device: Device) -> Result<Seq2SeqBatch> {
        let (s, t) = self.lengths(window)?;
        let (mut src, mut tgt_in, mut tgt_out) = (Vec::new(), Vec::new(), Vec::new());
        for chunk in windows {
            let mask = self.noise_mask(window, rng)?;
            let (input, target) = self.apply(chunk, &mask)?;
            debug_assert_eq!((input.len(), target.len()), (s, t));
            src.extend(input);
            tgt_in.push(self.decoder_start());
            tgt_in.extend(&target[..target.len() - 1]);
            tgt_out.extend(target);
        }
        let b = windows.len() as i64;
        let tensor = |v: &[i64], len: usize| -> Result<Tensor> {
            Ok(Tensor::from_slice(v).f_view([b, len as i64])?.f_to_device(device)?)
        };
        Ok(Seq2SeqBatch { src: tensor(&src, s)?, tgt_in: tensor(&tgt_in, t)?, tgt_out: tensor(&tgt_out, t)? })
    }
}

/// Splits `n` items into `k` non-empty runs at `k − 1` distinct random cut points.
fn segment(n: usize, k: usize, rng: &mut impl Rng) -> Vec<usize> {
    let mut cuts: Vec<usize> = rand::seq::index::sample(rng, n - 1, k - 1).into_iter().map(|c| c + 1).collect();
    cuts.sort_unstable();
    let mut lengths = Vec::with_capacity(k);
    let mut previous = 0;
    for c in cuts.into_iter().chain(std::iter::once(n)) {
        lengths.push(c - previous);
        previous = c;
    }
    lengths
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn hand_worked_example() {
        let sc = SpanCorruption { num_sentinels: 4, ..Default::default() };
        let noise = [false, false, true, true, false, false, false, true, false, false];
        let text: Vec<i64> = b"abcdefghij".iter().map(|&c| i64::from(c)).collect();
        let (input, target) = sc.apply(&text, &noise).unwrap();
        let b = |c: u8| c as i64;
        assert_eq!(input, vec![b(b'a'), b(b'b'), 256, b(b'e'), b(b'f'), b(b'g'), 257, b(b'i'), b(b'j')]);
        assert_eq!(target, vec![256, b(b'c'), b(b'd'), 257, b(b'h'), 258]);
    }

    #[test]
    fn masks_have_the_density_and_span_count_and_are_seeded() {
        let sc = SpanCorruption::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mask = sc.noise_mask(100, &mut rng).unwrap();
        assert_eq!(mask.len(), 100);
        assert_eq!(mask.iter().filter(|&&m| m).count(), 15);
        let runs = mask.windows(2).filter(|w| !w[0] && w[1]).count();
        assert_eq!(runs, 5, "15 noise bytes / mean span 3 = 5 spans");
        assert!(!mask[0], "T5 starts with a non-noise run");
        let again = sc.noise_mask(100, &mut rand::rngs::StdRng::seed_from_u64(3)).unwrap();
        assert_eq!(mask, again);
        let (input, target) = sc.apply(&[7i64; 100], &mask).unwrap();
        assert_eq!((input.len(), target.len()), sc.lengths(100).unwrap());
        assert_eq!(sc.lengths(100).unwrap(), (90, 21));
    }

    #[test]
    fn batches_shift_the_target_right_after_the_start_id() {
        let sc = SpanCorruption::default();
        let data = TokenDataset::new((0..200u32).map(|i| (i % 251) as u8).collect());
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let batch = sc.batch(&data, 3, 40, &mut rng, Device::Cpu).unwrap();
        assert_eq!(batch.src.size(), vec![3, 36]);
        assert_eq!(batch.tgt_in.size(), vec![3, 9]);
        assert!(batch.tgt_in.select(1, 0).eq(sc.decoder_start()).all().int64_value(&[]) == 1);
        assert!(batch.tgt_in.narrow(1, 1, 8).equal(&batch.tgt_out.narrow(1, 0, 8)));
        let too_short = sc.batch(&TokenDataset::new(vec![1; 10]), 1, 40, &mut rng, Device::Cpu).unwrap_err();
        assert!(too_short.to_string().contains("holds 10 bytes, fewer than one window of 40"), "{too_short}");
    }

    #[test]
    fn subword_ids_get_sentinels_after_the_tokenizer() {
        // A 1,000-id tokenizer: ids up to 999 are text, sentinels follow from 1000.
        let sc = SpanCorruption { text_vocab: 1000, ..Default::default() };
        assert_eq!((sc.sentinel(0), sc.decoder_start(), sc.vocab_size()), (1000, 1064, 1065));
        assert!(sc.is_sentinel(1000) && sc.is_sentinel(1063) && !sc.is_sentinel(999) && !sc.is_sentinel(1064));
        let ids: Vec<u32> = (0..400u32).map(|i| 990 + i % 10).collect();
        let data = TokenDataset::from_ids(ids, 1000, 1600).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let batch = sc.batch(&data, 2, 40, &mut rng, Device::Cpu).unwrap();
        let src = Vec::<i64>::try_from(batch.src.flatten(0, -1)).unwrap();
        let tgt = Vec::<i64>::try_from(batch.tgt_out.flatten(0, -1)).unwrap();
        // Every id is a text id of the data (990..1000) or a sentinel; the input of each window
        // holds 2 sentinels (40 tokens: 6 noise tokens in 2 spans) and the target 3.
        assert!(src.iter().chain(&tgt).all(|&t| (990..1000).contains(&t) || sc.is_sentinel(t)), "{src:?} {tgt:?}");
        assert_eq!(src.iter().filter(|&&t| sc.is_sentinel(t)).count(), 2 * 2);
        assert_eq!(tgt.iter().filter(|&&t| sc.is_sentinel(t)).count(), 2 * 3);
        // A text id at or above text_vocab would collide with a sentinel: refused, naming it.
        let err = sc.apply(&[5, 1000, 7], &[false, true, false]).unwrap_err().to_string();
        assert!(err.contains("token 1000 at position 1") && err.contains("0..1000"), "{err}");
    }
}
