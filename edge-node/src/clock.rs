//! The edge's real clocks: the wall clock, the kernel's boot id, and monotonic time since boot.
//!
//! Monotonic time is anchored on `/proc/uptime` at start-up and advanced with `Instant`, so it
//! keeps counting across restarts of the process within one boot; the boot id is the kernel's
//! (`/proc/sys/kernel/random/boot_id`), so a reboot — and only a reboot — starts a new boot.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use cartwise_schema::{BootId, Clock, ClockReading, MonoMillis, WallMillis};

const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";
const UPTIME_PATH: &str = "/proc/uptime";

/// The system's clocks.
#[derive(Debug)]
pub struct SystemClock {
    boot: BootId,
    uptime_at_start_ms: u64,
    started: Instant,
}

impl SystemClock {
    /// Reads the boot id and uptime once. Where `/proc` does not have them (not Linux), the
    /// process start counts as a boot: durations then stay exact within one run.
    pub fn new() -> Self {
        let boot = std::fs::read_to_string(BOOT_ID_PATH)
            .ok()
            .and_then(|text| BootId::parse(text.trim()).ok())
            .unwrap_or_else(|| BootId::from_uuid(uuid::Uuid::new_v4()));
        let uptime_at_start_ms = std::fs::read_to_string(UPTIME_PATH)
            .ok()
            .and_then(|text| parse_uptime_ms(&text))
            .unwrap_or(0);
        Self {
            boot,
            uptime_at_start_ms,
            started: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn read(&self) -> ClockReading {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let elapsed = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        ClockReading {
            wall: WallMillis::new(wall),
            boot: self.boot,
            mono: MonoMillis::new(self.uptime_at_start_ms.saturating_add(elapsed)),
        }
    }
}

/// The first field of `/proc/uptime` ("12345.67 ...") in milliseconds.
fn parse_uptime_ms(text: &str) -> Option<u64> {
    let seconds: f64 = text.split_whitespace().next()?.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then_some((seconds * 1000.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_is_read_in_milliseconds_and_garbage_is_refused() {
        assert_eq!(parse_uptime_ms("350735.47 234388.90\n"), Some(350_735_470));
        assert_eq!(parse_uptime_ms(""), None);
        assert_eq!(parse_uptime_ms("-1 2"), None);
        assert_eq!(parse_uptime_ms("NaN 2"), None);
    }

    #[test]
    fn monotonic_time_does_not_go_backwards() {
        let clock = SystemClock::new();
        let first = clock.read();
        let second = clock.read();
        assert_eq!(first.boot, second.boot);
        assert!(second.mono >= first.mono);
    }
}
