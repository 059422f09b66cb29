//! Training steps captured in a CUDA graph ([`crate::train::TrainConfig::cuda_graph`]).
//!
//! A step is pure device work once its batch is on the device and its learning rate in a device
//! scalar: forward, backward, clipping, the guard, the fused AdamW update and the bias updates
//! launch kernels whose shapes never change (dense, AltUp, dropless MoE on the grouped kernel).
//! After [`WARMUP_STEPS`] eager steps on a side stream (as `torch.cuda.graph` does: kernels are
//! chosen, gradients and optimizer state allocated), the next step is captured once with its
//! batch as the graph's input buffers, and every step from then on copies its batch into those
//! buffers and replays the graph — one launch instead of thousands. The step's row of figures,
//! written by the graph into the same memory at every replay, is copied out after each one.
//!
//! Random draws inside the graph (router jitter) continue one generator stream from the capture
//! on (libtorch advances the graph's Philox offset at each replay) instead of being reseeded per
//! step: reproducible from the seed, but not the eager run's draws.

use super::readback::StepRow;
use crate::error::{Error, Result};
use crate::native::cuda::CudaGraph;

/// Eager steps on the side stream before the capture.
pub(super) const WARMUP_STEPS: u64 = 3;

/// The graph of one trainer and where it stands.
pub(super) struct StepGraph<B> {
    graph: CudaGraph,
    state: State<B>,
}

enum State<B> {
    /// This many warm-up steps done.
    Warming(u64),
    /// Captured: the input batches the graph reads, the row it writes and the step's tokens.
    Captured { batches: Vec<B>, row: StepRow, tokens: usize },
}

/// What the trainer asks of a captured step: the step itself, and how to fill its input buffers.
pub(super) trait StepBody<B> {
    /// The device work of one step on `batches`: its row and its tokens.
    fn body(&mut self, batches: &[B]) -> Result<(StepRow, usize)>;
    /// Copies `from` into the buffers of `into`.
    fn copy_batch(&self, into: &B, from: &B) -> Result<()>;
    /// Checks what only the warm-up reveals (e.g. the expert kernel `Auto` chose).
    fn check_capturable(&self) -> Result<()>;
}

impl<B> StepGraph<B> {
    /// A graph for CUDA device `device`.
    ///
    /// # Errors
    /// [`Error::Config`] without CUDA support in this build; [`Error::Torch`] from libtorch.
    pub(super) fn new(device: usize) -> Result<Self> {
        Ok(Self { graph: CudaGraph::new(device)?, state: State::Warming(0) })
    }

    /// One step on `batches`: a warm-up step, the capture (then one replay), or a replay.
    ///
    /// # Errors
    /// Errors of the step; [`Error::Config`] when the step turns out not to be capturable.
    pub(super) fn step(&mut self, batches: Vec<B>, body: &mut dyn StepBody<B>) -> Result<(StepRow, usize)> {
        match &mut self.state {
            State::Warming(done) if *done < WARMUP_STEPS => {
                *done += 1;
                self.graph.on_side_stream(|| body.body(&batches))
            }
            State::Warming(_) => {
                body.check_capturable()?;
                let (row, tokens) = self.graph.capture(|| body.body(&batches)).map_err(|e| {
                    Error::Config(format!("the training step could not be captured in a CUDA graph: {e}"))
                })?;
                self.graph.replay()?;
                let copy = row.copy()?;
                self.state = State::Captured { batches, row, tokens };
                Ok((copy, tokens))
            }
            State::Captured { batches: inputs, row, tokens } => {
                if inputs.len() != batches.len() {
                    return Err(Error::Config(format!(
                        "a captured step takes {} micro-batches, got {}",
                        inputs.len(),
                        batches.len()
                    )));
                }
                for (into, from) in inputs.iter().zip(&batches) {
                    body.copy_batch(into, from)?;
                }
                self.graph.replay()?;
                Ok((row.copy()?, *tokens))
            }
        }
    }
}
