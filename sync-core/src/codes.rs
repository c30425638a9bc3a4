//! The numeric codes of `Refused` and `Error` messages. Like message tags, a released code
//! keeps its meaning forever; a receiver treats a code it does not know as "other".

/// Codes of a `Refused` message: why a responder will not run the session.
pub mod refusal {
    /// The peer's major protocol version differs.
    pub const VERSION: u16 = 1;
    /// The `Hello` identity disagrees with the mTLS certificate.
    pub const IDENTITY: u16 = 2;
    /// The certificate's device is unknown, revoked or not enrolled.
    pub const NOT_ENROLLED: u16 = 3;
    /// The peer belongs to another chain or branch than this node serves.
    pub const SCOPE: u16 = 4;
    /// The peer's document schema version is not supported.
    pub const SCHEMA: u16 = 5;
    /// The peer broke the handshake (a message before `Hello`, a second `Hello`).
    pub const PROTOCOL: u16 = 6;
}

/// Codes of an `Error` message: something about one message went wrong; the session goes on
/// (until [`crate::session::VIOLATIONS_MAX`] violations, then it closes).
pub mod error_code {
    /// Changes outside the writer's authority were refused for the named document.
    pub const AUTHORITY: u16 = 1;
    /// The peer is not entitled to the named document.
    pub const NOT_ENTITLED: u16 = 2;
    /// A message did not decode (envelope or body).
    pub const MALFORMED: u16 = 3;
    /// A message broke a size or count limit.
    pub const LIMIT: u16 = 4;
    /// A message is not allowed in the session's state, from the peer's role, or without
    /// the capability that introduces it; or its kind is unknown.
    pub const UNEXPECTED: u16 = 5;
    /// The peer sends faster than allowed (e.g. heartbeats).
    pub const FLOOD: u16 = 6;
    /// The named document's sync failed on this side (e.g. Automerge refused to apply).
    pub const SYNC_FAILED: u16 = 7;
    /// Too many violations: the session closes after this error.
    pub const TOO_MANY_VIOLATIONS: u16 = 8;
}
