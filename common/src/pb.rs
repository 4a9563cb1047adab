//! The generated gRPC types and stubs of `proto/smalltext.proto` (package smalltext.v1).

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("smalltext.v1");

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = ProtocolVersion::V2 as u32;

/// Largest gRPC message either side accepts (a checkpoint upload is the largest).
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;
