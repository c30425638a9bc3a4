//! CartWise edge node library: the KR-CU16 lock bus (codec, driver, poller), the board
//! simulator, and the technician's bus diagnostics. The binaries are thin shells over this.

pub mod bus_cli;
pub mod clock;
pub mod config;
pub mod cu16;
pub mod daemon;
pub mod engine;
pub mod kiosk;
pub mod ledger;
pub mod live;
pub mod run_cli;
pub mod shopper;
pub mod sim_board;
pub mod store;
pub mod timekeeping;
