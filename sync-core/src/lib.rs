//! CartWise sync protocol, with no I/O.
//!
//! Architecture Invariant: no sockets, no tokio, no clocks, no ambient randomness.
