//! Token embedding table.

use crate::dtype::Cast;
use crate::error::{Error, Result};
use crate::host;
use crate::nn::var_builder::VarBuilder;
use crate::shape::is_integer;
use tch::{Kind, Tensor};

/// Lookup table `[V, W]`: token id → row. For AltUp, `W = K·D` and the row is split into `K`
/// blocks by the caller.
///
/// Parameters: `weight` `[V, W]`, `N(0, init.std²)`.
#[derive(Debug)]
pub struct Embedding {
    /// Table, `[V, W]`.
    pub weight: Tensor,
}

impl Embedding {
    /// Creates `<path>.weight` `[vocab_size, width]`, `N(0, init.std²)` with the builder's scheme.
    ///
    /// # Errors
    /// [`Error::Torch`] if allocation fails.
    pub fn new<'a>(vb: impl Into<VarBuilder<'a>>, vocab_size: usize, width: usize) -> Result<Self> {
        let vb = vb.into();
        let weight = vb.normal("weight", &[vocab_size as i64, width as i64], vb.init().std)?;
        Ok(Self { weight })
    }

    /// Another handle on the same table (for an encoder and a decoder that share embeddings).
    pub fn share(&self) -> Embedding {
        Embedding { weight: self.weight.shallow_clone() }
    }

    /// Vocabulary size `V`.
    pub fn vocab_size(&self) -> i64 {
        self.weight.size()[0]
    }

    /// Looks up token ids.
    ///
    /// # Shapes
    /// `tokens`: `[B, T]` i64 with values in `0..V` → `[B, T, W]` f32.
    ///
    /// # Errors
    /// [`Error::Input`] if `tokens` is not an integer tensor or an id is outside `0..V`
    /// (the message names the offending id).
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        validate_token_ids(tokens, self.vocab_size())?;
        self.lookup(tokens)
    }

    /// [`Embedding::forward`] for ids the caller has already checked against `0..V` (a training
    /// batch of bytes with `V ≥ 256`, say): only the dtype is checked, so the ids are not read
    /// back to the host. An id outside `0..V` is still an error of libtorch's lookup on the CPU
    /// (a device-side assertion on CUDA), never a silent wrong row.
    ///
    /// # Shapes
    /// As [`Embedding::forward`].
    ///
    /// # Errors
    /// [`Error::Input`] if `tokens` is not an integer tensor; [`Error::Torch`] for an id outside
    /// `0..V`.
    pub fn forward_prevalidated(&self, tokens: &Tensor) -> Result<Tensor> {
        check_integer(tokens)?;
        self.lookup(tokens)
    }

    /// The lookup, with `tokens` moved to the table's device.
    fn lookup(&self, tokens: &Tensor) -> Result<Tensor> {
        let tokens = tokens.f_to_device(self.weight.device())?.cast(Kind::Int64)?;
        Ok(Tensor::f_embedding(&self.weight, &tokens, -1, false, false)?)
    }
}

fn check_integer(tokens: &Tensor) -> Result<()> {
    match tokens.kind() {
        kind if is_integer(kind) => Ok(()),
        other => Err(Error::Input(format!("token ids must be an integer tensor, got dtype {other:?}"))),
    }
}

/// Checks that `tokens` is an integer tensor whose values lie in `0..vocab_size`.
///
/// # Errors
/// [`Error::Input`] naming the dtype or the first out-of-range id and its position.
pub fn validate_token_ids(tokens: &Tensor, vocab_size: i64) -> Result<()> {
    check_integer(tokens)?;
    if tokens.numel() == 0 {
        return Ok(());
    }
    let ids = tokens.cast(Kind::Int64)?.f_flatten(0, -1)?;
    let bad = ids.f_lt(0)?.f_logical_or(&ids.f_ge(vocab_size)?)?;
    // One host read: whether any id is bad, the first bad position and its value.
    let position = bad.cast(Kind::Int64)?.f_argmax(0, false)?;
    let summary = Tensor::f_stack(
        &[
            bad.f_any()?.cast(Kind::Int64)?,
            position.shallow_clone(),
            ids.f_index_select(0, &position.f_unsqueeze(0)?)?.f_squeeze()?,
        ],
        0,
    )?;
    let summary = host::i64s(&summary)?;
    if summary[0] != 0 {
        let (position, value) = (summary[1], summary[2]);
        return Err(Error::Input(format!(
            "token id {value} at flat position {position} is outside the vocabulary 0..{vocab_size}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn;
    use tch::Device;

    #[test]
    fn out_of_range_and_float_ids_are_rejected_with_the_value() {
        let vs = nn::VarStore::new(Device::Cpu);
        let emb = Embedding::new(&vs.root(), 10, 4).unwrap();
        let err = emb.forward(&Tensor::from_slice(&[1i64, 2, 10, 3]).view([2, 2])).unwrap_err();
        assert_eq!(err.to_string(), "invalid input: token id 10 at flat position 2 is outside the vocabulary 0..10");
        let err = emb.forward(&Tensor::from_slice(&[-1i64]).view([1, 1])).unwrap_err();
        assert!(err.to_string().contains("token id -1"), "{err}");
        let err = emb.forward(&Tensor::from_slice(&[1.0f32]).view([1, 1])).unwrap_err();
        assert!(err.to_string().contains("integer tensor"), "{err}");
        assert_eq!(emb.forward(&Tensor::from_slice(&[9i64, 0]).view([1, 2])).unwrap().size(), vec![1, 2, 4]);
        // Prevalidated ids are not read back; a bad one is still an error, not a wrong row.
        let before = crate::host::host_reads();
        let ids = Tensor::from_slice(&[9i64, 0]).view([1, 2]);
        assert!(emb.forward_prevalidated(&ids).unwrap().equal(&emb.forward(&ids).unwrap()));
        assert_eq!(crate::host::host_reads() - before, 1, "only forward's check reads");
        assert!(emb.forward_prevalidated(&Tensor::from_slice(&[10i64]).view([1, 1])).is_err());
        assert!(emb.forward_prevalidated(&Tensor::from_slice(&[1.0f32]).view([1, 1])).is_err());
    }
}
