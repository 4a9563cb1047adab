//! The integration tests, one module per concern, linked into one binary: each binary links
//! Candle, tokenizers and tonic whole, so one per file cost CI gigabytes of disk and minutes of
//! linking. Run one concern with `cargo test --release --test integration <module>::`.

mod backend_choice;
mod cluster;
mod daemon;
mod data_cli;
mod encoder_cli;
mod experiment_cli;
mod figures;
mod finetune_cli;
mod large_state;
mod library;
mod membership;
mod model_format;
mod model_integrity;
mod multitask_cli;
mod netns;
mod observability;
mod resume;
mod run_dir;
mod secrets;
mod signals;
mod small_refusals;
mod strangers;
mod tls;
mod train_cli;
mod wire;
