//! Admission control: the hub's "come back later". After an outage thousands of Pis reconnect
//! within seconds; each new session costs a handshake and a first merge of everything the
//! device wrote offline. Admitting them all at once would flatten the hub (and Postgres), so
//! the hub admits a session only while
//!
//! - fewer than `sessions_max` sessions are admitted in this process,
//! - fewer than `admitting_max` admitted sessions are still in their first exchange (until
//!   their first `Sync` is merged or their first heartbeat arrives), and
//! - the merge workers' queue holds fewer than `merge_backlog_max` jobs;
//!
//! otherwise it answers `Busy{retry_after_ms}`: a base wait grown with the overload, plus
//! jitter, so the deferred devices come back spread out instead of in one wave (each device
//! adds its own jitter too). Counters are per process; several hub processes each protect
//! themselves.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use cartwise_sync_core::{Session, SessionEvent};
use rand::RngExt as _;

/// Admitted sessions per process when not configured (`serve --max-sessions`).
pub const SESSIONS_MAX_DEFAULT: usize = 10_000;
/// Sessions in their first exchange at once when not configured (`serve --max-admitting`).
pub const ADMITTING_MAX_DEFAULT: usize = 64;
/// Merge jobs waiting beyond which new sessions are deferred, when not configured.
pub const MERGE_BACKLOG_MAX_DEFAULT: usize = 2_048;
/// The shortest "come back later", before overload growth and jitter.
pub const RETRY_AFTER_MS_BASE: u32 = 5_000;
/// The longest "come back later".
pub const RETRY_AFTER_MS_MAX: u32 = 300_000;
/// How long a deferred connection stays open for the `Busy` to reach the device.
pub const BUSY_LINGER: Duration = Duration::from_secs(2);

/// The limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Most admitted sessions at once.
    pub sessions_max: usize,
    /// Most admitted sessions still in their first exchange.
    pub admitting_max: usize,
    /// Most merge jobs waiting before new sessions are deferred.
    pub merge_backlog_max: usize,
    /// The base of the `Busy` wait.
    pub retry_after_ms: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            sessions_max: SESSIONS_MAX_DEFAULT,
            admitting_max: ADMITTING_MAX_DEFAULT,
            merge_backlog_max: MERGE_BACKLOG_MAX_DEFAULT,
            retry_after_ms: RETRY_AFTER_MS_BASE,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    sessions: AtomicUsize,
    admitting: AtomicUsize,
}

/// The process's admission state; limits can be changed while serving.
#[derive(Debug)]
pub struct Admission {
    sessions_max: AtomicUsize,
    admitting_max: AtomicUsize,
    merge_backlog_max: AtomicUsize,
    retry_after_ms: AtomicU32,
    counters: Arc<Counters>,
}

impl Default for Admission {
    fn default() -> Self {
        Admission::new(AdmissionConfig::default())
    }
}

/// Where one connection is in admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// No decision yet.
    Waiting,
    /// Told to come back later.
    Deferred,
    /// Admitted, first exchange not over.
    Admitting,
    /// Admitted and past its first exchange.
    Settled,
}

/// One connection's place in the counters; leaves them when dropped.
#[derive(Debug)]
pub struct Ticket {
    counters: Arc<Counters>,
    stage: Stage,
}

/// What the session loop does with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Handle it as usual.
    Handle,
    /// Handle it; it ends the session's first exchange.
    HandleThenSettle,
    /// Do not handle it: the peer was told `Busy` and the session is closing.
    Deferred,
}

impl Admission {
    /// Admission with `config`'s limits.
    pub fn new(config: AdmissionConfig) -> Self {
        let admission = Admission {
            sessions_max: AtomicUsize::new(0),
            admitting_max: AtomicUsize::new(0),
            merge_backlog_max: AtomicUsize::new(0),
            retry_after_ms: AtomicU32::new(0),
            counters: Arc::default(),
        };
        admission.configure(config);
        admission
    }

    /// Replaces the limits (sessions already admitted stay).
    pub fn configure(&self, config: AdmissionConfig) {
        self.sessions_max
            .store(config.sessions_max.max(1), Ordering::Relaxed);
        self.admitting_max
            .store(config.admitting_max.max(1), Ordering::Relaxed);
        self.merge_backlog_max
            .store(config.merge_backlog_max.max(1), Ordering::Relaxed);
        self.retry_after_ms
            .store(config.retry_after_ms.max(1), Ordering::Relaxed);
    }

    /// A ticket for a new connection (counted once admitted).
    pub fn ticket(&self) -> Ticket {
        Ticket {
            counters: Arc::clone(&self.counters),
            stage: Stage::Waiting,
        }
    }

    /// Admitted sessions now.
    pub fn sessions(&self) -> usize {
        self.counters.sessions.load(Ordering::Relaxed)
    }

    /// Admitted sessions still in their first exchange.
    pub fn admitting(&self) -> usize {
        self.counters.admitting.load(Ordering::Relaxed)
    }

    /// The admitted-sessions limit.
    pub fn sessions_max(&self) -> usize {
        self.sessions_max.load(Ordering::Relaxed)
    }

    /// The merge backlog beyond which new sessions are deferred.
    pub fn merge_backlog_max(&self) -> usize {
        self.merge_backlog_max.load(Ordering::Relaxed)
    }

    /// Decides for a ticket: `Ok` counts it as admitted (and admitting); `Err` is the wait to
    /// answer with `Busy`.
    pub fn decide(&self, ticket: &mut Ticket, merge_backlog: usize) -> Result<(), u32> {
        match ticket.stage {
            Stage::Waiting => {}
            Stage::Deferred => return Err(self.retry_after_ms(1.0)),
            Stage::Admitting | Stage::Settled => return Ok(()),
        }
        let sessions_max = self.sessions_max.load(Ordering::Relaxed);
        let admitting_max = self.admitting_max.load(Ordering::Relaxed);
        let backlog_max = self.merge_backlog_max.load(Ordering::Relaxed);
        let sessions = self.counters.sessions.fetch_add(1, Ordering::AcqRel) + 1;
        let admitting = self.counters.admitting.fetch_add(1, Ordering::AcqRel) + 1;
        let overload = [
            ratio(sessions, sessions_max),
            ratio(admitting, admitting_max),
            ratio(merge_backlog + 1, backlog_max),
        ]
        .into_iter()
        .fold(0.0_f64, f64::max);
        if overload <= 1.0 {
            ticket.stage = Stage::Admitting;
            crate::metrics::inc(&crate::metrics::global().sync_sessions_admitted);
            return Ok(());
        }
        crate::metrics::inc(&crate::metrics::global().sync_sessions_busy);
        self.counters.sessions.fetch_sub(1, Ordering::AcqRel);
        self.counters.admitting.fetch_sub(1, Ordering::AcqRel);
        ticket.stage = Stage::Deferred;
        Err(self.retry_after_ms(overload))
    }

    /// The wait for an overload (1.0 = at the limit): the base times the overload, plus up to
    /// one base of jitter, capped at [`RETRY_AFTER_MS_MAX`].
    fn retry_after_ms(&self, overload: f64) -> u32 {
        let base = f64::from(self.retry_after_ms.load(Ordering::Relaxed));
        let grown = base * overload.clamp(1.0, 60.0);
        let jitter = rand::rng().random_range(0.0..=base);
        let total = (grown + jitter).min(f64::from(RETRY_AFTER_MS_MAX));
        total as u32
    }

    /// The session loop's hook, called with every event before it is handled: a `PeerHello`
    /// is admitted or answered `Busy` (then the event is not handled); the first `Sync` or
    /// heartbeat ends the first exchange once handled ([`Ticket::after`]).
    pub fn step(
        &self,
        ticket: &mut Ticket,
        session: &mut Session,
        event: &SessionEvent,
        merge_backlog: usize,
    ) -> Step {
        match event {
            SessionEvent::PeerHello(_) => match self.decide(ticket, merge_backlog) {
                Ok(()) => Step::Handle,
                Err(retry_after_ms) => {
                    if let Err(error) = session.busy(retry_after_ms) {
                        tracing::warn!(%error, "deferring a session failed");
                    }
                    tracing::info!(
                        retry_after_ms,
                        "hub busy: a device was asked to come back later"
                    );
                    Step::Deferred
                }
            },
            SessionEvent::SyncReceived(_) | SessionEvent::Heartbeat(_)
                if ticket.stage == Stage::Admitting =>
            {
                Step::HandleThenSettle
            }
            _ => Step::Handle,
        }
    }
}

impl Ticket {
    /// After the event was handled: a first exchange that ended leaves the admitting count.
    pub fn after(&mut self, step: Step) {
        if step == Step::HandleThenSettle && self.stage == Stage::Admitting {
            self.counters.admitting.fetch_sub(1, Ordering::AcqRel);
            self.stage = Stage::Settled;
        }
    }

    /// Whether the peer was told to come back later.
    pub fn deferred(&self) -> bool {
        self.stage == Stage::Deferred
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        match self.stage {
            Stage::Admitting => {
                self.counters.admitting.fetch_sub(1, Ordering::AcqRel);
                self.counters.sessions.fetch_sub(1, Ordering::AcqRel);
            }
            Stage::Settled => {
                self.counters.sessions.fetch_sub(1, Ordering::AcqRel);
            }
            Stage::Waiting | Stage::Deferred => {}
        }
    }
}

/// `count / max` as a load factor.
fn ratio(count: usize, max: usize) -> f64 {
    count as f64 / max.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tight() -> Admission {
        Admission::new(AdmissionConfig {
            sessions_max: 3,
            admitting_max: 2,
            merge_backlog_max: 100,
            retry_after_ms: 1_000,
        })
    }

    #[test]
    fn admits_up_to_the_admitting_limit_then_defers_with_a_jittered_wait() {
        let admission = tight();
        let mut first = admission.ticket();
        let mut second = admission.ticket();
        let mut third = admission.ticket();
        assert_eq!(admission.decide(&mut first, 0), Ok(()));
        assert_eq!(admission.decide(&mut second, 0), Ok(()));
        let wait = admission.decide(&mut third, 0).unwrap_err();
        assert!((1_000..=RETRY_AFTER_MS_MAX).contains(&wait), "{wait}");
        assert!(third.deferred());
        assert_eq!(admission.admitting(), 2);
        // The first exchange of one session ends: room for one more.
        first.after(Step::HandleThenSettle);
        assert_eq!(admission.admitting(), 1);
        let mut fourth = admission.ticket();
        assert_eq!(admission.decide(&mut fourth, 0), Ok(()));
        assert_eq!(admission.sessions(), 3);
    }

    #[test]
    fn the_session_limit_and_the_merge_backlog_defer_too() {
        let admission = tight();
        let mut tickets: Vec<Ticket> = (0..3).map(|_| admission.ticket()).collect();
        for ticket in &mut tickets {
            assert_eq!(admission.decide(ticket, 0), Ok(()));
            ticket.after(Step::HandleThenSettle);
        }
        let mut over = admission.ticket();
        assert!(admission.decide(&mut over, 0).is_err());
        drop(tickets.pop());
        assert_eq!(admission.sessions(), 2);
        let mut backlogged = admission.ticket();
        assert!(admission.decide(&mut backlogged, 100).is_err());
        assert!(
            admission.decide(&mut backlogged, 0).is_err(),
            "a deferred ticket stays deferred"
        );
        let mut fresh = admission.ticket();
        assert_eq!(admission.decide(&mut fresh, 0), Ok(()));
    }

    #[test]
    fn dropping_tickets_releases_their_counts() {
        let admission = tight();
        {
            let mut a = admission.ticket();
            let mut b = admission.ticket();
            admission.decide(&mut a, 0).unwrap();
            admission.decide(&mut b, 0).unwrap();
            b.after(Step::HandleThenSettle);
            assert_eq!((admission.sessions(), admission.admitting()), (2, 1));
        }
        assert_eq!((admission.sessions(), admission.admitting()), (0, 0));
    }

    #[test]
    fn the_wait_grows_with_overload_and_is_capped() {
        let admission = tight();
        for _ in 0..100 {
            let at_limit = admission.retry_after_ms(1.0);
            assert!((1_000..=2_000).contains(&at_limit), "{at_limit}");
            let far_over = admission.retry_after_ms(1_000.0);
            assert!(far_over <= RETRY_AFTER_MS_MAX);
            assert!(far_over >= 60_000, "{far_over}");
        }
    }
}
