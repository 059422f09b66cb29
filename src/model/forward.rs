//! How a forward pass runs: its mode and token mask ([`ForwardOptions`]), and for a decoder the
//! encoder output it cross-attends to ([`Memory`]).

use tch::Tensor;

/// The options of a forward pass. A `bool` converts into the options of a plain training
/// (`true`) or evaluation (`false`) pass, so `model.forward_t(&tokens, true)` reads as in tch.
///
/// ```
/// use altup_moe::model::ForwardOptions;
/// use tch::Tensor;
///
/// let mask = Tensor::from_slice(&[true, true, false]).view([1, 3]);
/// let options = ForwardOptions::eval().with_mask(&mask);
/// assert!(!options.train && options.mask.is_some());
/// assert_eq!(ForwardOptions::from(true), ForwardOptions::train());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardOptions<'a> {
    /// Training mode: the MoE layers' training capacity factor, router jitter, AltUp coefficient
    /// clipping.
    pub train: bool,
    /// Token mask `[B, T]` (true/non-zero = real token): masked tokens are not attended to, take
    /// no expert capacity, get zero MoE outputs and are left out of the MoE losses.
    pub mask: Option<&'a Tensor>,
    /// Stop at the first block whose output or router is non-finite, with
    /// [`crate::Error::NonFinite`] naming it (a diagnosis: one host read per block).
    pub check_finite: bool,
    /// The caller has checked that every token id lies in `0..V` (a trainer's batches, for
    /// instance): the embedding skips its own check, which reads the ids back to the host.
    pub ids_validated: bool,
}

impl<'a> ForwardOptions<'a> {
    /// A training pass.
    pub fn train() -> Self {
        Self { train: true, ..Self::default() }
    }

    /// An evaluation pass.
    pub fn eval() -> Self {
        Self::default()
    }

    /// The same options with a token mask `[B, T]`.
    pub fn with_mask(self, mask: &'a Tensor) -> Self {
        Self { mask: Some(mask), ..self }
    }
}

impl PartialEq for ForwardOptions<'_> {
    fn eq(&self, other: &Self) -> bool {
        let same_mask = match (self.mask, other.mask) {
            (None, None) => true,
            (Some(a), Some(b)) => std::ptr::eq(a, b),
            _ => false,
        };
        same_mask
            && self.train == other.train
            && self.check_finite == other.check_finite
            && self.ids_validated == other.ids_validated
    }
}

impl From<bool> for ForwardOptions<'_> {
    fn from(train: bool) -> Self {
        Self { train, ..Self::default() }
    }
}

/// The encoder output a cross-attending decoder reads.
#[derive(Debug, Clone, Copy)]
pub struct Memory<'a> {
    /// Encoder hidden states `[B, S, D]`.
    pub states: &'a Tensor,
    /// Source mask `[B, S]` (true/non-zero = real token).
    pub mask: Option<&'a Tensor>,
}
