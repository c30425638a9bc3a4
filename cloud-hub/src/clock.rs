//! The hub's clocks for sync sessions: its wall clock (the fleet's trusted time; run the hub
//! with NTP) and a monotonic clock counted from process start, which is the hub's "boot".

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use cartwise_schema::{BootId, Clock, ClockReading, MonoMillis, WallMillis};

/// The system clocks of one hub process.
#[derive(Debug)]
pub struct HubClock {
    boot: BootId,
    started: Instant,
}

impl HubClock {
    pub fn new() -> Self {
        Self {
            boot: BootId::from_uuid(uuid::Uuid::new_v4()),
            started: Instant::now(),
        }
    }
}

impl Default for HubClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for HubClock {
    fn read(&self) -> ClockReading {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        ClockReading {
            wall: WallMillis::new(wall),
            boot: self.boot,
            mono: MonoMillis::new(
                u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            ),
        }
    }
}
