//! Where and how a layer creates its parameters: the `VarStore` path, the initialisation scheme,
//! and the process group (which slice of each MoE layer's experts this rank holds) — in the
//! spirit of candle's `VarBuilder`. Every layer and model type has one constructor taking it, so
//! one process and many read the same.

use crate::error::Result;
use crate::nn::init::InitScheme;
use crate::nn::role::ParamRole;
use crate::parallel::ProcessGroup;
use tch::{nn, Tensor};

/// A parameter path with its initialisation scheme and process group.
///
/// `vb / "blocks" / 3` is the builder of the sub-path `blocks.3` (same scheme and group). A plain
/// `&nn::Path` converts into a builder with [`InitScheme::default`] in a group of one
/// ([`ProcessGroup::single`]), so `MoeLayer::new(&vs.root(), …)` works as it reads.
///
/// ```
/// use altup_moe::nn::{InitScheme, VarBuilder};
/// use altup_moe::parallel::ProcessGroup;
/// use tch::nn::VarStore;
///
/// let vs = VarStore::new(tch::Device::Cpu);
/// let vb = VarBuilder::new(&vs.root()).with_init(InitScheme::gpt2(0.02, 4, 7));
/// let w = (&vb / "blocks" / 0).normal("weight", &[8, 4], 0.02)?;
/// assert_eq!(w.size(), [8, 4]);
/// assert!(vs.variables().contains_key("blocks.0.weight"));
/// assert_eq!(vb.group().world_size(), 1);
/// assert_eq!(vb.with_group(ProcessGroup::single()).group().expert_slice(8)?, 0..8);
/// # Ok::<(), altup_moe::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct VarBuilder<'a> {
    path: nn::Path<'a>,
    init: InitScheme,
    group: ProcessGroup,
}

impl<'a> VarBuilder<'a> {
    /// A builder at `path` with [`InitScheme::default`] in a group of one.
    pub fn new(path: &nn::Path<'a>) -> Self {
        Self { path: path.clone(), init: InitScheme::default(), group: ProcessGroup::single() }
    }

    /// The same builder with another initialisation scheme.
    pub fn with_init(self, init: InitScheme) -> Self {
        Self { init, ..self }
    }

    /// The same builder in another process group.
    pub fn with_group(self, group: ProcessGroup) -> Self {
        Self { group, ..self }
    }

    /// The same builder whose parameters (and those of its sub-paths) get `role`.
    pub fn with_role(&self, role: ParamRole) -> Self {
        Self { path: role.on(&self.path), ..self.clone() }
    }

    /// The builder of the sub-path `name`.
    pub fn sub(&self, name: impl ToString) -> Self {
        Self { path: self.path.sub(name), ..self.clone() }
    }

    /// The `VarStore` path.
    pub fn path(&self) -> &nn::Path<'a> {
        &self.path
    }

    /// The initialisation scheme.
    pub fn init(&self) -> &InitScheme {
        &self.init
    }

    /// The process group.
    pub fn group(&self) -> &ProcessGroup {
        &self.group
    }

    /// Creates the trainable variable `<path>.<name>` of shape `dims` drawn from `N(0, std²)`
    /// ([`InitScheme::normal`]).
    ///
    /// # Errors
    /// [`crate::Error::Torch`] if allocation fails.
    pub fn normal(&self, name: &str, dims: &[i64], std: f64) -> Result<Tensor> {
        self.init.normal(&self.path, name, dims, std)
    }
}

impl<'a> From<&nn::Path<'a>> for VarBuilder<'a> {
    fn from(path: &nn::Path<'a>) -> Self {
        Self::new(path)
    }
}

impl<'a> From<nn::Path<'a>> for VarBuilder<'a> {
    fn from(path: nn::Path<'a>) -> Self {
        Self::new(&path)
    }
}

impl<'a> From<&VarBuilder<'a>> for VarBuilder<'a> {
    fn from(vb: &VarBuilder<'a>) -> Self {
        vb.clone()
    }
}

impl<'a, T: ToString> std::ops::Div<T> for &VarBuilder<'a> {
    type Output = VarBuilder<'a>;

    fn div(self, name: T) -> VarBuilder<'a> {
        self.sub(name)
    }
}

impl<'a, T: ToString> std::ops::Div<T> for VarBuilder<'a> {
    type Output = VarBuilder<'a>;

    fn div(self, name: T) -> VarBuilder<'a> {
        self.sub(name)
    }
}
