//! Making the `K` blocks from the embedding and reducing them at the output
//! ([`Widening`]: a wide embedding table, Recycled-AltUp, or Gemma 3n's learned projections).

use crate::altup::config::{AltUpConfig, OutputReduction, Widening};
use crate::dtype::{accumulate_kind, Cast};
use crate::error::{Error, Result};
use crate::nn::var_builder::VarBuilder;
use tch::{Kind, Tensor};

/// Splits a `K·D`-wide embedding into `K` blocks.
///
/// # Shapes
/// `wide`: `[B, T, K·D]` → `[K, B, T, D]` (block `i` is channels `i·D .. (i+1)·D`).
///
/// # Errors
/// [`Error::Shape`] if the last dimension is not divisible by `num_blocks`.
pub fn split_blocks(wide: &Tensor, num_blocks: i64) -> Result<Tensor> {
    let size = wide.size();
    if size.len() != 3 || num_blocks <= 0 || size[2] % num_blocks != 0 {
        return Err(Error::Shape(format!(
            "cannot split shape {size:?} into {num_blocks} blocks along the last dimension"
        )));
    }
    let d = size[2] / num_blocks;
    Ok(wide.f_view([size[0], size[1], num_blocks, d])?.f_permute([2, 0, 1, 3])?)
}

/// Rescales `h` to the per-token RMS of `target` (Gemma 3n: the mean square of `h` is clamped
/// at 1e-5 before the square root).
///
/// # Shapes
/// `h`, `target`: `[..., D]` → `h`'s shape.
fn rms_match(h: &Tensor, target: &Tensor) -> Result<Tensor> {
    let acc = accumulate_kind(h);
    let target_rms = target.cast(acc)?.f_square()?.f_mean_dim(-1, true, acc)?.f_sqrt()?;
    let h32 = h.cast(acc)?;
    let rms = h32.f_square()?.f_mean_dim(-1, true, acc)?.f_clamp_min(1e-5)?.f_sqrt()?;
    h32.f_mul(&target_rms)?.f_div(&rms)?.like(h)
}

/// Widening and collapse of one model.
///
/// Parameters: `collapse.weight` `[D, K·D]` (wide embedding with projection output, initialised
/// to the mean); `widen.{i}.weight` and `unwiden.{i}.weight` `[D, D]` for `i = 1..K` (projected
/// widening, initialised to the identity plus `N(0, init.std²)`).
#[derive(Debug)]
pub struct AltUpWidening {
    widening: Widening,
    output: OutputReduction,
    num_blocks: i64,
    collapse: Option<Tensor>,
    widen: Vec<Tensor>,
    unwiden: Vec<Tensor>,
}

impl AltUpWidening {
    /// Creates the parameters the configured widening needs under `path`.
    ///
    /// # Errors
    /// [`Error::Config`] from [`AltUpConfig::validate`].
    pub fn new<'a>(vb: impl Into<VarBuilder<'a>>, d_model: usize, config: &AltUpConfig) -> Result<Self> {
        config.validate()?;
        let vb = vb.into();
        let (path, init) = (vb.path(), vb.init());
        let (k, d) = (config.num_blocks as i64, d_model as i64);
        let eye = Tensor::f_eye(d, (Kind::Float, tch::Device::Cpu))?;
        let mut collapse = None;
        let (mut widen, mut unwiden) = (Vec::new(), Vec::new());
        match (config.widening, config.output) {
            (Widening::WideEmbedding, OutputReduction::Projection) => {
                let blocks: Vec<Tensor> =
                    (0..k).map(|_| eye.f_div_scalar(k as f64)).collect::<std::result::Result<_, _>>()?;
                collapse = Some((path / "collapse").f_var_copy("weight", &Tensor::f_cat(&blocks, 1)?)?);
            }
            (Widening::Projected, _) => {
                for i in 1..k {
                    for (name, list) in [("widen", &mut widen), ("unwiden", &mut unwiden)] {
                        let p = path / name / i;
                        let noise = crate::nn::init::normal_values(&p.path("weight"), init.seed, &[d, d], init.std)?;
                        list.push(p.f_var_copy("weight", &eye.f_add(&noise)?)?);
                    }
                }
            }
            _ => {}
        }
        Ok(Self { widening: config.widening, output: config.output, num_blocks: k, collapse, widen, unwiden })
    }

    /// Builds the `K` blocks from the embedding output.
    ///
    /// # Shapes
    /// `embedded`: `[B, T, K·D]` (wide embedding) or `[B, T, D]` → `[K, B, T, D]`.
    ///
    /// # Errors
    /// [`Error::Shape`] if the embedding width does not fit the widening.
    pub fn widen(&self, embedded: &Tensor) -> Result<Tensor> {
        match self.widening {
            Widening::WideEmbedding => split_blocks(embedded, self.num_blocks),
            Widening::Recycled => {
                let size = embedded.size();
                let mut shape = vec![self.num_blocks];
                shape.extend(&size);
                Ok(embedded.f_unsqueeze(0)?.f_expand(shape.as_slice(), false)?.f_contiguous()?)
            }
            Widening::Projected => {
                let mut blocks = vec![embedded.shallow_clone()];
                for w in &self.widen {
                    let h = embedded.f_linear::<Tensor>(&w.like(embedded)?, None)?;
                    blocks.push(rms_match(&h, embedded)?);
                }
                Ok(Tensor::f_stack(&blocks, 0)?)
            }
        }
    }

    /// Reduces the `K` blocks to one.
    ///
    /// # Shapes
    /// `x`: `[K, B, T, D]` → `[B, T, D]`.
    ///
    /// # Errors
    /// [`Error::Shape`] if `x` is not `[K, B, T, D]`.
    pub fn collapse(&self, x: &Tensor) -> Result<Tensor> {
        let size = x.size();
        if size.len() != 4 || size[0] != self.num_blocks {
            return Err(Error::Shape(format!(
                "collapse input must be [K = {}, B, T, D], got {size:?}",
                self.num_blocks
            )));
        }
        Ok(match (self.widening, self.output) {
            (Widening::Recycled, _) | (Widening::WideEmbedding, OutputReduction::Sum) => {
                x.f_sum_dim_intlist(0, false, x.kind())?
            }
            (Widening::WideEmbedding, OutputReduction::Mean) => x.f_mean_dim(0, false, x.kind())?,
            (Widening::WideEmbedding, OutputReduction::Block(b)) => x.f_select(0, b as i64)?,
            (Widening::WideEmbedding, OutputReduction::Projection) => {
                let w =
                    self.collapse.as_ref().ok_or_else(|| Error::Config("projection collapse has no weight".into()))?;
                let concat = x.f_permute([1, 2, 0, 3])?.f_reshape([size[1], size[2], size[0] * size[3]])?;
                concat.f_linear::<Tensor>(&w.like(x)?, None)?
            }
            (Widening::Projected, _) => {
                let first = x.f_select(0, 0)?;
                let mut blocks = vec![first.shallow_clone()];
                for (i, w) in self.unwiden.iter().enumerate() {
                    let h = x.f_select(0, i as i64 + 1)?;
                    blocks.push(rms_match(&h.f_linear::<Tensor>(&w.like(&h)?, None)?, &first)?);
                }
                Tensor::f_stack(&blocks, 0)?.f_mean_dim(0, false, x.kind())?
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn;
    use tch::Device;

    fn widening(config: AltUpConfig, d: usize) -> (nn::VarStore, AltUpWidening) {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = AltUpWidening::new(&vs.root(), d, &config).unwrap();
        (vs, w)
    }

    #[test]
    fn wide_embedding_split_and_reductions() {
        let wide = Tensor::randn([2, 3, 8], (Kind::Float, Device::Cpu));
        let blocks = split_blocks(&wide, 2).unwrap();
        assert!(blocks.get(1).equal(&wide.narrow(2, 4, 4)));
        let reduce = |output| widening(AltUpConfig { output, ..Default::default() }, 4).1.collapse(&blocks).unwrap();
        let mean = reduce(OutputReduction::Mean);
        assert!(
            reduce(OutputReduction::Projection).allclose(&mean, 1e-6, 1e-6, false),
            "projection starts as the mean"
        );
        assert!(reduce(OutputReduction::Sum).allclose(&(&mean * 2.0), 1e-6, 1e-6, false));
        assert!(reduce(OutputReduction::Block(1)).equal(&blocks.get(1)));
    }

    #[test]
    fn recycled_replicates_and_sums() {
        let (_vs, w) = widening(AltUpConfig::recycled(3), 4);
        let e = Tensor::randn([2, 5, 4], (Kind::Float, Device::Cpu));
        let x = w.widen(&e).unwrap();
        assert_eq!(x.size(), vec![3, 2, 5, 4]);
        assert!(x.get(2).equal(&e));
        assert!(w.collapse(&x).unwrap().allclose(&(&e * 3.0), 1e-6, 1e-6, false));
    }

    #[test]
    fn projected_blocks_match_the_embedding_rms() {
        let (_vs, w) = widening(AltUpConfig { num_blocks: 3, widening: Widening::Projected, ..Default::default() }, 8);
        let e = Tensor::randn([2, 5, 8], (Kind::Float, Device::Cpu)) * 3.0;
        let x = w.widen(&e).unwrap();
        let rms = |t: &Tensor| t.square().mean_dim(-1, false, Kind::Float).sqrt();
        assert!(x.get(0).equal(&e));
        for i in 1..3 {
            assert!(rms(&x.get(i)).allclose(&rms(&e), 1e-4, 1e-4, false), "block {i}");
            assert!(!x.get(i).allclose(&e, 1e-3, 1e-3, false), "block {i} is a projection, not a copy");
        }
        assert_eq!(w.collapse(&x).unwrap().size(), vec![2, 5, 8]);
    }
}
