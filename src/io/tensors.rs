//! Tensor files: model weights and optimizer state as safetensors, written atomically (a
//! temporary file in the same folder, fsync, rename, fsync the folder), read back with their
//! names and shapes checked against the model.

use crate::error::{Error, Result};
use crate::fs::write_atomic;
use crate::host;
use crate::nn::role::roles;
use crate::parallel::ProcessGroup;
use std::collections::BTreeMap;
use std::path::Path;
use tch::{nn::VarStore, Tensor};

/// Writes named tensors to a safetensors file (no atomicity of its own: used inside
/// [`write_atomic`] or [`crate::io::write_checkpoint_dir`]).
///
/// # Errors
/// [`Error::Torch`] on write errors.
pub fn write_tensors(path: &Path, named: &[(String, Tensor)]) -> Result<()> {
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Ok(Tensor::write_safetensors(&refs, path)?)
}

/// [`write_tensors`] with string pairs in the header's `__metadata__` (none written when
/// `metadata` is empty). Hugging Face checkpoints carry `{"format": "pt"}` there: transformers
/// 4.x refuses a `model.safetensors` without it. The tensors are written as they are (any dtype
/// safetensors has); they must be dense, contiguous and on the CPU (each is copied into the
/// file while it is written, one at a time).
///
/// # Errors
/// [`Error::Torch`] for a sparse, non-contiguous or non-CPU tensor, a dtype safetensors lacks,
/// or a write error (naming the file).
pub fn write_tensors_with_metadata(
    path: &Path,
    named: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let views = named.iter().map(|(n, t)| Ok((n.as_str(), TensorBytes::new(t)?))).collect::<Result<Vec<_>>>()?;
    let metadata = (!metadata.is_empty()).then(|| metadata.clone().into_iter().collect());
    safetensors::tensor::serialize_to_file(views, &metadata, path)
        .map_err(|err| Error::Torch(tch::TchError::SafeTensorError { path: path.display().to_string(), err }))
}

/// One tensor as the safetensors writer sees it: its bytes (read once, through the counting
/// helper), shape and dtype.
struct TensorBytes {
    data: Vec<u8>,
    shape: Vec<usize>,
    dtype: safetensors::Dtype,
}

impl TensorBytes {
    fn new(tensor: &Tensor) -> Result<Self> {
        use safetensors::Dtype;
        use tch::{Kind, TchError};
        if tensor.is_sparse() || !tensor.is_contiguous() || tensor.device() != tch::Device::Cpu {
            return Err(Error::Torch(TchError::Convert(format!(
                "only dense, contiguous CPU tensors are written here (got one of shape {:?} on {:?})",
                tensor.size(),
                tensor.device()
            ))));
        }
        let dtype = match tensor.kind() {
            Kind::Bool => Dtype::BOOL,
            Kind::Uint8 => Dtype::U8,
            Kind::Int8 => Dtype::I8,
            Kind::Int16 => Dtype::I16,
            Kind::Int => Dtype::I32,
            Kind::Int64 => Dtype::I64,
            Kind::BFloat16 => Dtype::BF16,
            Kind::Half => Dtype::F16,
            Kind::Float => Dtype::F32,
            Kind::Double => Dtype::F64,
            kind => return Err(Error::Torch(TchError::Convert(format!("safetensors has no dtype for {kind:?}")))),
        };
        let shape = tensor.size().iter().map(|&x| x as usize).collect();
        Ok(Self { data: crate::host::bytes(tensor)?, shape, dtype })
    }
}

impl safetensors::View for TensorBytes {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }

    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Reads a safetensors file into a name → tensor map.
///
/// # Errors
/// [`Error::Checkpoint`] naming the file when it is missing, truncated or not safetensors.
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    if !path.is_file() {
        return Err(Error::Checkpoint(format!("{} does not exist", path.display())));
    }
    Ok(Tensor::read_safetensors(path)
        .map_err(|e| Error::Checkpoint(format!("cannot read {}: {}", path.display(), Error::Torch(e))))?
        .into_iter()
        .collect())
}

/// The variables of a `VarStore`, sorted by name.
///
/// # Errors
/// [`Error::Checkpoint`] if a name was silently de-duplicated by the `VarStore` (contains `__`),
/// which means two modules registered the same parameter name.
pub fn named_variables(vs: &VarStore) -> Result<BTreeMap<String, Tensor>> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    if let Some(name) = vars.keys().find(|n| n.contains("__")) {
        return Err(Error::Checkpoint(format!("duplicate parameter name (renamed to '{name}') in the model")));
    }
    Ok(vars)
}

/// Saves every variable of `vs` to a safetensors file, atomically.
///
/// # Errors
/// [`Error::Checkpoint`] for duplicate names, [`Error::Io`] / [`Error::Torch`] on write errors.
pub fn save_weights(vs: &VarStore, path: &Path) -> Result<()> {
    let named = weight_tensors(vs)?;
    write_atomic(path, |tmp| write_tensors(tmp, &named))
}

/// [`save_weights`] for a model built in `group`: every rank must call it; each rank's experts
/// are gathered into the whole model (the single-process format) and the main rank writes the
/// file (in one process, [`save_weights`]).
///
/// # Errors
/// As [`save_weights`]; transport errors.
pub fn save_weights_gathered(vs: &VarStore, group: &ProcessGroup, path: &Path) -> Result<()> {
    let roles = roles(vs);
    let named = group.gather_sharded(weight_tensors(vs)?, |n| roles.get(n).is_some_and(|r| r.sharded))?;
    if !group.is_main() {
        return Ok(());
    }
    write_atomic(path, |tmp| write_tensors(tmp, &named))
}

/// Every variable of `vs` by name, on the CPU (what `model.safetensors` holds).
///
/// # Errors
/// [`Error::Checkpoint`] for duplicate names.
pub fn weight_tensors(vs: &VarStore) -> Result<Vec<(String, Tensor)>> {
    named_variables(vs)?.into_iter().map(|(n, t)| Ok((n, host::to_cpu(&t)?))).collect()
}

/// Loads a safetensors file into `vs`, after checking that it holds exactly the model's
/// variable names with the same shapes and dtypes, and only finite values.
///
/// # Errors
/// [`Error::Checkpoint`] listing missing and unexpected names, the first shape/dtype mismatch, or
/// the tensors holding NaN or ±inf;
/// [`Error::Torch`] if the file cannot be read as safetensors.
pub fn load_weights(vs: &VarStore, path: &Path) -> Result<()> {
    load_named_weights(vs, &read_tensors(path)?, path)
}

/// Up to five names in `["a", "b"]` form, then how many more there are.
fn first_names(names: &[&String]) -> String {
    const SHOWN: usize = 5;
    let head = format!("{:?}", &names[..names.len().min(SHOWN)]);
    match names.len().saturating_sub(SHOWN) {
        0 => head,
        more => format!("{head} and {more} more"),
    }
}

/// Loads named tensors (read from `origin`, named in errors) into `vs`, with the checks of
/// [`load_weights`].
///
/// # Errors
/// As [`load_weights`].
pub fn load_named_weights(vs: &VarStore, file: &BTreeMap<String, Tensor>, origin: &Path) -> Result<()> {
    let path = origin;
    let vars = named_variables(vs)?;
    let missing: Vec<&String> = vars.keys().filter(|k| !file.contains_key(*k)).collect();
    let unexpected: Vec<&String> = file.keys().filter(|k| !vars.contains_key(*k)).collect();
    if !missing.is_empty() || !unexpected.is_empty() {
        // Optimizer state files hold `exp_avg.*` moments: a common wrong pick.
        let hint = if unexpected.len() == file.len() && file.keys().any(|k| k.starts_with("exp_avg")) {
            " (this looks like optimizer state, not model weights: use model.safetensors)"
        } else {
            ""
        };
        return Err(Error::Checkpoint(format!(
            "{} does not match the model: missing {}, unexpected {}{hint}",
            path.display(),
            first_names(&missing),
            first_names(&unexpected)
        )));
    }
    for (name, var) in &vars {
        let src = &file[name];
        if src.size() != var.size() || src.kind() != var.kind() {
            return Err(Error::Checkpoint(format!(
                "{}: '{name}' has shape {:?} and dtype {:?} in the file but {:?} and {:?} in the model",
                path.display(),
                src.size(),
                src.kind(),
                var.size(),
                var.kind()
            )));
        }
    }
    // Corrupt weights are refused here, not discovered as garbage output later.
    let floats: Vec<&String> = vars.keys().filter(|n| file[*n].is_floating_point()).collect();
    if !floats.is_empty() {
        let finite = Tensor::f_stack(
            &floats.iter().map(|n| file[*n].f_isfinite()?.f_all()).collect::<std::result::Result<Vec<_>, _>>()?,
            0,
        )?;
        let bad: Vec<&String> =
            floats.iter().zip(host::i64s(&finite)?).filter(|(_, ok)| *ok == 0).map(|(n, _)| *n).collect();
        if !bad.is_empty() {
            return Err(Error::Checkpoint(format!(
                "{}: {} hold non-finite values (NaN or ±inf): the weights are corrupt",
                path.display(),
                first_names(&bad)
            )));
        }
    }
    tch::no_grad(|| -> Result<()> {
        for (name, var) in &vars {
            let mut var = var.shallow_clone();
            var.f_copy_(&file[name])?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn save_load_is_bitwise_and_mismatches_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let vs = VarStore::new(Device::Cpu);
        let a = (vs.root() / "a").f_randn_standard("weight", &[3, 2]).unwrap();
        save_weights(&vs, &path).unwrap();
        let vs2 = VarStore::new(Device::Cpu);
        let b = (vs2.root() / "a").f_zeros("weight", &[3, 2]).unwrap();
        load_weights(&vs2, &path).unwrap();
        assert!(a.equal(&b));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "temporary file left behind");

        let vs3 = VarStore::new(Device::Cpu);
        let _ = (vs3.root() / "a").f_zeros("weight", &[2, 3]).unwrap();
        let err = load_weights(&vs3, &path).unwrap_err().to_string();
        assert!(err.contains("'a.weight' has shape [3, 2]"), "{err}");
        let vs4 = VarStore::new(Device::Cpu);
        let _ = (vs4.root() / "b").f_zeros("weight", &[3, 2]).unwrap();
        let err = load_weights(&vs4, &path).unwrap_err().to_string();
        assert!(err.contains("missing [\"b.weight\"], unexpected [\"a.weight\"]"), "{err}");
    }

    /// The header's `__metadata__` holds exactly the pairs given (none when empty), and the
    /// tensors read back bit for bit whatever their dtype.
    #[test]
    fn metadata_is_written_into_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let a = Tensor::randn([3, 2], (Kind::Float, Device::Cpu));
        let b = Tensor::arange(5, (Kind::Int64, Device::Cpu));
        let named = vec![("b".to_string(), b.shallow_clone()), ("a".to_string(), a.shallow_clone())];
        let header = |path: &Path| {
            let bytes = std::fs::read(path).unwrap();
            let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
            meta.metadata().clone()
        };
        let with = dir.path().join("with.safetensors");
        let pairs = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        write_tensors_with_metadata(&with, &named, &pairs).unwrap();
        assert_eq!(header(&with), Some(pairs.into_iter().collect()));
        let back = read_tensors(&with).unwrap();
        assert!(back["a"].equal(&a) && back["b"].equal(&b));
        let without = dir.path().join("without.safetensors");
        write_tensors_with_metadata(&without, &named, &BTreeMap::new()).unwrap();
        assert_eq!(header(&without), None);
        let strided = vec![("t".to_string(), a.transpose(0, 1))];
        let err = write_tensors_with_metadata(&without, &strided, &BTreeMap::new()).unwrap_err().to_string();
        assert!(err.contains("contiguous CPU tensors"), "{err}");
    }

    #[test]
    fn long_name_lists_are_cut_and_optimizer_files_are_recognised() {
        let vs = VarStore::new(Device::Cpu);
        for i in 0..8 {
            let _ = (vs.root() / format!("p{i}")).f_zeros("weight", &[1]).unwrap();
        }
        let file: BTreeMap<String, Tensor> =
            (0..8).map(|i| (format!("exp_avg.p{i}.weight"), Tensor::zeros([1], (Kind::Float, Device::Cpu)))).collect();
        let err = load_named_weights(&vs, &file, Path::new("optimizer.safetensors")).unwrap_err().to_string();
        assert!(
            err.contains(
                "missing [\"p0.weight\", \"p1.weight\", \"p2.weight\", \"p3.weight\", \"p4.weight\"] and 3 more"
            ),
            "{err}"
        );
        assert!(err.ends_with("(this looks like optimizer state, not model weights: use model.safetensors)"), "{err}");
    }
}
