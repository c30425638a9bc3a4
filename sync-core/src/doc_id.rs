//! Document ids: which Automerge document a sync message is about, and who may write it.
//!
//! String form (the wire form, also used as a storage key):
//!
//! | id | document | sole writer |
//! |---|---|---|
//! | `device/<uuid>` | a device's facts, epoch 0 | that device |
//! | `device/<uuid>/e<N>` | the same, epoch N ≥ 1 | that device |
//! | `branch/<uuid>/intents` | a branch's intents, epoch 0 | the hub |
//! | `branch/<uuid>/intents/e<N>` | the same, epoch N ≥ 1 | the hub |
//!
//! UUIDs are lowercase hyphenated on output (either case on input, as in `cartwise-schema`).
//! Epoch 0 has no suffix and `e0` is rejected, as are leading zeros, so each id has exactly
//! one spelling. Epochs exist because history is never dropped by Automerge: a live document
//! is rotated to a new epoch to bound its size (the old epoch is frozen and archived).

use std::fmt;
use std::str::FromStr;

use cartwise_schema::{BranchId, DeviceId};

/// Longest accepted string form; the longest valid id is well below it.
pub const DOC_ID_LEN_MAX: usize = 96;

/// A document id: the device whose facts it holds, or the branch whose intents it holds, and
/// the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DocId {
    /// The facts of one device (its posts, rentals, returns, faults), written only by it.
    Device {
        /// The owning device.
        device: DeviceId,
        /// The rotation epoch, 0 for the first document.
        epoch: u32,
    },
    /// The intents of one branch (configuration, maintenance requests), written only by the
    /// hub.
    BranchIntents {
        /// The branch.
        branch: BranchId,
        /// The rotation epoch, 0 for the first document.
        epoch: u32,
    },
}

/// Who may write a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DocOwner {
    /// Only this device (its actor id is its UUID's 16 bytes).
    Device(DeviceId),
    /// Only the hub (the actor ids configured for the hub), for this branch.
    Hub(BranchId),
}

impl fmt::Display for DocOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DocOwner::Device(device) => write!(f, "device {device}"),
            DocOwner::Hub(branch) => write!(f, "the hub (branch {branch})"),
        }
    }
}

/// Why a document id failed to parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocIdError {
    /// Longer than [`DOC_ID_LEN_MAX`].
    #[error("document id of {len} bytes is longer than {max}")]
    TooLong {
        /// Its length.
        len: usize,
        /// [`DOC_ID_LEN_MAX`].
        max: usize,
    },
    /// Not one of the accepted shapes.
    #[error(
        "invalid document id {input:?}: expected device/<uuid>[/e<N>] or \
         branch/<uuid>/intents[/e<N>]"
    )]
    Shape {
        /// The rejected text.
        input: String,
    },
    /// The UUID part is not a valid id.
    #[error("invalid document id: {0}")]
    Id(#[from] cartwise_schema::IdError),
    /// The epoch suffix is not `e` then a decimal u32 ≥ 1 without leading zeros.
    #[error("invalid document epoch {input:?}: expected e1, e2, … (epoch 0 has no suffix)")]
    Epoch {
        /// The rejected suffix.
        input: String,
    },
}

impl DocId {
    /// The facts document of `device`, epoch 0.
    pub const fn device(device: DeviceId) -> Self {
        DocId::Device { device, epoch: 0 }
    }

    /// The intents document of `branch`, epoch 0.
    pub const fn branch_intents(branch: BranchId) -> Self {
        DocId::BranchIntents { branch, epoch: 0 }
    }

    /// The rotation epoch.
    pub const fn epoch(&self) -> u32 {
        match self {
            DocId::Device { epoch, .. } | DocId::BranchIntents { epoch, .. } => *epoch,
        }
    }

    /// The same document's next epoch (saturating), for rotation.
    pub const fn next_epoch(&self) -> Self {
        match *self {
            DocId::Device { device, epoch } => DocId::Device {
                device,
                epoch: epoch.saturating_add(1),
            },
            DocId::BranchIntents { branch, epoch } => DocId::BranchIntents {
                branch,
                epoch: epoch.saturating_add(1),
            },
        }
    }

    /// Who may write this document.
    pub const fn owner(&self) -> DocOwner {
        match self {
            DocId::Device { device, .. } => DocOwner::Device(*device),
            DocId::BranchIntents { branch, .. } => DocOwner::Hub(*branch),
        }
    }

    /// Parses the string form.
    pub fn parse(input: &str) -> Result<Self, DocIdError> {
        if input.len() > DOC_ID_LEN_MAX {
            return Err(DocIdError::TooLong {
                len: input.len(),
                max: DOC_ID_LEN_MAX,
            });
        }
        let shape = || DocIdError::Shape {
            input: input.to_owned(),
        };
        let parts: Vec<&str> = input.split('/').collect();
        match parts.as_slice() {
            ["device", uuid, rest @ ..] => {
                let device = DeviceId::parse(uuid)?;
                let epoch = match rest {
                    [] => 0,
                    [suffix] => parse_epoch(suffix)?,
                    _ => return Err(shape()),
                };
                Ok(DocId::Device { device, epoch })
            }
            ["branch", uuid, "intents", rest @ ..] => {
                let branch = BranchId::parse(uuid)?;
                let epoch = match rest {
                    [] => 0,
                    [suffix] => parse_epoch(suffix)?,
                    _ => return Err(shape()),
                };
                Ok(DocId::BranchIntents { branch, epoch })
            }
            _ => Err(shape()),
        }
    }
}

/// Parses `e<N>` with N ≥ 1 and no leading zeros.
fn parse_epoch(suffix: &str) -> Result<u32, DocIdError> {
    let invalid = || DocIdError::Epoch {
        input: suffix.to_owned(),
    };
    let digits = suffix.strip_prefix('e').ok_or_else(invalid)?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    digits.parse::<u32>().map_err(|_| invalid())
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DocId::Device { device, .. } => write!(f, "device/{device}")?,
            DocId::BranchIntents { branch, .. } => write!(f, "branch/{branch}/intents")?,
        }
        match self.epoch() {
            0 => Ok(()),
            epoch => write!(f, "/e{epoch}"),
        }
    }
}

impl FromStr for DocId {
    type Err = DocIdError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Self::parse(input)
    }
}

impl serde::Serialize for DocId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DocId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        DocId::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEVICE: &str = "0b1e3c2a-0000-4000-8000-000000001001";
    const BRANCH: &str = "0b1e3c2a-0000-4000-8000-000000000101";

    #[test]
    fn forms_round_trip() {
        for text in [
            format!("device/{DEVICE}"),
            format!("device/{DEVICE}/e7"),
            format!("branch/{BRANCH}/intents"),
            format!("branch/{BRANCH}/intents/e4294967295"),
        ] {
            let id = DocId::parse(&text).unwrap();
            assert_eq!(id.to_string(), text);
        }
        let id = DocId::parse(&format!("device/{DEVICE}/e2")).unwrap();
        assert_eq!(id.epoch(), 2);
        assert_eq!(id.next_epoch().epoch(), 3);
        assert_eq!(id.owner(), DocOwner::Device(DEVICE.parse().unwrap()));
    }

    #[test]
    fn rejects_other_spellings() {
        for text in [
            "",
            "device",
            "device/",
            &format!("device/{DEVICE}/e0"),
            &format!("device/{DEVICE}/e01"),
            &format!("device/{DEVICE}/e"),
            &format!("device/{DEVICE}/e1/x"),
            &format!("device/{DEVICE}/"),
            &format!("branch/{BRANCH}"),
            &format!("branch/{BRANCH}/facts"),
            &format!("branch/{BRANCH}/intents/e99999999999"),
            "device/00000000-0000-0000-0000-000000000000",
            &"x".repeat(200),
        ] {
            assert!(DocId::parse(text).is_err(), "{text:?} parsed");
        }
    }
}
