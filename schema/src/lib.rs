//! CartWise domain model shared by every crate: ids, phone numbers, time, states.
//!
//! Architecture Invariant: this crate does no I/O and depends on no runtime.
