//! Parameter accounting, computed from the config alone.

use crate::model::config::ModelConfig;
use serde::Serialize;

/// Parameter counts of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ParamCounts {
    /// Every parameter.
    pub total: usize,
    /// Parameters a token passes through: all but the experts it is not routed to
    /// (`total − Σ_MoE layers (E − k) · params_per_expert`, with `k = ceil(cf)` on average for
    /// expert choice). Embedding rows count (a lookup).
    pub active_per_token: usize,
    /// Routed-expert parameters (all routed experts of all MoE layers; shared experts are counted
    /// with the blocks, as they are always active).
    pub expert: usize,
    /// Router parameters.
    pub router: usize,
    /// AltUp coefficients (all layers), widening/collapse projections, and Sequence-AltUp scalars.
    pub altup: usize,
    /// Embedding table (and the head when it is separate).
    pub embedding: usize,
}

impl ModelConfig {
    /// Counts parameters from the config:
    ///
    /// * embedding `V·K·D`, head `V·D` unless tied, final norm `D`;
    /// * per block: attention `4·D²` (`D·(H + 2·H_kv)·hd + D²` with grouped-query attention), two norms `2·D`, cross-attention `4·D² + D` (decoders of an
    ///   encoder-decoder), and a dense FFN (`2·D·F`, SwiGLU `3·D·F`)
    ///   or an MoE (router `E·D` + `E` routed experts of `2·D·F` / `3·D·F` each, + `S` shared
    ///   experts of the same size, always active);
    /// * AltUp: `K² + K` per block (input-dependent: `D + K·D + K³ + K²`), plus `K·D²` for a
    ///   projection collapse or `2(K−1)·D²` for projected widening; Sequence-AltUp: `3(s−1)` per block.
    pub fn param_counts(&self) -> ParamCounts {
        let (v, d) = (self.vocab_size, self.d_model);
        let head = if self.tie_embeddings { 0 } else { v * d };
        let embedding = v * self.embedding_width() + head;
        let (mut expert, mut router, mut inactive) = (0, 0, 0);
        let mut blocks = 0;
        for layer in 0..self.num_layers {
            blocks += self.attention.num_params(d) + 2 * d;
            if self.cross_attention {
                blocks += 4 * d * d + d; // cross_norm + q + kv + out
            }
            match &self.moe {
                Some(moe) if self.is_moe_layer(layer) => {
                    let per_expert = moe.params_per_expert(d);
                    expert += moe.num_experts * per_expert;
                    router += moe.num_experts * d;
                    blocks += moe.num_shared_experts * per_expert;
                    let active_experts = moe.router.policy().active_experts(&moe.routing_options());
                    inactive += (moe.num_experts - active_experts) * per_expert;
                }
                _ => blocks += self.ffn.num_params(d),
            }
        }
        let altup = self.altup.as_ref().map_or(0, |a| self.num_layers * a.params_per_layer(d) + a.widening_params(d))
            + self.sequence_altup.as_ref().map_or(0, |s| self.num_layers * s.params_per_layer());
        let total = embedding + blocks + expert + router + altup + d;
        ParamCounts { total, active_per_token: total - inactive, expert, router, altup, embedding }
    }
}
