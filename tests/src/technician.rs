//! Technician setup the cross-crate tests share: a technician user with a hub-issued credential
//! stored as `cartwise-tech login` stores it, the identity that credential presents for one
//! branch, a raw technician session with a Pi's LAN listener (a laptop that skips its own check
//! of the Pi, to reach the Pi's), and a signer for bundles forged with the technician's key.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cartwise_cloud_hub::technicians::{self, IssuedCredential};
use cartwise_cloud_hub::users::{self, NewUser, Role as UserRole};
use cartwise_edge_node::config::EdgeConfig;
use cartwise_edge_node::identity::{self, EdgeIdentity};
use cartwise_edge_node::tech::carry::{Carry, Credential, CredentialBranch, CredentialDevice};
use cartwise_schema::{BranchId, ChainId, Clock as _, DeviceId};
use cartwise_sync_core::bundle::BundleSigner;
use cartwise_sync_core::identity::DeviceCredentials;
use cartwise_sync_core::message::TechnicianMessage;
use cartwise_sync_core::message::body::Role;
use cartwise_sync_core::session::{LocalIdentity, capability};
use cartwise_sync_core::{
    CloseReason, Message, Output, Session, SessionConfig, SessionEvent, Side,
};
use rcgen::{CertificateParams, KeyPair, SigningKey};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{Station, trust_any_server_client};

/// How long a raw technician session waits for the Pi's answers.
const ANSWER_WAIT: Duration = Duration::from_secs(20);

/// The wall clock now, Unix milliseconds.
pub fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// A [`Station::start_with`] adjustment: the LAN listener on loopback.
pub fn listening(config: &mut EdgeConfig) {
    config.lan.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
}

/// The address of a station's LAN listener (started with [`listening`]).
pub fn lan_addr(station: &Station) -> String {
    station.edge.as_ref().unwrap().lan.unwrap().to_string()
}

/// The id of the seeded branch `code`.
pub async fn branch_id(pool: &PgPool, code: &str) -> Uuid {
    sqlx::query_scalar("SELECT id FROM branches WHERE branch_code = $1")
        .bind(code)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A technician user of the chain of `branches` (at least one), scoped to them, a key and a
/// credential issued by the hub for 12 hours, stored as `cartwise-tech login` stores them in
/// `home`.
pub async fn technician(
    pool: &PgPool,
    login: &str,
    branches: Vec<Uuid>,
    home: &Path,
) -> (Carry, IssuedCredential, KeyPair) {
    let chain: Uuid = sqlx::query_scalar("SELECT chain_id FROM branches WHERE id = $1")
        .bind(branches[0])
        .fetch_one(pool)
        .await
        .unwrap();
    users::add_user(
        pool,
        &NewUser {
            login: login.into(),
            password: "a long technician password".into(),
            role: UserRole::Technician,
            chain: Some(chain),
            branches,
        },
    )
    .await
    .unwrap();
    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let issued = technicians::issue(pool, login, &csr, Some(12), None, "admin")
        .await
        .unwrap();
    let credential = Credential {
        hub_url: "http://127.0.0.1:1".into(),
        login: login.into(),
        technician_id: issued.technician_id,
        chain_id: ChainId::from_uuid(issued.chain_id),
        issued_at_ms: issued.issued_at_ms,
        not_after_ms: issued.not_after_ms,
        branches: issued
            .branches
            .iter()
            .map(|branch| CredentialBranch {
                branch_id: BranchId::from_uuid(branch.branch_id),
                code: branch.code.clone(),
                name: branch.name.clone(),
                cert_pem: branch.cert_pem.clone(),
                devices: branch
                    .devices
                    .iter()
                    .map(|device| CredentialDevice {
                        device_id: DeviceId::from_uuid(device.device_id),
                        name: device.name.clone(),
                        last_ip: device.last_ip.clone(),
                    })
                    .collect(),
            })
            .collect(),
        chain_ca_pem: issued.chain_ca_pem.clone(),
        platform_ca_pem: issued.platform_ca_pem.clone(),
    };
    let carry = Carry::open(home).unwrap();
    carry
        .save_login(&credential, &key.serialize_pem(), "token")
        .unwrap();
    (carry, issued, key)
}

/// The identity `carry`'s credential presents for `branch`.
pub fn identity_for(carry: &Carry, branch: BranchId) -> EdgeIdentity {
    let credential = carry.credential().unwrap();
    EdgeIdentity {
        credentials: DeviceCredentials::from_pem(
            credential.cert_pem_for(branch).unwrap(),
            &carry.key_pem().unwrap(),
            &credential.chain_ca_pem,
            &credential.platform_ca_pem,
        )
        .unwrap(),
        hub: String::new(),
    }
}

/// Signs bundles with a technician's own key (a forgery: only the hub's and devices' keys
/// sign bundles a Pi or the hub accepts).
pub struct KeySigner(pub KeyPair);

impl BundleSigner for KeySigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        self.0.sign(message).map_err(|e| e.to_string())
    }
}

/// A raw technician session with a Pi's LAN listener, presenting `who` and accepting any Pi.
pub struct TechLink {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    session: Session,
    clock: cartwise_edge_node::clock::SystemClock,
    answers: usize,
    /// Every event seen but `Closed`, in order.
    pub events: Vec<SessionEvent>,
    /// Whether the Pi admitted the session.
    pub established: bool,
    /// How the session ended, once it has.
    pub closed: Option<CloseReason>,
}

impl TechLink {
    /// Connects to the Pi at `address` as `who` and runs the session until the Pi admits or
    /// refuses it.
    pub async fn open(who: &EdgeIdentity, address: &str) -> TechLink {
        let endpoint = identity::client_endpoint().unwrap();
        let conn = identity::connect(
            &endpoint,
            address,
            trust_any_server_client(who),
            identity::LAN_SERVER_NAME,
        )
        .await
        .unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        let me = who.peer();
        let clock = cartwise_edge_node::clock::SystemClock::new();
        let mut config = SessionConfig::new(Side::Initiator);
        config.capabilities.push(capability::TECHNICIAN.to_owned());
        let session = Session::new(
            config,
            LocalIdentity {
                role: Role::Technician,
                chain: me.chain,
                branch: Some(me.branch),
                device: None,
                schema_version: 1,
            },
            clock.read(),
        );
        let mut link = TechLink {
            conn,
            send,
            recv,
            session,
            clock,
            answers: 0,
            events: Vec::new(),
            established: false,
            closed: None,
        };
        link.pump(|link| link.established).await;
        link
    }

    /// Sends `messages` (when the session was admitted) and reads until `answers` more
    /// answers (`BusReply`, `BundleResult`, `Error`) arrived, the session ended, or the wait
    /// ran out; returns the events seen meanwhile.
    pub async fn request(&mut self, messages: Vec<Message>, answers: usize) -> Vec<SessionEvent> {
        let start = self.events.len();
        if self.established && self.closed.is_none() {
            for message in messages {
                self.session.send(message).unwrap();
            }
        }
        let target = self.answers + answers;
        self.pump(|link| link.answers >= target).await;
        self.events[start..].to_vec()
    }

    /// Reads until `seen` holds of the events so far, the session ended, or the wait ran out.
    pub async fn until(&mut self, seen: impl Fn(&[SessionEvent]) -> bool) {
        self.pump(|link| seen(&link.events)).await;
    }

    /// Ends the connection.
    pub fn close(self) {
        self.conn.close(0u32.into(), b"done");
    }

    async fn pump(&mut self, done: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
        let mut buf = vec![0u8; 65536];
        loop {
            while let Some(output) = self.session.poll_output() {
                match output {
                    Output::Send(bytes) => {
                        let _ = self.send.write_all(&bytes).await;
                    }
                    Output::Event(SessionEvent::Closed(reason)) => self.closed = Some(reason),
                    Output::Event(event) => {
                        self.established |= matches!(event, SessionEvent::Established { .. });
                        if matches!(
                            event,
                            SessionEvent::PeerError(_)
                                | SessionEvent::Technician(
                                    TechnicianMessage::BundleResult(_)
                                        | TechnicianMessage::BusReply(_)
                                )
                        ) {
                            self.answers += 1;
                        }
                        self.events.push(event);
                    }
                }
            }
            if self.closed.is_some() || done(self) {
                return;
            }
            tokio::select! {
                read = self.recv.read(&mut buf) => match read {
                    Ok(Some(n)) => {
                        let _ = self.session.handle_bytes(self.clock.read(), &buf[..n]);
                    }
                    _ => return,
                },
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    }
}

/// One raw technician session presenting `who` at `address`: sends `send` once admitted and
/// waits for `expect` answers; returns how the session ended (if it did) and the events seen.
pub async fn raw_session(
    who: &EdgeIdentity,
    address: &str,
    send: Vec<Message>,
    expect: usize,
) -> (Option<CloseReason>, Vec<SessionEvent>) {
    let mut link = TechLink::open(who, address).await;
    link.request(send, expect).await;
    let closed = link.closed.clone();
    let events = std::mem::take(&mut link.events);
    link.close();
    (closed, events)
}
