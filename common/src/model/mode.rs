//! Whether a forward pass trains or infers: every part of the model asks.

/// Training (dropout on, backward recorded) or inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}
