//! Assignments per expert of every MoE layer, summed over a step's micro-batches on the device,
//! for the aux-loss-free bias update (DeepSeek-V3, arXiv 2412.19437, §2.1.2: once per optimizer
//! step, from the counts of the whole step).

use crate::error::Result;
use crate::model::{ModelAux, StackKind, Trainable};
use tch::Tensor;

/// Per MoE layer (stack, block): assignments per expert `[E]` i64 summed over micro-batches.
#[derive(Default)]
pub(super) struct ExpertCounts(Vec<(StackKind, usize, Tensor)>);

impl ExpertCounts {
    /// Adds one micro-batch's counts.
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    pub(super) fn add(&mut self, aux: &ModelAux) -> Result<()> {
        for (i, (stack, layer, m)) in aux.moe_layers_by_stack().enumerate() {
            match self.0.get_mut(i) {
                Some((_, _, c)) => *c = c.f_add(&m.assignments_per_expert)?,
                None => self.0.push((stack, layer, m.assignments_per_expert.shallow_clone())),
            }
        }
        Ok(())
    }

    /// Walks the model's MoE layers once, updating each one's selection bias from its counts
    /// (a no-op for layers that balance with the loss) — unless `skip` (scalar f32 on the
    /// device, the step guard's flag) holds 1: the counts are then zeroed on the device, and the
    /// sign rule moves no bias.
    ///
    /// # Errors
    /// [`crate::Error::Shape`] for counts that are not `[E]`.
    pub(super) fn update_biases(&self, model: &dyn Trainable, skip: &Tensor) -> Result<()> {
        let keep = skip.f_neg()?.f_add_scalar(1.0)?;
        for (stack, layer, moe) in model.moe_layers() {
            if let Some((_, _, counts)) = self.0.iter().find(|(s, l, _)| *s == stack && *l == layer) {
                moe.update_expert_bias(&counts.f_mul(&keep.f_to_device(counts.device())?)?)?;
            }
        }
        Ok(())
    }
}
