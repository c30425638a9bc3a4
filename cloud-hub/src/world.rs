//! The seed file format: a world of chains, branches, devices and their KR-CU16 boards.
//!
//! This is a storage type (it derives `Deserialize`); `seed` turns it into rows.

use serde::Deserialize;
use uuid::Uuid;

/// Posts on one KR-CU16 board.
pub const POSTS_PER_BOARD: i32 = 16;

/// A whole seed file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct World {
    /// Every chain (tenant).
    pub chains: Vec<Chain>,
}

/// A chain (tenant).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chain {
    pub id: Uuid,
    pub name: String,
    pub slug: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub branches: Vec<Branch>,
}

/// A branch of a chain.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Branch {
    pub id: Uuid,
    pub name: String,
    pub branch_code: String,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub city: Option<String>,
    #[serde(default)]
    pub latitude: Option<f64>,
    #[serde(default)]
    pub longitude: Option<f64>,
    #[serde(default)]
    pub devices: Vec<Device>,
}

/// A Raspberry Pi of a branch and the boards on its RS485 port.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    pub id: Uuid,
    pub device_name: String,
    #[serde(default)]
    pub mac_address: Option<String>,
    #[serde(default)]
    pub serial_number: Option<String>,
    /// The serial port the RS485 adapter appears as.
    pub port: String,
    #[serde(default = "default_baudrate")]
    pub baudrate: i32,
    /// KR-CU16 board addresses (DIP switch, 0–9).
    pub boards: Vec<u8>,
    /// The number of the first post; posts follow in board-address order, 16 per board.
    #[serde(default = "default_first_post")]
    pub first_post_number: i32,
}

fn default_baudrate() -> i32 {
    19_200
}

fn default_first_post() -> i32 {
    1
}

/// What is wrong with a seed file.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    /// Not valid TOML, or fields missing or of the wrong type.
    #[error("the seed file is not valid: {0}")]
    Parse(#[from] toml::de::Error),
    /// A board address outside 0–9 or listed twice on one device.
    #[error("device {device}: board addresses must be distinct and within 0–9, got {boards:?}")]
    Boards { device: String, boards: Vec<u8> },
    /// Two devices of a branch give the same post number.
    #[error("branch {branch}: post number {post} is used by two devices; set first_post_number")]
    PostClash { branch: String, post: i32 },
}

impl World {
    /// Parses and checks a seed file's text.
    pub fn parse(text: &str) -> Result<Self, WorldError> {
        let world: World = toml::from_str(text)?;
        world.check()?;
        Ok(world)
    }

    fn check(&self) -> Result<(), WorldError> {
        for branch in self.chains.iter().flat_map(|chain| &chain.branches) {
            let mut posts = std::collections::BTreeSet::new();
            for device in &branch.devices {
                let mut sorted = device.boards.clone();
                sorted.sort_unstable();
                sorted.dedup();
                if sorted.len() != device.boards.len() || sorted.iter().any(|&b| b > 9) {
                    return Err(WorldError::Boards {
                        device: device.device_name.clone(),
                        boards: device.boards.clone(),
                    });
                }
                for post in device.posts().map(|p| p.cart_number) {
                    if !posts.insert(post) {
                        return Err(WorldError::PostClash {
                            branch: branch.branch_code.clone(),
                            post,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

impl World {
    /// Every device as a tab-separated line: device id, branch id, branch code, device name,
    /// boards (comma separated), first post number.
    pub fn device_table(&self) -> String {
        let mut out = String::new();
        for branch in self.chains.iter().flat_map(|c| &c.branches) {
            for d in &branch.devices {
                let boards: Vec<String> = d.boards.iter().map(u8::to_string).collect();
                out.push_str(&format!(
                    "{}\t{}\t{}\t{}\t{}\t{}\n",
                    d.id,
                    branch.id,
                    branch.branch_code,
                    d.device_name,
                    boards.join(","),
                    d.first_post_number
                ));
            }
        }
        out
    }
}

/// One post (a `carts` row) of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Post {
    /// The board's address.
    pub board: u8,
    /// Post number within the branch (`carts.cart_number`).
    pub cart_number: i32,
    /// Zero-based post index (`carts.locker_id`), as the existing kiosk API reports it.
    pub locker_id: i32,
}

impl Device {
    /// The device's posts in board-address order.
    pub fn posts(&self) -> impl Iterator<Item = Post> + '_ {
        let mut boards = self.boards.clone();
        boards.sort_unstable();
        boards
            .into_iter()
            .enumerate()
            .flat_map(move |(nth, board)| {
                let first = self.first_post_number + POSTS_PER_BOARD * nth as i32;
                (0..POSTS_PER_BOARD).map(move |lock| Post {
                    board,
                    cart_number: first + lock,
                    locker_id: first + lock - 1,
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posts_follow_board_address_order_from_the_first_number() {
        let device = Device {
            id: Uuid::nil(),
            device_name: "pi".into(),
            mac_address: None,
            serial_number: None,
            port: "/dev/ttyUSB0".into(),
            baudrate: 19_200,
            boards: vec![1, 0],
            first_post_number: 33,
        };
        let posts: Vec<Post> = device.posts().collect();
        assert_eq!(posts.len(), 32);
        assert_eq!(
            posts[0],
            Post {
                board: 0,
                cart_number: 33,
                locker_id: 32
            }
        );
        assert_eq!(
            posts[16],
            Post {
                board: 1,
                cart_number: 49,
                locker_id: 48
            }
        );
    }

    #[test]
    fn clashing_post_numbers_are_refused() {
        let text = r#"
            [[chains]]
            id = "00000000-0000-4000-8000-000000000001"
            name = "c"
            slug = "c"
            [[chains.branches]]
            id = "00000000-0000-4000-8000-000000000002"
            name = "b"
            branch_code = "B"
            [[chains.branches.devices]]
            id = "00000000-0000-4000-8000-000000000003"
            device_name = "one"
            port = "/dev/ttyUSB0"
            boards = [0]
            [[chains.branches.devices]]
            id = "00000000-0000-4000-8000-000000000004"
            device_name = "two"
            port = "/dev/ttyUSB0"
            boards = [0]
        "#;
        let err = World::parse(text).map(|_| ()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "branch B: post number 1 is used by two devices; set first_post_number"
        );
    }

    #[test]
    fn board_addresses_past_nine_are_refused() {
        let text = r#"
            [[chains]]
            id = "00000000-0000-4000-8000-000000000001"
            name = "c"
            slug = "c"
            [[chains.branches]]
            id = "00000000-0000-4000-8000-000000000002"
            name = "b"
            branch_code = "B"
            [[chains.branches.devices]]
            id = "00000000-0000-4000-8000-000000000003"
            device_name = "one"
            port = "/dev/ttyUSB0"
            boards = [10]
        "#;
        assert!(matches!(World::parse(text), Err(WorldError::Boards { .. })));
    }
}
