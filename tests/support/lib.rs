//! Helpers shared by the integration tests: where the binaries and the bundled data are.
