//! The SQL migrations of both stores, embedded as text: Postgres (run by the hub with sqlx)
//! and the edge's SQLite (run by the edge with `PRAGMA user_version` as the cursor).
//!
//! Migrations are numbered and forward-only; a shipped file is never edited.

/// One numbered migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Its number: 1, 2, 3, ... with no gaps.
    pub version: u32,
    /// A short name, from the file name.
    pub name: &'static str,
    /// The SQL to run, as one batch.
    pub sql: &'static str,
}

/// The edge's SQLite migrations, in order. After applying the first `n`, `user_version` is `n`.
pub const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "edge_store",
        sql: include_str!("../migrations/sqlite/0001_edge_store.sql"),
    },
    Migration {
        version: 2,
        name: "sync",
        sql: include_str!("../migrations/sqlite/0002_sync.sql"),
    },
    Migration {
        version: 3,
        name: "held_docs",
        sql: include_str!("../migrations/sqlite/0003_held_docs.sql"),
    },
    Migration {
        version: 4,
        name: "branch_peers",
        sql: include_str!("../migrations/sqlite/0004_branch_peers.sql"),
    },
    Migration {
        version: 5,
        name: "outbox",
        sql: include_str!("../migrations/sqlite/0005_outbox.sql"),
    },
    Migration {
        version: 6,
        name: "technicians",
        sql: include_str!("../migrations/sqlite/0006_technicians.sql"),
    },
];

/// The SQLite schema version a fully migrated edge store has.
pub const SQLITE_VERSION: u32 = SQLITE[SQLITE.len() - 1].version;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_migrations_are_numbered_from_one_without_gaps() {
        for (index, migration) in SQLITE.iter().enumerate() {
            assert_eq!(migration.version as usize, index + 1, "{}", migration.name);
            assert!(
                !migration.sql.trim().is_empty(),
                "{} is empty",
                migration.name
            );
        }
    }
}
