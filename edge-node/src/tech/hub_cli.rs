//! `cartwise-tech` commands that talk to the hub, or only to what the laptop carries:
//!
//! - `login` (online): generates the laptop's key, sends a certificate request, stores the
//!   credential (one certificate per branch), the API token, each branch's hub-signed intents
//!   bundle and the device lists;
//! - `status`: the credential, what the laptop carries, from which devices, how old, and what
//!   the hub has not seen yet;
//! - `push` (online): hands every carried facts bundle to the hub;
//! - `bundle import FILE`: a Pi's facts bundle from a USB stick (`cartwise-edge bundle export`);
//! - `bundle export --branch ID --out FILE`: the carried intents bundle for a Pi without LAN
//!   (`cartwise-edge bundle import FILE`);
//! - `credential export --branch ID --out DIR`: a credential directory for one branch, for
//!   `cartwise-edge bundle … --credential DIR` on a Pi's console.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use cartwise_schema::{BranchId, DeviceId};
use cartwise_sync_core::bundle::decode_bundle;
use serde_json::{Value, json};
use uuid::Uuid;

use super::carry::{Carry, Credential, CredentialBranch, CredentialDevice, resolve_home};
use super::ui::{Progress, Summary, age};

/// How long one HTTP request to the hub may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest password read.
const PASSWORD_LEN_MAX: usize = 256;

/// The data directory option.
#[derive(Debug, Clone, clap::Args)]
pub struct Home {
    /// The laptop's data directory (default: $CARTWISE_TECH_HOME, else
    /// ~/.local/share/cartwise-tech).
    #[arg(long = "home", value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

impl Home {
    fn open(&self) -> anyhow::Result<Carry> {
        Ok(Carry::open(resolve_home(self.dir.clone())?)?)
    }
}

/// Commands that talk to the hub.
#[derive(Debug, clap::Subcommand)]
pub enum HubCommand {
    /// Signs in to the hub (online) and obtains the credential, the branches' intents bundles
    /// and device lists.
    Login {
        /// The hub's base URL, e.g. https://hub.example.com.
        #[arg(long)]
        hub: String,
        /// The technician's login.
        #[arg(long)]
        user: String,
        /// Read the password from standard input (one line) instead of prompting.
        #[arg(long)]
        password_stdin: bool,
        /// Validity of the credential in hours (1 to 168; default 12).
        #[arg(long)]
        hours: Option<u32>,
        /// Only this branch (repeat for several); default every branch in scope.
        #[arg(long = "branch")]
        branches: Vec<Uuid>,
        #[command(flatten)]
        home: Home,
    },
    /// What the laptop carries and what the hub has not seen yet.
    Status {
        #[command(flatten)]
        home: Home,
    },
    /// Hands every carried facts bundle to the hub (online).
    Push {
        #[command(flatten)]
        home: Home,
    },
    /// Bundle files for a USB stick.
    Bundle {
        #[command(subcommand)]
        action: BundleAction,
    },
    /// The credential for a Pi's console.
    Credential {
        #[command(subcommand)]
        action: CredentialAction,
    },
}

/// `bundle …`.
#[derive(Debug, clap::Subcommand)]
pub enum BundleAction {
    /// Takes a Pi's facts bundle (from `cartwise-edge bundle export`) to push later.
    Import {
        /// The bundle file.
        file: PathBuf,
        #[command(flatten)]
        home: Home,
    },
    /// Writes the carried intents bundle of a branch, for `cartwise-edge bundle import`.
    Export {
        /// The branch.
        #[arg(long)]
        branch: BranchId,
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        home: Home,
    },
}

/// `credential …`.
#[derive(Debug, clap::Subcommand)]
pub enum CredentialAction {
    /// Writes a credential directory for one branch (`credential.json`, `key.pem`), for
    /// `cartwise-edge bundle export|import --credential DIR` on a Pi.
    Export {
        /// The branch.
        #[arg(long)]
        branch: BranchId,
        /// The directory to write (created).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        home: Home,
    },
}

/// Runs one hub command.
pub async fn run(cmd: HubCommand) -> anyhow::Result<()> {
    match cmd {
        HubCommand::Login {
            hub,
            user,
            password_stdin,
            hours,
            branches,
            home,
        } => {
            let password = read_password(&user, password_stdin)?;
            login(&home.open()?, &hub, &user, &password, hours, &branches).await
        }
        HubCommand::Status { home } => status(&home.open()?),
        HubCommand::Push { home } => push(&home.open()?).await,
        HubCommand::Bundle {
            action: BundleAction::Import { file, home },
        } => import(&home.open()?, &file),
        HubCommand::Bundle {
            action: BundleAction::Export { branch, out, home },
        } => export_intents(&home.open()?, branch, &out),
        HubCommand::Credential {
            action: CredentialAction::Export { branch, out, home },
        } => export_credential(&home.open()?, branch, &out),
    }
}

fn read_password(user: &str, from_stdin: bool) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if !from_stdin && stdin.is_terminal() {
        eprint!("password for {user}: ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    std::io::Read::take(stdin.lock(), 4096)
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() || password.len() > PASSWORD_LEN_MAX {
        bail!("no password given: type it, or pipe it with --password-stdin");
    }
    Ok(password)
}

fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .build()
        .context("cannot set up the HTTP client")
}

fn api(hub: &str, path: &str) -> String {
    format!("{}/api{path}", hub.trim_end_matches('/'))
}

/// The `data` of a successful hub answer, or the hub's error message.
async fn answer(response: reqwest::Response, what: &str) -> anyhow::Result<Value> {
    let status = response.status();
    let text = response
        .text()
        .await
        .with_context(|| format!("{what}: the hub's answer was cut off"))?;
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if !status.is_success() {
        let message = body["error"]["message"]
            .as_str()
            .map_or_else(|| text.chars().take(200).collect(), str::to_owned);
        bail!("{what} refused by the hub ({status}): {message}");
    }
    Ok(body["data"].clone())
}

fn unreachable(hub: &str) -> impl FnOnce(reqwest::Error) -> anyhow::Error + '_ {
    move |error| {
        anyhow::anyhow!(
            "cannot reach the hub at {hub} ({error}); check the address and that you are online"
        )
    }
}

/// Signs in to `hub` as `user`, obtains the credential for a new key, and stores it with the
/// token and the branches' intents bundles in `carry`.
pub async fn login(
    carry: &Carry,
    hub: &str,
    user: &str,
    password: &str,
    hours: Option<u32>,
    branches: &[Uuid],
) -> anyhow::Result<()> {
    let client = client()?;
    let mut progress = Progress::new("login", 4);
    let signed_in = client
        .post(api(hub, "/auth/login"))
        .header("content-type", "application/json")
        .body(json!({ "login": user, "password": password, "issue_token": true }).to_string())
        .send()
        .await
        .map_err(unreachable(hub))?;
    let signed_in = answer(signed_in, "signing in").await?;
    let token = signed_in["token"]
        .as_str()
        .context("the hub issued no API token; is it a CartWise hub of this version?")?
        .to_owned();
    progress.step("signed in");

    let key = rcgen::KeyPair::generate().context("cannot generate the laptop's key")?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "cartwise technician");
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .context("cannot build the certificate request")?;
    progress.step("key generated");

    let mut request = json!({ "csr_pem": csr });
    if let Some(hours) = hours {
        request["hours"] = json!(hours);
    }
    if !branches.is_empty() {
        request["branches"] = json!(branches);
    }
    let issued = client
        .post(api(hub, "/technicians/credentials"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(request.to_string())
        .send()
        .await
        .map_err(unreachable(hub))?;
    let issued = answer(issued, "the credential").await?;
    let credential = credential_from(hub, user, &issued)?;
    carry.save_login(&credential, &key.serialize_pem(), &token)?;
    progress.step("credential stored");

    let mut intents = 0;
    for branch in &credential.branches {
        let response = client
            .get(api(
                hub,
                &format!("/technicians/branches/{}/bundle", branch.branch_id),
            ))
            .bearer_auth(&token)
            .send()
            .await
            .map_err(unreachable(hub))?;
        if !response.status().is_success() {
            answer(response, "the intents bundle").await?;
            continue;
        }
        let bytes = response
            .bytes()
            .await
            .context("the intents bundle was cut off; run login again")?;
        carry.store_intents_bundle(branch.branch_id, &bytes)?;
        intents += 1;
    }
    progress.step("intents bundles stored");
    progress.finish("done");

    let mut summary = Summary::new(format!("signed in to {hub} as {user}"));
    summary
        .row("home", carry.home().display())
        .row("valid until", format_ms(credential.not_after_ms))
        .row("branches", credential.branches.len())
        .row("intents bundles", intents);
    for branch in &credential.branches {
        summary.row(
            format!("  {}", branch.code),
            format!("{} ({} devices)", branch.name, branch.devices.len()),
        );
    }
    summary.print();
    Ok(())
}

fn credential_from(hub: &str, user: &str, issued: &Value) -> anyhow::Result<Credential> {
    let text = |key: &str| -> anyhow::Result<String> {
        issued[key]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("the hub's credential has no {key}"))
    };
    let number = |key: &str| -> anyhow::Result<i64> {
        issued[key]
            .as_i64()
            .with_context(|| format!("the hub's credential has no {key}"))
    };
    let mut branches = Vec::new();
    for branch in issued["branches"].as_array().into_iter().flatten() {
        let devices = branch["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|device| {
                Some(CredentialDevice {
                    device_id: DeviceId::parse(device["device_id"].as_str()?).ok()?,
                    name: device["name"].as_str().unwrap_or_default().to_owned(),
                    last_ip: device["last_ip"].as_str().map(str::to_owned),
                })
            })
            .collect();
        branches.push(CredentialBranch {
            branch_id: BranchId::parse(branch["branch_id"].as_str().unwrap_or_default())
                .context("the hub's credential names an invalid branch")?,
            code: branch["code"].as_str().unwrap_or_default().to_owned(),
            name: branch["name"].as_str().unwrap_or_default().to_owned(),
            cert_pem: branch["cert_pem"]
                .as_str()
                .context("the hub's credential has a branch without a certificate")?
                .to_owned(),
            devices,
        });
    }
    if branches.is_empty() {
        bail!("the hub issued no branch; ask an admin to assign branches to {user}");
    }
    Ok(Credential {
        hub_url: hub.trim_end_matches('/').to_owned(),
        login: user.to_owned(),
        technician_id: Uuid::parse_str(&text("technician_id")?)
            .context("the hub's credential has an invalid technician id")?,
        chain_id: cartwise_schema::ChainId::parse(&text("chain_id")?)
            .context("the hub's credential has an invalid chain id")?,
        issued_at_ms: number("issued_at_ms")?,
        not_after_ms: number("not_after_ms")?,
        branches,
        chain_ca_pem: text("chain_ca_pem")?,
        platform_ca_pem: text("platform_ca_pem")?,
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || format!("{ms} ms"),
        |at| at.format("%Y-%m-%d %H:%M UTC").to_string(),
    )
}

fn status(carry: &Carry) -> anyhow::Result<()> {
    let credential = carry.credential()?;
    let now = now_ms();
    let mut summary = Summary::new(format!(
        "{} at {} ({})",
        credential.login,
        credential.hub_url,
        carry.home().display()
    ));
    let validity = if credential.not_after_ms > now {
        format!(
            "valid until {} ({} left)",
            format_ms(credential.not_after_ms),
            age(credential.not_after_ms - now)
        )
    } else {
        format!(
            "EXPIRED at {}: run `cartwise-tech login` while online",
            format_ms(credential.not_after_ms)
        )
    };
    summary.row("credential", validity);
    for branch in &credential.branches {
        let intents = match carry.intents_bundle(branch.branch_id)? {
            Some(bytes) => match decode_bundle(&bytes) {
                Ok(bundle) => {
                    let body = bundle.unverified_body();
                    format!(
                        "intents bundle seq {} from {} ago",
                        body.seq,
                        age(now - body.created_at_ms)
                    )
                }
                Err(error) => format!("intents bundle unreadable ({error}); run login again"),
            },
            None => "no intents bundle; run login while online".to_owned(),
        };
        summary.row(format!("branch {}", branch.code), intents);
    }
    let pending = carry.pending()?;
    summary.row("not yet at the hub", format!("{} bundles", pending.len()));
    for carried in &pending {
        let name = credential
            .branch_of_device(carried.device)
            .and_then(|branch| {
                branch
                    .devices
                    .iter()
                    .find(|device| device.device_id == carried.device)
            })
            .map_or_else(|| carried.device.to_string(), |device| device.name.clone());
        summary.row(
            format!("  {name}"),
            format!(
                "seq {}, {} bytes, taken {} ago",
                carried.seq,
                carried.bytes,
                age(now - carried.created_at_ms)
            ),
        );
    }
    summary.row("pushed", format!("{} bundles", carry.pushed()?.len()));
    summary.print();
    Ok(())
}

async fn push(carry: &Carry) -> anyhow::Result<()> {
    let credential = carry.credential()?;
    let token = carry.token()?;
    let pending = carry.pending()?;
    let client = client()?;
    let mut progress = Progress::new("push", pending.len());
    let (mut applied, mut replayed, mut refused) = (0, 0, Vec::new());
    for carried in &pending {
        let bytes = std::fs::read(&carried.path)
            .with_context(|| format!("cannot read {}", carried.path.display()))?;
        let response = client
            .post(api(&credential.hub_url, "/technicians/push"))
            .bearer_auth(&token)
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .map_err(unreachable(&credential.hub_url))?;
        let server_error = response.status().is_server_error();
        match answer(response, "the bundle").await {
            Ok(outcome) => {
                if outcome["replay"].as_bool() == Some(true) {
                    replayed += 1;
                } else {
                    applied += 1;
                }
                carry.mark_pushed(carried)?;
            }
            // The hub could not take it now: keep it for the next push.
            Err(error) if server_error => return Err(error),
            Err(error) => {
                carry.mark_refused(carried)?;
                refused.push(format!("{} seq {}: {error:#}", carried.device, carried.seq));
            }
        }
        progress.step(&format!("{} seq {}", carried.device, carried.seq));
    }
    progress.finish(if refused.is_empty() {
        "done"
    } else {
        "done, with refusals"
    });
    let mut summary = Summary::new(format!("pushed to {}", credential.hub_url));
    summary
        .row("applied", applied)
        .row("already at the hub", replayed)
        .row("refused", refused.len());
    for reason in &refused {
        summary.row("  refused", reason);
    }
    summary.print();
    if !refused.is_empty() {
        bail!(
            "{} bundles were refused by the hub (kept under {}/refused); see the reasons above",
            refused.len(),
            carry.home().display()
        );
    }
    Ok(())
}

fn import(carry: &Carry, file: &PathBuf) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let stored = carry.store_facts_bundle(&bytes)?;
    let mut summary = Summary::new(format!("imported {}", file.display()));
    summary
        .row("device", stored.device)
        .row("branch", stored.branch)
        .row("seq", stored.seq)
        .row("documents", stored.docs)
        .row("bytes", stored.bytes)
        .row(
            "state",
            if stored.duplicate {
                "already carried: nothing new"
            } else {
                "carried: run `cartwise-tech push` when online"
            },
        );
    summary.print();
    Ok(())
}

fn export_intents(carry: &Carry, branch: BranchId, out: &PathBuf) -> anyhow::Result<()> {
    let credential = carry.credential()?;
    if credential.branch(branch).is_none() {
        bail!("branch {branch} is not in this credential; run login for it");
    }
    let Some(bytes) = carry.intents_bundle(branch)? else {
        bail!(
            "no intents bundle carried for branch {branch}; run `cartwise-tech login` while online"
        );
    };
    std::fs::write(out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    let seq = decode_bundle(&bytes).map(|bundle| bundle.unverified_body().seq)?;
    let mut summary = Summary::new(format!("wrote {}", out.display()));
    summary
        .row("branch", branch)
        .row("seq", seq)
        .row("bytes", bytes.len())
        .row(
            "next",
            "on the Pi: cartwise-edge bundle import FILE --credential DIR",
        );
    summary.print();
    Ok(())
}

fn export_credential(carry: &Carry, branch: BranchId, out: &PathBuf) -> anyhow::Result<()> {
    let mut credential = carry.credential()?;
    credential
        .branches
        .retain(|entry| entry.branch_id == branch);
    if credential.branches.is_empty() {
        bail!("branch {branch} is not in this credential; run login for it");
    }
    let target = Carry::open(out)?;
    // The bearer token stays on the laptop: a Pi's console never talks to the hub with it.
    target.save_login(&credential, &carry.key_pem()?, "")?;
    let mut summary = Summary::new(format!("wrote credential for branch {branch}"));
    summary
        .row("directory", out.display())
        .row("valid until", format_ms(credential.not_after_ms))
        .row(
            "next",
            "on the Pi: cartwise-edge bundle export --out FILE --credential DIR",
        );
    summary.print();
    Ok(())
}
