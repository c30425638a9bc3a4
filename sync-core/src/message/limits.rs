//! The limits every decoded message must respect, checked after decoding and before
//! encoding, so a body that fits in a frame still cannot make a receiver hold unbounded lists.

use super::Message;
use super::body::{
    BUNDLE_BYTES_MAX, BUS_COMMAND_LEN_MAX, BUS_REPLY_JSON_LEN_MAX, CAPABILITIES_MAX,
    CAPABILITY_LEN_MAX, DOCS_PER_MESSAGE_MAX, HEADS_PER_DOC_MAX, LEDGER_ACK_RENTALS_MAX,
    REASON_LEN_MAX, SIGNATURE_LEN_MAX, SIGNER_CERT_LEN_MAX, TELEMETRY_DATA_JSON_LEN_MAX,
    TELEMETRY_EVENTS_MAX, TELEMETRY_KIND_LEN_MAX,
};

/// A field longer than its limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field {field} has length {len}, more than the limit of {max}")]
pub struct LimitError {
    /// The field, e.g. `telemetry.events`.
    pub field: &'static str,
    /// Its length (items or bytes).
    pub len: usize,
    /// The limit.
    pub max: usize,
}

/// `Err` if `len > max`.
fn at_most(field: &'static str, len: usize, max: usize) -> Result<(), LimitError> {
    if len > max {
        return Err(LimitError { field, len, max });
    }
    Ok(())
}

/// Checks a capability list.
fn capabilities(field: &'static str, list: &[String]) -> Result<(), LimitError> {
    at_most(field, list.len(), CAPABILITIES_MAX)?;
    list.iter()
        .try_for_each(|cap| at_most(field, cap.len(), CAPABILITY_LEN_MAX))
}

/// Checks every limit of `message`.
pub(super) fn check(message: &Message) -> Result<(), LimitError> {
    match message {
        Message::Hello(hello) => capabilities("hello.capabilities", &hello.capabilities),
        Message::Welcome(welcome) => capabilities("welcome.capabilities", &welcome.capabilities),
        Message::Refused(refused) => {
            at_most("refused.reason", refused.reason.len(), REASON_LEN_MAX)
        }
        Message::Error(error) => at_most("error.reason", error.reason.len(), REASON_LEN_MAX),
        Message::Bye(bye) => at_most("bye.reason", bye.reason.len(), REASON_LEN_MAX),
        Message::Docs(docs) => {
            at_most("docs.docs", docs.docs.len(), DOCS_PER_MESSAGE_MAX)?;
            docs.docs
                .iter()
                .try_for_each(|doc| at_most("docs.heads", doc.heads.len(), HEADS_PER_DOC_MAX))
        }
        Message::SignedHeads(signed) => {
            at_most("signed_heads.heads", signed.heads.len(), HEADS_PER_DOC_MAX)?;
            at_most(
                "signed_heads.signature",
                signed.signature.len(),
                SIGNATURE_LEN_MAX,
            )?;
            at_most(
                "signed_heads.signer_cert",
                signed.signer_cert.as_ref().map_or(0, Vec::len),
                SIGNER_CERT_LEN_MAX,
            )
        }
        Message::Bundle(bundle) => at_most("bundle.bytes", bundle.bytes.len(), BUNDLE_BYTES_MAX),
        Message::BundleResult(result) => at_most(
            "bundle_result.message",
            result.message.len(),
            REASON_LEN_MAX,
        ),
        Message::BusRequest(request) => at_most(
            "bus_request.command",
            request.command.len(),
            BUS_COMMAND_LEN_MAX,
        ),
        Message::BusReply(reply) => {
            at_most("bus_reply.message", reply.message.len(), REASON_LEN_MAX)?;
            at_most(
                "bus_reply.body_json",
                reply.body_json.len(),
                BUS_REPLY_JSON_LEN_MAX,
            )
        }
        Message::LedgerAck(ack) => at_most(
            "ledger_ack.rentals",
            ack.rentals.len(),
            LEDGER_ACK_RENTALS_MAX,
        ),
        Message::Telemetry(telemetry) => {
            at_most(
                "telemetry.events",
                telemetry.events.len(),
                TELEMETRY_EVENTS_MAX,
            )?;
            telemetry.events.iter().try_for_each(|event| {
                at_most("telemetry.kind", event.kind.len(), TELEMETRY_KIND_LEN_MAX)?;
                at_most(
                    "telemetry.data_json",
                    event.data_json.len(),
                    TELEMETRY_DATA_JSON_LEN_MAX,
                )
            })
        }
        Message::Busy(_)
        | Message::Heartbeat(_)
        | Message::HeartbeatAck(_)
        | Message::Sync(_)
        | Message::SyncIdle(_)
        | Message::TelemetryAck(_)
        | Message::Unknown { .. } => Ok(()),
    }
}
