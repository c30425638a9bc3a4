//! The node's timeline of boots and the wall-clock correction of each.
//!
//! A Pi has no real-time clock: a boot may start with its wall clock hours off. Every boot is
//! recorded (`boots` table) with its first and last (wall, monotonic) readings. A boot's
//! correction is either **learned** from a trusted source (the hub, a technician,
//! `cartwise-edge time set`) or, until then, **estimated**: the boot is assumed to start no
//! earlier than the previous boot ended, so a clock that came up set back never makes time run
//! backwards (a rental never turns overdue early or late because of it); a clock that came up
//! ahead is believed until a trusted source says otherwise. Durations within a boot always use
//! the monotonic clock.

use cartwise_schema::{
    BootId, BootOffset, BootOffsets, ClockReading, MonoMillis, Stamp, WallMillis, duration_ms,
};
use rusqlite::{Connection, params};

use crate::store::StoreError;

/// One boot of this node as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootRecord {
    pub boot: BootId,
    pub seq: i64,
    pub first_wall: WallMillis,
    pub first_mono: MonoMillis,
    pub last_wall: WallMillis,
    pub last_mono: MonoMillis,
    /// The correction learned from a trusted source, if any.
    pub learned: Option<BootOffset>,
}

/// Every boot in order and the correction in force for each.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    boots: Vec<BootRecord>,
    effective: BootOffsets,
}

impl Timeline {
    /// Loads every recorded boot.
    pub fn load(conn: &Connection) -> Result<Self, StoreError> {
        let mut stmt = conn.prepare(
            "SELECT boot_id, seq, first_wall_ms, first_mono_ms, last_wall_ms, last_mono_ms,
                    offset_mono_ms, offset_local_wall_ms, offset_trusted_wall_ms
             FROM boots ORDER BY seq",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                [row.get::<_, i64>(2)?, row.get(3)?, row.get(4)?, row.get(5)?],
                (
                    row.get::<_, Option<i64>>(6)?,
                    row.get::<_, Option<i64>>(7)?,
                    row.get::<_, Option<i64>>(8)?,
                ),
            ))
        })?;
        let mut boots = Vec::new();
        for row in rows {
            let (boot, seq, [first_wall, first_mono, last_wall, last_mono], learned) = row?;
            let boot = BootId::parse(&boot).map_err(|e| StoreError::Rejected(e.to_string()))?;
            let learned = match learned {
                (Some(mono), Some(local), Some(trusted)) => Some(BootOffset::learn(
                    boot,
                    mono_of(mono),
                    WallMillis::new(local),
                    WallMillis::new(trusted),
                )),
                _ => None,
            };
            boots.push(BootRecord {
                boot,
                seq,
                first_wall: WallMillis::new(first_wall),
                first_mono: mono_of(first_mono),
                last_wall: WallMillis::new(last_wall),
                last_mono: mono_of(last_mono),
                learned,
            });
        }
        let mut timeline = Self {
            boots,
            effective: BootOffsets::new(),
        };
        timeline.recompute();
        Ok(timeline)
    }

    /// Records `now`: a new boot the first time it is seen, otherwise the boot's last reading.
    pub fn note(&mut self, conn: &Connection, now: ClockReading) -> Result<(), StoreError> {
        let wall = now.wall.get();
        let mono = to_sql_mono(now.mono);
        match self.boots.iter_mut().find(|b| b.boot == now.boot) {
            Some(record) => {
                if now.mono < record.last_mono {
                    return Ok(());
                }
                conn.execute(
                    "UPDATE boots SET last_wall_ms = ?1, last_mono_ms = ?2 WHERE boot_id = ?3",
                    params![wall, mono, now.boot.to_string()],
                )?;
                record.last_wall = now.wall;
                record.last_mono = now.mono;
            }
            None => {
                let seq = self.boots.last().map_or(1, |b| b.seq + 1);
                conn.execute(
                    "INSERT INTO boots (boot_id, seq, first_wall_ms, first_mono_ms, last_wall_ms,
                                        last_mono_ms) VALUES (?1, ?2, ?3, ?4, ?3, ?4)",
                    params![now.boot.to_string(), seq, wall, mono],
                )?;
                self.boots.push(BootRecord {
                    boot: now.boot,
                    seq,
                    first_wall: now.wall,
                    first_mono: now.mono,
                    last_wall: now.wall,
                    last_mono: now.mono,
                    learned: None,
                });
            }
        }
        self.recompute();
        Ok(())
    }

    /// Stores a trusted observation of the current boot's clock and recomputes every boot's
    /// correction. Returns the learned offset in milliseconds (trusted − local).
    pub fn learn(
        &mut self,
        conn: &Connection,
        offset: BootOffset,
        source: &str,
    ) -> Result<i64, StoreError> {
        let record = self
            .boots
            .iter_mut()
            .find(|b| b.boot == offset.boot)
            .ok_or_else(|| StoreError::Rejected(format!("boot {} is not recorded", offset.boot)))?;
        conn.execute(
            "UPDATE boots SET offset_mono_ms = ?1, offset_local_wall_ms = ?2,
                              offset_trusted_wall_ms = ?3, offset_source = ?4
             WHERE boot_id = ?5",
            params![
                to_sql_mono(offset.mono),
                offset.local_wall.get(),
                offset.trusted_wall.get(),
                source,
                offset.boot.to_string()
            ],
        )?;
        record.learned = Some(offset);
        self.recompute();
        Ok(offset.offset_ms())
    }

    /// Whether the boot's correction was learned from a trusted source.
    pub fn is_learned(&self, boot: &BootId) -> bool {
        self.boots
            .iter()
            .any(|b| b.boot == *boot && b.learned.is_some())
    }

    /// The best known true wall time of `stamp`.
    pub fn corrected(&self, stamp: &Stamp) -> WallMillis {
        self.effective.corrected_wall(stamp).wall()
    }

    /// The best known true wall time of a clock reading.
    pub fn corrected_reading(&self, reading: &ClockReading) -> WallMillis {
        match self.effective.get(&reading.boot) {
            Some(offset) => offset.trusted_wall_at(reading.mono),
            None => reading.wall,
        }
    }

    /// Milliseconds from `start` to `end`: monotonic within a boot, corrected wall otherwise.
    pub fn elapsed_ms(&self, start: &Stamp, end: &Stamp) -> i64 {
        duration_ms(start, end, &self.effective).ms
    }

    /// Every boot, oldest first.
    pub fn boots(&self) -> &[BootRecord] {
        &self.boots
    }

    /// Learned corrections where known; elsewhere the estimate that time never runs backwards
    /// across a reboot.
    fn recompute(&mut self) {
        let mut effective = BootOffsets::new();
        let mut previous_end: Option<WallMillis> = None;
        for record in &self.boots {
            let offset = record.learned.unwrap_or_else(|| {
                let trusted = match previous_end {
                    Some(end) if end > record.first_wall => end,
                    _ => record.first_wall,
                };
                BootOffset::learn(record.boot, record.first_mono, record.first_wall, trusted)
            });
            previous_end = Some(offset.trusted_wall_at(record.last_mono));
            effective.learn(offset);
        }
        self.effective = effective;
    }
}

fn mono_of(ms: i64) -> MonoMillis {
    MonoMillis::new(u64::try_from(ms).unwrap_or(0))
}

/// Monotonic milliseconds as SQLite's signed integer.
pub fn to_sql_mono(mono: MonoMillis) -> i64 {
    i64::try_from(mono.get()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use cartwise_schema::{Hlc, WallMillis};

    use super::*;
    use crate::store::open_connection;

    const HOUR: i64 = 3_600_000;

    fn reading(boot: u128, wall: i64, mono: u64) -> ClockReading {
        ClockReading {
            wall: WallMillis::new(wall),
            boot: cartwise_fixtures::clock::boot_id(boot),
            mono: MonoMillis::new(mono),
        }
    }

    fn stamp(r: ClockReading) -> Stamp {
        Stamp {
            wall: r.wall,
            boot: r.boot,
            mono: r.mono,
            hlc: Hlc::zero(0),
        }
    }

    #[test]
    fn a_boot_whose_clock_came_up_set_back_continues_from_the_previous_boot() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_connection(&dir.path().join("edge.db")).unwrap();
        let mut timeline = Timeline::load(&conn).unwrap();
        let t0 = 1_800_000_000_000;
        let start = reading(1, t0, 1_000);
        timeline.note(&conn, start).unwrap();
        timeline
            .note(&conn, reading(1, t0 + HOUR, 1_000 + HOUR as u64))
            .unwrap();
        // Reboot: the clock comes up 5 hours in the past, 60 s after boot.
        let after = reading(2, t0 - 5 * HOUR, 60_000);
        timeline.note(&conn, after).unwrap();
        let later = reading(2, t0 - 5 * HOUR + 30 * 60_000, 60_000 + 30 * 60_000);
        timeline.note(&conn, later).unwrap();
        // Elapsed is at least the time actually counted: 1 h before the reboot + 30 min after.
        let elapsed = timeline.elapsed_ms(&stamp(start), &stamp(later));
        assert_eq!(elapsed, HOUR + 30 * 60_000);

        // A trusted source then says the reboot took 10 minutes: the correction applies.
        let trusted = t0 + HOUR + 10 * 60_000 + 30 * 60_000;
        let offset =
            BootOffset::learn(later.boot, later.mono, later.wall, WallMillis::new(trusted));
        timeline.learn(&conn, offset, "test").unwrap();
        assert_eq!(
            timeline.elapsed_ms(&stamp(start), &stamp(later)),
            HOUR + 40 * 60_000
        );

        // And it survives a reload from the database.
        let reloaded = Timeline::load(&conn).unwrap();
        assert_eq!(
            reloaded.elapsed_ms(&stamp(start), &stamp(later)),
            HOUR + 40 * 60_000
        );
        assert!(reloaded.is_learned(&later.boot));
    }

    #[test]
    fn a_boot_whose_clock_is_ahead_is_believed_until_corrected() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_connection(&dir.path().join("edge.db")).unwrap();
        let mut timeline = Timeline::load(&conn).unwrap();
        let start = reading(1, 1_000_000, 0);
        timeline.note(&conn, start).unwrap();
        let next = reading(2, 1_000_000 + 3 * HOUR, 0);
        timeline.note(&conn, next).unwrap();
        assert_eq!(timeline.elapsed_ms(&stamp(start), &stamp(next)), 3 * HOUR);
        assert!(
            Timeline::load(&conn)
                .unwrap()
                .boots()
                .iter()
                .any(|b| b.boot == next.boot)
        );
    }
}
