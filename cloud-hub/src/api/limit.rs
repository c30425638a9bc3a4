//! Fixed-window rate limits (login per login name and per client address, writes per user).
//!
//! Counters live in the process: with several hub processes behind one balancer a client gets
//! at most `processes × max` per window, which still stops password guessing. Each limiter keeps
//! at most `LIMITER_KEYS_MAX` keys and evicts expired windows, then the oldest, when full.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys one limiter tracks at most.
pub const LIMITER_KEYS_MAX: usize = 10_000;

/// At most `max` events per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Events allowed per window.
    pub max: u32,
    /// The window.
    pub window: Duration,
}

/// One limiter: a counter per key.
#[derive(Debug)]
pub struct Limiter {
    limit: RateLimit,
    windows: Mutex<HashMap<String, (Instant, u32)>>,
}

impl Limiter {
    /// A limiter enforcing `limit`.
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one event for `key`; `Err(seconds until the window ends)` if over the limit.
    pub fn hit(&self, key: &str, now: Instant) -> Result<(), u64> {
        let mut windows = match self.windows.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let window = self.limit.window;
        if !windows.contains_key(key) && windows.len() >= LIMITER_KEYS_MAX {
            windows.retain(|_, (start, _)| now.saturating_duration_since(*start) < window);
            if windows.len() >= LIMITER_KEYS_MAX {
                let oldest = windows
                    .iter()
                    .min_by_key(|(_, (start, _))| *start)
                    .map(|(key, _)| key.clone());
                if let Some(oldest) = oldest {
                    windows.remove(&oldest);
                }
            }
        }
        let entry = windows.entry(key.to_owned()).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= window {
            *entry = (now, 0);
        }
        if entry.1 >= self.limit.max {
            let left = window.saturating_sub(now.saturating_duration_since(entry.0));
            return Err(left.as_secs().max(1));
        }
        entry.1 += 1;
        Ok(())
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        match self.windows.lock() {
            Ok(guard) => guard.len(),
            Err(poisoned) => poisoned.into_inner().len(),
        }
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_max_per_window_then_waits() {
        let limiter = Limiter::new(RateLimit {
            max: 2,
            window: Duration::from_secs(60),
        });
        let t0 = Instant::now();
        assert!(limiter.hit("a", t0).is_ok());
        assert!(limiter.hit("a", t0).is_ok());
        assert_eq!(limiter.hit("a", t0 + Duration::from_secs(30)), Err(30));
        assert!(limiter.hit("b", t0).is_ok(), "keys are independent");
        assert!(limiter.hit("a", t0 + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn the_key_table_is_bounded() {
        let limiter = Limiter::new(RateLimit {
            max: 1,
            window: Duration::from_secs(60),
        });
        let t0 = Instant::now();
        for i in 0..LIMITER_KEYS_MAX + 10 {
            assert!(limiter.hit(&format!("k{i}"), t0).is_ok());
        }
        assert_eq!(limiter.len(), LIMITER_KEYS_MAX);
    }
}
