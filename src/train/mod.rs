//! Training utilities: byte-level data, AdamW with inspectable state, the learning-rate
//! schedule, atomic checkpoints with exact resume, metrics, the step/evaluate logic and the loop.

pub(crate) mod checkpoint;
pub(crate) mod config;
pub(crate) mod data;
pub(crate) mod load;
pub(crate) mod metrics;
pub(crate) mod objective;
pub(crate) mod optim;
pub(crate) mod run;
pub(crate) mod run_folder;
pub(crate) mod schedule;
pub(crate) mod shards;
pub(crate) mod span_corruption;
pub(crate) mod stats;
pub(crate) mod task;
pub(crate) mod tokenizer;
pub(crate) mod trainer;
pub(crate) mod weights;

pub use checkpoint::{find_checkpoint, CheckpointMeta, TrainerState, CHECKPOINT_FORMAT};
pub use config::TrainConfig;
pub use data::{find_shakespeare, Batch, Corpus, ShardDtype, TokenDataset};
pub use load::{load_model, model_files, AnyModel, Loaded};
pub use metrics::{EvalRecord, MetricsWindow, MetricsWriter};
pub use objective::Objective;
pub use optim::{AdamW, AdamWConfig};
pub use run::{run, Observer, RunOptions, Silent};
pub use run_folder::{RunFolder, RunStart};
pub use schedule::LrSchedule;
pub use shards::{
    input_files, prepare_corpus, read_documents, tokenizer_hash, train_bpe_on_training_split, PreparedCorpus,
    ShardFile, ShardsMeta, SplitMeta, SHARDS_FORMAT,
};
pub use span_corruption::{Seq2SeqBatch, SpanCorruption};
pub use stats::{EvalStats, MoeLayerMetrics, StepStats};
pub use task::{SpanCorruptionTask, Task, TaskLoss};
pub use tokenizer::{TextTokenizer, TokenizerSpec, END_OF_TEXT};
pub use trainer::Trainer;
pub use weights::{load_weights, named_variables, save_json, save_weights, save_weights_gathered, write_atomic};
