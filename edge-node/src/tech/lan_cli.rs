//! `cartwise-tech` commands that talk to Pis on the branch LAN: the configured and hub-reported
//! addresses (`devices`, `devices add`), a reachability probe (`discover`), the technician
//! session (`sync`: the hub's intents bundle to the Pi, the Pi's facts bundle to the laptop)
//! and the lock bus through the same session (`remote-bus`).
//!
//! A session is QUIC with mutual TLS on the Pi's LAN listener: the laptop presents its
//! credential for a branch, and accepts the Pi only if its certificate chains to the chain CA
//! of the credential and names that branch. With several branches in the credential, each is
//! tried in turn; a Pi of another branch fails the laptop's own check before the laptop's
//! certificate is sent, so the Pi records nothing for it.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use cartwise_schema::{BranchId, Clock as _};
use cartwise_sync_core::bundle::decode_bundle;
use cartwise_sync_core::identity::{DeviceCredentials, PeerIdentity};
use cartwise_sync_core::message::body::{Bundle, BundleResult, Role};
use cartwise_sync_core::message::{BusCommand, BusReply, BusRequest, TechnicianMessage};
use cartwise_sync_core::session::{LocalIdentity, capability};
use cartwise_sync_core::{
    CloseReason, Message, Output, Session, SessionConfig, SessionEvent, Side,
};
use serde::{Deserialize, Serialize};

use super::carry::{Carry, Credential, resolve_home};
use super::ui::{Progress, Summary};
use crate::cu16::{BoardAddress, BoardStatus, LockBits};
use crate::identity::{self, EdgeIdentity, LAN_SERVER_NAME};

/// The configured addresses file in the home directory.
pub const DEVICES_FILE: &str = "devices.toml";
/// Most configured addresses.
pub const DEVICES_MAX: usize = 256;
/// How long one whole LAN operation may take.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a probe may take per address.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read from the stream at once.
const READ_CHUNK: usize = 64 * 1024;

/// The home directory option every command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct HomeArg {
    /// The laptop's data directory (default: $CARTWISE_TECH_HOME, else
    /// ~/.local/share/cartwise-tech).
    #[arg(long, global = true)]
    pub home: Option<PathBuf>,
}

/// Commands that talk to Pis on the branch LAN.
#[derive(Debug, clap::Subcommand)]
pub enum LanCommand {
    /// The Pis this laptop knows: configured addresses and those the hub reported.
    Devices {
        #[command(flatten)]
        home: HomeArg,
        #[command(subcommand)]
        action: Option<DevicesAction>,
    },
    /// Probes every known address with a handshake: which Pi answers, of which branch.
    Discover {
        #[command(flatten)]
        home: HomeArg,
    },
    /// Syncs with one Pi: hands it the hub's intents, takes its facts to push later.
    Sync {
        #[command(flatten)]
        home: HomeArg,
        /// The Pi's LAN listener, HOST:PORT.
        #[arg(long)]
        device: String,
    },
    /// Tests a Pi's lock bus through the authenticated session.
    RemoteBus {
        #[command(flatten)]
        home: HomeArg,
        /// The Pi's LAN listener, HOST:PORT.
        #[arg(long)]
        device: String,
        #[command(subcommand)]
        action: RemoteBusAction,
    },
}

/// `devices` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DevicesAction {
    /// Remembers a Pi's LAN address (HOST:PORT).
    Add {
        /// HOST:PORT of the Pi's LAN listener.
        address: String,
    },
}

/// `remote-bus` subcommands.
#[derive(Debug, Clone, Copy, clap::Subcommand)]
pub enum RemoteBusAction {
    /// Which boards answer.
    Scan,
    /// Hooks and carts of one board.
    Status {
        /// The board address (0-9).
        #[arg(long)]
        board: u8,
    },
    /// Opens one lock (asks for --yes).
    Unlock {
        /// The board address (0-9).
        #[arg(long)]
        board: u8,
        /// The lock (1-16).
        #[arg(long)]
        lock: u8,
        /// Confirms the unlock: without it the Pi refuses.
        #[arg(long)]
        yes: bool,
    },
}

/// Runs one LAN command.
pub async fn run(cmd: LanCommand) -> anyhow::Result<()> {
    match cmd {
        LanCommand::Devices { home, action } => {
            let carry = Carry::open(resolve_home(home.home)?)?;
            match action {
                Some(DevicesAction::Add { address }) => add_device(&carry, &address),
                None => list_devices(&carry),
            }
        }
        LanCommand::Discover { home } => discover(&Carry::open(resolve_home(home.home)?)?).await,
        LanCommand::Sync { home, device } => {
            let carry = Carry::open(resolve_home(home.home)?)?;
            let summary = tokio::time::timeout(OPERATION_TIMEOUT, sync(&carry, &device))
                .await
                .map_err(|_| {
                    anyhow::anyhow!("the sync with {device} did not finish in {OPERATION_TIMEOUT:?}; check the LAN and try again")
                })??;
            summary.print();
            Ok(())
        }
        LanCommand::RemoteBus {
            home,
            device,
            action,
        } => {
            let carry = Carry::open(resolve_home(home.home)?)?;
            let reply =
                tokio::time::timeout(OPERATION_TIMEOUT, remote_bus(&carry, &device, action))
                    .await
                    .map_err(|_| {
                        anyhow::anyhow!("{device} did not answer in {OPERATION_TIMEOUT:?}")
                    })??;
            print!("{}", render_bus_reply(&reply)?);
            Ok(())
        }
    }
}

/// `devices.toml`: the addresses the technician configured.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DevicesFile {
    /// HOST:PORT of Pis' LAN listeners.
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// Reads the configured addresses (none when the file does not exist).
pub fn configured(carry: &Carry) -> anyhow::Result<DevicesFile> {
    let path = carry.home().join(DEVICES_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text)
            .with_context(|| format!("{} is damaged; fix or delete it", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(DevicesFile::default()),
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn add_device(carry: &Carry, address: &str) -> anyhow::Result<()> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("{address:?} is not HOST:PORT (e.g. 192.168.1.20:7410)"))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        bail!("{address:?} is not HOST:PORT (e.g. 192.168.1.20:7410)");
    }
    let mut file = configured(carry)?;
    if file.addresses.iter().any(|known| known == address) {
        println!("{address} is already configured");
        return Ok(());
    }
    if file.addresses.len() >= DEVICES_MAX {
        bail!("{DEVICES_MAX} addresses are configured already; remove some from {DEVICES_FILE}");
    }
    file.addresses.push(address.to_owned());
    let path = carry.home().join(DEVICES_FILE);
    let text = toml::to_string(&file)?;
    let temp = path.with_extension("toml.tmp");
    std::fs::write(&temp, text).with_context(|| format!("cannot write {}", temp.display()))?;
    std::fs::rename(&temp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    println!("added {address}");
    Ok(())
}

fn list_devices(carry: &Carry) -> anyhow::Result<()> {
    let file = configured(carry)?;
    println!("{:<28} {:<10} {:<36} NAME", "ADDRESS", "SOURCE", "DEVICE");
    for address in &file.addresses {
        println!("{address:<28} {:<10} {:<36} -", "configured", "-");
    }
    let reported = carry.credential().ok();
    let mut count = file.addresses.len();
    for branch in reported.iter().flat_map(|c| c.branches.iter()) {
        for device in &branch.devices {
            let address = device.last_ip.clone().unwrap_or_else(|| "-".into());
            println!(
                "{address:<28} {:<10} {:<36} {} ({})",
                "hub",
                device.device_id.to_string(),
                device.name,
                branch.code
            );
            count += 1;
        }
    }
    if count == 0 {
        println!(
            "no Pis known: add one with `cartwise-tech devices add HOST:PORT`, or sign in to get the hub's list"
        );
    }
    Ok(())
}

/// A connected, established technician session with one Pi.
struct Link {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    session: Session,
    clock: crate::clock::SystemClock,
    events: VecDeque<SessionEvent>,
    /// The Pi, as its certificate says.
    pi: PeerIdentity,
    /// The branch whose credential admitted the session.
    branch: BranchId,
}

fn edge_identity(
    credential: &Credential,
    key_pem: &str,
    branch: BranchId,
) -> anyhow::Result<EdgeIdentity> {
    let cert_pem = credential
        .cert_pem_for(branch)
        .ok_or_else(|| anyhow::anyhow!("the credential has no certificate for branch {branch}"))?;
    let credentials = DeviceCredentials::from_pem(
        cert_pem,
        key_pem,
        &credential.chain_ca_pem,
        &credential.platform_ca_pem,
    )
    .context(
        "the credential's certificate or key is unusable; sign in again with `cartwise-tech login`",
    )?;
    Ok(EdgeIdentity {
        credentials,
        hub: String::new(),
    })
}

/// Connects with the credential of each branch in turn until the Pi accepts one.
async fn handshake(
    carry: &Carry,
    address: &str,
) -> anyhow::Result<(
    quinn::Endpoint,
    quinn::Connection,
    PeerIdentity,
    EdgeIdentity,
)> {
    let credential = carry.credential()?;
    let key_pem = carry.key_pem()?;
    if credential.branches.is_empty() {
        bail!("the credential covers no branch; sign in again with `cartwise-tech login`");
    }
    let mut last = None;
    for branch in &credential.branches {
        let identity = edge_identity(&credential, &key_pem, branch.branch_id)?;
        let config = identity::lan_client_config(&identity)?;
        let endpoint = identity::client_endpoint()?;
        match identity::connect(&endpoint, address, config, LAN_SERVER_NAME).await {
            Ok(conn) => {
                let pi = identity::peer_identity(&conn).ok_or_else(|| {
                    anyhow::anyhow!("{address} presented no verifiable device certificate")
                })?;
                return Ok((endpoint, conn, pi, identity));
            }
            Err(error) => last = Some(error),
        }
    }
    match last {
        Some(error) => Err(anyhow::anyhow!(
            "cannot open a session with {address}: {error}; check the address, that the Pi's LAN listener runs, and that the credential covers its branch"
        )),
        None => bail!("no credential to connect with"),
    }
}

impl Link {
    async fn open(carry: &Carry, address: &str) -> anyhow::Result<Self> {
        let (endpoint, conn, pi, identity) = handshake(carry, address).await?;
        let me = identity.peer();
        let (send, recv) = conn
            .open_bi()
            .await
            .with_context(|| format!("{address} closed the connection"))?;
        let clock = crate::clock::SystemClock::new();
        let local = LocalIdentity {
            role: Role::Technician,
            chain: me.chain,
            branch: Some(me.branch),
            device: None,
            schema_version: cartwise_sync_core::facts::DEVICE_DOC_SCHEMA as u32,
        };
        let mut config = SessionConfig::new(Side::Initiator);
        config.capabilities.push(capability::TECHNICIAN.to_owned());
        let session = Session::new(config, local, clock.read());
        let mut link = Link {
            endpoint,
            conn,
            send,
            recv,
            session,
            clock,
            events: VecDeque::new(),
            pi,
            branch: me.branch,
        };
        loop {
            match link.next_event().await? {
                SessionEvent::Established { capabilities, .. } => {
                    if !capabilities.iter().any(|c| c == capability::TECHNICIAN) {
                        bail!(
                            "the Pi at {address} runs software without technician sessions; update it"
                        );
                    }
                    return Ok(link);
                }
                SessionEvent::Closed(reason) => bail!("{}", closed_reason(address, reason)),
                _ => {}
            }
        }
    }

    /// Sends queued frames and returns the next event, reading from the Pi as needed.
    async fn next_event(&mut self) -> anyhow::Result<SessionEvent> {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            while let Some(output) = self.session.poll_output() {
                match output {
                    Output::Send(bytes) => self
                        .send
                        .write_all(&bytes)
                        .await
                        .context("the Pi closed the connection")?,
                    Output::Event(event) => self.events.push_back(event),
                }
            }
            if let Some(event) = self.events.pop_front() {
                return Ok(event);
            }
            if self.session.is_closed() {
                bail!("the session with the Pi is closed");
            }
            let now = self.clock.read();
            let wait = self
                .session
                .poll_timeout()
                .map(|deadline| Duration::from_millis(deadline.saturating_sub(now.mono.get())))
                .unwrap_or(Duration::from_secs(60));
            tokio::select! {
                read = self.recv.read(&mut buf) => match read {
                    Ok(Some(n)) => self.session.handle_bytes(self.clock.read(), &buf[..n])?,
                    Ok(None) => self.session.close("the Pi ended the stream"),
                    Err(error) => bail!("the connection to the Pi failed: {error}"),
                },
                () = tokio::time::sleep(wait) => self.session.handle_timeout(self.clock.read())?,
            }
        }
    }

    fn send(&mut self, message: Message) -> anyhow::Result<()> {
        self.session.send(message)?;
        Ok(())
    }

    async fn close(mut self) {
        self.session.close("done");
        while let Some(output) = self.session.poll_output() {
            if let Output::Send(bytes) = output {
                let _ = self.send.write_all(&bytes).await;
            }
        }
        let _ = self.send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.conn.closed()).await;
        self.conn.close(0u32.into(), b"done");
        self.endpoint.wait_idle().await;
    }
}

fn closed_reason(address: &str, reason: CloseReason) -> String {
    match reason {
        CloseReason::RefusedByPeer { reason, .. } => {
            format!("the Pi at {address} refused the credential: {reason}")
        }
        other => format!("the session with {address} ended: {other:?}"),
    }
}

/// `sync --device`: intents to the Pi, facts from it. Returns the summary to print.
pub async fn sync(carry: &Carry, address: &str) -> anyhow::Result<Summary> {
    let mut progress = Progress::new(format!("sync {address}"), 4);
    let result = sync_steps(carry, address, &mut progress).await;
    progress.finish(if result.is_ok() { "done" } else { "failed" });
    result
}

/// What one technician session exchanged with a Pi.
#[derive(Debug)]
pub struct Exchange {
    /// The Pi, as its certificate says.
    pub pi: PeerIdentity,
    /// The branch whose credential admitted the session.
    pub branch: BranchId,
    /// The Pi's latest facts bundle, verified (signature, certificate chain, producer = this
    /// Pi): after applying intents, the one carrying their outcomes.
    pub facts: Vec<u8>,
    /// The Pi's answer to the intents bundle, if one was sent.
    pub intents_result: Option<BundleResult>,
}

/// Opens a session with the Pi at `address`, hands it `intents` (or the intents bundle the
/// laptop carries for the Pi's branch when `intents` is `None` and `carried` is true), and
/// takes its verified facts bundle.
pub async fn exchange(
    carry: &Carry,
    address: &str,
    intents: Option<Vec<u8>>,
    carried: bool,
    progress: &mut Progress,
) -> anyhow::Result<Exchange> {
    let credential = carry.credential()?;
    let mut link = Link::open(carry, address).await?;
    progress.step("connected");
    let intents = match intents {
        Some(bytes) => Some(bytes),
        None if carried => carry.intents_bundle(link.branch)?,
        None => None,
    };
    let mut awaiting_result = intents.is_some();
    if let Some(bytes) = intents {
        link.send(Message::Bundle(Bundle { bytes }))?;
    }
    progress.step(if awaiting_result {
        "intents sent"
    } else {
        "no intents carried for this branch"
    });
    let chain_ca = cartwise_sync_core::identity::certs_from_pem(&credential.chain_ca_pem)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("the credential holds no chain CA; sign in again"))?;
    let mut facts = None;
    let mut intents_result = None;
    // After applying intents the Pi sends a fresh facts bundle with their outcomes.
    let mut awaiting_refresh = false;
    while facts.is_none() || awaiting_result || awaiting_refresh {
        match link.next_event().await? {
            SessionEvent::Technician(TechnicianMessage::Bundle(bundle)) => {
                let now_unix = link.clock.read().wall.get() / 1000;
                let signed = decode_bundle(&bundle.bytes)?;
                let (_, producer, _serial) = signed
                    .verify_device_chain(chain_ca.as_ref(), now_unix)
                    .context("the Pi's facts bundle does not verify; it was not kept")?;
                if producer.device != link.pi.device {
                    bail!(
                        "the facts bundle was produced by {}, not by the Pi in session ({}); it was not kept",
                        producer.device,
                        link.pi.device
                    );
                }
                if facts.is_some() {
                    awaiting_refresh = false;
                } else {
                    progress.step("facts received");
                }
                facts = Some(bundle.bytes);
            }
            SessionEvent::Technician(TechnicianMessage::BundleResult(result)) => {
                awaiting_result = false;
                awaiting_refresh = result.applied;
                intents_result = Some(result);
            }
            SessionEvent::PeerError(error) => {
                bail!("the Pi reported: {}", error.reason);
            }
            SessionEvent::Closed(reason) => bail!("{}", closed_reason(address, reason)),
            _ => {}
        }
    }
    let (pi, branch) = (link.pi, link.branch);
    link.close().await;
    progress.step("closed");
    Ok(Exchange {
        pi,
        branch,
        facts: facts.unwrap_or_default(),
        intents_result,
    })
}

async fn sync_steps(
    carry: &Carry,
    address: &str,
    progress: &mut Progress,
) -> anyhow::Result<Summary> {
    let exchange = exchange(carry, address, None, true, progress).await?;
    let stored = carry.store_facts_bundle(&exchange.facts)?;
    let mut summary = Summary::new(format!("sync with {address}"));
    summary
        .row("device", exchange.pi.device)
        .row("branch", exchange.pi.branch);
    match &exchange.intents_result {
        Some(result) => {
            summary.row(
                "intents",
                format!(
                    "bundle {}: {}",
                    result.seq,
                    if result.applied {
                        "applied"
                    } else {
                        "not applied"
                    }
                ),
            );
            summary.row("pi said", &result.message);
        }
        None => {
            summary.row("intents", "none carried for this branch");
        }
    }
    summary.row(
        "facts",
        format!(
            "bundle {} ({} documents, {} bytes){}",
            stored.seq,
            stored.docs,
            stored.bytes,
            if stored.duplicate {
                ", already carried"
            } else {
                ""
            }
        ),
    );
    summary.row("stored at", stored.path.display());
    if let Some(result) = exchange.intents_result
        && refused(&result)
    {
        summary.print();
        bail!("the Pi refused the intents bundle: {}", result.message);
    }
    Ok(summary)
}

/// Whether a `BundleResult` is a refusal (not a replay, which changes nothing and is fine).
pub fn refused(result: &BundleResult) -> bool {
    !result.applied && result.message.starts_with("refused")
}

/// `remote-bus`: one bus command through the session; the Pi's reply.
pub async fn remote_bus(
    carry: &Carry,
    address: &str,
    action: RemoteBusAction,
) -> anyhow::Result<BusReply> {
    let command = match action {
        RemoteBusAction::Scan => BusCommand::Scan,
        RemoteBusAction::Status { board } => BusCommand::Status { board },
        RemoteBusAction::Unlock { board, lock, yes } => BusCommand::Unlock {
            board,
            lock,
            confirm: yes,
        },
    };
    let mut link = Link::open(carry, address).await?;
    link.send(Message::BusRequest(BusRequest::new(1, command)))?;
    let reply = loop {
        match link.next_event().await? {
            SessionEvent::Technician(TechnicianMessage::BusReply(reply)) if reply.id == 1 => {
                break reply;
            }
            SessionEvent::PeerError(error) => bail!("the Pi reported: {}", error.reason),
            SessionEvent::Closed(reason) => bail!("{}", closed_reason(address, reason)),
            _ => {}
        }
    };
    link.close().await;
    if !reply.ok {
        bail!("the Pi did not run the command: {}", reply.message);
    }
    Ok(reply)
}

/// The text printed for a bus reply: a posts table for `scan`/`status`, the outcome of an
/// unlock.
pub fn render_bus_reply(reply: &BusReply) -> anyhow::Result<String> {
    let body: serde_json::Value =
        serde_json::from_str(&reply.body_json).context("the Pi's answer is not readable")?;
    if let Some(outcome) = body.get("outcome").and_then(|o| o.as_str()) {
        return Ok(format!(
            "board {} lock {}: {outcome}\n",
            body.get("board").unwrap_or(&serde_json::Value::Null),
            body.get("lock").unwrap_or(&serde_json::Value::Null)
        ));
    }
    let mut boards = Vec::new();
    for row in body
        .get("boards")
        .and_then(|b| b.as_array())
        .into_iter()
        .flatten()
    {
        let field = |name: &str| row.get(name).and_then(serde_json::Value::as_u64);
        let (Some(board), Some(latched), Some(present)) =
            (field("board"), field("latched"), field("present"))
        else {
            continue;
        };
        boards.push(BoardStatus {
            board: BoardAddress::new(u8::try_from(board)?)?,
            latched: LockBits(u16::try_from(latched)?),
            present: LockBits(u16::try_from(present)?),
        });
    }
    Ok(format!(
        "{}{} board(s)\n",
        crate::bus_cli::posts_table(&boards),
        boards.len()
    ))
}

/// `discover`: a handshake with every known address.
async fn discover(carry: &Carry) -> anyhow::Result<()> {
    let mut addresses = configured(carry)?.addresses;
    if let Ok(credential) = carry.credential() {
        for branch in &credential.branches {
            addresses.extend(branch.devices.iter().filter_map(|d| d.last_ip.clone()));
        }
    }
    addresses.sort();
    addresses.dedup();
    if addresses.is_empty() {
        bail!(
            "no addresses to probe: add one with `cartwise-tech devices add HOST:PORT`, or sign in to get the hub's list"
        );
    }
    let mut progress = Progress::new("discover", addresses.len());
    let mut rows = Vec::new();
    for address in &addresses {
        let outcome = tokio::time::timeout(PROBE_TIMEOUT, handshake(carry, address)).await;
        let row = match outcome {
            Ok(Ok((endpoint, conn, pi, _))) => {
                conn.close(0u32.into(), b"probe");
                endpoint.wait_idle().await;
                format!(
                    "{address:<28} {:<36} {:<36} reachable",
                    pi.device.to_string(),
                    pi.branch.to_string()
                )
            }
            Ok(Err(error)) => format!("{address:<28} {:<36} {:<36} {error:#}", "-", "-"),
            Err(_) => format!("{address:<28} {:<36} {:<36} no answer", "-", "-"),
        };
        rows.push(row);
        progress.step(address);
    }
    progress.finish("done");
    println!("{:<28} {:<36} {:<36} STATE", "ADDRESS", "DEVICE", "BRANCH");
    for row in rows {
        println!("{row}");
    }
    Ok(())
}
