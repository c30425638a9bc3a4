//! `ShopperTokenKey`: the branch's 32-byte secret that signs shopper tokens, kept apart from
//! any device identity so every node of a branch can share it, and its key file.

use std::fmt;
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rand::CryptoRng;

/// Length of the key, and of its file.
pub const SHOPPER_TOKEN_KEY_BYTES: usize = 32;
/// Permissions of a key file this node creates: owner read and write only.
const KEY_FILE_MODE: u32 = 0o600;

/// The secret that signs and verifies shopper tokens. `Debug` never prints it.
#[derive(Clone)]
pub struct ShopperTokenKey([u8; SHOPPER_TOKEN_KEY_BYTES]);

/// Why key bytes were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShopperTokenKeyError {
    /// Not exactly [`SHOPPER_TOKEN_KEY_BYTES`] bytes.
    #[error("a shopper token key has exactly 32 bytes, found {len}")]
    WrongLength {
        /// Bytes found.
        len: usize,
    },
}

/// Why the key file could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum ShopperTokenKeyFileError {
    /// Reading, creating or writing the file failed.
    #[error("shopper token key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file exists but does not hold a key: restore it from the branch's other nodes, or
    /// delete it to start a new key (every token issued so far stops working).
    #[error("shopper token key file {path}: {source}; restore the branch key or delete the file")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong with its contents.
        source: ShopperTokenKeyError,
    },
}

impl ShopperTokenKey {
    /// A key from its bytes (as read from the key file or received from the branch).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ShopperTokenKeyError> {
        <[u8; SHOPPER_TOKEN_KEY_BYTES]>::try_from(bytes)
            .map(Self)
            .map_err(|_| ShopperTokenKeyError::WrongLength { len: bytes.len() })
    }

    /// A new random key.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = [0u8; SHOPPER_TOKEN_KEY_BYTES];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// The key bytes, to write to the key file or share with the branch.
    pub fn as_bytes(&self) -> &[u8; SHOPPER_TOKEN_KEY_BYTES] {
        &self.0
    }
}

impl fmt::Debug for ShopperTokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ShopperTokenKey(..)")
    }
}

/// Loads the key from `path`, or creates the file with a new random key (mode 0600, written
/// and synced before use) if it does not exist. Two processes racing to create it end with
/// the same key: creation is exclusive, and the loser reads the winner's file.
pub fn load_or_create_key_file<R: CryptoRng + ?Sized>(
    path: &Path,
    rng: &mut R,
) -> Result<ShopperTokenKey, ShopperTokenKeyFileError> {
    let io_error = |source| ShopperTokenKeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    match read_key_file(path) {
        Ok(key) => return Ok(key),
        Err(ShopperTokenKeyFileError::Io { source, .. })
            if source.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let key = ShopperTokenKey::generate(rng);
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(KEY_FILE_MODE)
        .open(path);
    let mut file = match created {
        Ok(file) => file,
        Err(source) if source.kind() == io::ErrorKind::AlreadyExists => return read_key_file(path),
        Err(source) => return Err(io_error(source)),
    };
    file.write_all(key.as_bytes()).map_err(io_error)?;
    file.sync_all().map_err(io_error)?;
    Ok(key)
}

/// Reads a key file of exactly [`SHOPPER_TOKEN_KEY_BYTES`] bytes; the size is checked before
/// anything is read.
fn read_key_file(path: &Path) -> Result<ShopperTokenKey, ShopperTokenKeyFileError> {
    let io_error = |source| ShopperTokenKeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io_error)?;
    let file_len = file.metadata().map_err(io_error)?.len();
    if file_len != SHOPPER_TOKEN_KEY_BYTES as u64 {
        let len = usize::try_from(file_len).unwrap_or(usize::MAX);
        let source = ShopperTokenKeyError::WrongLength { len };
        return Err(ShopperTokenKeyFileError::BadKey {
            path: path.to_owned(),
            source,
        });
    }
    let mut bytes = [0u8; SHOPPER_TOKEN_KEY_BYTES];
    file.read_exact(&mut bytes).map_err(io_error)?;
    Ok(ShopperTokenKey(bytes))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn a_missing_key_file_is_created_once_and_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shopper-token.key");
        let mut rng = StdRng::seed_from_u64(1);
        let created = load_or_create_key_file(&path, &mut rng).unwrap();
        let loaded = load_or_create_key_file(&path, &mut rng).unwrap();
        assert_eq!(created.as_bytes(), loaded.as_bytes());
        let metadata = std::fs::metadata(&path).unwrap();
        assert_eq!(metadata.len(), 32);
        assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_key_file_of_the_wrong_size_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shopper-token.key");
        std::fs::write(&path, [7u8; 40]).unwrap();
        let error = load_or_create_key_file(&path, &mut StdRng::seed_from_u64(2)).unwrap_err();
        assert!(
            matches!(
                error,
                ShopperTokenKeyFileError::BadKey {
                    source: ShopperTokenKeyError::WrongLength { len: 40 },
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 40]);
    }

    #[test]
    fn keys_come_from_exactly_32_bytes_and_never_print() {
        assert!(ShopperTokenKey::from_bytes(&[1; 32]).is_ok());
        assert_eq!(
            ShopperTokenKey::from_bytes(&[1; 31]).unwrap_err(),
            ShopperTokenKeyError::WrongLength { len: 31 }
        );
        let key = ShopperTokenKey::generate(&mut StdRng::seed_from_u64(3));
        assert_eq!(format!("{key:?}"), "ShopperTokenKey(..)");
        assert_ne!(key.as_bytes(), &[0; 32]);
    }
}
