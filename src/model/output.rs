//! What a model forward returns: logits and a typed per-layer auxiliary record.

use crate::error::Result;
use crate::moe::MoeAux;
use tch::Tensor;

/// Which stack of a model a record comes from: a language model's only stack is its decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StackKind {
    /// A bidirectional encoder (of an encoder-decoder).
    Encoder,
    /// A causal decoder (a language model, or the decoder of an encoder-decoder).
    Decoder,
}

impl StackKind {
    /// `encoder` or `decoder` (as written in `metrics.jsonl`).
    pub fn name(self) -> &'static str {
        match self {
            StackKind::Encoder => "encoder",
            StackKind::Decoder => "decoder",
        }
    }
}

impl std::fmt::Display for StackKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Auxiliary record of one block.
#[derive(Debug)]
pub struct LayerAux {
    /// The stack the block belongs to (a language model's only stack is its decoder).
    pub stack: StackKind,
    /// Block index within its stack.
    pub layer: usize,
    /// The MoE layer's record, when the block's FFN is an MoE.
    pub moe: Option<MoeAux>,
}

/// Auxiliary record of a whole forward pass, one entry per block (of every stack, for a
/// [`ModelAux::merged`] record of an encoder-decoder).
///
/// Losses are averaged over MoE layers (pooling router statistics across layers would
/// hide per-layer imbalance, so each layer computes its own loss first) — here, once, for the
/// training objective and for users alike.
#[derive(Debug, Default)]
pub struct ModelAux {
    /// One record per block, in order.
    pub layers: Vec<LayerAux>,
}

impl ModelAux {
    /// The records of several stacks as one (an encoder-decoder's encoder, then decoder): the
    /// means below then run over the MoE layers of all of them.
    pub fn merged(parts: impl IntoIterator<Item = ModelAux>) -> Self {
        Self { layers: parts.into_iter().flat_map(|p| p.layers).collect() }
    }

    /// The same record with every block labelled as a block of `stack`.
    pub fn in_stack(mut self, stack: StackKind) -> Self {
        for l in &mut self.layers {
            l.stack = stack;
        }
        self
    }

    /// The MoE layers' records with their block indices.
    pub fn moe_layers(&self) -> impl Iterator<Item = (usize, &MoeAux)> {
        self.layers.iter().filter_map(|l| l.moe.as_ref().map(|m| (l.layer, m)))
    }

    /// The MoE layers' records with their stacks and block indices.
    pub fn moe_layers_by_stack(&self) -> impl Iterator<Item = (StackKind, usize, &MoeAux)> {
        self.layers.iter().filter_map(|l| l.moe.as_ref().map(|m| (l.stack, l.layer, m)))
    }

    fn mean_over_layers(&self, pick: impl Fn(&MoeAux) -> &Tensor) -> Result<Option<Tensor>> {
        let values: Vec<&Tensor> = self.moe_layers().map(|(_, m)| pick(m)).collect();
        if values.is_empty() {
            return Ok(None);
        }
        let stacked = Tensor::f_stack(&values, 0)?;
        Ok(Some(stacked.f_mean(stacked.kind())?))
    }

    /// Unscaled load-balancing loss averaged over MoE layers (scalar, differentiable); `None`
    /// without MoE layers.
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    pub fn load_balancing_loss(&self) -> Result<Option<Tensor>> {
        self.mean_over_layers(|m| &m.load_balancing_loss)
    }

    /// Unscaled router z-loss averaged over MoE layers (scalar, differentiable); `None` without
    /// MoE layers.
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    pub fn z_loss(&self) -> Result<Option<Tensor>> {
        self.mean_over_layers(|m| &m.z_loss)
    }

    /// Dropped-assignment fraction averaged over MoE layers (scalar f64, on the device);
    /// `None` without MoE layers.
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    pub fn dropped_fraction(&self) -> Result<Option<Tensor>> {
        self.mean_over_layers(|m| &m.dropped_fraction)
    }
}

/// Output of [`crate::model::LanguageModel::forward_t`].
#[derive(Debug)]
pub struct ModelOutput {
    /// Next-token logits, `[B, T, V]`, f32 (f64 for an f64 model).
    pub logits: Tensor,
    /// Per-layer auxiliary record.
    pub aux: ModelAux,
}
