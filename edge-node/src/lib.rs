//! CartWise edge node library: the KR-CU16 lock bus (codec, driver, poller), the board
//! simulator, and the technician's bus diagnostics. The binaries are thin shells over this.
//!
//! Without the default `node` feature only the pure decoders of outside bytes are built (the
//! KR-CU16 codec and bus types, the shopper-token parser, the Inforu answer parser), for the
//! fuzz targets.

#[cfg(feature = "node")]
pub mod bus_cli;
#[cfg(feature = "node")]
pub mod clock;
#[cfg(feature = "node")]
pub mod config;
pub mod cu16;
#[cfg(feature = "node")]
pub mod daemon;
#[cfg(feature = "node")]
pub mod engine;
#[cfg(feature = "node")]
pub mod enroll_cli;
#[cfg(feature = "node")]
pub mod identity;
#[cfg(feature = "node")]
pub mod kiosk;
#[cfg(feature = "node")]
pub mod ledger;
#[cfg(feature = "node")]
pub mod live;
#[cfg(feature = "node")]
pub mod outbox;
#[cfg(feature = "node")]
pub mod peers;
#[cfg(feature = "node")]
pub mod run_cli;
#[cfg(feature = "node")]
pub mod shopper;
/// Without `node`, only the shopper-token parser and the Inforu answer parser (for their fuzz
/// targets).
#[cfg(not(feature = "node"))]
pub mod shopper {
    pub mod token;
    pub mod sms {
        mod error;
        pub use error::SmsError;
        pub mod inforu {
            mod answer;
            pub use answer::check_result;
        }
    }
}
#[cfg(feature = "node")]
pub mod bundle_cli;
#[cfg(feature = "node")]
pub mod sim_board;
#[cfg(feature = "node")]
pub mod store;
#[cfg(feature = "node")]
pub mod tech;
#[cfg(feature = "node")]
pub mod tech_session;
#[cfg(feature = "node")]
pub mod timekeeping;
#[cfg(feature = "node")]
pub mod uplink;
