//! common's integration tests, one module per concern, linked into one binary (see the root
//! tests/main.rs for why). Run one with `cargo test --release -p common --test integration <module>::`.

mod support;

mod adam;
mod class_weights;
mod encoder;
mod encoder_trainable;
mod finetune_model;
mod finetune_pinned;
mod held_on_device;
mod lstm_gradcheck;
mod multitask;
mod padding;
mod pipeline;
mod sparse_embedding;
mod step;
mod tasks;
mod training;
