//! Hardware addresses of a post: the KR-CU16 board address (`BoardAddr`), the lock on a board
//! (`LockNo`) and the post number within a device (`PostNo`), with conversions between them.
//!
//! A device numbers its posts 1..=16·N contiguously in board-address order, 16 per board, for
//! boards at addresses 0..N-1: board 0 holds posts 1..=16, board 1 posts 17..=32, and so on.
//! The legacy kiosk API's `locker_id` is the zero-based post index (`PostNo - 1`). A branch
//! with several devices offsets each device's range (`first_post_number` in the fixtures) to
//! form `carts.cart_number`; that offset is configuration, not part of `PostNo`.

use std::fmt;
use std::str::FromStr;

/// Boards one device drives on its RS485 bus: DIP addresses 0..=9.
pub const BOARDS_PER_DEVICE_MAX: u8 = 10;
/// Locks on one KR-CU16 board.
pub const LOCKS_PER_BOARD: u8 = 16;
/// Posts one device can have: 16 locks on each of 10 boards.
pub const POSTS_PER_DEVICE_MAX: u16 = BOARDS_PER_DEVICE_MAX as u16 * LOCKS_PER_BOARD as u16;

/// Why a board address, lock number, post number or board count was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    /// A board address outside the DIP-switch range.
    #[error("board address {value} is out of range: a KR-CU16 board address is 0..=9")]
    BoardAddrOutOfRange {
        /// The rejected value.
        value: u64,
    },
    /// A lock number outside 1..=16.
    #[error("lock number {value} is out of range: a KR-CU16 board has locks 1..=16")]
    LockNoOutOfRange {
        /// The rejected value.
        value: u64,
    },
    /// A zero-based lock index outside 0..=15.
    #[error("lock index {value} is out of range: lock indices on a board are 0..=15")]
    LockIndexOutOfRange {
        /// The rejected value.
        value: u64,
    },
    /// A post number outside 1..=160.
    #[error(
        "post number {value} is out of range: a device's posts are numbered 1..=160 \
         (16 per board, at most 10 boards)"
    )]
    PostNoOutOfRange {
        /// The rejected value.
        value: u64,
    },
    /// A legacy `locker_id` outside 0..=159.
    #[error("locker id {value} is out of range: locker ids are 0..=159 (post number minus one)")]
    LockerIdOutOfRange {
        /// The rejected value.
        value: u64,
    },
    /// A device's board count outside 1..=10.
    #[error("board count {value} is out of range: a device drives 1..=10 boards")]
    BoardCountOutOfRange {
        /// The rejected value.
        value: u8,
    },
    /// A board address at or above the device's board count.
    #[error(
        "board {board} is not on this device: with {board_count} boards the addresses are 0..={}",
        .board_count.saturating_sub(1)
    )]
    BoardNotOnDevice {
        /// The board that was asked for.
        board: BoardAddr,
        /// The device's board count.
        board_count: u8,
    },
    /// A post number above 16 × the device's board count.
    #[error(
        "post {post} is not on this device: with {board_count} boards the posts are 1..={}",
        u16::from(*.board_count) * u16::from(LOCKS_PER_BOARD)
    )]
    PostNotOnDevice {
        /// The post that was asked for.
        post: PostNo,
        /// The device's board count.
        board_count: u8,
    },
    /// The text is not a plain decimal number.
    #[error("invalid {kind} {input:?}: expected a decimal number {accepted}")]
    NotANumber {
        /// What was being parsed, e.g. "post number".
        kind: &'static str,
        /// The start of the rejected text.
        input: String,
        /// The accepted range, e.g. "1..=160".
        accepted: &'static str,
    },
}

/// Parses ASCII decimal digits only (no sign, no spaces); saturates at `u64::MAX` so that a
/// long number reports "out of range" rather than "not a number".
fn parse_decimal(
    input: &str,
    kind: &'static str,
    accepted: &'static str,
) -> Result<u64, PostError> {
    if input.is_empty() || !input.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(PostError::NotANumber {
            kind,
            input: crate::quoted_input(input),
            accepted,
        });
    }
    Ok(input.bytes().fold(0u64, |value, byte| {
        value
            .saturating_mul(10)
            .saturating_add(u64::from(byte - b'0'))
    }))
}

/// Checks a device's board count (1..=10).
fn check_board_count(board_count: u8) -> Result<(), PostError> {
    if board_count == 0 || board_count > BOARDS_PER_DEVICE_MAX {
        return Err(PostError::BoardCountOutOfRange { value: board_count });
    }
    Ok(())
}

/// A KR-CU16 board address on one RS485 bus, set by the board's DIP switch: 0..=9.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BoardAddr(u8);

impl BoardAddr {
    /// Validates a board address.
    pub const fn new(value: u8) -> Result<Self, PostError> {
        if value >= BOARDS_PER_DEVICE_MAX {
            return Err(PostError::BoardAddrOutOfRange {
                value: value as u64,
            });
        }
        Ok(Self(value))
    }

    /// The address, 0..=9.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// Every board address, in order.
    pub fn all() -> impl Iterator<Item = BoardAddr> {
        (0..BOARDS_PER_DEVICE_MAX).map(BoardAddr)
    }
}

/// A lock on a board, 1-based as printed on the board and in the vendor's docs: 1..=16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LockNo(u8);

impl LockNo {
    /// Validates a 1-based lock number.
    pub const fn new(value: u8) -> Result<Self, PostError> {
        if value == 0 || value > LOCKS_PER_BOARD {
            return Err(PostError::LockNoOutOfRange {
                value: value as u64,
            });
        }
        Ok(Self(value))
    }

    /// Validates a 0-based lock index (the low nibble of the KR-CU16 ADDR byte).
    pub const fn from_index(index: u8) -> Result<Self, PostError> {
        if index >= LOCKS_PER_BOARD {
            return Err(PostError::LockIndexOutOfRange {
                value: index as u64,
            });
        }
        Ok(Self(index + 1))
    }

    /// The 1-based lock number, 1..=16.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// The 0-based lock index, 0..=15.
    pub const fn index(self) -> u8 {
        self.0 - 1
    }

    /// Every lock of a board, in order.
    pub fn all() -> impl Iterator<Item = LockNo> {
        (1..=LOCKS_PER_BOARD).map(LockNo)
    }
}

/// A post (one lock and the cart docked in it) within one device, 1-based: 1..=160.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PostNo(u16);

impl PostNo {
    /// Validates a 1-based post number (1..=160). Whether the post exists on a given device
    /// depends on its board count; see [`PostNo::board_lock`].
    pub const fn new(value: u16) -> Result<Self, PostError> {
        if value == 0 || value > POSTS_PER_DEVICE_MAX {
            return Err(PostError::PostNoOutOfRange {
                value: value as u64,
            });
        }
        Ok(Self(value))
    }

    /// The post of a legacy `locker_id` (zero-based post index, 0..=159).
    pub const fn from_locker_id(locker_id: u16) -> Result<Self, PostError> {
        if locker_id >= POSTS_PER_DEVICE_MAX {
            return Err(PostError::LockerIdOutOfRange {
                value: locker_id as u64,
            });
        }
        Ok(Self(locker_id + 1))
    }

    /// The post wired to `lock` of `board`, on a device whose boards are at 0..board_count.
    pub fn from_board_lock(
        board: BoardAddr,
        lock: LockNo,
        board_count: u8,
    ) -> Result<Self, PostError> {
        check_board_count(board_count)?;
        if board.get() >= board_count {
            return Err(PostError::BoardNotOnDevice { board, board_count });
        }
        Ok(Self(
            u16::from(board.get()) * u16::from(LOCKS_PER_BOARD) + u16::from(lock.get()),
        ))
    }

    /// The board and lock of this post, on a device whose boards are at 0..board_count.
    pub fn board_lock(self, board_count: u8) -> Result<(BoardAddr, LockNo), PostError> {
        check_board_count(board_count)?;
        if self.0 > u16::from(board_count) * u16::from(LOCKS_PER_BOARD) {
            return Err(PostError::PostNotOnDevice {
                post: self,
                board_count,
            });
        }
        let index = self.0 - 1;
        let per_board = u16::from(LOCKS_PER_BOARD);
        // Both quotient and remainder are below 16 because `self.0 <= 160`.
        let board = BoardAddr((index / per_board) as u8);
        let lock = LockNo((index % per_board) as u8 + 1);
        Ok((board, lock))
    }

    /// The 1-based post number.
    pub const fn get(self) -> u16 {
        self.0
    }

    /// The legacy kiosk API's `locker_id`: the zero-based post index.
    pub const fn locker_id(self) -> u16 {
        self.0 - 1
    }
}

impl fmt::Display for BoardAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for LockNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for PostNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for BoardAddr {
    type Err = PostError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let value = parse_decimal(input, "board address", "0..=9")?;
        u8::try_from(value)
            .map_err(|_| PostError::BoardAddrOutOfRange { value })
            .and_then(Self::new)
    }
}

impl FromStr for LockNo {
    type Err = PostError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let value = parse_decimal(input, "lock number", "1..=16")?;
        u8::try_from(value)
            .map_err(|_| PostError::LockNoOutOfRange { value })
            .and_then(Self::new)
    }
}

impl FromStr for PostNo {
    type Err = PostError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let value = parse_decimal(input, "post number", "1..=160")?;
        u16::try_from(value)
            .map_err(|_| PostError::PostNoOutOfRange { value })
            .and_then(Self::new)
    }
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::*;

    fn check<T: FromStr<Err = PostError> + fmt::Display>(input: &str, expect: Expect) {
        let actual = match input.parse::<T>() {
            Ok(value) => format!("ok {value}"),
            Err(error) => format!("err {error}"),
        };
        expect.assert_eq(&actual);
    }

    #[test]
    fn parse_board_addr() {
        check::<BoardAddr>("0", expect![["ok 0"]]);
        check::<BoardAddr>("9", expect![["ok 9"]]);
        check::<BoardAddr>(
            "10",
            expect![["err board address 10 is out of range: a KR-CU16 board address is 0..=9"]],
        );
        check::<BoardAddr>(
            "300",
            expect![["err board address 300 is out of range: a KR-CU16 board address is 0..=9"]],
        );
        check::<BoardAddr>(
            "-1",
            expect![[r#"err invalid board address "-1": expected a decimal number 0..=9"#]],
        );
        check::<BoardAddr>(
            " 1",
            expect![[r#"err invalid board address " 1": expected a decimal number 0..=9"#]],
        );
    }

    #[test]
    fn parse_lock_no() {
        check::<LockNo>("1", expect![["ok 1"]]);
        check::<LockNo>("16", expect![["ok 16"]]);
        check::<LockNo>(
            "0",
            expect![["err lock number 0 is out of range: a KR-CU16 board has locks 1..=16"]],
        );
        check::<LockNo>(
            "17",
            expect![["err lock number 17 is out of range: a KR-CU16 board has locks 1..=16"]],
        );
        check::<LockNo>(
            "",
            expect![[r#"err invalid lock number "": expected a decimal number 1..=16"#]],
        );
    }

    #[test]
    fn parse_post_no() {
        check::<PostNo>("1", expect![["ok 1"]]);
        check::<PostNo>("160", expect![["ok 160"]]);
        check::<PostNo>("007", expect![["ok 7"]]);
        check::<PostNo>(
            "0",
            expect![[
                "err post number 0 is out of range: a device's posts are numbered 1..=160 (16 per board, at most 10 boards)"
            ]],
        );
        check::<PostNo>(
            "161",
            expect![[
                "err post number 161 is out of range: a device's posts are numbered 1..=160 (16 per board, at most 10 boards)"
            ]],
        );
        check::<PostNo>(
            "99999999999999999999999",
            expect![[
                "err post number 18446744073709551615 is out of range: a device's posts are numbered 1..=160 (16 per board, at most 10 boards)"
            ]],
        );
        check::<PostNo>(
            "+5",
            expect![[r#"err invalid post number "+5": expected a decimal number 1..=160"#]],
        );
        check::<PostNo>(
            "١",
            expect![[r#"err invalid post number "١": expected a decimal number 1..=160"#]],
        );
    }

    #[test]
    fn board_lock_post_round_trip_for_every_board_count() {
        for board_count in 1..=BOARDS_PER_DEVICE_MAX {
            let mut expected_post = 1;
            for board in BoardAddr::all().take(usize::from(board_count)) {
                for lock in LockNo::all() {
                    let post = PostNo::from_board_lock(board, lock, board_count).unwrap();
                    assert_eq!(post.get(), expected_post);
                    assert_eq!(post.board_lock(board_count), Ok((board, lock)));
                    assert_eq!(PostNo::from_locker_id(post.locker_id()), Ok(post));
                    expected_post += 1;
                }
            }
            assert_eq!(expected_post - 1, u16::from(board_count) * 16);
        }
    }

    #[test]
    fn conversions_reject_what_is_not_on_the_device() {
        let board1 = BoardAddr::new(1).unwrap();
        let lock16 = LockNo::new(16).unwrap();
        let post17 = PostNo::new(17).unwrap();
        let show = |result: Result<String, PostError>| match result {
            Ok(value) => format!("ok {value}"),
            Err(error) => format!("err {error}"),
        };
        let table = [
            show(PostNo::from_board_lock(board1, lock16, 2).map(|post| post.to_string())),
            show(PostNo::from_board_lock(board1, lock16, 1).map(|post| post.to_string())),
            show(PostNo::from_board_lock(board1, lock16, 0).map(|post| post.to_string())),
            show(PostNo::from_board_lock(board1, lock16, 11).map(|post| post.to_string())),
            show(
                post17
                    .board_lock(2)
                    .map(|(board, lock)| format!("board {board} lock {lock}")),
            ),
            show(
                post17
                    .board_lock(1)
                    .map(|(board, lock)| format!("board {board} lock {lock}")),
            ),
            show(PostNo::from_locker_id(160).map(|post| post.to_string())),
            show(LockNo::from_index(16).map(|lock| lock.to_string())),
        ];
        expect![[r#"
            ok 32
            err board 1 is not on this device: with 1 boards the addresses are 0..=0
            err board count 0 is out of range: a device drives 1..=10 boards
            err board count 11 is out of range: a device drives 1..=10 boards
            ok board 1 lock 1
            err post 17 is not on this device: with 1 boards the posts are 1..=16
            err locker id 160 is out of range: locker ids are 0..=159 (post number minus one)
            err lock index 16 is out of range: lock indices on a board are 0..=15"#]]
        .assert_eq(&table.join("\n"));
    }

    #[test]
    fn lock_index_is_zero_based() {
        assert_eq!(LockNo::new(1).unwrap().index(), 0);
        assert_eq!(LockNo::from_index(15).unwrap().get(), 16);
        assert_eq!(PostNo::new(1).unwrap().locker_id(), 0);
    }
}
