//! The coordinator as a library: a training run is a [`TrainPlan`] (the flags, from the command
//! line, a `--config` file or `experiment`, checked against each other once) given to [`run()`],
//! which serves the workers on a listener until the run ends or a shutdown future resolves,
//! and returns its [`Summary`]. The `coordinator` binary parses the command line and calls
//! [`cmd::run`].
//!
//! The modules, from the command line down:
//! - `cmd/`: a file per subcommand (`train` with `--resume`, `data`, `evaluate`, `predict`,
//!   `experiment/`, `config`), and `command_line` with the whole line's flags;
//! - `cli` (the training flags), `config_file` (`--config`), `class_weights`, `logging`;
//! - `plan`: [`TrainPlan`], every check across flags and what follows from them;
//! - `run/`: a run: `opening` (the run directory, locked; start or continue), `prepare` (data,
//!   encoder, model spec, starting weights), `epochs` (the epoch loop, selection, checkpoints,
//!   early stopping), `gather` (an epoch's reports while watching for lost workers), `finish`
//!   (the test, the summary);
//! - what a run writes: `record` (metrics lines, epoch log), `summary`, `rundir`, `model_dir`;
//! - the workers: `service` (the gRPC service, the only place a `tonic::Status` is made),
//!   `report` and `regroup_call` (what the service hands the run, converted from `pb`), `membership` (regroups),
//!   `backend` (the one choice of collective), `local` (worker processes started here),
//!   `daemons` (worker daemons enrolled), `sharding`, `metrics` (`/metrics`), `run_lock`,
//!   `interrupt`.

pub mod class_weights;
pub mod cli;
pub mod cmd;
pub mod config_file;
pub mod logging;
pub mod plan;
pub mod record;
pub mod run;
pub mod summary;

mod backend;
mod daemons;
mod interrupt;
mod local;
mod membership;
mod metrics;
mod model_dir;
mod regroup_call;
mod report;
mod run_lock;
mod rundir;
mod service;
mod sharding;
mod spool;
mod stored_state;

pub use plan::TrainPlan;
pub use run::run;
pub use summary::Summary;
