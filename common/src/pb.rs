//! The generated gRPC types and stubs of `proto/smalltext.proto` (package smalltext.v1).

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("smalltext.v1");

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = ProtocolVersion::V3 as u32;

/// Largest gRPC message either side accepts. Weights and optimizer state, which grow with the
/// model, never travel in one message but in chunks of at most
/// [`crate::state_transfer::CHUNK_BYTES`]; what is left that grows is the vocabulary in the
/// join reply and a step's examples.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;
