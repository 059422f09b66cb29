//! T5's span-corruption objective on bytes (Raffel et al. 2020, arXiv 1910.10683, §3.1.4):
//! about 15% of the bytes, in spans of mean length 3, are replaced in the input by sentinel ids
//! (one per span, beyond the 256 byte values); the target lists each sentinel followed by the
//! bytes it replaced, and ends with one more sentinel.
//!
//! Ids: bytes `0..256`, sentinels `256..256+S`, decoder start `256+S`; vocabulary `257+S`.
//!
//! ```text
//! bytes   a b c d e f g h i j        noise mask  . . # # . . . # . .
//! input   a b <0> e f g <1> i j
//! target  <0> c d <1> h <2>
//! ```

use crate::error::{ensure_config, Error, Result};
use crate::train::data::TokenDataset;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

/// Span-corruption settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpanCorruption {
    /// Fraction of bytes corrupted (T5: 0.15).
    pub noise_density: f64,
    /// Mean span length (T5: 3).
    pub mean_span_length: f64,
    /// Number of sentinel ids.
    pub num_sentinels: usize,
}

impl Default for SpanCorruption {
    fn default() -> Self {
        Self { noise_density: 0.15, mean_span_length: 3.0, num_sentinels: 64 }
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
    /// [`Error::Config`] for a density outside `(0, 1)`, a mean span length below 1, or fewer
    /// than 2 sentinels.
    pub fn validate(&self) -> Result<()> {
        ensure_config(self.noise_density > 0.0 && self.noise_density < 1.0, || {
            format!("noise_density ({}) must be in (0, 1)", self.noise_density)
        })?;
        ensure_config(self.mean_span_length >= 1.0 && self.mean_span_length.is_finite(), || {
            format!("mean_span_length ({}) must be >= 1", self.mean_span_length)
        })?;
        ensure_config(self.num_sentinels >= 2, || format!("num_sentinels ({}) must be at least 2", self.num_sentinels))
    }

    /// Id of sentinel `i`.
    pub fn sentinel(&self, i: usize) -> i64 {
        256 + i as i64
    }

    /// The decoder's start id.
    pub fn decoder_start(&self) -> i64 {
        256 + self.num_sentinels as i64
    }

    /// Vocabulary size: bytes, sentinels and the start id.
    pub fn vocab_size(&self) -> usize {
        257 + self.num_sentinels
    }

    /// Numbers of noise bytes and spans for a window of `len` bytes (T5's rounding).
    fn counts(&self, len: usize) -> Result<(usize, usize)> {
        if len < 2 {
            return Err(Error::Input(format!("span corruption needs at least 2 bytes, got {len}")));
        }
        let noise = ((len as f64 * self.noise_density).round() as usize).clamp(1, len - 1);
        let spans = ((noise as f64 / self.mean_span_length).round() as usize).clamp(1, noise.min(len - noise));
        let spans = spans.min(self.num_sentinels - 1);
        Ok((noise, spans))
    }

    /// Input and target lengths for a window of `len` bytes (the same for every window).
    ///
    /// # Errors
    /// [`Error::Input`] if `len < 2`.
    pub fn lengths(&self, len: usize) -> Result<(usize, usize)> {
        let (noise, spans) = self.counts(len)?;
        Ok((len - noise + spans, noise + spans + 1))
    }

    /// A random noise mask of `len` bytes: `spans` noise runs interleaved with as many
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
    /// [`Error::Input`] if the mask length differs from the bytes' or there are more runs than
    /// sentinels allow.
    pub fn apply(&self, bytes: &[u8], noise: &[bool]) -> Result<(Vec<i64>, Vec<i64>)> {
        if bytes.len() != noise.len() {
            return Err(Error::Input(format!("noise mask has {} entries for {} bytes", noise.len(), bytes.len())));
        }
        let (mut input, mut target) = (Vec::new(), Vec::new());
        let mut span = 0;
        for (i, (&b, &is_noise)) in bytes.iter().zip(noise).enumerate() {
            if !is_noise {
                input.push(b as i64);
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
            target.push(b as i64);
        }
        target.push(self.sentinel(span));
        Ok((input, target))
    }

    /// A batch of `batch_size` random windows of `window` bytes, corrupted.
    ///
    /// # Errors
    /// [`Error::Data`] if the dataset is shorter than a window.
    pub fn batch(
        &self,
        data: &TokenDataset,
        batch_size: usize,
        window: usize,
        rng: &mut impl Rng,
        device: Device,
    ) -> Result<Seq2SeqBatch> {
        let bytes = byte_text(data)?;
        if bytes.len() < window {
            return Err(Error::Data(format!(
                "the split holds {} bytes, fewer than the {window}-byte window",
                bytes.len()
            )));
        }
        let starts: Vec<usize> = (0..batch_size).map(|_| rng.random_range(0..=bytes.len() - window)).collect();
        self.batch_at(bytes, &starts, window, rng, device)
    }

    /// Up to `max_batches` batches of non-overlapping windows spread over the dataset, corrupted
    /// with the given generator (seed it for fixed evaluation batches).
    ///
    /// # Errors
    /// [`Error::Data`] if the dataset is shorter than a window.
    pub fn eval_batches(
        &self,
        data: &TokenDataset,
        batch_size: usize,
        window: usize,
        max_batches: usize,
        rng: &mut impl Rng,
        device: Device,
    ) -> Result<Vec<Seq2SeqBatch>> {
        let bytes = byte_text(data)?;
        if bytes.len() < window {
            return Err(Error::Data(format!(
                "the split holds {} bytes, fewer than the {window}-byte window",
                bytes.len()
            )));
        }
        let available = bytes.len() / window;
        let wanted = (batch_size * max_batches).min(available).max(1);
        let stride = available / wanted;
        let starts: Vec<usize> = (0..wanted).map(|i| i * stride * window).collect();
        starts.chunks(batch_size).map(|chunk| self.batch_at(bytes, chunk, window, rng, device)).collect()
    }

    fn batch_at(
        &self,
        bytes: &[u8],
        starts: &[usize],
        window: usize,
        rng: &mut impl Rng,
        device: Device,
    ) -> Result<Seq2SeqBatch> {
        let (s, t) = self.lengths(window)?;
        let (mut src, mut tgt_in, mut tgt_out) = (Vec::new(), Vec::new(), Vec::new());
        for &start in starts {
            let chunk = &bytes[start..start + window];
            let mask = self.noise_mask(window, rng)?;
            let (input, target) = self.apply(chunk, &mask)?;
            debug_assert_eq!((input.len(), target.len()), (s, t));
            src.extend(input);
            tgt_in.push(self.decoder_start());
            tgt_in.extend(&target[..target.len() - 1]);
            tgt_out.extend(target);
        }
        let b = starts.len() as i64;
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

/// The bytes of a byte-level dataset: span corruption's sentinels follow the 256 byte ids.
fn byte_text(data: &TokenDataset) -> Result<&[u8]> {
    data.bytes().ok_or_else(|| {
        Error::Data(format!(
            "span corruption trains on bytes, but the dataset holds ids of a {}-id tokenizer",
            data.vocab_size()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn hand_worked_example() {
        let sc = SpanCorruption { num_sentinels: 4, ..Default::default() };
        let noise = [false, false, true, true, false, false, false, true, false, false];
        let (input, target) = sc.apply(b"abcdefghij", &noise).unwrap();
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
        let (input, target) = sc.apply(&[7u8; 100], &mask).unwrap();
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
        assert!(too_short.to_string().contains("holds 10 bytes, fewer than the 40-byte window"), "{too_short}");
    }
}
