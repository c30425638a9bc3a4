//! The Pi's side of a technician's LAN session: a technician's laptop dials the LAN listener
//! (`[lan] listen`, the same QUIC endpoint and ALPN as branch peers) with its credential for
//! this branch, and the Pi presents its device certificate.
//!
//! The handshake admits a technician certificate of this chain's CA whatever its branch and
//! validity (`cartwise_sync_core::identity` checks the signature); this module then checks it
//! with `verify_credential` against the Pi's corrected clock, so an expired credential or one
//! for another branch is refused with a `Refused` that says why, and every session, allowed or
//! refused, is recorded in the technician log (which reaches the hub's audit log with the
//! device's facts) with the chain and branch the credential names. A credential of another
//! chain (admitted unverified at the handshake) is refused `WrongChain` and recorded too, at
//! most `UNVERIFIED_REFUSALS_PER_HOUR_MAX` an hour (`engine::techlog`). The credential's
//! expiry is checked again on every request of a session (a bundle, a bus command): one that
//! expired mid-session is answered with a refusal naming the expiry and what to do, recorded,
//! and the session ends.
//!
//! An admitted session runs the sync-core `Session` with capability `technician`. The Pi sends
//! its signed facts bundle as soon as the session is established; a `Bundle` from the laptop
//! must be the hub's intents bundle for this branch (`Engine::import_intents_bundle`: chain CA
//! signature, scope, sequence, hub authority on every change) and is answered by a
//! `BundleResult`, followed by a fresh facts bundle when it applied something (so the intents'
//! outcomes ride back on the same visit); `BusRequest`s run on the engine's bus (`Engine::technician_bus`; an unlock
//! only when confirmed). A technician never syncs documents: `Docs` and `Sync` are refused
//! with `Error{AUTHORITY}` and logged, so a laptop can relay facts but never author them.

use std::sync::Arc;
use std::time::Duration;

use cartwise_schema::Clock;
use cartwise_sync_core::bundle::BundleSigner;
use cartwise_sync_core::identity::{PeerIdentity, Role as CertRole};
use cartwise_sync_core::message::TechnicianMessage;
use cartwise_sync_core::message::body::{
    Bundle, BundleResult, BusCommand, BusReply, ErrorBody, Role,
};
use cartwise_sync_core::session::{LocalIdentity, capability};
use cartwise_sync_core::technician::{CredentialError, TechnicianCredential, verify_credential};
use cartwise_sync_core::{
    Message, Output, Session, SessionConfig, SessionEvent, Side, error_code, refusal,
};
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;

use crate::engine::Engine;
use crate::engine::techlog::TechAction;
use crate::identity::EdgeIdentity;
use crate::store::StoreError;

/// Bytes read from the stream at once.
const READ_CHUNK: usize = 64 * 1024;
/// How long the laptop has to open its stream after the handshake.
const STREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest reason sent in a `Refused`, `Error` or `BundleResult` (the protocol's limit).
const REASON_MAX: usize = cartwise_sync_core::message::body::REASON_LEN_MAX;

/// Why a technician session ended badly.
#[derive(Debug, thiserror::Error)]
pub enum TechSessionError {
    /// The QUIC connection or stream failed.
    #[error("connection: {0}")]
    Connection(String),
    /// The credential was refused (already logged and told to the laptop).
    #[error("technician refused: {0}")]
    Refused(String),
    /// The protocol session failed.
    #[error(transparent)]
    Session(#[from] cartwise_sync_core::SessionError),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Signs bundles with this device's key (the key of its device certificate).
pub struct DeviceSigner(rcgen::KeyPair);

impl DeviceSigner {
    /// The signer of an enrolled identity.
    pub fn new(identity: &EdgeIdentity) -> Result<Self, String> {
        rcgen::KeyPair::try_from(&identity.credentials.key)
            .map(DeviceSigner)
            .map_err(|error| format!("the device key cannot sign: {error}"))
    }
}

impl BundleSigner for DeviceSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        rcgen::SigningKey::sign(&self.0, message).map_err(|error| error.to_string())
    }
}

/// The connection's verified technician certificate (DER) and identity, if the peer presented
/// a technician credential.
pub fn technician_peer(conn: &quinn::Connection) -> Option<(Vec<u8>, PeerIdentity)> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    let der = certs.first()?.as_ref().to_vec();
    let peer = PeerIdentity::from_cert_der(&der).ok()?;
    (peer.role == CertRole::Technician).then_some((der, peer))
}

fn clip(mut text: String) -> String {
    if text.len() > REASON_MAX {
        let mut end = REASON_MAX - 3;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

fn refusal_code(error: &CredentialError) -> u16 {
    match error {
        CredentialError::WrongBranch { .. } | CredentialError::WrongChain => refusal::SCOPE,
        _ => refusal::IDENTITY,
    }
}

/// Serves one technician connection (accepted by the LAN listener) until it ends.
pub async fn serve(
    engine: Arc<Engine>,
    clock: Arc<dyn Clock>,
    identity: EdgeIdentity,
    conn: quinn::Connection,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), TechSessionError> {
    let (cert_der, peer) = technician_peer(&conn)
        .ok_or_else(|| TechSessionError::Connection("no technician certificate".into()))?;
    let technician = Some(*peer.device.as_uuid());
    let me = identity.peer();
    // The enrolled identity names the chain whose hub actor may write intents.
    engine.set_chain(me.chain);
    let now_ms = engine.corrected_now_ms().await?;
    let verdict = verify_credential(
        &cert_der,
        identity.credentials.chain_ca.as_ref(),
        me.branch,
        now_ms,
    );
    let remote = conn.remote_address();
    match &verdict {
        Ok(credential) => {
            engine
                .log_technician(
                    technician,
                    TechAction::LanSession,
                    true,
                    format!(
                        "LAN session from {remote}, credential {} valid until {} ms",
                        credential.serial_hex, credential.not_after_ms
                    ),
                )
                .await?;
        }
        Err(error) => {
            let detail = format!(
                "LAN session from {remote} refused, credential of chain {} branch {}: {error}",
                peer.chain, peer.branch
            );
            if *error == CredentialError::WrongChain {
                engine
                    .log_unverified_technician(technician, TechAction::LanSession, detail)
                    .await?;
            } else {
                engine
                    .log_technician(technician, TechAction::LanSession, false, detail)
                    .await?;
            }
        }
    }
    let (mut send, mut recv) = tokio::time::timeout(STREAM_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| TechSessionError::Connection("no stream opened".into()))?
        .map_err(|e| TechSessionError::Connection(e.to_string()))?;
    let local = LocalIdentity {
        role: Role::Device,
        chain: me.chain,
        branch: Some(me.branch),
        device: Some(me.device),
        schema_version: cartwise_sync_core::facts::DEVICE_DOC_SCHEMA as u32,
    };
    let mut config = SessionConfig::new(Side::Responder);
    config.capabilities.push(capability::TECHNICIAN.to_owned());
    let mut session = Session::new(config, local, clock.read());
    let context = Context {
        engine: &engine,
        identity: &identity,
        cert_der: identity.credentials.cert.as_ref().to_vec(),
        peer,
        technician,
        verdict: verdict.map_err(|error| (refusal_code(&error), clip(error.to_string()))),
    };
    let mut buf = vec![0u8; READ_CHUNK];
    let mut refused = None;
    loop {
        while let Some(output) = session.poll_output() {
            match output {
                Output::Send(bytes) => send
                    .write_all(&bytes)
                    .await
                    .map_err(|e| TechSessionError::Connection(e.to_string()))?,
                Output::Event(event) => {
                    if let Some(reason) = context.on_event(&mut session, &*clock, event).await? {
                        refused = Some(reason);
                    }
                }
            }
        }
        if session.is_closed() {
            let _ = send.finish();
            if refused.is_some() {
                // Let the laptop read the `Refused` before the connection closes.
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            }
            conn.close(0u32.into(), b"done");
            return match refused {
                Some(reason) => Err(TechSessionError::Refused(reason)),
                None => Ok(()),
            };
        }
        let now = clock.read();
        let wait = session
            .poll_timeout()
            .map(|deadline| Duration::from_millis(deadline.saturating_sub(now.mono.get())))
            .unwrap_or(Duration::from_secs(60));
        tokio::select! {
            read = recv.read(&mut buf) => match read {
                Ok(Some(n)) => session.handle_bytes(clock.read(), &buf[..n])?,
                Ok(None) => {
                    conn.close(0u32.into(), b"done");
                    return Ok(());
                }
                Err(error) => return Err(TechSessionError::Connection(error.to_string())),
            },
            () = tokio::time::sleep(wait) => session.handle_timeout(clock.read())?,
            () = wait_stopped(&mut stopped) => {
                session.close("the node is stopping");
                while let Some(Output::Send(bytes)) = session.poll_output() {
                    let _ = send.write_all(&bytes).await;
                }
                let _ = send.finish();
                conn.close(0u32.into(), b"stopping");
                return Ok(());
            }
        }
    }
}

async fn wait_stopped(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// What the session's event handler needs.
struct Context<'a> {
    engine: &'a Engine,
    identity: &'a EdgeIdentity,
    cert_der: Vec<u8>,
    peer: PeerIdentity,
    technician: Option<uuid::Uuid>,
    /// The credential's verdict: a refusal code and reason, or the verified credential.
    verdict: Result<TechnicianCredential, (u16, String)>,
}

/// Why a request of an admitted session is refused because the credential expired since the
/// session started (the Pi's corrected clock is past its end of validity).
fn expired_mid_session(credential: &TechnicianCredential, now_ms: i64) -> Option<String> {
    (now_ms > credential.not_after_ms).then(|| {
        clip(format!(
            "{} (it expired during this session; the Pi ends it)",
            CredentialError::Expired {
                at: credential.not_after_ms
            }
        ))
    })
}

impl Context<'_> {
    /// Acts on one event; returns a refusal's reason when the session was refused.
    async fn on_event(
        &self,
        session: &mut Session,
        clock: &dyn Clock,
        event: SessionEvent,
    ) -> Result<Option<String>, TechSessionError> {
        match event {
            SessionEvent::PeerHello(hello) => {
                if let Err((code, reason)) = &self.verdict {
                    let _ = session.refuse(*code, reason);
                    return Ok(Some(reason.clone()));
                }
                if hello.role != Role::Technician || hello.chain != self.peer.chain {
                    let reason = "the Hello does not match the technician certificate".to_owned();
                    let _ = session.refuse(refusal::IDENTITY, &reason);
                    return Ok(Some(reason));
                }
                session.admit(clock.read())?;
            }
            SessionEvent::Established { capabilities, .. } => {
                if !capabilities.iter().any(|c| c == capability::TECHNICIAN) {
                    session.close("the laptop does not speak the technician session");
                    return Ok(None);
                }
                self.send_facts(session).await?;
            }
            SessionEvent::Technician(TechnicianMessage::Bundle(bundle)) => {
                if let Some(reason) = self.expired(TechAction::BundleImport).await? {
                    let seq = cartwise_sync_core::bundle::decode_bundle(&bundle.bytes)
                        .map(|signed| signed.unverified_body().seq)
                        .unwrap_or(0);
                    session.send(Message::BundleResult(BundleResult {
                        seq,
                        applied: false,
                        message: clip(format!("refused: {reason}")),
                    }))?;
                    session.close(&reason);
                    return Ok(Some(reason));
                }
                let result = match self
                    .engine
                    .import_intents_bundle(
                        &bundle.bytes,
                        self.identity.credentials.chain_ca.as_ref(),
                        self.technician,
                    )
                    .await
                {
                    Ok(imported) => {
                        let result = BundleResult {
                            seq: imported.seq,
                            applied: imported.applied,
                            message: clip(imported.message),
                        };
                        if imported.applied {
                            // The answers to the intents just run ride back on this visit.
                            session.send(Message::BundleResult(result))?;
                            self.send_facts(session).await?;
                            return Ok(None);
                        }
                        result
                    }
                    Err(error) => BundleResult {
                        seq: cartwise_sync_core::bundle::decode_bundle(&bundle.bytes)
                            .map(|signed| signed.unverified_body().seq)
                            .unwrap_or(0),
                        applied: false,
                        message: clip(format!("refused: {error}")),
                    },
                };
                session.send(Message::BundleResult(result))?;
            }
            SessionEvent::Technician(TechnicianMessage::BusRequest(request)) => {
                let action = match request.command() {
                    Ok(BusCommand::Scan) => TechAction::BusScan,
                    Ok(BusCommand::Unlock { .. }) => TechAction::BusUnlock,
                    Ok(BusCommand::Status { .. }) | Err(_) => TechAction::BusStatus,
                };
                if let Some(reason) = self.expired(action).await? {
                    session.send(Message::BusReply(BusReply {
                        id: request.id,
                        ok: false,
                        body_json: String::new(),
                        message: reason.clone(),
                    }))?;
                    session.close(&reason);
                    return Ok(Some(reason));
                }
                let reply = self
                    .engine
                    .technician_bus(request.id, request.command(), self.technician)
                    .await?;
                session.send(Message::BusReply(reply))?;
            }
            SessionEvent::Technician(_) => {
                let _ = session.send(Message::Error(ErrorBody {
                    code: error_code::UNEXPECTED,
                    reason: "a Pi answers bundles and bus requests; it expects no results".into(),
                    doc: None,
                }));
            }
            SessionEvent::Docs(_)
            | SessionEvent::SyncReceived(_)
            | SessionEvent::SignedHeads(_) => {
                let reason = "a technician's laptop relays signed bundles; it may not sync or write documents";
                self.engine
                    .log_technician(
                        self.technician,
                        TechAction::LanSession,
                        false,
                        format!("document sync refused: {reason}"),
                    )
                    .await?;
                let _ = session.send(Message::Error(ErrorBody {
                    code: error_code::AUTHORITY,
                    reason: reason.into(),
                    doc: None,
                }));
            }
            SessionEvent::PeerViolation { code, reason } => {
                tracing::warn!(technician = ?self.technician, code, %reason, "a technician's laptop broke the protocol");
            }
            SessionEvent::Closed(reason) => {
                tracing::info!(technician = ?self.technician, ?reason, "technician session closed");
            }
            _ => {}
        }
        Ok(None)
    }

    /// The refusal of a request (`action`) when the credential expired since the session
    /// started, recorded in the technician log.
    async fn expired(&self, action: TechAction) -> Result<Option<String>, TechSessionError> {
        let Ok(credential) = &self.verdict else {
            // Never admitted: the session was refused at its Hello.
            return Ok(Some(clip("the technician credential was refused".into())));
        };
        let now_ms = self.engine.corrected_now_ms().await?;
        let Some(reason) = expired_mid_session(credential, now_ms) else {
            return Ok(None);
        };
        self.engine
            .log_technician(
                self.technician,
                action,
                false,
                format!("refused mid-session: {reason}"),
            )
            .await?;
        Ok(Some(reason))
    }

    /// Sends this device's signed facts bundle.
    async fn send_facts(&self, session: &mut Session) -> Result<(), TechSessionError> {
        let signer = DeviceSigner::new(self.identity).map_err(TechSessionError::Refused)?;
        match self
            .engine
            .export_facts_bundle(
                self.identity.peer().chain,
                self.cert_der.clone(),
                &signer,
                self.technician,
            )
            .await
        {
            Ok(bytes) => session.send(Message::Bundle(Bundle { bytes }))?,
            Err(error) => {
                tracing::error!(%error, "cannot build the facts bundle for a technician");
                let _ = session.send(Message::Error(ErrorBody {
                    code: error_code::SYNC_FAILED,
                    reason: clip(format!("this Pi could not build its facts bundle: {error}")),
                    doc: None,
                }));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(not_after_ms: i64) -> TechnicianCredential {
        TechnicianCredential {
            chain: cartwise_schema::ChainId::from_uuid(uuid::Uuid::from_u128(1)),
            branch: cartwise_schema::BranchId::from_uuid(uuid::Uuid::from_u128(2)),
            technician: uuid::Uuid::from_u128(3),
            not_before_ms: 0,
            not_after_ms,
            serial_hex: "01".into(),
        }
    }

    #[test]
    fn a_request_after_the_credentials_end_is_refused_naming_the_expiry_and_what_to_do() {
        let end = 1_700_000_000_000;
        assert_eq!(expired_mid_session(&credential(end), end - 1), None);
        assert_eq!(expired_mid_session(&credential(end), end), None);
        let reason = expired_mid_session(&credential(end), end + 1).unwrap();
        assert!(
            reason.contains("expired at 2023-11-14 22:13:20 UTC"),
            "{reason}"
        );
        assert!(reason.contains("cartwise-tech login"), "{reason}");
        assert!(reason.contains("during this session"), "{reason}");
        assert!(reason.len() <= REASON_MAX);
    }
}
