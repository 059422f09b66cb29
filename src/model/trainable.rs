//! What a trainer needs of a model besides its forward pass: the configuration it writes into
//! checkpoints, the compute precision, the process group it was built in, and its MoE layers
//! (which the trainer walks once per step for the aux-loss-free bias update and whose balancing
//! modes set the objective's defaults).

use crate::error::{Error, Result};
use crate::model::output::StackKind;
use crate::model::precision::Precision;
use crate::model::{LanguageModel, Seq2SeqModel};
use crate::moe::MoeLayer;
use crate::parallel::ProcessGroup;

/// A model a [`crate::train::Trainer`] can train (implemented by [`LanguageModel`] and
/// [`Seq2SeqModel`]).
pub trait Trainable {
    /// The model's configuration as JSON (written as `config.json` in checkpoints and compared
    /// on restore).
    ///
    /// # Errors
    /// [`Error::Json`] if serialisation fails.
    fn config_json(&self) -> Result<serde_json::Value>;

    /// The compute precision of the activations.
    fn precision(&self) -> Precision;

    /// The process group the model was built in.
    fn group(&self) -> &ProcessGroup;

    /// Every MoE layer with its stack and block index, encoder before decoder, in block order.
    fn moe_layers(&self) -> Vec<(StackKind, usize, &MoeLayer)>;
}

fn json<T: serde::Serialize>(value: &T) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|source| Error::Json { context: "model config".into(), source })
}

impl Trainable for LanguageModel {
    fn config_json(&self) -> Result<serde_json::Value> {
        json(self.config())
    }

    fn precision(&self) -> Precision {
        LanguageModel::precision(self)
    }

    fn group(&self) -> &ProcessGroup {
        LanguageModel::group(self)
    }

    fn moe_layers(&self) -> Vec<(StackKind, usize, &MoeLayer)> {
        self.stack().moe_layers().map(|(l, m)| (StackKind::Decoder, l, m)).collect()
    }
}

impl Trainable for Seq2SeqModel {
    fn config_json(&self) -> Result<serde_json::Value> {
        json(self.config())
    }

    fn precision(&self) -> Precision {
        Seq2SeqModel::precision(self)
    }

    fn group(&self) -> &ProcessGroup {
        Seq2SeqModel::group(self)
    }

    fn moe_layers(&self) -> Vec<(StackKind, usize, &MoeLayer)> {
        let encoder = self.encoder().moe_layers().map(|(l, m)| (StackKind::Encoder, l, m));
        encoder.chain(self.decoder().moe_layers().map(|(l, m)| (StackKind::Decoder, l, m))).collect()
    }
}
