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
    /// The residual-stream method's weights (Hyper-Connections, mHC; 0 for the plain residual).
    pub residual: usize,
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
    ///   projection collapse or `2(K−1)·D²` for projected widening; Sequence-AltUp: `3(s−1)` per block;
    /// * a residual-stream method: [`crate::residual::ResidualConfig::params_per_sublayer`] per
    ///   sublayer (2 per block, 3 with cross-attention).
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
        let sublayers = if self.cross_attention { 3 } else { 2 };
        let residual = self.num_layers * sublayers * self.residual.params_per_sublayer(d);
        let total = embedding + blocks + expert + router + altup + residual + d;
        ParamCounts { total, active_per_token: total - inactive, expert, router, altup, embedding, residual }
    }
}

impl ModelConfig {
    /// Model FLOPs of one training step per token, at sequences of `seq_len` tokens, as MFU
    /// counts them (PaLM, Chowdhery et al. 2022, arXiv 2204.02311, appendix B):
    /// `6 · N_active + 12 · L · D · T`, where `N_active` is the active non-embedding parameters
    /// ([`ParamCounts::active_per_token`] less the embedding table and a separate head) — 2
    /// FLOPs per weight forward, 4 backward — and `12 · L · D · T` the attention scores and
    /// values forward and backward (causal attention counted in full, as is customary). A
    /// residual-stream method's weights are not counted as `6 ·` parameters but by what its
    /// connections compute, 3 × [`ResidualConfig::forward_flops_per_sublayer`] per sublayer
    /// (forward and backward): Hyper-Connections' `n × n` mixing touches every stream.
    /// Recomputation, AltUp's `K × K` mixing and the norms are not counted.
    ///
    /// [`ResidualConfig::forward_flops_per_sublayer`]: crate::residual::ResidualConfig::forward_flops_per_sublayer
    ///
    /// ```
    /// use altup_moe::model::ModelConfig;
    /// let mut config = ModelConfig::default();
    /// config.moe = None;
    /// let n = (config.param_counts().active_per_token - config.param_counts().embedding) as f64;
    /// let l = config.num_layers as f64;
    /// let d = config.d_model as f64;
    /// assert_eq!(config.train_flops_per_token(128), 6.0 * n + 12.0 * l * d * 128.0);
    /// ```
    pub fn train_flops_per_token(&self, seq_len: usize) -> f64 {
        let counts = self.param_counts();
        let active = (counts.active_per_token - counts.embedding - counts.residual) as f64;
        let sublayers = self.num_layers * if self.cross_attention { 3 } else { 2 };
        let residual = 3.0 * sublayers as f64 * self.residual.forward_flops_per_sublayer(self.d_model);
        6.0 * active + 12.0 * (self.num_layers * self.d_model * seq_len) as f64 + residual
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{Arch, ModelConfig};
    use crate::residual::ResidualConfig;

    /// A residual-stream method adds what its connections compute, not `6 ·` its weights: static
    /// Hyper-Connections with `n = 4` at `D = 128` mix `(n+1)·n·D + n·D = 3072` multiply-adds per
    /// sublayer and token, 8 sublayers, × 2 FLOPs × 3 (forward and backward).
    #[test]
    fn residual_methods_count_their_mixing() {
        let plain = ModelConfig::default();
        let hc =
            ModelConfig { residual: ResidualConfig::HyperConnections { streams: 4, dynamic: false }, ..plain.clone() };
        let extra = hc.train_flops_per_token(128) - plain.train_flops_per_token(128);
        assert_eq!(extra, 8.0 * 3072.0 * 2.0 * 3.0);
        assert_eq!(hc.param_counts().residual, 8 * (4 * 5 + 4));
        assert_eq!(hc.param_counts().total - plain.param_counts().total, 8 * 24);
    }

    /// More experts at top-1 add only router weights to the FLOPs; top-2 adds one more expert
    /// per MoE layer: `6 · (2·D·F)` per token for GELU experts.
    #[test]
    fn flops_count_the_routed_experts_only() {
        let with = |experts: usize, top_k: usize| {
            let mut c = ModelConfig::preset(Arch::Switch);
            if let Some(m) = &mut c.moe {
                (m.num_experts, m.top_k) = (experts, top_k);
            }
            c
        };
        let base = with(8, 1);
        let (d, f) = (base.d_model as f64, base.moe.as_ref().unwrap().d_ff as f64);
        let moe_layers = (0..base.num_layers).filter(|&l| base.is_moe_layer(l)).count() as f64;
        let flops = |c: &ModelConfig| c.train_flops_per_token(256);
        assert_eq!(flops(&with(64, 1)) - flops(&base), 6.0 * moe_layers * 56.0 * d);
        assert_eq!(flops(&with(8, 2)) - flops(&base), 6.0 * moe_layers * 2.0 * d * f);
    }
}
