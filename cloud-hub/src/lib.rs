//! CartWise cloud hub: Postgres store, seeding, HTTP API. The `cartwise-hub` binary wires these.
//!
//! Architecture Invariant: the hub keeps no state outside Postgres, so several hub processes can
//! share one database.

pub mod admission;
pub mod api;
pub mod clock;
pub mod dashboard;
pub mod db;
pub mod docs_store;
pub mod enroll;
pub mod http;
pub mod intents;
pub mod merge;
pub mod metrics;
pub mod mqtt;
pub mod pki;
pub mod project;
pub mod quic;
pub mod seed;
pub mod sync_server;
pub mod tech_audit;
pub mod technicians;
pub mod telemetry;
pub mod users;
pub mod world;
