//! The hub's merge path: sessions hand received `Sync` messages (and requests to generate
//! one) to a bounded queue; a worker drains what is queued, groups it by document, applies it
//! on the blocking pool against a cached in-memory copy, stores what changed incrementally,
//! projects only the facts that changed, and answers each session.
//!
//! Why this shape: per message, loading the document from Postgres, saving a full snapshot
//! and re-projecting every fact costs O(document) work and several round trips; here one
//! worker pass costs one transaction for everything queued, and per document O(changes).
//!
//! - Sharding: documents are spread over workers by owner (a device's documents of every
//!   epoch on one worker, a branch's intents on one), so one document is always merged by the
//!   same worker, in order, and its cache needs no lock, while a branch's devices merge on
//!   every worker at once. What crosses devices stays serial per branch: before projecting,
//!   a pass takes a transaction-scoped advisory lock per branch it projects, in sorted order
//!   (`lock_branches`), exclusive when it projects new returns and shared otherwise, so a
//!   return closing another device's rental never interleaves with that rental's projection,
//!   while passes that only lend and dock project side by side. Within a pass the Automerge
//!   work is spread over one blocking task per core, each document whole on one task.
//! - Decoding once: a written document's message goes through
//!   `PeerDocState::receive_decoded`, which applies the changes the authority check decoded
//!   instead of having Automerge decode the message a second time, takes only the changes the
//!   hub lacks out of a whole-document chunk, and hands back their bytes: the chunk the pass
//!   appends, without `save_after` building the same changes again.
//! - Reading facts: `merge/read.rs` reads each map of a document once (`map_range`) instead of
//!   a seek per field; reading a device's facts after every merge was most of a pass.
//! - Other hub processes learn what a pass wrote from a `NOTIFY` sent at commit
//!   (`events::DOC_WRITTEN_CHANNEL`), not from waiting for a poll.
//! - Cache validity across hub processes: the pass locks the rows it writes
//!   (`docs_store::lock_versions`) and compares each row's `version` with its cached copy's;
//!   a mismatch (another process wrote) reloads the document. A failed pass drops its
//!   documents from the cache, so a copy never holds what Postgres does not. The cache is
//!   bounded ([`DOC_CACHE_MAX`] per worker, least recently used evicted).
//! - Authority: a job says whether the session may write the document (its own device
//!   document) or only read it (a relayed document of its branch). Changes to a written
//!   document are checked by actor (`PeerDocState::receive`); a message about a read-only
//!   document may carry only changes the hub already holds (they are dropped), anything new
//!   is refused.
//!
//! Architecture Invariant: Automerge work never runs on the async threads, and nothing here
//! keeps state that is not also in Postgres (the cache is a copy, checked before use).

pub mod events;
pub mod read;

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use automerge::{Automerge, ReadDoc, sync};
use cartwise_schema::{BranchId, DeviceId, RentalId};
use cartwise_sync_core::authority::changes_in;
use cartwise_sync_core::doc_sync::idle_parts;
use cartwise_sync_core::facts::{DeviceFacts, read_device_doc};
use cartwise_sync_core::identity::PeerIdentity;
use cartwise_sync_core::message::body::SyncBody;
use cartwise_sync_core::{DocId, DocSyncError, HubActors, PeerDocState};
use sqlx::{PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};

use crate::docs_store::{self, DocVersion, DocWrite};
use crate::project;
use events::BranchEvents;

/// Most merge workers (two per core, at most this many).
pub const MERGE_WORKERS_MAX: usize = 8;
/// Jobs waiting per worker; a full queue makes sessions wait (backpressure).
pub const MERGE_QUEUE_MAX: usize = 4096;
/// Most jobs one worker pass takes.
pub const MERGE_BATCH_MAX: usize = 1024;
/// Documents cached per worker.
pub const DOC_CACHE_MAX: usize = 2048;

/// What a session may do with a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Its own device document: changes by its actor are applied.
    Write,
    /// A document of its branch relayed to it: it may not add changes.
    Read,
    /// Another device's document of its branch that the session relays for its owner, with
    /// the heads the owner signed (verified by the session: `sync_server`). Changes covered by
    /// them are applied as the owner's own (same authority check, same projection); anything
    /// else is refused as for [`Access::Read`].
    Relay(Arc<[automerge::ChangeHash]>),
}

impl Access {
    /// Whether a received message may add changes (the document's row is locked for it).
    pub fn may_add(&self) -> bool {
        !matches!(self, Access::Read)
    }
}

/// What to do.
#[derive(Debug)]
pub enum Work {
    /// Apply a received `Sync` body, then answer.
    Receive(SyncBody),
    /// Only generate the next `Sync` for the peer (start or push a document).
    Generate,
}

/// One request from a session.
#[derive(Debug)]
pub struct Job {
    /// The session's peer (its certificate identity).
    pub peer: PeerIdentity,
    /// The document (for `Receive`, the body's).
    pub doc: DocId,
    /// What the peer may do with it.
    pub access: Access,
    /// The session's sync progress with this document; handed back in [`Done`].
    pub state: PeerDocState,
    /// What to do.
    pub work: Work,
}

/// The answer to a [`Job`].
#[derive(Debug)]
pub struct Done {
    /// The sync progress to keep for the next job.
    pub state: PeerDocState,
    /// What happened.
    pub outcome: Result<Merged, MergeError>,
}

/// A job that went through.
#[derive(Debug, Default)]
pub struct Merged {
    /// The `Sync` to send the peer, if any.
    pub reply: Option<SyncBody>,
    /// Closed rentals Postgres now holds that the peer may drop (for `LedgerAck`): closed
    /// rentals of its document, and returns it recorded whose rental is closed and folded by
    /// its origin.
    pub acked: Vec<RentalId>,
    /// Facts the projection refused (to audit).
    pub refused_facts: Vec<String>,
}

/// Why a job did not go through.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MergeError {
    /// The message breaks the document's authority; nothing of it was applied.
    #[error("{0}")]
    Refused(String),
    /// The hub could not apply or store it (retry later); nothing of it was kept.
    #[error("{0}")]
    Failed(String),
}

/// A job waiting for its worker, with where to answer.
struct Pending {
    job: Job,
    reply: oneshot::Sender<Done>,
}

/// The merge workers.
#[derive(Debug, Clone)]
pub struct Merger {
    workers: Vec<mpsc::Sender<Pending>>,
}

impl Merger {
    /// Starts the workers on the current runtime.
    pub fn spawn(pool: PgPool, events: Arc<BranchEvents>) -> Merger {
        // Two per core: a worker waits on Postgres for part of each pass, and another
        // worker's Automerge work fills that time.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let count = cores.saturating_mul(2).clamp(2, MERGE_WORKERS_MAX);
        let workers = (0..count)
            .map(|_| {
                let (sender, receiver) = mpsc::channel(MERGE_QUEUE_MAX);
                let worker = Worker {
                    pool: pool.clone(),
                    events: Arc::clone(&events),
                    cache: HashMap::new(),
                    tick: 0,
                    apply_tasks: cores,
                };
                tokio::spawn(worker.run(receiver));
                sender
            })
            .collect();
        Merger { workers }
    }

    /// Jobs queued and not yet taken by a worker, over all workers (for admission control).
    pub fn backlog(&self) -> usize {
        self.workers
            .iter()
            .map(|w| MERGE_QUEUE_MAX.saturating_sub(w.capacity()))
            .sum()
    }

    /// Queues `job` and waits for its answer.
    pub async fn submit(&self, job: Job) -> Done {
        let index = shard(&job.doc, self.workers.len());
        let doc = job.doc;
        let (reply, answer) = oneshot::channel();
        let fallback = PeerDocState::new(doc);
        if self.workers[index]
            .send(Pending { job, reply })
            .await
            .is_err()
        {
            return failed(fallback, "the merge worker stopped");
        }
        answer
            .await
            .unwrap_or_else(|_| failed(PeerDocState::new(doc), "the merge worker stopped"))
    }
}

fn failed(state: PeerDocState, reason: &str) -> Done {
    Done {
        state,
        outcome: Err(MergeError::Failed(reason.to_owned())),
    }
}

/// The worker of a document: by its owner (a device's documents of every epoch on one worker,
/// a branch's intents on one), so a branch's devices merge on every worker at once.
fn shard(doc: &DocId, count: usize) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    match doc {
        DocId::Device { device, .. } => device.hash(&mut hasher),
        DocId::BranchIntents { branch, .. } => branch.hash(&mut hasher),
    }
    (hasher.finish() % count.max(1) as u64) as usize
}

/// Takes the transaction-scoped lock of each branch whose facts a pass projects, in one
/// order (sorted keys), held until the pass commits; two passes never wait on each other's
/// locks in opposite orders.
///
/// What crosses devices is a return recorded at one device of a rental another device started
/// (`project::project_returns`, `close_from_returns`, `mark_folded`): a pass projecting new
/// returns takes its branch's lock exclusively, every other pass shares it. So a return and the
/// rental it closes are never projected by two transactions at once (neither would see the
/// other's uncommitted row and the rental would stay open), while the passes of a branch's
/// devices that only lend, dock and report project side by side. Two epochs of one device
/// naming the same rental need no lock: a device's documents are all merged by one worker.
async fn lock_branches(
    conn: &mut PgConnection,
    branches: &[(BranchId, bool)],
) -> Result<(), String> {
    let mut locks: BTreeMap<i64, bool> = BTreeMap::new();
    for (branch, exclusive) in branches {
        *locks.entry(branch_lock_key(*branch)).or_default() |= *exclusive;
    }
    if locks.is_empty() {
        return Ok(());
    }
    let (keys, exclusive): (Vec<i64>, Vec<bool>) = locks.into_iter().unzip();
    // `unnest` yields the sorted arrays in order, so the locks are taken in that order.
    sqlx::query(
        "SELECT CASE WHEN x THEN pg_advisory_xact_lock(k) ELSE pg_advisory_xact_lock_shared(k) END
         FROM unnest($1::bigint[], $2::bool[]) AS t(k, x)",
    )
    .bind(&keys)
    .bind(&exclusive)
    .execute(&mut *conn)
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// The advisory lock key of a branch's projection: its UUID folded to 64 bits, with a
/// constant mixed in so it does not collide with keys other code derives from the same UUID.
fn branch_lock_key(branch: BranchId) -> i64 {
    const PROJECTION_LOCK_SALT: u64 = 0x6361_7274_7769_7365; // "cartwise"
    let (high, low) = branch.as_uuid().as_u64_pair();
    (high ^ low ^ PROJECTION_LOCK_SALT) as i64
}

/// A cached document and what was last projected from it.
struct Cached {
    doc: Automerge,
    version: i64,
    facts: Option<DeviceFacts>,
    used: u64,
}

struct Worker {
    pool: PgPool,
    events: Arc<BranchEvents>,
    cache: HashMap<DocId, Cached>,
    tick: u64,
    /// Blocking tasks a pass's Automerge work is spread over (one per core).
    apply_tasks: usize,
}

/// One document's share of a pass, going to the blocking pool.
struct DocTask {
    doc: DocId,
    branch: BranchId,
    writable: bool,
    cached: Option<Cached>,
    stored: Option<(Vec<u8>, Vec<Vec<u8>>)>,
    locked: DocVersion,
    jobs: Vec<(usize, Job)>,
}

/// One document's result, back from the blocking pool.
struct DocResult {
    doc: DocId,
    branch: BranchId,
    document: Option<Automerge>,
    previous_facts: Option<DeviceFacts>,
    facts: Option<DeviceFacts>,
    write: Option<(DocWrite, Vec<u8>)>,
    locked: DocVersion,
    /// (index in the pass, the job's peer device, the answer).
    jobs: Vec<(usize, DeviceId, Done)>,
    /// Whether any received message was applied (a write job that went through).
    received: bool,
}

impl Worker {
    async fn run(mut self, mut receiver: mpsc::Receiver<Pending>) {
        while let Some(first) = receiver.recv().await {
            let mut batch = vec![first];
            while batch.len() < MERGE_BATCH_MAX {
                match receiver.try_recv() {
                    Ok(pending) => batch.push(pending),
                    Err(_) => break,
                }
            }
            self.pass(batch).await;
        }
    }

    /// Merges, stores, projects and answers one batch.
    async fn pass(&mut self, batch: Vec<Pending>) {
        let mut replies = Vec::with_capacity(batch.len());
        let mut backups = Vec::with_capacity(batch.len());
        let mut groups: BTreeMap<DocId, Vec<(usize, Job)>> = BTreeMap::new();
        for (index, Pending { job, reply }) in batch.into_iter().enumerate() {
            replies.push(Some(reply));
            backups.push((job.doc, job.state.encode()));
            groups.entry(job.doc).or_default().push((index, job));
        }
        let docs: Vec<DocId> = groups.keys().copied().collect();
        match self.try_pass(groups).await {
            Ok(results) => {
                for (index, done) in results {
                    if let Some(reply) = replies[index].take() {
                        let _ = reply.send(done);
                    }
                }
            }
            Err(reason) => {
                tracing::error!(%reason, "a merge pass failed; its documents reload");
                for doc in docs {
                    self.cache.remove(&doc);
                }
                for (index, reply) in replies.iter_mut().enumerate() {
                    if let Some(reply) = reply.take() {
                        let (doc, bytes) = &backups[index];
                        let state = PeerDocState::decode(*doc, bytes)
                            .unwrap_or_else(|_| PeerDocState::new(*doc));
                        let _ = reply.send(failed(
                            state,
                            "the hub could not apply this message; it will be retried",
                        ));
                    }
                }
            }
        }
    }

    async fn try_pass(
        &mut self,
        groups: BTreeMap<DocId, Vec<(usize, Job)>>,
    ) -> Result<Vec<(usize, Done)>, String> {
        let started = Instant::now();
        let mut tx = self.pool.begin().await.map_err(|e| e.to_string())?;
        // (document, branch, owner, whether its row exists: a cached copy written at a
        // version above 0 has one, as such rows are never deleted).
        let write_docs: Vec<(DocId, BranchId, Option<DeviceId>, bool)> = groups
            .iter()
            .filter(|(_, jobs)| jobs.iter().any(|(_, j)| writes(j)))
            .map(|(doc, jobs)| {
                let exists = self.cache.get(doc).is_some_and(|c| c.version > 0);
                (*doc, jobs[0].1.peer.branch, owner_device(doc), exists)
            })
            .collect();
        let mut versions = docs_store::lock_versions(&mut tx, &write_docs)
            .await
            .map_err(|e| e.to_string())?;
        let read_only: Vec<DocId> = groups
            .keys()
            .filter(|doc| !versions.contains_key(doc))
            .copied()
            .collect();
        versions.extend(read_versions(&mut tx, &read_only).await?);
        let mut tasks = Vec::with_capacity(groups.len());
        for (doc, jobs) in groups {
            let locked = versions.get(&doc).copied().unwrap_or(DocVersion {
                version: 0,
                chunk_count: 0,
                chunk_bytes: 0,
            });
            let cached = self
                .cache
                .remove(&doc)
                .filter(|c| c.version == locked.version);
            let stored = if cached.is_none() {
                docs_store::load_bytes(&mut tx, &doc)
                    .await
                    .map_err(|e| e.to_string())?
            } else {
                None
            };
            tasks.push(DocTask {
                doc,
                branch: jobs[0].1.peer.branch,
                writable: jobs.iter().any(|(_, j)| writes(j)),
                cached,
                stored,
                locked,
                jobs,
            });
        }
        let loaded_at = Instant::now();
        let mut results = apply_parallel(tasks, self.apply_tasks).await?;
        let applied_at = Instant::now();
        let stored = store_results(&mut tx, &mut results).await?;
        let stored_at = Instant::now();
        let mut answers = Vec::new();
        let mut keep = Vec::new();
        let mut states = Vec::new();
        for (mut result, version) in results.into_iter().zip(stored) {
            for (index, peer, done) in result.jobs.drain(..) {
                if done.outcome.is_ok() {
                    states.push((peer, result.doc, done.state.encode()));
                }
                answers.push((index, done));
            }
            keep.push((
                result.doc,
                result.branch,
                result.document,
                result.facts,
                version,
            ));
        }
        docs_store::save_states(&mut tx, &states)
            .await
            .map_err(|e| e.to_string())?;
        let written: Vec<String> = keep
            .iter()
            .filter(|(.., (_, changed))| *changed)
            .map(|(doc, branch, .., (version, _))| events::written_payload(*doc, *branch, *version))
            .collect();
        announce_written(&mut tx, &written).await?;
        tx.commit().await.map_err(|e| e.to_string())?;
        tracing::debug!(
            jobs = answers.len(),
            documents = keep.len(),
            lock_load_ms = (loaded_at - started).as_secs_f64() * 1e3,
            apply_ms = (applied_at - loaded_at).as_secs_f64() * 1e3,
            store_project_ack_ms = (stored_at - applied_at).as_secs_f64() * 1e3,
            states_commit_ms = stored_at.elapsed().as_secs_f64() * 1e3,
            "merge pass"
        );
        for (doc, branch, document, facts, (version, changed)) in keep {
            if let Some(document) = document {
                self.remember(doc, document, version, facts);
            }
            if changed {
                self.events.saw(doc, version);
                self.events.publish(branch, doc);
            }
        }
        Ok(answers)
    }

    fn remember(
        &mut self,
        doc: DocId,
        document: Automerge,
        version: i64,
        facts: Option<DeviceFacts>,
    ) {
        self.tick += 1;
        if self.cache.len() >= DOC_CACHE_MAX
            && let Some(oldest) = self
                .cache
                .iter()
                .min_by_key(|(_, c)| c.used)
                .map(|(d, _)| *d)
        {
            self.cache.remove(&oldest);
        }
        self.cache.insert(
            doc,
            Cached {
                doc: document,
                version,
                facts,
                used: self.tick,
            },
        );
    }
}

/// Announces the pass's written documents to other hub processes (`NOTIFY`, delivered at
/// commit, so only what Postgres holds is announced), in one statement.
async fn announce_written(conn: &mut PgConnection, payloads: &[String]) -> Result<(), String> {
    if payloads.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_notify($1, p) FROM UNNEST($2::text[]) AS t(p)")
        .bind(events::DOC_WRITTEN_CHANNEL)
        .bind(payloads)
        .execute(&mut *conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Applies a pass's documents on up to `parts` blocking tasks at once, each document whole on
/// one of them (its jobs in order), and returns the results in the documents' order.
async fn apply_parallel(tasks: Vec<DocTask>, parts: usize) -> Result<Vec<DocResult>, String> {
    let count = tasks.len();
    let parts = parts.clamp(1, count.max(1));
    let mut shares: Vec<Vec<(usize, DocTask)>> = (0..parts).map(|_| Vec::new()).collect();
    for (k, task) in tasks.into_iter().enumerate() {
        shares[k % parts].push((k, task));
    }
    let handles: Vec<_> = shares
        .into_iter()
        .map(|share| {
            tokio::task::spawn_blocking(move || {
                share
                    .into_iter()
                    .map(|(k, task)| (k, merge_doc(task)))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut slots: Vec<Option<DocResult>> = (0..count).map(|_| None).collect();
    for handle in handles {
        for (k, result) in handle.await.map_err(|e| e.to_string())? {
            slots[k] = Some(result);
        }
    }
    slots
        .into_iter()
        .map(|slot| slot.ok_or_else(|| "a document's merge did not finish".to_owned()))
        .collect()
}

fn writes(job: &Job) -> bool {
    job.access.may_add() && matches!(job.work, Work::Receive(_))
}

fn owner_device(doc: &DocId) -> Option<DeviceId> {
    match doc {
        DocId::Device { device, .. } => Some(*device),
        DocId::BranchIntents { .. } => None,
    }
}

async fn read_versions(
    conn: &mut PgConnection,
    docs: &[DocId],
) -> Result<HashMap<DocId, DocVersion>, String> {
    if docs.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<String> = docs.iter().map(ToString::to_string).collect();
    let rows: Vec<(String, i64, i32, i64)> = sqlx::query_as(
        "SELECT doc_id, version, chunk_count, chunk_bytes FROM sync_documents WHERE doc_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| e.to_string())?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, version, chunk_count, chunk_bytes)| {
            DocId::parse(&id).ok().map(|doc| {
                (
                    doc,
                    DocVersion {
                        version,
                        chunk_count,
                        chunk_bytes,
                    },
                )
            })
        })
        .collect())
}

/// Stores a pass's results inside its transaction, one statement per kind for all documents:
/// the writes (`docs_store::write_many`), the projection of what changed
/// (`project::project_batch`), and the acknowledgements. Returns each document's version and
/// whether it changed, in order.
async fn store_results(
    conn: &mut PgConnection,
    results: &mut [DocResult],
) -> Result<Vec<(i64, bool)>, String> {
    let mut versions: Vec<(i64, bool)> = results
        .iter()
        .map(|r| (r.locked.version, r.write.is_some()))
        .collect();
    let mut writes = Vec::new();
    let mut written = Vec::new();
    let mut empty = Vec::new();
    for (k, result) in results.iter().enumerate() {
        if let Some((write, heads)) = &result.write {
            writes.push((result.doc, result.locked, write, heads.as_slice()));
            written.push(k);
        } else if result.writable_and_empty() {
            empty.push(result.doc);
        }
    }
    let stored = docs_store::write_many(conn, &writes)
        .await
        .map_err(|e| e.to_string())?;
    for (k, version) in written.into_iter().zip(stored) {
        versions[k].0 = version.version;
    }
    docs_store::forget_empty_many(conn, &empty)
        .await
        .map_err(|e| e.to_string())?;

    // The projection of every changed device document, in one batch.
    let mut inputs = Vec::new();
    let mut projected_docs = Vec::new();
    for (k, result) in results.iter().enumerate() {
        if let (DocId::Device { device, .. }, Some(facts), true) =
            (result.doc, result.facts.as_ref(), result.write.is_some())
        {
            inputs.push(project::Input {
                device,
                branch: result.branch,
                previous: result.previous_facts.as_ref(),
                facts,
            });
            projected_docs.push(k);
        }
    }
    let mut refused: HashMap<usize, Vec<String>> = HashMap::new();
    if !inputs.is_empty() {
        let branches: Vec<(BranchId, bool)> = inputs
            .iter()
            .map(|input| (input.branch, project::has_new_returns(input)))
            .collect();
        lock_branches(conn, &branches).await?;
        let answers = project::project_batch(conn, &inputs)
            .await
            .map_err(|e| e.to_string())?;
        for (k, answer) in projected_docs.into_iter().zip(answers) {
            let reasons = match answer {
                Ok(projected) => projected.refused,
                Err(project::ProjectError::Db(error)) => return Err(error.to_string()),
                Err(error) => vec![error.to_string()],
            };
            refused.insert(k, reasons);
        }
    }

    // Acknowledgements: the closed rentals of each received document that Postgres holds
    // closed, and the returns recorded in it whose rental is closed and folded by its origin.
    let mut rental_ask = (Vec::new(), Vec::new(), Vec::new());
    let mut return_ask = (Vec::new(), Vec::new(), Vec::new());
    for (k, result) in results.iter().enumerate() {
        let (DocId::Device { device, .. }, Some(facts), true) =
            (result.doc, result.facts.as_ref(), result.received)
        else {
            continue;
        };
        let index = i32::try_from(k).map_err(|e| e.to_string())?;
        for rental in facts.rentals.iter().filter(|r| !r.status.is_open()) {
            rental_ask.0.push(index);
            rental_ask.1.push(*device.as_uuid());
            rental_ask.2.push(*rental.id.as_uuid());
        }
        for ret in &facts.returns {
            return_ask.0.push(index);
            return_ask.1.push(*device.as_uuid());
            return_ask.2.push(*ret.rental.as_uuid());
        }
    }
    let mut acked: HashMap<usize, Vec<RentalId>> = HashMap::new();
    if !rental_ask.0.is_empty() || !return_ask.0.is_empty() {
        let rows: Vec<(i32, uuid::Uuid)> = sqlx::query_as(
            "SELECT t.i, t.rental FROM UNNEST($1::int[], $2::uuid[], $3::uuid[]) AS t(i, device, rental)
             JOIN rentals r ON r.id = t.rental AND r.device_id = t.device
             WHERE r.status NOT IN ('unlocking', 'active')
             UNION ALL
             SELECT t.i, t.rental FROM UNNEST($4::int[], $5::uuid[], $6::uuid[]) AS t(i, device, rental)
             JOIN rental_returns x ON x.rental_id = t.rental AND x.device_id = t.device AND x.folded
             JOIN rentals r ON r.id = t.rental AND r.device_id = x.origin_device_id
             WHERE r.status NOT IN ('unlocking', 'active')",
        )
        .bind(&rental_ask.0)
        .bind(&rental_ask.1)
        .bind(&rental_ask.2)
        .bind(&return_ask.0)
        .bind(&return_ask.1)
        .bind(&return_ask.2)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| e.to_string())?;
        for (index, id) in rows {
            if let (Ok(k), Ok(id)) = (usize::try_from(index), RentalId::from_uuid(id)) {
                acked.entry(k).or_default().push(id);
            }
        }
    }
    for (k, result) in results.iter_mut().enumerate() {
        if !result.received {
            continue;
        }
        // The acknowledgement and the refusals go to the last session that wrote this document.
        if let Some(merged) = result
            .jobs
            .iter_mut()
            .rev()
            .find_map(|(_, _, done)| done.outcome.as_mut().ok())
        {
            merged.acked = acked.remove(&k).unwrap_or_default();
            merged.refused_facts = refused.remove(&k).unwrap_or_default();
        }
    }
    Ok(versions)
}

impl DocResult {
    fn writable_and_empty(&self) -> bool {
        self.locked.version == 0 && self.write.is_none()
    }
}

/// Applies one document's jobs (blocking).
fn merge_doc(task: DocTask) -> DocResult {
    let DocTask {
        doc,
        branch,
        writable,
        cached,
        stored,
        locked,
        jobs,
    } = task;
    let loaded = match cached {
        Some(cached) => Ok((cached.doc, cached.facts)),
        None => match &stored {
            Some((snapshot, chunks)) => {
                docs_store::assemble(&doc, snapshot, chunks).map(|d| (d, None))
            }
            None => Ok((Automerge::new(), None)),
        },
    };
    let (mut document, previous_facts) = match loaded {
        Ok(loaded) => loaded,
        Err(error) => {
            let reason = error.to_string();
            return DocResult {
                doc,
                branch,
                document: None,
                previous_facts: None,
                facts: None,
                write: None,
                locked,
                received: false,
                jobs: jobs
                    .into_iter()
                    .map(|(i, job)| (i, job.peer.device, failed(job.state, &reason)))
                    .collect(),
            };
        }
    };
    let before = document.get_heads();
    let mut outcomes = Vec::with_capacity(jobs.len());
    let mut received = false;
    // The bytes of every change applied, while all of them came through `receive_decoded`
    // (`None` once one came another way): then the chunk to store is these bytes, not
    // `save_after`, which builds the same changes again from the document.
    let mut chunk = Some(Vec::new());
    for (index, mut job) in jobs {
        let result = match &job.work {
            Work::Generate => Ok(()),
            Work::Receive(body) => {
                let actors = HubActors::for_chain(job.peer.chain);
                let applied = match job.access {
                    Access::Write => job
                        .state
                        .receive_decoded(&mut document, body, &actors)
                        .map(|received| {
                            if let Some(chunk) = &mut chunk {
                                chunk.extend_from_slice(&received.applied);
                            }
                        })
                        .map_err(sync_error),
                    Access::Read | Access::Relay(_) => {
                        chunk = None;
                        receive_read_only(&mut document, &mut job.state, body, &actors, &job.access)
                    }
                };
                received |= applied.is_ok() && job.access == Access::Write;
                applied
            }
        };
        outcomes.push((index, job, result));
    }
    let after = document.get_heads();
    let write = (after != before).then(|| {
        let chunk = chunk.unwrap_or_else(|| document.save_after(&before));
        let heads: Vec<u8> = after.iter().flat_map(|h| h.0).collect();
        if locked.compaction_due(chunk.len()) {
            (DocWrite::Snapshot(document.save()), heads)
        } else {
            (DocWrite::Append(chunk), heads)
        }
    });
    let facts = match doc {
        DocId::Device { .. } if write.is_some() || (received && writable) => {
            Some(read_device_doc(&read::MapView::new(&document)))
        }
        DocId::Device { .. } => previous_facts.clone(),
        DocId::BranchIntents { .. } => None,
    };
    let jobs = outcomes
        .into_iter()
        .map(|(index, mut job, result)| {
            let outcome = result.and_then(|()| {
                let reply = job.state.generate(&mut document).map_err(sync_error)?;
                Ok(Merged {
                    reply,
                    ..Merged::default()
                })
            });
            (
                index,
                job.peer.device,
                Done {
                    state: job.state,
                    outcome,
                },
            )
        })
        .collect();
    DocResult {
        doc,
        branch,
        document: Some(document),
        previous_facts,
        facts,
        write,
        locked,
        jobs,
        received,
    }
}

fn sync_error(error: DocSyncError) -> MergeError {
    match error {
        DocSyncError::Authority(_) => MergeError::Refused(error.to_string()),
        other => MergeError::Failed(other.to_string()),
    }
}

/// Receives a peer's message about a document it may only read, or relays for its owner:
/// changes the hub already holds are dropped (the peer holds them from elsewhere); a change
/// the hub does not hold is refused unless every such change of the message is covered by
/// the owner's signed heads ([`Access::Relay`],
/// `cartwise_sync_core::signed_heads::covered_incoming`), in which case they are applied
/// through the same authority check as the owner's own messages. The peer's heads are narrowed
/// to those the hub knows or receives, so the hub never asks it for other changes.
fn receive_read_only(
    document: &mut Automerge,
    state: &mut PeerDocState,
    body: &SyncBody,
    actors: &HubActors,
    access: &Access,
) -> Result<(), MergeError> {
    // An idle message (heads only, in the idle form) carries no changes: as it is.
    let raw = match idle_parts(&body.data) {
        Some((_, [])) => {
            return state
                .receive(document, body, actors)
                .map(|_| ())
                .map_err(sync_error);
        }
        Some((_, full)) => full,
        None => &body.data[..],
    };
    let mut message = sync::Message::decode(raw)
        .map_err(|e| MergeError::Failed(format!("malformed sync message for {}: {e}", body.doc)))?;
    let mut incoming = std::collections::HashSet::new();
    if !message.changes.is_empty() {
        let changes = changes_in(&message).map_err(|reason| {
            MergeError::Refused(format!(
                "changes for {} cannot be decoded: {reason}",
                body.doc
            ))
        })?;
        let new: Vec<automerge::ChangeHash> = changes
            .iter()
            .map(automerge::Change::hash)
            .filter(|hash| document.get_change_by_hash(hash).is_none())
            .collect();
        let relayed = match access {
            Access::Relay(signed) if !new.is_empty() => {
                cartwise_sync_core::signed_heads::covered_incoming(document, &changes, &new, signed)
            }
            _ => false,
        };
        match new.first() {
            None => message.changes = sync::ChunkList::empty(),
            // Applied below by `receive`, which checks every change's actor.
            Some(_) if relayed => incoming.extend(new.iter().copied()),
            Some(first) => {
                let why = match access {
                    Access::Relay(_) => "it is not covered by heads its owner signed",
                    _ => "this session may only read it",
                };
                return Err(MergeError::Refused(format!(
                    "change {first} to {} refused: {why}",
                    body.doc
                )));
            }
        }
    }
    message
        .heads
        .retain(|head| incoming.contains(head) || document.get_change_by_hash(head).is_some());
    let narrowed = SyncBody {
        doc: body.doc,
        data: message.encode(),
    };
    state
        .receive(document, &narrowed, actors)
        .map(|_| ())
        .map_err(sync_error)
}
