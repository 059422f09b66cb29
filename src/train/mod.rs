//! Training: the [`Task`] seam (a model and its data), the [`Trainer`] (one step: sample → loss →
//! [`Objective`] → backward → clip → read back → guard → update; evaluation; checkpoints), AdamW
//! with inspectable state, the learning-rate schedule, metrics, what a checkpoint holds and how a
//! run resumes ([`RunFolder`]), and the loop ([`run`]).

pub(crate) mod checkpoint;
pub(crate) mod config;
pub(crate) mod metrics;
pub(crate) mod objective;
pub(crate) mod optim;
pub(crate) mod record;
pub(crate) mod run;
pub(crate) mod run_config;
pub(crate) mod run_folder;
pub(crate) mod run_settings;
pub(crate) mod schedule;
pub(crate) mod settings;
pub(crate) mod stats;
pub(crate) mod task;
pub(crate) mod trainer;

pub use checkpoint::{CheckpointMeta, TrainerState, CHECKPOINT_FORMAT};
pub use config::TrainConfig;
pub use metrics::{EvalRecord, MetricsWindow, MetricsWriter};
pub use objective::Objective;
pub use optim::{AdamW, AdamWConfig};
pub use record::{current_commit, EvalPoint, RunRecord};
pub use run::{run, Observer, RunOptions, Silent};
pub use run_config::RunConfig;
pub use run_folder::{RunFolder, RunStart};
pub use run_settings::{GivenSettings, ResolvedSettings, RunSettings};
pub use schedule::LrSchedule;
pub use settings::{Section, Setting, SETTINGS};
pub use stats::{EvalStats, MoeLayerMetrics, StepStats};
pub use task::{SpanCorruptionTask, Task, TaskLoss};
pub use trainer::Trainer;
