//! Models on disk: tensor files (safetensors, written atomically, read back with their names and
//! shapes checked), checkpoint folders (assembled aside and renamed into place, the newest kept),
//! reading a trained model back — ours or a Hugging Face Llama / Mixtral folder, decoder-only or
//! encoder-decoder, through one function ([`load_model`]) — and writing Hugging Face folders.
//! Nothing here knows the trainer: what a training checkpoint holds is [`crate::train`]'s.

pub(crate) mod checkpoint;
pub(crate) mod hf;
pub(crate) mod load;
pub(crate) mod tensors;

pub use crate::fs::{save_json, write_atomic};
pub use checkpoint::{
    checkpoint_name, find_checkpoint, list_checkpoints, run_folder_of, write_checkpoint_dir, FileWriter,
};
pub use hf::{
    export_blockers, export_hf, from_hf_config, to_hf_config, HarmlessKey, HfFormat, HARMLESS_KEYS,
    TRANSFORMERS_VERSION,
};
pub use load::{load_model, model_files, AnyModel, Loaded};
pub use tensors::{
    load_named_weights, load_weights, named_variables, read_tensors, save_weights, save_weights_gathered,
    weight_tensors, write_tensors, write_tensors_with_metadata,
};
