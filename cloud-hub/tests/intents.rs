//! Intents against a real Postgres: created atomically with their document and audit row under
//! the document's row lock, read back with the sync-core reader, and moved by the owning
//! device's outcomes exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use automerge::{AutoCommit, Automerge};
use cartwise_cloud_hub::intents::{
    self, Actor, ActorKind, IntentError, IntentFilter, IntentRequest, IntentStatus,
};
use cartwise_cloud_hub::{docs_store, project, seed, world::World};
use cartwise_schema::{BranchId, ChainId, DeviceId};
use cartwise_sync_core::facts::{DeviceFacts, OutcomeFact, OutcomeStatus};
use cartwise_sync_core::intents::{
    IntentId, IntentKind, KioskLanguage, OtpFallback, read_intents_doc,
};
use cartwise_sync_core::{DocId, hub_actor};
use chrono::{DateTime, Utc};
use sqlx::PgPool;

const CHAIN: &str = "0b1e3c2a-0000-4000-8000-000000000001";
/// Shuk Tov Ramat Aviv: pi-1 has posts 1-32, pi-2 posts 33-48.
const BRANCH: &str = "0b1e3c2a-0000-4000-8000-000000000101";
const PI_1: &str = "0b1e3c2a-0000-4000-8000-000000001001";
const PI_2: &str = "0b1e3c2a-0000-4000-8000-000000001002";
/// Shuk Tov Haifa Port.
const OTHER_BRANCH: &str = "0b1e3c2a-0000-4000-8000-000000000102";

fn chain() -> ChainId {
    ChainId::parse(CHAIN).unwrap()
}
fn branch() -> BranchId {
    BranchId::parse(BRANCH).unwrap()
}
fn pi1() -> DeviceId {
    DeviceId::parse(PI_1).unwrap()
}
fn pi2() -> DeviceId {
    DeviceId::parse(PI_2).unwrap()
}

fn admin() -> Actor {
    Actor {
        kind: ActorKind::Admin,
        name: "dana".into(),
    }
}

fn request(device: DeviceId, kind: IntentKind) -> IntentRequest {
    IntentRequest {
        device,
        branch: None,
        kind,
        expires_in: None,
    }
}

async fn seeded(pool: &PgPool) {
    let text = std::fs::read_to_string(cartwise_fixtures::world_path()).unwrap();
    seed::seed(pool, &World::parse(&text).unwrap())
        .await
        .unwrap();
}

async fn intents_doc(pool: &PgPool, branch: BranchId) -> Option<Automerge> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM sync_documents WHERE doc_id = $1)")
            .bind(DocId::branch_intents(branch).to_string())
            .fetch_one(pool)
            .await
            .unwrap();
    if !exists {
        return None;
    }
    Some(
        docs_store::load(pool, &DocId::branch_intents(branch))
            .await
            .unwrap(),
    )
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

async fn audits(pool: &PgPool, action: &str, target: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = $1 AND target = $2")
        .bind(action)
        .bind(target)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Whether an error is the one a case expects.
type Expect = fn(&IntentError) -> bool;

fn outcome(intent: IntentId, status: OutcomeStatus, detail: &str, wall: i64) -> OutcomeFact {
    OutcomeFact {
        intent,
        status,
        detail: detail.into(),
        wall,
        hlc: format!("{wall}-0001"),
    }
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn create_writes_the_row_the_document_and_the_audit_together(pool: PgPool) {
    seeded(&pool).await;
    let now = DateTime::parse_from_rfc3339("2026-11-21T10:00:00.123Z")
        .unwrap()
        .with_timezone(&Utc);
    let created = intents::create_at(
        &pool,
        request(pi1(), IntentKind::UnlockPost { post: 3 }),
        &admin(),
        now,
    )
    .await
    .unwrap();
    assert_eq!(created.status, IntentStatus::Pending);
    assert_eq!(created.device, pi1());
    assert_eq!(created.branch, branch());
    assert_eq!(created.chain, chain());
    assert_eq!(created.branch_code, "ST-RA");
    assert_eq!(created.device_name, "st-ra-pi-1");
    assert_eq!(created.kind, IntentKind::UnlockPost { post: 3 });
    assert_eq!(created.created_by, "dana");
    assert_eq!(created.created_at, now);
    // A maintenance unlock expires after an hour unless told otherwise.
    assert_eq!(
        created.expires_at,
        Some(now + chrono::Duration::from_std(intents::UNLOCK_EXPIRES_IN_DEFAULT).unwrap())
    );
    assert_eq!(created.outcome_at, None);

    // The document holds the same intent, written by the hub's actor only.
    let doc = intents_doc(&pool, branch()).await.unwrap();
    let read = read_intents_doc(&doc);
    assert_eq!(read.branch, Some(branch()));
    assert!(read.skipped.is_empty(), "{:?}", read.skipped);
    assert_eq!(read.intents.len(), 1);
    let written = &read.intents[0];
    assert_eq!(written.id, created.id);
    assert_eq!(written.device, pi1());
    assert_eq!(written.kind, IntentKind::UnlockPost { post: 3 });
    assert_eq!(written.created_at, now.timestamp_millis());
    assert_eq!(written.created_by, "dana");
    assert_eq!(
        written.expires_at,
        created.expires_at.map(|at| at.timestamp_millis())
    );
    let changes = doc.get_changes(&[]);
    assert!(!changes.is_empty());
    assert!(changes.iter().all(|c| c.actor_id() == &hub_actor(chain())));
    // The stored heads are the document's.
    let heads: Vec<u8> = sqlx::query_scalar("SELECT heads FROM sync_documents WHERE doc_id = $1")
        .bind(DocId::branch_intents(branch()).to_string())
        .fetch_one(&pool)
        .await
        .unwrap();
    let expected: Vec<u8> = doc.get_heads().iter().flat_map(|h| h.0).collect();
    assert_eq!(heads, expected);

    // And the audit log says who asked.
    let (actor_kind, actor_id, action): (String, String, String) =
        sqlx::query_as("SELECT actor_kind, actor_id, action FROM audit_log WHERE target = $1")
            .bind(created.id.to_string())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (actor_kind.as_str(), actor_id.as_str(), action.as_str()),
        ("admin", "dana", "intent.created")
    );

    // Every kind reads back from the table as it was asked.
    let kinds = [
        IntentKind::OutOfService { post: 32 },
        IntentKind::InService { post: 32 },
        IntentKind::SetRentalMinutes { minutes: 90 },
        IntentKind::Note {
            post: Some(7),
            text: "wheel squeaks".into(),
        },
        IntentKind::Note {
            post: None,
            text: "inventory Sunday".into(),
        },
        IntentKind::AssignCart {
            post: Some(12),
            phone: "+972521234567".into(),
        },
        IntentKind::AssignCart {
            post: None,
            phone: "+972547654321".into(),
        },
        IntentKind::ForceReturn { post: 12 },
        IntentKind::SetFirmware {
            version: "1.4.2".into(),
        },
        IntentKind::SetOtpPolicy {
            when_sms_unavailable: OtpFallback::Token,
        },
        IntentKind::SetOtpPolicy {
            when_sms_unavailable: OtpFallback::Refuse,
        },
        IntentKind::SetLanguage {
            language: KioskLanguage::En,
        },
    ];
    for kind in kinds.clone() {
        let it = intents::create(&pool, request(pi1(), kind.clone()), &admin())
            .await
            .unwrap();
        assert_eq!(intents::get(&pool, it.id).await.unwrap().kind, kind);
        assert_eq!(it.expires_at, None);
    }
    let read = read_intents_doc(&intents_doc(&pool, branch()).await.unwrap());
    assert_eq!(read.intents.len(), 1 + kinds.len());
    assert!(read.skipped.is_empty(), "{:?}", read.skipped);
    // A shopper's phone is in the document (the device needs it) but masked in the audit log.
    let details: Vec<String> =
        sqlx::query_scalar("SELECT detail::text FROM audit_log WHERE action = 'intent.created'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        details
            .iter()
            .all(|d| !d.contains("521234567") && !d.contains("547654321"))
    );
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn a_refused_request_leaves_nothing_but_its_audit_row(pool: PgPool) {
    seeded(&pool).await;
    let unknown = DeviceId::parse("0b1e3c2a-0000-4000-8000-00000000dead").unwrap();
    sqlx::query(
        "INSERT INTO devices (branch_id, device_name, revoked_at) VALUES ($1, 'old-pi', now())",
    )
    .bind(branch().as_uuid())
    .execute(&pool)
    .await
    .unwrap();
    let revoked: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM devices WHERE device_name = 'old-pi'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let revoked = DeviceId::from_uuid(revoked);
    let cases: Vec<(IntentRequest, Expect)> = vec![
        // Post 33 is pi-2's, not pi-1's.
        (
            request(pi1(), IntentKind::UnlockPost { post: 33 }),
            |e| matches!(e, IntentError::UnknownPost { post: 33, posts, .. } if posts == "1-32"),
        ),
        (request(pi2(), IntentKind::OutOfService { post: 49 }), |e| {
            matches!(e, IntentError::UnknownPost { .. })
        }),
        (request(unknown, IntentKind::InService { post: 1 }), |e| {
            matches!(e, IntentError::UnknownDevice(_))
        }),
        (
            IntentRequest {
                branch: Some(BranchId::parse(OTHER_BRANCH).unwrap()),
                ..request(pi1(), IntentKind::InService { post: 1 })
            },
            |e| matches!(e, IntentError::WrongBranch { .. }),
        ),
        (
            request(revoked, IntentKind::SetRentalMinutes { minutes: 60 }),
            |e| matches!(e, IntentError::DeviceRevoked(_)),
        ),
        (
            request(pi1(), IntentKind::SetRentalMinutes { minutes: 0 }),
            |e| matches!(e, IntentError::Invalid(_)),
        ),
        (
            request(
                pi1(),
                IntentKind::SetRentalMinutes {
                    minutes: 7 * 24 * 60 + 1,
                },
            ),
            |e| matches!(e, IntentError::Invalid(_)),
        ),
        (
            request(
                pi1(),
                IntentKind::Note {
                    post: None,
                    text: "  ".into(),
                },
            ),
            |e| matches!(e, IntentError::Invalid(_)),
        ),
        (
            IntentRequest {
                expires_in: Some(Duration::from_secs(59)),
                ..request(pi1(), IntentKind::UnlockPost { post: 1 })
            },
            |e| matches!(e, IntentError::BadExpiry),
        ),
    ];
    let n = i64::try_from(cases.len()).unwrap();
    for (request, expected) in cases {
        let error = intents::create(&pool, request.clone(), &admin())
            .await
            .unwrap_err();
        assert!(expected(&error), "{request:?}: {error:?}");
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM intents").await, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM sync_documents").await, 0);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM audit_log WHERE action = 'intent.refused'"
        )
        .await,
        n
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM audit_log").await, n);
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn a_failure_after_the_document_write_rolls_the_document_back(pool: PgPool) {
    seeded(&pool).await;
    let first = intents::create(
        &pool,
        request(pi1(), IntentKind::UnlockPost { post: 1 }),
        &admin(),
    )
    .await
    .unwrap();
    let before = intents_doc(&pool, branch()).await.unwrap().save();
    // The row insert (after the document was changed in the same transaction) fails.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_intent() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'refused by test'; END; $$;
         CREATE TRIGGER refuse_intent BEFORE INSERT ON intents
             FOR EACH ROW WHEN (NEW.created_by = 'mallory') EXECUTE FUNCTION refuse_intent();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mallory = Actor {
        kind: ActorKind::User,
        name: "mallory".into(),
    };
    let error = intents::create(
        &pool,
        request(pi1(), IntentKind::UnlockPost { post: 2 }),
        &mallory,
    )
    .await
    .unwrap_err();
    assert!(matches!(error, IntentError::Db { .. }), "{error:?}");
    let after = intents_doc(&pool, branch()).await.unwrap();
    let read = read_intents_doc(&after);
    assert_eq!(read.intents.len(), 1);
    assert_eq!(read.intents[0].id, first.id);
    assert_eq!(intents_doc(&pool, branch()).await.unwrap().save(), before);
    assert_eq!(count(&pool, "SELECT count(*) FROM intents").await, 1);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM audit_log WHERE actor_id = 'mallory'"
        )
        .await,
        0
    );
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn concurrent_creates_on_one_branch_all_land(pool: PgPool) {
    seeded(&pool).await;
    // The branch has no intents document yet: the first writers race to create it too.
    const N: u16 = 12;
    let tasks: Vec<_> = (1..=N)
        .map(|i| {
            let pool = pool.clone();
            let (device, post) = if i % 2 == 0 {
                (pi1(), i)
            } else {
                (pi2(), 32 + i)
            };
            tokio::spawn(async move {
                intents::create(
                    &pool,
                    request(device, IntentKind::OutOfService { post }),
                    &admin(),
                )
                .await
            })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap().unwrap().id);
    }
    ids.sort();
    let doc = intents_doc(&pool, branch()).await.unwrap();
    let read = read_intents_doc(&doc);
    let mut in_doc: Vec<IntentId> = read.intents.iter().map(|i| i.id).collect();
    in_doc.sort();
    assert_eq!(in_doc, ids);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM intents").await,
        i64::from(N)
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM sync_documents").await,
        1,
        "one document per branch"
    );
    // One actor, one change per intent, each at its own sequence number.
    let changes = doc.get_changes(&[]);
    assert!(changes.iter().all(|c| c.actor_id() == &hub_actor(chain())));
    let mut seqs: Vec<u64> = changes.iter().map(|c| c.seq()).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), changes.len());
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn outcomes_move_pending_intents_once_and_replays_change_nothing(pool: PgPool) {
    seeded(&pool).await;
    let mut ids = Vec::new();
    for post in [4, 5, 6] {
        let it = intents::create(
            &pool,
            request(pi1(), IntentKind::UnlockPost { post }),
            &admin(),
        )
        .await
        .unwrap();
        ids.push(it.id);
    }
    let wall = 1_790_000_000_000;
    let outcomes = vec![
        outcome(ids[0], OutcomeStatus::Applied, "opened", wall),
        outcome(
            ids[1],
            OutcomeStatus::Failed,
            "the lock did not open",
            wall + 1,
        ),
        outcome(
            ids[2],
            OutcomeStatus::Expired,
            "arrived after its expiry",
            wall + 2,
        ),
    ];
    let first = intents::project_outcomes(&pool, pi1(), &outcomes)
        .await
        .unwrap();
    assert_eq!(first.changed, 3);
    assert!(first.refused.is_empty() && first.conflicts.is_empty());
    let expected = [
        (IntentStatus::Applied, "opened"),
        (IntentStatus::Failed, "the lock did not open"),
        (IntentStatus::Expired, "arrived after its expiry"),
    ];
    let mut updated = Vec::new();
    for (i, (id, (status, detail))) in ids.iter().zip(expected).enumerate() {
        let it = intents::get(&pool, *id).await.unwrap();
        assert_eq!(it.status, status);
        assert_eq!(it.outcome_detail.as_deref(), Some(detail));
        assert_eq!(
            it.outcome_at.map(|at| at.timestamp_millis()),
            Some(wall + i64::try_from(i).unwrap())
        );
        assert_eq!(
            audits(&pool, &format!("intent.{status}"), &id.to_string()).await,
            1
        );
        updated.push(it.updated_at);
    }

    // Replaying the same document changes nothing, not even updated_at or the audit log.
    let audit_rows = count(&pool, "SELECT count(*) FROM audit_log").await;
    let replay = intents::project_outcomes(&pool, pi1(), &outcomes)
        .await
        .unwrap();
    assert_eq!(replay, intents::OutcomesProjected::default());
    for (id, at) in ids.iter().zip(&updated) {
        assert_eq!(intents::get(&pool, *id).await.unwrap().updated_at, *at);
    }
    assert_eq!(
        count(&pool, "SELECT count(*) FROM audit_log").await,
        audit_rows
    );

    // An outcome contradicting the recorded one is kept out and audited once.
    let contradiction = [outcome(
        ids[0],
        OutcomeStatus::Failed,
        "changed its mind",
        wall + 9,
    )];
    for _ in 0..2 {
        let out = intents::project_outcomes(&pool, pi1(), &contradiction)
            .await
            .unwrap();
        assert_eq!(out.changed, 0);
        assert_eq!(out.conflicts.len(), 1);
    }
    assert_eq!(
        intents::get(&pool, ids[0]).await.unwrap().status,
        IntentStatus::Applied
    );
    assert_eq!(
        audits(&pool, "intent.outcome_conflict", &ids[0].to_string()).await,
        1
    );
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn an_outcome_from_another_device_is_refused_and_audited_once(pool: PgPool) {
    seeded(&pool).await;
    let it = intents::create(
        &pool,
        request(pi1(), IntentKind::InService { post: 9 }),
        &admin(),
    )
    .await
    .unwrap();
    let never = IntentId::from_uuid(uuid::Uuid::now_v7());
    let forged = [
        outcome(it.id, OutcomeStatus::Applied, "not mine", 1_790_000_000_000),
        outcome(
            never,
            OutcomeStatus::Applied,
            "no such intent",
            1_790_000_000_000,
        ),
    ];
    for _ in 0..3 {
        let out = intents::project_outcomes(&pool, pi2(), &forged)
            .await
            .unwrap();
        assert_eq!(out.changed, 0);
        assert_eq!(out.refused.len(), 2, "{:?}", out.refused);
    }
    assert_eq!(
        intents::get(&pool, it.id).await.unwrap().status,
        IntentStatus::Pending
    );
    for target in [it.id.to_string(), never.to_string()] {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT actor_kind, actor_id FROM audit_log
             WHERE action = 'intent.outcome_refused' AND target = $1",
        )
        .bind(&target)
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(rows, vec![("device".to_owned(), PI_2.to_owned())]);
    }
    // The addressed device's own outcome still lands.
    let out = intents::project_outcomes(
        &pool,
        pi1(),
        &[outcome(
            it.id,
            OutcomeStatus::Applied,
            "back in service",
            1_790_000_000_500,
        )],
    )
    .await
    .unwrap();
    assert_eq!(out.changed, 1);
    assert_eq!(
        intents::get(&pool, it.id).await.unwrap().status,
        IntentStatus::Applied
    );
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn the_device_projection_carries_outcomes_up(pool: PgPool) {
    seeded(&pool).await;
    let it = intents::create(
        &pool,
        request(pi2(), IntentKind::SetRentalMinutes { minutes: 45 }),
        &admin(),
    )
    .await
    .unwrap();
    let facts = DeviceFacts {
        device: Some(pi2()),
        branch: Some(branch()),
        outcomes: vec![outcome(
            it.id,
            OutcomeStatus::Applied,
            "45 minutes",
            1_790_000_000_000,
        )],
        ..DeviceFacts::default()
    };
    project::project_device(&pool, pi2(), branch(), &facts)
        .await
        .unwrap();
    let now = intents::get(&pool, it.id).await.unwrap();
    assert_eq!(now.status, IntentStatus::Applied);
    assert_eq!(now.outcome_detail.as_deref(), Some("45 minutes"));
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn lists_filter_by_branch_device_and_status_newest_first(pool: PgPool) {
    seeded(&pool).await;
    let a = intents::create(
        &pool,
        request(pi1(), IntentKind::UnlockPost { post: 1 }),
        &admin(),
    )
    .await
    .unwrap();
    let b = intents::create(
        &pool,
        request(pi2(), IntentKind::UnlockPost { post: 40 }),
        &admin(),
    )
    .await
    .unwrap();
    let haifa = DeviceId::parse("0b1e3c2a-0000-4000-8000-000000001003").unwrap();
    let c = intents::create(
        &pool,
        request(haifa, IntentKind::UnlockPost { post: 1 }),
        &admin(),
    )
    .await
    .unwrap();
    intents::project_outcomes(
        &pool,
        pi2(),
        &[outcome(
            b.id,
            OutcomeStatus::Applied,
            "opened",
            1_790_000_000_000,
        )],
    )
    .await
    .unwrap();
    let ids = |list: Vec<intents::Intent>| list.into_iter().map(|i| i.id).collect::<Vec<_>>();
    let all = intents::list(&pool, &IntentFilter::default())
        .await
        .unwrap();
    assert_eq!(ids(all), vec![c.id, b.id, a.id]);
    let ra = IntentFilter {
        branch: Some(branch()),
        ..IntentFilter::default()
    };
    assert_eq!(
        ids(intents::list(&pool, &ra).await.unwrap()),
        vec![b.id, a.id]
    );
    let pending = IntentFilter {
        status: Some(IntentStatus::Pending),
        ..ra.clone()
    };
    assert_eq!(
        ids(intents::list(&pool, &pending).await.unwrap()),
        vec![a.id]
    );
    let by_device = IntentFilter {
        device: Some(haifa),
        ..IntentFilter::default()
    };
    assert_eq!(
        ids(intents::list(&pool, &by_device).await.unwrap()),
        vec![c.id]
    );
    assert_eq!(
        intents::resolve_branch(&pool, "ST-RA").await.unwrap(),
        branch()
    );
    assert_eq!(
        intents::resolve_branch(&pool, BRANCH).await.unwrap(),
        branch()
    );
    assert!(matches!(
        intents::resolve_branch(&pool, "NOPE").await,
        Err(IntentError::UnknownBranch(_))
    ));
    let missing = IntentId::from_uuid(uuid::Uuid::now_v7());
    assert!(matches!(
        intents::get(&pool, missing).await,
        Err(IntentError::UnknownIntent(_))
    ));
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn a_device_without_boards_in_the_world_has_the_posts_its_document_reports(pool: PgPool) {
    use automerge::transaction::Transactable;
    use automerge::{ObjType, ROOT};
    seeded(&pool).await;
    let new = cartwise_cloud_hub::enroll::add_device(
        &pool,
        "ST-RA",
        "st-ra-pi-9",
        cartwise_cloud_hub::enroll::CODE_TTL_DEFAULT,
    )
    .await
    .unwrap();
    // Before it syncs, the hub knows none of its posts.
    let refused = intents::create(
        &pool,
        request(new.device, IntentKind::UnlockPost { post: 50 }),
        &admin(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&refused, IntentError::UnknownPost { posts, .. } if posts == "none"),
        "{refused:?}"
    );
    // Its document (epoch 2) reports posts 49 and 50.
    let mut doc = AutoCommit::new();
    doc.put(ROOT, "device", new.device.to_string()).unwrap();
    doc.put(ROOT, "branch", BRANCH).unwrap();
    let posts = doc.put_object(ROOT, "posts", ObjType::Map).unwrap();
    for (post, lock) in [("49", 1_u64), ("50", 2)] {
        let obj = doc.put_object(&posts, post, ObjType::Map).unwrap();
        doc.put(&obj, "board", 3_u64).unwrap();
        doc.put(&obj, "lock", lock).unwrap();
        doc.put(&obj, "status", "available").unwrap();
        doc.put(&obj, "hook", "latched").unwrap();
    }
    let id = DocId::Device {
        device: new.device,
        epoch: 2,
    };
    docs_store::save(&pool, &id, branch(), Some(new.device), &doc.save(), &[])
        .await
        .unwrap();
    let it = intents::create(
        &pool,
        request(new.device, IntentKind::UnlockPost { post: 50 }),
        &admin(),
    )
    .await
    .unwrap();
    assert_eq!(it.kind, IntentKind::UnlockPost { post: 50 });
    let refused = intents::create(
        &pool,
        request(new.device, IntentKind::UnlockPost { post: 51 }),
        &admin(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&refused, IntentError::UnknownPost { posts, .. } if posts == "49-50"),
        "{refused:?}"
    );
}

/// The URL of the test's own database (the server of DATABASE_URL, the pool's database).
fn url_of(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").unwrap();
    let database = pool.connect_options().get_database().unwrap().to_owned();
    let (server, _) = base.split('?').next().unwrap().rsplit_once('/').unwrap();
    format!("{server}/{database}")
}

/// Runs `cartwise-hub intent ARGS` on the test's database: (success, stdout, stderr).
fn hub_intent(pool: &PgPool, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cartwise-hub"))
        .arg("intent")
        .args(args)
        .env("DATABASE_URL", url_of(pool))
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn the_intent_command_adds_lists_and_shows_and_fails_clearly(pool: PgPool) {
    seeded(&pool).await;
    let (ok, out, err) = hub_intent(
        &pool,
        &[
            "add",
            "--device",
            PI_2,
            "out-of-service",
            "--post",
            "40",
            "--expires-in",
            "2h",
            "--by",
            "sam",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("asks     take post 40 out of service"),
        "{out}"
    );
    assert!(out.contains("status   pending"), "{out}");
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("intent   "))
        .unwrap()
        .to_owned();
    let stored = intents::get(&pool, IntentId::parse(&id).unwrap())
        .await
        .unwrap();
    assert_eq!(stored.kind, IntentKind::OutOfService { post: 40 });
    assert_eq!(stored.created_by, "sam");
    assert_eq!(
        stored
            .expires_at
            .map(|at| (at - stored.created_at).num_minutes()),
        Some(120)
    );

    let (ok, out, err) = hub_intent(&pool, &["list", "--branch", "ST-RA", "--status", "pending"]);
    assert!(ok, "{err}");
    let fields: Vec<&str> = out.trim_end().split('\t').collect();
    assert_eq!(fields[0], id);
    assert_eq!(
        &fields[2..],
        [
            "ST-RA",
            "st-ra-pi-2",
            "take post 40 out of service",
            "pending",
            "-"
        ]
    );
    let (ok, out, _) = hub_intent(&pool, &["show", &id]);
    assert!(ok && out.contains(&format!("intent   {id}")), "{out}");

    // Failures say what is wrong and exit non-zero; nothing is written.
    for (args, says) in [
        (
            vec!["add", "--device", PI_1, "unlock-post", "--post", "33"],
            "post 33 is not a post of device",
        ),
        (
            vec!["add", "--device", PI_1, "rental-minutes", "--minutes", "0"],
            "rental minutes must be 1 to 10080",
        ),
        (
            vec![
                "add",
                "--device",
                PI_1,
                "unlock-post",
                "--post",
                "1",
                "--expires-in",
                "1w",
            ],
            "the expiry must be between 1 minute and 30 days",
        ),
        (vec!["list", "--status", "done"], "unknown status \"done\""),
        (
            vec!["list", "--branch", "NOPE"],
            "no branch has the id or code",
        ),
        (vec!["show", "nope"], "is not an intent id"),
    ] {
        let (ok, _, err) = hub_intent(&pool, &args);
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM intents").await, 1);
}

#[test]
fn otp_policies_and_languages_outside_their_ranges_are_refused() {
    assert_eq!(
        intents::parse_otp_policy("token").unwrap(),
        OtpFallback::Token
    );
    assert_eq!(
        intents::parse_otp_policy(" refuse ").unwrap(),
        OtpFallback::Refuse
    );
    assert_eq!(intents::parse_language("en").unwrap(), KioskLanguage::En);
    assert_eq!(intents::parse_language("he").unwrap(), KioskLanguage::He);
    for bad in ["", "allow", "Token", "tokens"] {
        let refused = intents::parse_otp_policy(bad);
        assert!(
            matches!(&refused, Err(IntentError::Invalid(m)) if m.contains("refuse or token")),
            "{bad:?}: {refused:?}"
        );
    }
    for bad in ["", "fr", "EN", "english"] {
        let refused = intents::parse_language(bad);
        assert!(
            matches!(&refused, Err(IntentError::Invalid(m)) if m.contains("he or en")),
            "{bad:?}: {refused:?}"
        );
    }
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn the_intent_command_sets_the_otp_policy_and_the_language(pool: PgPool) {
    seeded(&pool).await;
    let added = |args: &[&str]| {
        let (ok, out, err) = hub_intent(&pool, args);
        assert!(ok, "{args:?}: {err}");
        let id = out
            .lines()
            .find_map(|l| l.strip_prefix("intent   "))
            .unwrap()
            .to_owned();
        (IntentId::parse(&id).unwrap(), out)
    };
    let (policy, out) = added(&[
        "add",
        "--device",
        PI_1,
        "otp-policy",
        "--when-sms-unavailable",
        "token",
    ]);
    assert!(out.contains("let shoppers with a token rent"), "{out}");
    let (language, out) = added(&["add", "--device", PI_1, "language", "--language", "en"]);
    assert!(out.contains("answer shoppers in en by default"), "{out}");
    assert_eq!(
        intents::get(&pool, policy).await.unwrap().kind,
        IntentKind::SetOtpPolicy {
            when_sms_unavailable: OtpFallback::Token
        }
    );
    assert_eq!(
        intents::get(&pool, language).await.unwrap().kind,
        IntentKind::SetLanguage {
            language: KioskLanguage::En
        }
    );
    // The device reads the same from the branch's document.
    let read = read_intents_doc(&intents_doc(&pool, branch()).await.unwrap());
    let kinds: Vec<&IntentKind> = read.intents.iter().map(|i| &i.kind).collect();
    assert_eq!(
        kinds,
        vec![
            &IntentKind::SetOtpPolicy {
                when_sms_unavailable: OtpFallback::Token
            },
            &IntentKind::SetLanguage {
                language: KioskLanguage::En
            },
        ]
    );

    for (args, says) in [
        (
            vec![
                "add",
                "--device",
                PI_1,
                "otp-policy",
                "--when-sms-unavailable",
                "allow",
            ],
            "must be refuse or token",
        ),
        (
            vec!["add", "--device", PI_1, "language", "--language", "fr"],
            "must be he or en",
        ),
    ] {
        let (ok, _, err) = hub_intent(&pool, &args);
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM intents").await, 2);
}

/// A branch setting goes to every device of the branch in one transaction: one document
/// write holding every intent, one row each, one audit row listing them, no per-intent rows.
#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn a_branch_setting_reaches_every_device_in_one_change(pool: PgPool) {
    seeded(&pool).await;
    let kinds = [
        IntentKind::SetRentalMinutes { minutes: 120 },
        IntentKind::SetLanguage {
            language: KioskLanguage::En,
        },
    ];
    let batch = intents::BatchAudit {
        action: "branch.settings",
        target: format!("branch/{}", branch()),
        request: serde_json::json!({ "rental_minutes": 120, "language": "en" }),
    };
    let created = intents::create_for_branch(&pool, branch(), &kinds, None, &admin(), &batch)
        .await
        .unwrap();
    assert_eq!(created.len(), 4, "2 settings x 2 devices");
    let mut pairs: Vec<(DeviceId, &str)> = created
        .iter()
        .map(|i| (i.device, i.kind.as_str()))
        .collect();
    pairs.sort();
    let mut expected = vec![
        (pi1(), "set_rental_minutes"),
        (pi1(), "set_language"),
        (pi2(), "set_rental_minutes"),
        (pi2(), "set_language"),
    ];
    expected.sort();
    assert_eq!(pairs, expected);
    assert!(created.iter().all(|i| i.status == IntentStatus::Pending));
    assert!(
        created
            .iter()
            .all(|i| i.created_at == created[0].created_at)
    );

    // The document: every intent, added by one change of the hub's actor.
    let doc = intents_doc(&pool, branch()).await.unwrap();
    let read = read_intents_doc(&doc);
    assert!(read.skipped.is_empty(), "{:?}", read.skipped);
    let mut in_doc: Vec<IntentId> = read.intents.iter().map(|i| i.id).collect();
    let mut ids: Vec<IntentId> = created.iter().map(|i| i.id).collect();
    in_doc.sort();
    ids.sort();
    assert_eq!(in_doc, ids);
    assert!(
        doc.get_changes(&[])
            .iter()
            .all(|c| c.actor_id() == &hub_actor(chain()))
    );
    // Written once: the document row's version moved by one write.
    let version: i64 = sqlx::query_scalar("SELECT version FROM sync_documents WHERE doc_id = $1")
        .bind(DocId::branch_intents(branch()).to_string())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(version, 1);

    assert_eq!(audits(&pool, "branch.settings", &batch.target).await, 1);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM audit_log WHERE action = 'intent.created'"
        )
        .await,
        0
    );
    let listed: serde_json::Value = sqlx::query_scalar(
        "SELECT detail->'intents' FROM audit_log WHERE action = 'branch.settings'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 4);

    // A post intent is not a branch setting: refused, nothing written, the refusal audited.
    let before = count(&pool, "SELECT count(*) FROM intents").await;
    let error = intents::create_for_branch(
        &pool,
        branch(),
        &[IntentKind::UnlockPost { post: 1 }],
        None,
        &admin(),
        &batch,
    )
    .await
    .unwrap_err();
    assert!(matches!(error, IntentError::Invalid(_)), "{error}");
    assert_eq!(count(&pool, "SELECT count(*) FROM intents").await, before);
    assert_eq!(audits(&pool, "intent.refused", &batch.target).await, 1);
    // An argument out of range refuses the whole request: no device gets anything.
    let error = intents::create_for_branch(
        &pool,
        branch(),
        &[
            IntentKind::SetLanguage {
                language: KioskLanguage::He,
            },
            IntentKind::SetRentalMinutes { minutes: 0 },
        ],
        None,
        &admin(),
        &batch,
    )
    .await
    .unwrap_err();
    assert!(matches!(error, IntentError::Invalid(_)), "{error}");
    assert_eq!(count(&pool, "SELECT count(*) FROM intents").await, before);
    let unchanged = intents_doc(&pool, branch()).await.unwrap();
    assert_eq!(unchanged.get_heads(), doc.get_heads());
}
