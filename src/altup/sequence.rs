//! Sequence-AltUp: AltUp along the sequence dimension (Baykal et al. 2023, §3.3), in a causal
//! form of our own (the paper's exact equations are not reproduced here).
//!
//! With stride `s`, the layer `L` runs only on the *anchor* tokens `P = {0, s, 2s, ...}` (with
//! their true positions, so rotary attention sees real distances), at `1/s` of the cost. For a
//! token `t` let `a(t) = s·⌊t/s⌋ ≤ t` be its anchor and `r(t) = t − a(t)` its offset. With
//! `Δ_a = L(x_P)_a − x_a` the layer's update at anchor `a`:
//!
//! ```text
//! y_t = α_r · x_t + β_r · x_{a(t)} + γ_r · Δ_{a(t)}        r = r(t)
//! ```
//!
//! with `α_0 = 1, β_0 = 0, γ_0 = 1` fixed (an anchor gets exactly the layer's output) and learned
//! scalars `α_r, β_r, γ_r` for `r = 1..s−1`, initialised to `1, 0, 1` (each token receives its
//! anchor's update). Token `t` only reads `x_t`, `x_{a(t)}` and the layer's output at `a(t)`,
//! which under causal attention depends only on anchors `≤ a(t) ≤ t`: nothing flows from later
//! positions to earlier ones.

use crate::altup::config::SequenceAltUpConfig;
use crate::dtype::{accumulate_kind, Cast};
use crate::error::{Error, Result};
use crate::nn::role::ParamRole;
use crate::nn::var_builder::VarBuilder;
use tch::{Kind, Tensor};

/// Per-layer Sequence-AltUp scalars.
///
/// Parameters: `alpha`, `beta`, `gamma`, each `[s − 1]` (offsets 1..s−1).
#[derive(Debug)]
pub struct SequenceAltUp {
    /// `α_r`, `[s − 1]`, ones at init.
    pub alpha: Tensor,
    /// `β_r`, `[s − 1]`, zeros at init.
    pub beta: Tensor,
    /// `γ_r`, `[s − 1]`, ones at init.
    pub gamma: Tensor,
    stride: i64,
}

/// The anchor tokens a Sequence-AltUp layer computes, and everything needed to spread their
/// updates back over the sequence.
#[derive(Debug)]
pub struct AnchorPlan {
    /// Anchor positions `0, s, 2s, ...`, `[T']` i64 (pass them as rotary positions).
    pub positions: Tensor,
    /// Per token, the index of its anchor among the anchors, `[T]` i64.
    anchor_of: Tensor,
    /// Per token, its offset `r(t)`, `[T]` i64.
    offset: Tensor,
}

impl SequenceAltUp {
    /// Creates `<path>.{alpha,beta,gamma}`.
    ///
    /// # Errors
    /// [`Error::Config`] if `stride < 2`.
    pub fn new<'a>(vb: impl Into<VarBuilder<'a>>, config: &SequenceAltUpConfig) -> Result<Self> {
        config.validate()?;
        let n = config.stride as i64 - 1;
        let vb = vb.into().with_role(ParamRole::NO_DECAY); // mixing scalars: no weight decay
        let path = vb.path();
        Ok(Self {
            alpha: path.f_ones("alpha", &[n])?,
            beta: path.f_zeros("beta", &[n])?,
            gamma: path.f_ones("gamma", &[n])?,
            stride: config.stride as i64,
        })
    }

    /// Stride `s`.
    pub fn stride(&self) -> i64 {
        self.stride
    }

    /// The anchors of a sequence of length `t`.
    ///
    /// # Errors
    /// [`Error::Torch`] on libtorch failure.
    pub fn anchors(&self, t: i64, device: tch::Device) -> Result<AnchorPlan> {
        let int = (Kind::Int64, device);
        let positions = Tensor::f_arange_start_step(0, t, self.stride, int)?;
        let all = Tensor::f_arange(t, int)?;
        let anchor_of = all.f_div_scalar_mode(self.stride, "floor")?;
        let offset = all.f_remainder(self.stride)?;
        Ok(AnchorPlan { positions, anchor_of, offset })
    }

    /// Runs `layer` on the anchor tokens and spreads the result causally (module docs).
    ///
    /// `layer` receives the anchor tokens `[B, T', D]`, their positions `[T']` and the anchors'
    /// mask `[B, T']` (when `mask` is given), on `x`'s device even when `mask` lives elsewhere.
    ///
    /// # Shapes
    /// `x`: `[B, T, D]`, `mask`: `[B, T]` → `[B, T, D]` in `x`'s dtype.
    ///
    /// # Errors
    /// [`Error::Shape`] if `x` is not 3-D or the layer returns another shape; errors of `layer`.
    pub fn forward<A>(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        layer: impl FnOnce(&Tensor, &Tensor, Option<&Tensor>) -> Result<(Tensor, A)>,
    ) -> Result<(Tensor, A)> {
        let size = x.size();
        if size.len() != 3 {
            return Err(Error::Shape(format!("Sequence-AltUp input must be [B, T, D], got {size:?}")));
        }
        let plan = self.anchors(size[1], x.device())?;
        let anchors = x.f_index_select(1, &plan.positions)?;
        let anchor_mask = mask.map(|m| m.f_to_device(x.device())?.f_index_select(1, &plan.positions)).transpose()?;
        let (computed, aux) = layer(&anchors, &plan.positions, anchor_mask.as_ref())?;
        if computed.size() != anchors.size() {
            return Err(Error::Shape(format!(
                "Sequence-AltUp layer returned {:?} for anchors of shape {:?}",
                computed.size(),
                anchors.size()
            )));
        }
        let acc = accumulate_kind(x);
        let x32 = x.cast(acc)?;
        let delta = computed.cast(acc)?.f_sub(&anchors.cast(acc)?)?; // [B, T', D]
        let spread = |v: &Tensor| -> Result<Tensor> { Ok(v.f_index_select(1, &plan.anchor_of)?) };
        let coef = |fixed: f64, learned: &Tensor| -> Result<Tensor> {
            let table = Tensor::f_cat(&[Tensor::f_full([1], fixed, (acc, x.device()))?, learned.cast(acc)?], 0)?;
            Ok(table.f_index_select(0, &plan.offset)?.f_view([1, -1, 1])?)
        };
        let y = coef(1.0, &self.alpha)?
            .f_mul(&x32)?
            .f_add(&coef(0.0, &self.beta)?.f_mul(&spread(&x32.f_index_select(1, &plan.positions)?)?)?)?
            .f_add(&coef(1.0, &self.gamma)?.f_mul(&spread(&delta)?)?)?;
        Ok((y.like(x)?, aux))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn;
    use tch::Device;

    #[test]
    fn anchors_get_the_layer_output_and_others_their_anchors_update() {
        let vs = nn::VarStore::new(Device::Cpu);
        let seq = SequenceAltUp::new(&vs.root(), &SequenceAltUpConfig { stride: 3 }).unwrap();
        let x = Tensor::randn([2, 7, 4], (Kind::Float, Device::Cpu));
        let (y, positions) = seq.forward(&x, None, |a, p, _| Ok((a * 2.0 + 1.0, p.shallow_clone()))).unwrap();
        assert_eq!(Vec::<i64>::try_from(&positions).unwrap(), vec![0, 3, 6]);
        for t in 0..7 {
            let a = (t / 3) * 3;
            let delta = x.select(1, a) + 1.0; // (2x + 1) − x
            let expected = if t == a { x.select(1, a) * 2.0 + 1.0 } else { x.select(1, t) + delta };
            assert!(y.select(1, t).allclose(&expected, 1e-6, 1e-6, false), "token {t}");
        }
    }

    #[test]
    fn stride_must_be_at_least_two() {
        let vs = nn::VarStore::new(Device::Cpu);
        let err = SequenceAltUp::new(&vs.root(), &SequenceAltUpConfig { stride: 1 }).unwrap_err();
        assert_eq!(err.to_string(), "invalid config: sequence_altup stride (1) must be at least 2");
    }
}
