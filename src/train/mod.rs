//! Training utilities: byte-level data, AdamW with inspectable state, the learning-rate
//! schedule, atomic checkpoint files, metrics, and the step/evaluate loop.

pub mod checkpoint;
pub mod data;
pub mod metrics;
pub mod optim;
pub mod schedule;
pub mod trainer;

pub use checkpoint::{load_weights, save_json, save_weights, write_atomic};
pub use data::{find_shakespeare, Batch, ByteDataset, Corpus};
pub use metrics::{EvalRecord, MetricsWriter, MoeLayerMetrics};
pub use optim::{AdamW, AdamWConfig};
pub use schedule::LrSchedule;
pub use trainer::{EvalStats, StepStats, TrainConfig, Trainer};
