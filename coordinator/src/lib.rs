//! The coordinator as a library: a training run is a [`TrainPlan`] (flags checked against each
//! other once) given to [`run`], which serves the workers on a listener until the run ends or
//! a shutdown future resolves, and returns its [`Summary`]. The `coordinator` binary parses
//! the command line and calls [`cmd::run`]; `experiment` builds plans of its own.

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
mod report;
mod run_lock;
mod rundir;
mod service;
mod sharding;

pub use plan::TrainPlan;
pub use run::run;
pub use summary::Summary;
