//! The edge's SQLite store: one thread owns the connection (and any state that must change in
//! the same transaction, such as the live Automerge documents); callers send jobs over a bounded
//! channel and get the result back on a oneshot. One job is one transaction.
//!
//! Durability: WAL with `synchronous = FULL`, so a job's effects are on disk when its reply
//! arrives. A job that fails, or whose commit fails, rolls back the transaction and asks the
//! owned state to reload itself from the database, so memory never runs ahead of disk.

use std::path::{Path, PathBuf};
use std::thread;

use cartwise_schema::migrations::{SQLITE, SQLITE_VERSION};
use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

/// How many jobs may wait for the store thread before callers wait to send.
pub const STORE_QUEUE_MAX: usize = 256;

/// Why a store job failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused an operation.
    #[error("local database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database file was written by a newer version of this program.
    #[error(
        "the local database at {path} is at schema version {found}, newer than this program's \
         {supported}; install the newer cartwise-edge or restore a backup"
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// The store thread has stopped (the process is shutting down or the thread failed).
    #[error("the local database is closed")]
    Closed,
    /// A job's own check failed; the transaction was rolled back.
    #[error("{0}")]
    Rejected(String),
    /// A peer's document or message was refused; the transaction was rolled back.
    #[error("refused: {0}")]
    Refused(#[from] crate::engine::DocRefusal),
}

/// State the store thread owns beside the connection and changes inside jobs.
pub trait StoreState: Send + 'static {
    /// Rebuilds the state from the database after a job was rolled back.
    fn reload(&mut self, conn: &Connection) -> Result<(), StoreError>;
}

/// No state besides the database.
impl StoreState for () {
    fn reload(&mut self, _conn: &Connection) -> Result<(), StoreError> {
        Ok(())
    }
}

type Job<S> = Box<dyn FnOnce(&mut Connection, &mut S) + Send>;

/// A handle to the store thread; cheap to clone.
pub struct Store<S> {
    jobs: mpsc::Sender<Job<S>>,
}

impl<S> Clone for Store<S> {
    fn clone(&self) -> Self {
        Self {
            jobs: self.jobs.clone(),
        }
    }
}

impl<S: StoreState> Store<S> {
    /// Opens (creating if needed) and migrates the database at `path`, builds the owned state
    /// with `init`, and starts the store thread.
    pub fn open(
        path: &Path,
        init: impl FnOnce(&mut Connection) -> Result<S, StoreError>,
    ) -> Result<Self, StoreError> {
        let mut conn = open_connection(path)?;
        let state = init(&mut conn)?;
        Ok(Self::spawn(conn, state))
    }

    fn spawn(mut conn: Connection, mut state: S) -> Self {
        let (jobs, mut rx) = mpsc::channel::<Job<S>>(STORE_QUEUE_MAX);
        let spawned = thread::Builder::new()
            .name("edge-store".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    job(&mut conn, &mut state);
                }
            });
        if let Err(err) = spawned {
            tracing::error!(%err, "cannot start the store thread");
        }
        Self { jobs }
    }

    /// Runs `f` in one immediate (write) transaction; commits when it returns `Ok`.
    pub async fn transact<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, &mut S) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        let job: Job<S> = Box::new(move |conn, state| {
            let outcome = run_in_transaction(conn, state, f);
            let _ = reply.send(outcome);
        });
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        result.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` with read access to the connection and the state, outside any write transaction.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &S) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        let job: Job<S> = Box::new(move |conn, state| {
            let _ = reply.send(f(conn, state));
        });
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        result.await.map_err(|_| StoreError::Closed)?
    }
}

fn run_in_transaction<S, T, F>(conn: &mut Connection, state: &mut S, f: F) -> Result<T, StoreError>
where
    S: StoreState,
    F: FnOnce(&Transaction<'_>, &mut S) -> Result<T, StoreError>,
{
    let outcome = (|| {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&tx, state)?;
        tx.commit()?;
        Ok(value)
    })();
    if outcome.is_err()
        && let Err(err) = state.reload(conn)
    {
        tracing::error!(%err, "reloading the live state after a rolled-back job failed");
    }
    outcome
}

/// Opens the database with the durability settings and applies pending migrations.
pub fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let mut conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    migrate(&mut conn, path)?;
    Ok(conn)
}

/// Applies every migration past `PRAGMA user_version`, each in its own transaction.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let found: u32 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if found > SQLITE_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found,
            supported: SQLITE_VERSION,
        });
    }
    for migration in SQLITE.iter().filter(|m| m.version > found) {
        let tx = conn.transaction()?;
        tx.execute_batch(migration.sql)?;
        tx.pragma_update(None, "user_version", migration.version)?;
        tx.commit()?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "migrated the local database"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_job_rolls_back_and_a_good_one_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store: Store<()> = Store::open(&dir.path().join("edge.db"), |_| Ok(())).unwrap();
        store
            .transact(|tx, _| {
                tx.execute("INSERT INTO meta (key, value) VALUES ('a', '1')", [])?;
                Ok(())
            })
            .await
            .unwrap();
        let failed = store
            .transact(|tx, _| -> Result<(), StoreError> {
                tx.execute("INSERT INTO meta (key, value) VALUES ('b', '2')", [])?;
                Err(StoreError::Rejected("no".into()))
            })
            .await;
        assert!(matches!(failed, Err(StoreError::Rejected(_))));
        let keys: Vec<String> = store
            .read(|conn, _| {
                let mut stmt = conn.prepare("SELECT key FROM meta ORDER BY key")?;
                let rows = stmt.query_map([], |row| row.get(0))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
            .unwrap();
        assert_eq!(keys, vec!["a".to_string()]);
    }

    #[test]
    fn migrating_twice_is_a_no_op_and_a_newer_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge.db");
        drop(open_connection(&path).unwrap());
        let conn = open_connection(&path).unwrap();
        let version: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SQLITE_VERSION);
        conn.pragma_update(None, "user_version", SQLITE_VERSION + 1)
            .unwrap();
        drop(conn);
        assert!(matches!(
            open_connection(&path),
            Err(StoreError::TooNew { .. })
        ));
    }

    #[test]
    fn the_store_enforces_one_open_rental_per_post() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_connection(&dir.path().join("edge.db")).unwrap();
        conn.execute("INSERT INTO posts (post, board, lock) VALUES (1, 0, 1)", [])
            .unwrap();
        let insert = "INSERT INTO rentals (id, phone, post, status, rental_minutes, start_wall_ms,
                      start_boot, start_mono_ms, start_hlc) VALUES (?1, ?2, 1, 'active', 120, 0, 'b', 0, '0')";
        conn.execute(insert, ["r1", "+972501234567"]).unwrap();
        assert!(conn.execute(insert, ["r2", "+972501234568"]).is_err());
    }
}
