//! Training utilities: byte-level data, AdamW with inspectable state, the learning-rate
//! schedule, atomic checkpoints with exact resume, metrics, the step/evaluate logic and the loop.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod load;
pub mod metrics;
pub mod optim;
pub mod run;
pub mod run_folder;
pub mod schedule;
pub mod span_corruption;
pub mod stats;
pub mod task;
pub mod trainer;
pub mod weights;

pub use checkpoint::{find_checkpoint, CheckpointMeta, TrainerState};
pub use config::TrainConfig;
pub use data::{find_shakespeare, Batch, ByteDataset, Corpus};
pub use load::{load_model, model_files, AnyModel, Loaded};
pub use metrics::{EvalRecord, MetricsWindow, MetricsWriter};
pub use optim::{AdamW, AdamWConfig};
pub use run::{run, Observer, RunOptions, Silent};
pub use run_folder::{RunFolder, RunStart};
pub use schedule::LrSchedule;
pub use span_corruption::{Seq2SeqBatch, SpanCorruption};
pub use stats::{EvalStats, MoeLayerMetrics, StepStats};
pub use task::{SpanCorruptionTask, Task, TaskLoss};
pub use trainer::Trainer;
pub use weights::{load_weights, save_json, save_weights, save_weights_gathered, write_atomic};
