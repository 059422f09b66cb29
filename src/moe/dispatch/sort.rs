//! Local dispatch: [`SortDispatcher`] gathers rows in the plan's expert order and combines
//! deterministically: gate-weighted expert outputs (in f32) are written to *distinct* rows of a
//! `[slots·N, D]` buffer (`index_copy` with unique indices; a plain gather by the inverse
//! permutation when no slot is empty) that is summed over slots. No `index_add` / `scatter_add`
//! with duplicate indices (non-deterministic on CUDA). The gather likewise reads from a
//! `[slots·N, D]` replica of the input, so its backward writes each gradient row once.

use super::TokenDispatcher;
use crate::dtype::{accumulate_kind, Cast};
use crate::error::Result;
use crate::moe::plan::DispatchPlan;
use crate::shape::expect_shape;
use tch::Tensor;

/// Local dispatch in one process (see the module docs). The default dispatcher.
#[derive(Debug, Default, Clone, Copy)]
pub struct SortDispatcher;

impl TokenDispatcher for SortDispatcher {
    fn dispatch(&self, x: &Tensor, plan: &DispatchPlan) -> Result<Tensor> {
        let n = plan.num_tokens;
        expect_shape(x, "dispatch input", "[N, D]", &[Some(n), None])?;
        let (s, d) = (plan.num_slots, x.size()[1]);
        let replicated = if s == 1 {
            x.shallow_clone()
        } else {
            x.f_unsqueeze(0)?.f_expand([s, n, d], false)?.f_reshape([s * n, d])?
        };
        Ok(replicated.f_index_select(0, &plan.assignment)?)
    }

    fn combine(&self, expert_out: &Tensor, plan: &DispatchPlan) -> Result<Tensor> {
        expect_shape(expert_out, "expert output", "[M, D]", &[Some(plan.num_kept()), None])?;
        let d = expert_out.size()[1];
        let acc = accumulate_kind(expert_out);
        let weighted = expert_out.cast(acc)?.f_mul(&plan.gate.cast(acc)?.f_unsqueeze(-1)?)?;
        let (n, s) = (plan.num_tokens, plan.num_slots);
        let per_slot = if plan.num_kept() == s * n {
            // Every slot kept: the assignments are a permutation; gather by its inverse (written
            // with unique indices, O(M) where a sort would be O(M log M)) instead of scattering.
            let m = plan.assignment.size()[0];
            let positions = Tensor::f_arange(m, (plan.assignment.kind(), plan.assignment.device()))?;
            let inverse = positions.f_empty_like()?.f_index_copy(0, &plan.assignment, &positions)?;
            weighted.f_index_select(0, &inverse)?
        } else {
            Tensor::f_zeros([s * n, d], (acc, expert_out.device()))?.f_index_copy(0, &plan.assignment, &weighted)?
        };
        let combined = if s == 1 { per_slot } else { per_slot.f_view([s, n, d])?.f_sum_dim_intlist(0, false, acc)? };
        combined.like(expert_out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moe::routing::plan_token_choice;
    use tch::{Device, Kind};

    #[test]
    fn dropped_tokens_get_exact_zeros_and_gates_scale_the_rest() {
        let index = Tensor::from_slice(&[1i64, 1, 1, 1, 0]).view([5, 1]);
        let gate = Tensor::full([5, 1], 0.5, (Kind::Float, Device::Cpu));
        let plan = plan_token_choice(&index, &gate, 2, None, Some(2), None).unwrap();
        let x = Tensor::arange(5, (Kind::Float, Device::Cpu)).unsqueeze(1).expand([5, 3], false).contiguous() + 1.0;
        let rows = SortDispatcher.dispatch(&x, &plan).unwrap();
        let out = SortDispatcher.combine(&rows, &plan).unwrap();
        let expected = Tensor::from_slice(&[0.5f32, 1.0, 0.0, 0.0, 2.5]).unsqueeze(1).expand([5, 3], false);
        assert!(out.equal(&expected), "{out}");
    }

    #[test]
    fn unit_gates_make_combine_of_dispatch_the_identity_times_k() {
        let index = Tensor::from_slice(&[2i64, 0, 1, 2, 0, 1]).view([3, 2]);
        let gate = Tensor::ones([3, 2], (Kind::Float, Device::Cpu));
        let plan = plan_token_choice(&index, &gate, 3, None, None, None).unwrap();
        let x = Tensor::randn([3, 4], (Kind::Float, Device::Cpu));
        let out = SortDispatcher.combine(&SortDispatcher.dispatch(&x, &plan).unwrap(), &plan).unwrap();
        assert!(out.allclose(&(&x * 2.0), 1e-6, 1e-6, false));
    }
}
