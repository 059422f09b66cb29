//! Token ids of a split (in memory or memory-mapped shards) and batches of `[B, T]`
//! input/target windows drawn from them.

use crate::error::{Error, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tch::{Device, Tensor};

/// The end-of-text separator of byte-level data: ASCII ETX ("end of text"), a control byte that
/// text files do not hold (reading a document that holds it is refused).
pub const END_OF_TEXT_BYTE: u8 = 0x03;

/// A batch of next-token prediction windows.
#[derive(Debug)]
pub struct Batch {
    /// Input ids, `[B, T]` i64.
    pub inputs: Tensor,
    /// Target ids (inputs shifted by one), `[B, T]` i64.
    pub targets: Tensor,
}

/// Width of the ids in the shard files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardDtype {
    /// 2 bytes per id: vocabularies of at most 65,536 ids.
    U16,
    /// 4 bytes per id.
    U32,
}

impl ShardDtype {
    /// The narrowest width that holds ids `0 .. vocab_size`.
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= 1 << 16 {
            Self::U16
        } else {
            Self::U32
        }
    }

    /// Bytes per id.
    pub fn width(self) -> usize {
        match self {
            Self::U16 => 2,
            Self::U32 => 4,
        }
    }
}

fn check_ids(ids: &[u32], vocab_size: usize) -> Result<()> {
    match ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab_size) {
        Some((i, bad)) => {
            Err(Error::Data(format!("token id {bad} at position {i} is outside the vocabulary of {vocab_size} ids")))
        }
        None => Ok(()),
    }
}

/// Token ids: bytes or wider ids in memory, or memory-mapped shard files (windows never cross
/// from one shard into the next).
#[derive(Debug, Clone)]
enum TokenIds {
    U8(Vec<u8>),
    U32(Vec<u32>),
    Shards(std::sync::Arc<Vec<MappedShard>>, ShardDtype),
}

/// One memory-mapped shard file.
#[derive(Debug)]
struct MappedShard {
    map: memmap2::Mmap,
    path: PathBuf,
    tokens: usize,
}

/// How many bytes of text each token stands for (bits per byte count the bytes of the windows
/// actually scored).
#[derive(Debug, Clone)]
enum TokenBytes {
    /// Byte ids: one byte each, none for the end-of-text byte.
    Bytes,
    /// A count per token, in memory.
    Counts(std::sync::Arc<Vec<u32>>),
    /// A count per token of each shard: little-endian u16 files beside the id files.
    Shards(std::sync::Arc<Vec<memmap2::Mmap>>),
    /// Not known per token: each token the dataset's average.
    Average,
}

/// A token sequence to draw training or evaluation windows from, with the number of bytes of
/// text it came from and, per token, the bytes it stands for (so that losses convert to bits
/// per byte of the text actually scored, whatever the tokenizer).
#[derive(Debug, Clone)]
pub struct TokenDataset {
    ids: TokenIds,
    vocab_size: usize,
    text_bytes: usize,
    token_bytes: TokenBytes,
}

impl TokenDataset {
    /// Bytes as tokens: id = byte value, 256 ids, one byte per token.
    pub fn new(bytes: Vec<u8>) -> Self {
        let text_bytes = bytes.len();
        Self { ids: TokenIds::U8(bytes), vocab_size: 256, text_bytes, token_bytes: TokenBytes::Bytes }
    }

    /// Bytes as tokens standing for `text_bytes` bytes of text (the rest are document
    /// separators, [`END_OF_TEXT_BYTE`]).
    pub fn from_bytes(bytes: Vec<u8>, text_bytes: usize) -> Self {
        Self { ids: TokenIds::U8(bytes), vocab_size: 256, text_bytes, token_bytes: TokenBytes::Bytes }
    }

    /// Ids of a tokenizer with `vocab_size` ids, tokenized from `text_bytes` bytes of text
    /// (each token counted as the average, `text_bytes / ids`, in bits per byte; see
    /// [`TokenDataset::from_ids_with_bytes`]).
    ///
    /// # Errors
    /// [`Error::Data`] naming the first id outside `0..vocab_size`.
    pub fn from_ids(ids: Vec<u32>, vocab_size: usize, text_bytes: usize) -> Result<Self> {
        check_ids(&ids, vocab_size)?;
        Ok(Self { ids: TokenIds::U32(ids), vocab_size, text_bytes, token_bytes: TokenBytes::Average })
    }

    /// Ids of a tokenizer with `vocab_size` ids and the bytes of text each stands for
    /// (`bytes[i]` for `ids[i]`; 0 for separators).
    ///
    /// # Errors
    /// [`Error::Data`] naming the first id outside `0..vocab_size`, or when the two lengths differ.
    pub fn from_ids_with_bytes(ids: Vec<u32>, bytes: Vec<u32>, vocab_size: usize) -> Result<Self> {
        check_ids(&ids, vocab_size)?;
        if ids.len() != bytes.len() {
            return Err(Error::Data(format!("{} ids but {} byte counts", ids.len(), bytes.len())));
        }
        let text_bytes = bytes.iter().map(|&b| b as usize).sum();
        let token_bytes = TokenBytes::Counts(std::sync::Arc::new(bytes));
        Ok(Self { ids: TokenIds::U32(ids), vocab_size, text_bytes, token_bytes })
    }

    /// Memory-mapped shard files (`(map, path)`, ids of width `dtype`, little-endian) of a
    /// tokenizer with `vocab_size` ids, standing for `text_bytes` bytes of text; `byte_counts`,
    /// one map per shard of little-endian u16 bytes per token (`None`: byte ids, one byte per
    /// token but the end-of-text byte).
    ///
    /// # Errors
    /// [`Error::Data`] naming a shard whose size is not a whole number of ids, or whose byte
    /// counts are not one u16 per id.
    pub fn from_shards(
        shards: Vec<(memmap2::Mmap, PathBuf)>,
        byte_counts: Option<Vec<memmap2::Mmap>>,
        dtype: ShardDtype,
        vocab_size: usize,
        text_bytes: usize,
    ) -> Result<Self> {
        let shards = shards
            .into_iter()
            .map(|(map, path)| {
                if map.len() % dtype.width() != 0 {
                    return Err(Error::Data(format!("shard {} is not a whole number of ids", path.display())));
                }
                Ok(MappedShard { tokens: map.len() / dtype.width(), map, path })
            })
            .collect::<Result<Vec<_>>>()?;
        let token_bytes = match byte_counts {
            None => TokenBytes::Bytes,
            Some(counts) => {
                for (map, shard) in counts.iter().zip(&shards) {
                    if map.len() != 2 * shard.tokens {
                        return Err(Error::Data(format!(
                            "the byte counts of shard {} hold {} bytes, not 2 per id ({} ids)",
                            shard.path.display(),
                            map.len(),
                            shard.tokens
                        )));
                    }
                }
                TokenBytes::Shards(std::sync::Arc::new(counts))
            }
        };
        Ok(Self { ids: TokenIds::Shards(std::sync::Arc::new(shards), dtype), vocab_size, text_bytes, token_bytes })
    }

    /// Bytes of text tokens `start .. start + len` of segment `segment` stand for.
    fn segment_bytes(&self, segment: usize, start: usize, len: usize) -> Result<f64> {
        Ok(match &self.token_bytes {
            TokenBytes::Bytes => {
                let ids = self.segment_window(segment, start, len)?;
                ids.iter().filter(|&&id| id != i64::from(END_OF_TEXT_BYTE)).count() as f64
            }
            TokenBytes::Counts(counts) => counts[start..start + len].iter().map(|&b| f64::from(b)).sum(),
            TokenBytes::Shards(maps) => maps[segment][2 * start..2 * (start + len)]
                .chunks_exact(2)
                .map(|b| f64::from(u16::from_le_bytes([b[0], b[1]])))
                .sum(),
            TokenBytes::Average => len as f64 * self.bytes_per_token(),
        })
    }

    /// Bytes of text the *targets* of [`TokenDataset::eval_batches`]' windows stand for (the
    /// same windows): the denominator of bits per byte.
    ///
    /// # Errors
    /// As [`TokenDataset::eval_batches`].
    pub fn eval_target_bytes(&self, batch_size: usize, seq_len: usize, max_batches: usize) -> Result<f64> {
        self.check_len(seq_len, "validation")?;
        let starts = self.spread_starts(batch_size * max_batches, seq_len + 1, seq_len);
        starts.iter().map(|&(segment, s)| self.segment_bytes(segment, s + 1, seq_len)).sum()
    }

    /// Lengths of the contiguous segments windows are drawn from (one for in-memory data, one per
    /// shard file).
    fn segments(&self) -> Vec<usize> {
        match &self.ids {
            TokenIds::U8(v) => vec![v.len()],
            TokenIds::U32(v) => vec![v.len()],
            TokenIds::Shards(shards, _) => shards.iter().map(|s| s.tokens).collect(),
        }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.segments().iter().sum()
    }

    /// Whether the dataset holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ids are below this (256 for bytes).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Bytes of text the tokens stand for.
    pub fn text_bytes(&self) -> usize {
        self.text_bytes
    }

    /// Bytes of text per token (1 for bytes): bits per byte = loss / ln 2 / this.
    pub fn bytes_per_token(&self) -> f64 {
        if self.is_empty() {
            1.0
        } else {
            self.text_bytes as f64 / self.len() as f64
        }
    }

    /// The raw bytes of a byte-level dataset (`None` for subword ids).
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.ids {
            TokenIds::U8(v) => Some(v),
            TokenIds::U32(_) | TokenIds::Shards(..) => None,
        }
    }

    /// Tokens `start .. start + len` of segment `segment` (see [`TokenDataset::window`]).
    ///
    /// # Errors
    /// [`Error::Data`] naming the shard and position of an id outside the vocabulary (a shard
    /// file is not trusted).
    fn segment_window(&self, segment: usize, start: usize, len: usize) -> Result<Vec<i64>> {
        match &self.ids {
            TokenIds::U8(v) => Ok(v[start..start + len].iter().map(|&x| x as i64).collect()),
            TokenIds::U32(v) => Ok(v[start..start + len].iter().map(|&x| x as i64).collect()),
            TokenIds::Shards(shards, dtype) => {
                let shard = &shards[segment];
                let w = dtype.width();
                let bytes = &shard.map[start * w..(start + len) * w];
                let ids: Vec<i64> = match dtype {
                    ShardDtype::U16 => {
                        bytes.chunks_exact(2).map(|b| i64::from(u16::from_le_bytes([b[0], b[1]]))).collect()
                    }
                    ShardDtype::U32 => {
                        bytes.chunks_exact(4).map(|b| i64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect()
                    }
                };
                if let Some((i, bad)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= self.vocab_size) {
                    return Err(Error::Data(format!(
                        "shard {} holds id {bad} at position {} outside the vocabulary of {} ids",
                        shard.path.display(),
                        start + i,
                        self.vocab_size
                    )));
                }
                Ok(ids)
            }
        }
    }

    /// Tokens `start .. start + len` as i64 ids, counted over the whole dataset (shards in order).
    ///
    /// # Errors
    /// [`Error::Data`] when the range crosses from one shard into the next or ends past the data,
    /// or for a shard id outside the vocabulary.
    pub fn window(&self, start: usize, len: usize) -> Result<Vec<i64>> {
        let mut offset = start;
        for (segment, seg_len) in self.segments().into_iter().enumerate() {
            if offset < seg_len {
                if offset + len > seg_len {
                    return Err(Error::Data(format!(
                        "tokens {start}..{} cross the end of shard {segment} (windows come from one shard)",
                        start + len
                    )));
                }
                return self.segment_window(segment, offset, len);
            }
            offset -= seg_len;
        }
        Err(Error::Data(format!("tokens {start}..{} end past the data ({} tokens)", start + len, self.len())))
    }

    /// Checks that some segment holds a window of `len` tokens; the error names the split
    /// (`what`) and what the window is (`need`, e.g. "seq_len + 1 = 129").
    fn check_window(&self, len: usize, what: &str, need: &str, hint: &str) -> Result<()> {
        let longest = self.segments().into_iter().max().unwrap_or(0);
        if len == 0 || longest < len {
            return Err(Error::Data(format!(
                "the {what} split holds {} {}, fewer than {need}; {hint}",
                longest,
                if self.bytes().is_some() { "bytes" } else { "tokens" },
            )));
        }
        Ok(())
    }

    fn check_len(&self, seq_len: usize, what: &str) -> Result<()> {
        if seq_len == 0 {
            return Err(Error::Data("seq_len (0) must be positive".into()));
        }
        let need = format!("seq_len + 1 = {}", seq_len + 1);
        self.check_window(seq_len + 1, what, &need, "use more data or a shorter --seq-len")
    }

    /// `count` window starts `(segment, offset)` for windows of `len` tokens, uniformly over every
    /// start of every segment (a window never crosses from one shard into the next). The caller
    /// has checked that some segment holds a window.
    fn random_starts(&self, count: usize, len: usize, rng: &mut impl Rng) -> Vec<(usize, usize)> {
        let segments = self.segments();
        // Window starts per segment; a segment shorter than a window has none.
        let starts_in: Vec<usize> = segments.iter().map(|&n| (n + 1).saturating_sub(len)).collect();
        let total: usize = starts_in.iter().sum();
        (0..count)
            .map(|_| {
                if segments.len() == 1 {
                    return (0, rng.random_range(0..=segments[0] - len));
                }
                // Uniform over every window start of every shard: the k-th start overall.
                let mut k = rng.random_range(0..total);
                let mut segment = 0;
                while k >= starts_in[segment] {
                    k -= starts_in[segment];
                    segment += 1;
                }
                (segment, k)
            })
            .collect()
    }

    /// Up to `wanted` starts of windows of `len` tokens taken every `stride` tokens in each
    /// segment, spread evenly over all of them (the same starts every call).
    fn spread_starts(&self, wanted: usize, len: usize, stride: usize) -> Vec<(usize, usize)> {
        let windows: Vec<(usize, usize)> = self
            .segments()
            .into_iter()
            .enumerate()
            .flat_map(|(segment, n)| {
                let count = if n < len { 0 } else { (n - len) / stride + 1 };
                (0..count).map(move |i| (segment, i * stride))
            })
            .collect();
        let available = windows.len();
        let wanted = wanted.min(available).max(1);
        let stride = available / wanted;
        (0..wanted).map(|i| windows[i * stride]).collect()
    }

    /// `count` windows of `len` tokens at uniformly random offsets (each inside one shard).
    ///
    /// # Errors
    /// [`Error::Data`] naming the split's length if no shard holds `len` tokens, or for a shard
    /// id outside the vocabulary.
    pub fn random_windows(&self, count: usize, len: usize, rng: &mut impl Rng) -> Result<Vec<Vec<i64>>> {
        self.check_window(len, "training", &format!("one window of {len}"), "use more data or shorter windows")?;
        self.random_starts(count, len, rng)
            .into_iter()
            .map(|(segment, s)| self.segment_window(segment, s, len))
            .collect()
    }

    /// Up to `max` non-overlapping windows of `len` tokens spread evenly over the whole dataset
    /// (the same windows every call, so evaluations are comparable).
    ///
    /// # Errors
    /// As [`TokenDataset::random_windows`].
    pub fn spread_windows(&self, max: usize, len: usize) -> Result<Vec<Vec<i64>>> {
        self.check_window(len, "validation", &format!("one window of {len}"), "use more data or shorter windows")?;
        self.spread_starts(max, len, len).into_iter().map(|(segment, s)| self.segment_window(segment, s, len)).collect()
    }

    fn batch_from_starts(&self, starts: &[(usize, usize)], seq_len: usize, device: Device) -> Result<Batch> {
        let b = starts.len() as i64;
        let mut inputs = Vec::with_capacity(starts.len() * seq_len);
        let mut targets = Vec::with_capacity(starts.len() * seq_len);
        for &(segment, s) in starts {
            let w = self.segment_window(segment, s, seq_len + 1)?;
            inputs.extend_from_slice(&w[..seq_len]);
            targets.extend_from_slice(&w[1..]);
        }
        let t = seq_len as i64;
        Ok(Batch {
            inputs: Tensor::from_slice(&inputs).f_view([b, t])?.f_to_device(device)?,
            targets: Tensor::from_slice(&targets).f_view([b, t])?.f_to_device(device)?,
        })
    }

    /// `batch_size` windows at uniformly random offsets.
    ///
    /// # Errors
    /// [`Error::Data`] if the dataset is shorter than `seq_len + 1` tokens.
    pub fn random_batch(&self, batch_size: usize, seq_len: usize, rng: &mut impl Rng, device: Device) -> Result<Batch> {
        self.check_len(seq_len, "training")?;
        let starts = self.random_starts(batch_size, seq_len + 1, rng);
        self.batch_from_starts(&starts, seq_len, device)
    }

    /// Up to `max_batches` batches of windows spread evenly over the whole dataset (inputs do
    /// not overlap; the same windows every call, so evaluations are comparable).
    ///
    /// # Errors
    /// [`Error::Data`] if the dataset is shorter than `seq_len + 1` tokens.
    pub fn eval_batches(
        &self,
        batch_size: usize,
        seq_len: usize,
        max_batches: usize,
        device: Device,
    ) -> Result<Vec<Batch>> {
        self.check_len(seq_len, "validation")?;
        // Windows of seq_len + 1 tokens every seq_len tokens: inputs tile the split.
        let starts = self.spread_starts(batch_size * max_batches, seq_len + 1, seq_len);
        starts.chunks(batch_size).map(|chunk| self.batch_from_starts(chunk, seq_len, device)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn targets_are_inputs_shifted_by_one() {
        let data = TokenDataset::new((0u8..100).collect());
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let batch = data.random_batch(3, 10, &mut rng, Device::Cpu).unwrap();
        assert_eq!(batch.inputs.size(), vec![3, 10]);
        assert!(batch.targets.equal(&(&batch.inputs + 1)));
    }

    #[test]
    fn eval_windows_do_not_overlap_and_cover_the_split() {
        let data = TokenDataset::new((0u8..=200).collect());
        let batches = data.eval_batches(4, 10, 100, Device::Cpu).unwrap();
        let starts: Vec<i64> =
            batches.iter().flat_map(|b| Vec::<i64>::try_from(b.inputs.select(1, 0)).unwrap()).collect();
        assert_eq!(starts, (0..20).map(|i| i * 10).collect::<Vec<_>>());
    }

    #[test]
    fn too_little_data_is_a_clear_error() {
        let data = TokenDataset::new(vec![b'a'; 5]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let err = data.random_batch(1, 8, &mut rng, Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("holds 5 bytes, fewer than seq_len + 1 = 9"), "{err}");
    }
}
