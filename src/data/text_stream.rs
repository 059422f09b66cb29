//! Streaming decode: text of a growing id sequence, handed out as soon as it is complete — a
//! character split over several byte-level tokens is held back until its last byte arrives
//! (the rule of transformers' `TextStreamer`: text ending in U+FFFD waits).

use crate::data::tokenizer::TextTokenizer;
use crate::error::Result;

/// Decodes ids one at a time into the text they add (see the module docs).
///
/// ```
/// use altup_moe::data::{TextStream, TextTokenizer};
/// let tokenizer = TextTokenizer::Bytes;
/// let mut stream = TextStream::new(&tokenizer);
/// let mut out = String::new();
/// for byte in "né".bytes() {
///     out += &stream.push(i64::from(byte))?;
/// }
/// out += &stream.finish()?;
/// assert_eq!(out, "né");
/// # Ok::<(), altup_moe::Error>(())
/// ```
#[derive(Debug)]
pub struct TextStream<'t> {
    tokenizer: &'t TextTokenizer,
    ids: Vec<i64>,
    emitted: usize,
}

impl<'t> TextStream<'t> {
    /// An empty stream.
    pub fn new(tokenizer: &'t TextTokenizer) -> Self {
        Self { tokenizer, ids: Vec::new(), emitted: 0 }
    }

    /// Adds `id`; returns the text that became complete (possibly empty).
    ///
    /// # Errors
    /// As [`TextTokenizer::decode`].
    pub fn push(&mut self, id: i64) -> Result<String> {
        self.push_all(&[id])
    }

    /// Adds every id of `ids` (e.g. the prompt); returns the text that became complete.
    ///
    /// # Errors
    /// As [`TextTokenizer::decode`].
    pub fn push_all(&mut self, ids: &[i64]) -> Result<String> {
        self.ids.extend_from_slice(ids);
        let text = self.tokenizer.decode(&self.ids)?;
        let complete = text.trim_end_matches('\u{fffd}');
        Ok(self.take(&text, complete.len()))
    }

    /// The text still held back (an incomplete character, shown as U+FFFD).
    ///
    /// # Errors
    /// As [`TextTokenizer::decode`].
    pub fn finish(&mut self) -> Result<String> {
        let text = self.tokenizer.decode(&self.ids)?;
        Ok(self.take(&text, text.len()))
    }

    /// `text[emitted..end]`, when the decoded text still starts with what was handed out.
    fn take(&mut self, text: &str, end: usize) -> String {
        if end <= self.emitted || !text.is_char_boundary(self.emitted) {
            return String::new();
        }
        let out = text[self.emitted..end].to_string();
        self.emitted = end;
        out
    }
}
