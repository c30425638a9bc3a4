//! What a technician's laptop carries between Pis and the hub: its credential, the hub's
//! intents bundles and the Pis' facts bundles.
//!
//! Layout of the home directory (`--home DIR`, `CARTWISE_TECH_HOME`, or
//! `$HOME/.local/share/cartwise-tech`):
//!
//! ```text
//! credential.json                 hub, technician, chain, branches (certificate, devices), CAs
//! key.pem                         the laptop's private key (0600), generated at login
//! token                           bearer token for the hub's API (0600)
//! incoming/intents-<branch>.cwb   the hub-signed intents bundle of each branch
//! outgoing/<device>-<seq>.cwb     facts bundles from Pis, not yet pushed
//! pushed/<device>-<seq>.cwb       facts bundles the hub has taken
//! refused/<device>-<seq>.cwb      facts bundles the hub refused (kept for inspection)
//! ```
//!
//! The laptop holds no device key, so it cannot verify a Pi's signature; it checks structure
//! and scope, and the hub verifies the signature on push.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cartwise_schema::{BranchId, ChainId, DeviceId};
use cartwise_sync_core::bundle::{BundleError, BundleKind, decode_bundle};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Environment variable naming the home directory.
pub const TECH_HOME_ENV: &str = "CARTWISE_TECH_HOME";
/// Most bundles listed from one directory (a laptop carries a few dozen at most).
pub const CARRIED_BUNDLES_MAX: usize = 10_000;

/// Why the carry store failed.
#[derive(Debug, thiserror::Error)]
pub enum CarryError {
    /// A file could not be read or written.
    #[error("cannot access {path}: {source}; check the directory's permissions and free space")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No credential yet.
    #[error(
        "no credential in {0}; sign in first with `cartwise-tech login --hub URL --user LOGIN`"
    )]
    NoCredential(PathBuf),
    /// `credential.json` does not parse.
    #[error("{path} is damaged ({reason}); sign in again with `cartwise-tech login`")]
    BadCredential {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The bundle is not acceptable.
    #[error("{0}")]
    Bundle(#[from] BundleError),
    /// A bundle this laptop does not carry (wrong kind or outside the credential's scope).
    #[error("{0}")]
    Refused(String),
    /// No home directory could be determined.
    #[error("no home directory: set {TECH_HOME_ENV} or pass --home DIR")]
    NoHome,
}

/// One device of a branch, as the hub listed it at login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialDevice {
    /// The device.
    pub device_id: DeviceId,
    /// Its name.
    pub name: String,
    /// The address it last connected from, if known.
    #[serde(default)]
    pub last_ip: Option<String>,
}

/// One branch the credential covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialBranch {
    /// The branch.
    pub branch_id: BranchId,
    /// Its code.
    pub code: String,
    /// Its name.
    pub name: String,
    /// The technician certificate for this branch (PEM).
    pub cert_pem: String,
    /// Its devices.
    #[serde(default)]
    pub devices: Vec<CredentialDevice>,
}

/// `credential.json`: what the hub issued at login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// The hub's HTTP base URL.
    pub hub_url: String,
    /// The login name used.
    pub login: String,
    /// The technician (hub user id).
    pub technician_id: Uuid,
    /// The chain.
    pub chain_id: ChainId,
    /// When the certificates were issued, Unix ms.
    pub issued_at_ms: i64,
    /// When they expire, Unix ms.
    pub not_after_ms: i64,
    /// The branches in scope.
    pub branches: Vec<CredentialBranch>,
    /// The chain CA certificate (PEM): verifies Pis and the hub's intents bundles.
    pub chain_ca_pem: String,
    /// The platform CA certificate (PEM).
    pub platform_ca_pem: String,
}

impl Credential {
    /// The branch entry, if in scope.
    pub fn branch(&self, branch: BranchId) -> Option<&CredentialBranch> {
        self.branches.iter().find(|entry| entry.branch_id == branch)
    }

    /// The certificate PEM for `branch`, if in scope.
    pub fn cert_pem_for(&self, branch: BranchId) -> Option<&str> {
        self.branch(branch).map(|entry| entry.cert_pem.as_str())
    }

    /// The branch a device belongs to, from the login's device lists.
    pub fn branch_of_device(&self, device: DeviceId) -> Option<&CredentialBranch> {
        self.branches
            .iter()
            .find(|entry| entry.devices.iter().any(|known| known.device_id == device))
    }
}

/// A facts bundle stored (or found already stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The producing device.
    pub device: DeviceId,
    /// Its branch.
    pub branch: BranchId,
    /// The bundle's sequence number.
    pub seq: u64,
    /// Documents in it.
    pub docs: usize,
    /// Its size in bytes.
    pub bytes: usize,
    /// Where it is.
    pub path: PathBuf,
    /// True when the same (device, seq) was already carried or pushed: nothing was written.
    pub duplicate: bool,
}

/// A facts bundle waiting to be pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carried {
    /// The file.
    pub path: PathBuf,
    /// The producing device.
    pub device: DeviceId,
    /// Its branch.
    pub branch: BranchId,
    /// The bundle's sequence number.
    pub seq: u64,
    /// When the Pi produced it, Unix ms.
    pub created_at_ms: i64,
    /// Its size in bytes.
    pub bytes: usize,
}

/// The laptop's carry store, rooted at its home directory.
#[derive(Debug, Clone)]
pub struct Carry {
    home: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CarryError + '_ {
    move |source| CarryError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The home directory: `explicit`, else `CARTWISE_TECH_HOME`, else
/// `$HOME/.local/share/cartwise-tech`.
pub fn resolve_home(explicit: Option<PathBuf>) -> Result<PathBuf, CarryError> {
    if let Some(home) = explicit {
        return Ok(home);
    }
    if let Some(home) = std::env::var_os(TECH_HOME_ENV).filter(|home| !home.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    let home = std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .ok_or(CarryError::NoHome)?;
    Ok(PathBuf::from(home).join(".local/share/cartwise-tech"))
}

/// Writes `bytes` to `path` atomically (temporary file, then rename), with `mode`.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CarryError> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

impl Carry {
    /// Opens (creating its directories) the store at `home`.
    pub fn open(home: impl Into<PathBuf>) -> Result<Self, CarryError> {
        let home = home.into();
        for dir in [
            home.clone(),
            home.join("incoming"),
            home.join("outgoing"),
            home.join("pushed"),
            home.join("refused"),
        ] {
            fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).map_err(io(&home))?;
        Ok(Self { home })
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    fn credential_path(&self) -> PathBuf {
        self.home.join("credential.json")
    }

    /// The stored credential.
    pub fn credential(&self) -> Result<Credential, CarryError> {
        let path = self.credential_path();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(CarryError::NoCredential(self.home.clone()));
            }
            Err(error) => return Err(io(&path)(error)),
        };
        serde_json::from_str(&text).map_err(|error| CarryError::BadCredential {
            path,
            reason: error.to_string(),
        })
    }

    /// The laptop's private key (PEM).
    pub fn key_pem(&self) -> Result<String, CarryError> {
        self.read_secret("key.pem")
    }

    /// The hub API bearer token.
    pub fn token(&self) -> Result<String, CarryError> {
        self.read_secret("token")
            .map(|token| token.trim().to_owned())
    }

    fn read_secret(&self, name: &str) -> Result<String, CarryError> {
        let path = self.home.join(name);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(text),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                Err(CarryError::NoCredential(self.home.clone()))
            }
            Err(error) => Err(io(&path)(error)),
        }
    }

    /// Stores what a login obtained: credential, key and token (0600).
    pub fn save_login(
        &self,
        credential: &Credential,
        key_pem: &str,
        token: &str,
    ) -> Result<(), CarryError> {
        write_atomic(&self.home.join("key.pem"), key_pem.as_bytes(), 0o600)?;
        write_atomic(&self.home.join("token"), token.as_bytes(), 0o600)?;
        let json =
            serde_json::to_vec_pretty(credential).map_err(|error| CarryError::BadCredential {
                path: self.credential_path(),
                reason: error.to_string(),
            })?;
        write_atomic(&self.credential_path(), &json, 0o600)
    }

    fn intents_path(&self, branch: BranchId) -> PathBuf {
        self.home
            .join("incoming")
            .join(format!("intents-{branch}.cwb"))
    }

    /// Stores the hub's intents bundle for `branch` (replacing an older one).
    pub fn store_intents_bundle(&self, branch: BranchId, bytes: &[u8]) -> Result<(), CarryError> {
        let body = decode_bundle(bytes)?.unverified_body().clone();
        if body.kind != BundleKind::Intents || body.branch != branch {
            return Err(CarryError::Refused(format!(
                "the hub sent a {} bundle for branch {}, expected the intents of branch {branch}",
                body.kind.as_str(),
                body.branch
            )));
        }
        write_atomic(&self.intents_path(branch), bytes, 0o600)
    }

    /// The carried intents bundle of `branch`, if any.
    pub fn intents_bundle(&self, branch: BranchId) -> Result<Option<Vec<u8>>, CarryError> {
        let path = self.intents_path(branch);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(io(&path)(error)),
        }
    }

    fn bundle_name(device: DeviceId, seq: u64) -> String {
        format!("{device}-{seq}.cwb")
    }

    /// Stores a Pi's facts bundle in `outgoing/` after checking its structure and that it is
    /// within the credential's scope. A bundle already carried or pushed (same device and seq)
    /// is not written again.
    pub fn store_facts_bundle(&self, bytes: &[u8]) -> Result<Stored, CarryError> {
        let credential = self.credential()?;
        let bundle = decode_bundle(bytes)?;
        let body = bundle.unverified_body();
        let device = match (body.kind, body.producer.id) {
            (BundleKind::Facts, Some(device)) => device,
            _ => {
                return Err(CarryError::Refused(format!(
                    "this is a {} bundle, not a Pi's facts bundle; only facts bundles are pushed to the hub",
                    body.kind.as_str()
                )));
            }
        };
        if body.chain != credential.chain_id || credential.branch(body.branch).is_none() {
            return Err(CarryError::Refused(format!(
                "the bundle is from branch {} (chain {}), which this credential does not cover; it is not carried",
                body.branch, body.chain
            )));
        }
        let name = Self::bundle_name(device, body.seq);
        let outgoing = self.home.join("outgoing").join(&name);
        let pushed = self.home.join("pushed").join(&name);
        let duplicate = outgoing.exists() || pushed.exists();
        let path = if pushed.exists() { pushed } else { outgoing };
        if !duplicate {
            write_atomic(&path, bytes, 0o600)?;
        }
        Ok(Stored {
            device,
            branch: body.branch,
            seq: body.seq,
            docs: body.docs.len(),
            bytes: bytes.len(),
            path,
            duplicate,
        })
    }

    fn list(&self, dir: &str) -> Result<Vec<Carried>, CarryError> {
        let dir = self.home.join(dir);
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir)
            .map_err(io(&dir))?
            .take(CARRIED_BUNDLES_MAX)
        {
            let path = entry.map_err(io(&dir))?.path();
            if path.extension().is_none_or(|ext| ext != "cwb") {
                continue;
            }
            let bytes = fs::read(&path).map_err(io(&path))?;
            let Ok(bundle) = decode_bundle(&bytes) else {
                continue;
            };
            let body = bundle.unverified_body();
            let Some(device) = body.producer.id else {
                continue;
            };
            out.push(Carried {
                path,
                device,
                branch: body.branch,
                seq: body.seq,
                created_at_ms: body.created_at_ms,
                bytes: bytes.len(),
            });
        }
        out.sort_by_key(|carried| (carried.device, carried.seq));
        Ok(out)
    }

    /// The facts bundles not yet pushed, by device and seq.
    pub fn pending(&self) -> Result<Vec<Carried>, CarryError> {
        self.list("outgoing")
    }

    /// The facts bundles already pushed.
    pub fn pushed(&self) -> Result<Vec<Carried>, CarryError> {
        self.list("pushed")
    }

    /// Moves a pushed bundle from `outgoing/` to `pushed/`.
    pub fn mark_pushed(&self, carried: &Carried) -> Result<(), CarryError> {
        let name = Self::bundle_name(carried.device, carried.seq);
        let target = self.home.join("pushed").join(name);
        fs::rename(&carried.path, &target).map_err(io(&carried.path))
    }

    /// Moves a bundle the hub refused from `outgoing/` to `refused/`.
    pub fn mark_refused(&self, carried: &Carried) -> Result<(), CarryError> {
        let name = Self::bundle_name(carried.device, carried.seq);
        let target = self.home.join("refused").join(name);
        fs::rename(&carried.path, &target).map_err(io(&carried.path))
    }
}

#[cfg(test)]
mod tests;
