//! Expert feed-forward networks stored as batched weights `[E, D, F]` (torchtitan
//! `GroupedExperts`; megablocks), run on token rows already grouped by expert.
//!
//! Two interchangeable compute paths:
//! * [`ExpertBackend::GroupedMm`]: one `torch._grouped_mm` per projection over all experts, with
//!   cumulative Int32 row offsets;
//! * [`ExpertBackend::Loop`]: the reference path, one matmul per non-empty expert. The batched
//!   parameter is split once per forward (`unbind`), never indexed per expert: `w[e]` inside the
//!   loop makes libtorch allocate a full-size gradient buffer per expert.

use crate::dtype::Cast;
use crate::error::{Error, Result};
use crate::moe::kernel::{self, ExpertBackend, KernelKey, LOOP_MIN_ROWS_PER_EXPERT};
use crate::moe::plan::GroupSizes;
use crate::nn::feed_forward::Activation;
use crate::nn::role::ParamRole;
use crate::nn::var_builder::VarBuilder;
use crate::shape::{expect_device, expect_shape};
use tch::{Device, Kind, Tensor};

/// `E` expert FFNs with batched weights.
///
/// Parameters: `w_in` `[E, D, F]`, `w_gate` `[E, D, F]` (SwiGLU only), `w_out` `[E, F, D]`.
/// Expert `e` computes `act(x · w_in[e]) · w_out[e]` on its rows.
#[derive(Debug)]
pub struct Experts {
    /// Up-projections, `[E, D, F]`.
    pub w_in: Tensor,
    /// Gate projections (SwiGLU), `[E, D, F]`.
    pub w_gate: Option<Tensor>,
    /// Down-projections, `[E, F, D]`.
    pub w_out: Tensor,
    activation: Activation,
    backend: ExpertBackend,
}

impl Experts {
    /// Creates this rank's experts of a layer of `num_experts` under the builder's path: all of
    /// them in one process, the slice `r·E/R .. (r+1)·E/R` of the builder's expert-parallel group
    /// ([`crate::parallel::ProcessGroup::expert_slice`]), initialised exactly as those experts are
    /// in the full `[E, D, F]` tensors (so `R = 1` and `R = N` start from the same model). Each
    /// entry is `N(0, init.std²)` (`init.residual_std` for `w_out`).
    ///
    /// # Errors
    /// [`Error::Config`] if the group's ranks do not divide `num_experts`; [`Error::Torch`] if
    /// allocation fails.
    pub fn new<'a>(
        vb: impl Into<VarBuilder<'a>>,
        num_experts: usize,
        d_model: usize,
        d_ff: usize,
        activation: Activation,
        backend: ExpertBackend,
    ) -> Result<Self> {
        let vb = vb.into();
        let range = vb.group().expert_slice(num_experts)?;
        if range.is_empty() {
            return Err(Error::Config(format!("a layer of {num_experts} experts holds none here")));
        }
        let (e, d, f) = (num_experts as i64, d_model as i64, d_ff as i64);
        // Decayed, and sharded over expert-parallel ranks along the expert dimension.
        let vb = vb.with_role(ParamRole::EXPERT);
        let (path, init) = (vb.path(), vb.init());
        let r = range.start as i64..range.end as i64;
        let w_in = init.normal_slice(path, "w_in", &[e, d, f], init.std, r.clone())?;
        let w_gate = if activation.is_gated() {
            Some(init.normal_slice(path, "w_gate", &[e, d, f], init.std, r.clone())?)
        } else {
            None
        };
        let w_out = init.normal_slice(path, "w_out", &[e, f, d], init.residual_std, r)?;
        Ok(Self { w_in, w_gate, w_out, activation, backend })
    }

    /// Number of experts `E`.
    pub fn num_experts(&self) -> i64 {
        self.w_in.size()[0]
    }

    /// The kernel [`ExpertBackend::Auto`] resolves to for `rows` rows of this dtype and device:
    /// on the CPU the measured rule (grouped matmul below [`LOOP_MIN_ROWS_PER_EXPERT`] rows per
    /// expert, the loop from there); on an accelerator the faster of the two for this shape
    /// class, timed once and cached ([`crate::moe::kernel`]), or the loop when libtorch is
    /// restricted to deterministic kernels ([`crate::runtime::set_deterministic`]). Grouped
    /// matmul needs f32/bf16 rows aligned to 16 bytes; everything else uses the loop.
    ///
    /// # Errors
    /// libtorch errors of the one-off measurement on an accelerator.
    pub fn resolved_backend(&self, rows: i64, kind: Kind, device: Device) -> Result<ExpertBackend> {
        if self.backend != ExpertBackend::Auto {
            return Ok(self.backend);
        }
        let size = self.w_in.size();
        let aligned = |n: i64| (n * kind.elt_size_in_bytes() as i64) % 16 == 0;
        if !matches!(kind, Kind::Float | Kind::BFloat16) || !aligned(size[1]) || !aligned(size[2]) {
            return Ok(ExpertBackend::Loop);
        }
        match device {
            Device::Cpu if rows < LOOP_MIN_ROWS_PER_EXPERT * size[0] => Ok(ExpertBackend::GroupedMm),
            Device::Cpu => Ok(ExpertBackend::Loop),
            // A timed choice can differ between processes (a resumed run would compute with
            // another kernel), so deterministic runs take the reference loop.
            _ if crate::runtime::is_deterministic() => Ok(ExpertBackend::Loop),
            _ => {
                let key = KernelKey::new(device, kind, [size[0], size[1], size[2]], self.w_gate.is_some(), rows);
                kernel::choose(key, |backend| self.time_kernel(backend, &key))
            }
        }
    }

    /// Seconds of one forward + backward of `backend` on rows and weights of `key`'s shape
    /// (fastest of 3 after a warm-up), synchronising the device around each run. Runs with
    /// autograd on even when called under `no_grad` (the first forward of a shape class may come
    /// from an evaluation or from generation), and fills its inputs without libtorch's random
    /// generator: the measurement happens inside a training step, whose router jitter must draw
    /// the same numbers whether or not this process has measured before (found on the first
    /// CUDA run: a run that measured and one that did not diverged).
    fn time_kernel(&self, backend: ExpertBackend, key: &KernelKey) -> Result<f64> {
        tch::with_grad(|| self.time_kernel_with_grad(backend, key))
    }

    fn time_kernel_with_grad(&self, backend: ExpertBackend, key: &KernelKey) -> Result<f64> {
        let [e, d, f] = key.shape;
        let rows_per_expert = key.rows_per_expert;
        let sizes = GroupSizes::from_host(&vec![rows_per_expert; e as usize], key.device)?;
        // sin(0.618 i)-valued fillers: varied values, no draw from the generator.
        let filler = |shape: &[i64], kind: Kind, scale: f64| -> Result<Tensor> {
            let n: i64 = shape.iter().product();
            let t = Tensor::f_arange(n, (Kind::Float, key.device))?.f_mul_scalar(0.618)?.f_sin()?;
            t.f_mul_scalar(scale)?.f_reshape(shape)?.cast(kind)
        };
        let weight =
            |shape: [i64; 3]| -> Result<Tensor> { Ok(filler(&shape, Kind::Float, 0.02)?.set_requires_grad(true)) };
        let (w_in, w_out) = (weight([e, d, f])?, weight([e, f, d])?);
        let w_gate = key.gated.then(|| weight([e, d, f])).transpose()?;
        let weights = Weights { w_in: &w_in, w_gate: w_gate.as_ref(), w_out: &w_out, activation: self.activation };
        let rows = filler(&[e * rows_per_expert, d], key.kind, 1.0)?.set_requires_grad(true);
        let cotangent = filler(&[e * rows_per_expert, d], key.kind, 1.0)?;
        let sync = || {
            if let Device::Cuda(i) = key.device {
                tch::Cuda::synchronize(i as i64);
            }
        };
        let mut best = f64::INFINITY;
        for run in 0..4 {
            sync();
            let start = std::time::Instant::now();
            let y = weights.run(backend, &rows, &sizes)?;
            y.f_mul(&cotangent)?.f_sum(Kind::Float)?.f_backward()?;
            sync();
            if run > 0 {
                best = best.min(start.elapsed().as_secs_f64());
            }
        }
        Ok(best)
    }

    /// Runs every expert on its contiguous group of rows.
    ///
    /// The grouped kernel takes the group sizes as device offsets (no host read); the per-expert
    /// loop cuts the rows on the host and reads the sizes once when only the device has them
    /// ([`GroupSizes::host`]).
    ///
    /// # Shapes
    /// `rows`: `[N, D]`, sorted by expert so that the first `group_sizes[0]` rows belong to
    /// expert 0, the next `group_sizes[1]` to expert 1, ... → `[N, D]` in `rows`' dtype.
    ///
    /// # Errors
    /// [`Error::Shape`] if `group_sizes` does not have `E` entries, or (where known on the host)
    /// they do not sum to `N`, or `rows` is not `[N, D]` on the experts' device;
    /// [`Error::Torch`] if the grouped kernel is forced on a device/dtype that lacks it.
    pub fn forward(&self, rows: &Tensor, group_sizes: &GroupSizes) -> Result<Tensor> {
        let (e, d) = (self.num_experts(), self.w_in.size()[1]);
        expect_shape(rows, "expert input", "[N, D]", &[None, Some(d)])?;
        expect_device(rows, "expert input", &self.w_in)?;
        let n = rows.size()[0];
        let sum_mismatch = group_sizes.known().is_some_and(|g| g.iter().sum::<i64>() != n);
        if group_sizes.len() as i64 != e || sum_mismatch {
            return Err(Error::Shape(format!(
                "group_sizes must have {e} entries summing to the {n} rows, got {:?}",
                group_sizes
                    .known()
                    .map_or_else(|| format!("{} on the device", group_sizes.len()), |g| format!("{g:?}"))
            )));
        }
        if n == 0 {
            return Ok(rows.f_zeros_like()?);
        }
        let backend = self.resolved_backend(n, rows.kind(), rows.device())?;
        let weights =
            Weights { w_in: &self.w_in, w_gate: self.w_gate.as_ref(), w_out: &self.w_out, activation: self.activation };
        weights.run(backend, rows, group_sizes)
    }
}

/// The weights one kernel call uses (the layer's, or random ones of the same shape when timing).
struct Weights<'a> {
    w_in: &'a Tensor,
    w_gate: Option<&'a Tensor>,
    w_out: &'a Tensor,
    activation: Activation,
}

impl Weights<'_> {
    fn run(&self, backend: ExpertBackend, rows: &Tensor, group_sizes: &GroupSizes) -> Result<Tensor> {
        match backend {
            ExpertBackend::Loop => self.looped(rows, group_sizes.host()?),
            _ => self.grouped(rows, &group_sizes.offsets()?),
        }
    }

    /// The grouped kernel with cumulative row ends `offs` (`[E]` i32, on the rows' device).
    fn grouped(&self, rows: &Tensor, offs: &Tensor) -> Result<Tensor> {
        let mm = |x: &Tensor, w: &Tensor| -> Result<Tensor> {
            Ok(x.f_internal_grouped_mm(&w.like(x)?, Some(offs), None, None)?)
        };
        let h = mm(rows, self.w_in)?;
        let gate = self.w_gate.map(|w| mm(rows, w)).transpose()?;
        mm(&self.activation.apply(&h, gate.as_ref())?, self.w_out)
    }

    /// The activation of one expert's rows `h` `[r, F]` in the per-expert loop (and the gate
    /// projection for SwiGLU). On the CPU it runs on the transposed view. libtorch hands a
    /// contiguous f32 GELU (forward and backward) to oneDNN, which compiles a kernel for every
    /// new shape (cached per shape); an expert's row count changes from step to step, so nearly
    /// every call would pay a compilation. A transposed view is not contiguous, so ATen's own
    /// vectorised kernel runs instead: the same formula, no compilation. Measured on a d = 64
    /// altup-moe training step (29 per-expert GELUs): 2.4 ms forward and 3.3 ms backward
    /// before, 0.6 ms and 1.0 ms this way. The activation is elementwise, so the result is that
    /// of `h`; its layout (and its gradient's) may be column-major, which the loop's matmuls
    /// take as they are. The grouped kernel needs row-major rows and makes one call of a fixed
    /// shape per layer when dropless, so it keeps the plain activation.
    fn activate(&self, h: &Tensor, gate: Option<&Tensor>) -> Result<Tensor> {
        if h.device() != Device::Cpu {
            return self.activation.apply(h, gate);
        }
        let gate_t = gate.map(|g| g.f_transpose(0, 1)).transpose()?;
        Ok(self.activation.apply(&h.f_transpose(0, 1)?, gate_t.as_ref())?.f_transpose(0, 1)?)
    }

    fn looped(&self, rows: &Tensor, group_sizes: &[i64]) -> Result<Tensor> {
        let w_in = self.w_in.like(rows)?.f_unbind(0)?;
        let w_gate = self.w_gate.map(|w| -> Result<Vec<Tensor>> { Ok(w.like(rows)?.f_unbind(0)?) }).transpose()?;
        let w_out = self.w_out.like(rows)?.f_unbind(0)?;
        let mut outputs = Vec::with_capacity(group_sizes.len());
        // One split (its backward concatenates the groups' gradients once) rather than a slice
        // per expert, whose backward would write each group into a zero tensor of all rows.
        for (expert, x) in rows.f_split_with_sizes(group_sizes, 0)?.iter().enumerate() {
            if x.size()[0] == 0 {
                continue;
            }
            let h = x.f_matmul(&w_in[expert])?;
            let gate = w_gate.as_ref().map(|w| x.f_matmul(&w[expert])).transpose()?;
            outputs.push(self.activate(&h, gate.as_ref())?.f_matmul(&w_out[expert])?);
        }
        Ok(Tensor::f_cat(&outputs, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn;

    #[test]
    fn auto_picks_grouped_for_small_groups_and_the_loop_for_large_ones_on_cpu() {
        let vs = nn::VarStore::new(Device::Cpu);
        let experts = Experts::new(&vs.root(), 8, 16, 32, Activation::Gelu, ExpertBackend::Auto).unwrap();
        let small = 8 * LOOP_MIN_ROWS_PER_EXPERT - 1;
        let resolved = |rows, kind| experts.resolved_backend(rows, kind, Device::Cpu).unwrap();
        assert_eq!(resolved(small, Kind::Float), ExpertBackend::GroupedMm);
        assert_eq!(resolved(small + 1, Kind::Float), ExpertBackend::Loop);
        assert_eq!(resolved(small, Kind::BFloat16), ExpertBackend::GroupedMm);
        assert_eq!(resolved(small, Kind::Double), ExpertBackend::Loop, "no grouped kernel for f64");
        // Timing both kernels (what an accelerator does once per shape class) works and returns
        // positive times; here on the CPU.
        let key = KernelKey::new(Device::Cpu, Kind::Float, [8, 16, 32], false, 64);
        for backend in [ExpertBackend::GroupedMm, ExpertBackend::Loop] {
            let seconds = experts.time_kernel(backend, &key).unwrap();
            assert!(seconds > 0.0 && seconds.is_finite(), "{backend:?}");
            // Also when the first forward of a shape class comes from an evaluation (found on
            // the first CUDA run: the timing's backward failed under `no_grad`).
            let seconds = tch::no_grad(|| experts.time_kernel(backend, &key)).unwrap();
            assert!(seconds > 0.0 && seconds.is_finite(), "{backend:?} under no_grad");
            assert!(crate::parallel::grad_mode_enabled(), "grad mode restored");
        }
    }

    #[test]
    fn deterministic_runs_take_the_loop_on_accelerators_without_timing() {
        let vs = nn::VarStore::new(Device::Cpu);
        let experts = Experts::new(&vs.root(), 8, 16, 32, Activation::Gelu, ExpertBackend::Auto).unwrap();
        let _alone = crate::runtime::TEST_SWITCH_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let before = crate::runtime::is_deterministic();
        crate::runtime::set_deterministic(true);
        // Nothing runs on the device: this passes without a GPU.
        let resolved = experts.resolved_backend(64, Kind::Float, Device::Cuda(0));
        crate::runtime::set_deterministic(before);
        assert_eq!(resolved.unwrap(), ExpertBackend::Loop);
    }
}
