//! The hub's migrations create the seed tables as specified, and seeding is idempotent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cartwise_cloud_hub::{seed, world::World};
use cartwise_fixtures::world_counts;
use sqlx::PgPool;

/// (table, column, data type as information_schema spells it, default or None, nullable).
const SEED_COLUMNS: &[(&str, &str, &str, Option<&str>, bool)] = &[
    ("chains", "id", "uuid", Some("gen_random_uuid()"), false),
    ("chains", "name", "character varying", None, false),
    ("chains", "slug", "character varying", None, false),
    ("chains", "description", "text", None, true),
    ("chains", "active", "boolean", Some("true"), false),
    (
        "chains",
        "created_at",
        "timestamp with time zone",
        Some("now()"),
        false,
    ),
    (
        "chains",
        "updated_at",
        "timestamp with time zone",
        Some("now()"),
        false,
    ),
    ("branches", "id", "uuid", Some("gen_random_uuid()"), false),
    ("branches", "chain_id", "uuid", None, false),
    ("branches", "name", "character varying", None, false),
    ("branches", "branch_code", "character varying", None, false),
    ("branches", "address", "text", None, true),
    ("branches", "city", "character varying", None, true),
    ("branches", "latitude", "numeric(10,8)", None, true),
    ("branches", "longitude", "numeric(11,8)", None, true),
    ("branches", "active", "boolean", Some("true"), false),
    (
        "branches",
        "created_at",
        "timestamp with time zone",
        Some("now()"),
        false,
    ),
    (
        "branches",
        "updated_at",
        "timestamp with time zone",
        Some("now()"),
        false,
    ),
    ("devices", "id", "uuid", Some("gen_random_uuid()"), false),
    ("devices", "branch_id", "uuid", None, false),
    ("devices", "device_name", "character varying", None, false),
    ("devices", "mac_address", "character varying", None, true),
    ("devices", "serial_number", "character varying", None, true),
    (
        "devices",
        "status",
        "character varying",
        Some("'offline'::character varying"),
        false,
    ),
    (
        "devices",
        "last_heartbeat",
        "timestamp with time zone",
        None,
        true,
    ),
    (
        "devices",
        "firmware_version",
        "character varying",
        None,
        true,
    ),
    ("devices", "ip_address", "character varying", None, true),
    (
        "devices",
        "created_at",
        "timestamp with time zone",
        Some("now()"),
        false,
    ),
    (
        "devices",
        "updated_at",
        "timestamp with time zone",
        Some("now()"),
        false,
    ),
    (
        "controllers",
        "id",
        "uuid",
        Some("gen_random_uuid()"),
        false,
    ),
    ("controllers", "device_id", "uuid", None, false),
    ("controllers", "controller_address", "integer", None, false),
    ("controllers", "port", "character varying", None, false),
    ("controllers", "baudrate", "integer", Some("19200"), false),
    (
        "controllers",
        "status",
        "character varying",
        Some("'unknown'::character varying"),
        false,
    ),
    (
        "controllers",
        "created_at",
        "timestamp with time zone",
        Some("now()"),
        false,
    ),
    ("carts", "id", "uuid", Some("gen_random_uuid()"), false),
    ("carts", "branch_id", "uuid", None, false),
    ("carts", "controller_id", "uuid", None, true),
    ("carts", "cart_number", "integer", None, false),
    ("carts", "locker_id", "integer", None, false),
    (
        "carts",
        "status",
        "character varying",
        Some("'available'::character varying"),
        false,
    ),
    ("carts", "is_locked", "boolean", Some("true"), false),
    ("carts", "assigned_to", "character varying", None, true),
    ("carts", "last_used", "timestamp with time zone", None, true),
    ("carts", "maintenance_notes", "text", None, true),
    (
        "carts",
        "created_at",
        "timestamp with time zone",
        Some("now()"),
        false,
    ),
    (
        "carts",
        "updated_at",
        "timestamp with time zone",
        Some("now()"),
        false,
    ),
    ("rentals", "id", "uuid", Some("gen_random_uuid()"), false),
    ("rentals", "cart_id", "uuid", None, false),
    ("rentals", "branch_id", "uuid", None, false),
    ("rentals", "user_phone", "character varying", None, false),
    (
        "rentals",
        "start_time",
        "timestamp with time zone",
        None,
        false,
    ),
    (
        "rentals",
        "expected_return",
        "timestamp with time zone",
        None,
        false,
    ),
    (
        "rentals",
        "actual_return",
        "timestamp with time zone",
        None,
        true,
    ),
    (
        "rentals",
        "status",
        "character varying",
        Some("'active'::character varying"),
        false,
    ),
    ("rentals", "duration_minutes", "integer", None, true),
    ("rentals", "notes", "text", None, true),
    (
        "rentals",
        "created_at",
        "timestamp with time zone",
        Some("now()"),
        false,
    ),
    ("telemetry", "id", "bigint", None, false),
    ("telemetry", "device_id", "uuid", None, false),
    ("telemetry", "event_type", "character varying", None, false),
    (
        "telemetry",
        "event_data",
        "jsonb",
        Some("'{}'::jsonb"),
        false,
    ),
    (
        "telemetry",
        "timestamp",
        "timestamp with time zone",
        Some("now()"),
        false,
    ),
];

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn every_seed_column_exists_with_its_type_default_and_nullability(pool: PgPool) {
    let rows: Vec<(String, String, String, Option<String>, String)> = sqlx::query_as(
        "SELECT c.table_name::text, c.column_name::text,
                format_type(a.atttypid, a.atttypmod),
                c.column_default::text, c.is_nullable::text
         FROM information_schema.columns c
         JOIN pg_attribute a
           ON a.attrelid = (quote_ident(c.table_schema) || '.' || quote_ident(c.table_name))::regclass
          AND a.attname = c.column_name
         WHERE c.table_schema = 'public'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for &(table, column, ty, default, nullable) in SEED_COLUMNS {
        let row = rows
            .iter()
            .find(|r| r.0 == table && r.1 == column)
            .unwrap_or_else(|| panic!("{table}.{column} is missing"));
        let actual_ty = match row.2.as_str() {
            "character varying" => "character varying".to_string(),
            t if t.starts_with("character varying(") => "character varying".to_string(),
            "timestamp with time zone" => row.2.clone(),
            t => t.replace(", ", ","),
        };
        assert_eq!(actual_ty, ty, "{table}.{column} type");
        assert_eq!(row.3.as_deref(), default, "{table}.{column} default");
        assert_eq!(row.4 == "YES", nullable, "{table}.{column} nullability");
    }
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn the_seed_unique_constraints_exist(pool: PgPool) {
    let uniques: Vec<(String, String)> = sqlx::query_as(
        "SELECT tc.table_name::text, string_agg(kcu.column_name::text, ',' ORDER BY kcu.ordinal_position)
         FROM information_schema.table_constraints tc
         JOIN information_schema.key_column_usage kcu
           ON kcu.constraint_name = tc.constraint_name AND kcu.table_schema = tc.table_schema
         WHERE tc.constraint_type = 'UNIQUE' AND tc.table_schema = 'public'
         GROUP BY tc.table_name, tc.constraint_name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for expected in [
        ("chains", "slug"),
        ("branches", "branch_code"),
        ("devices", "mac_address"),
        ("carts", "branch_id,cart_number"),
    ] {
        assert!(
            uniques
                .iter()
                .any(|(t, c)| t == expected.0 && c == expected.1),
            "unique {expected:?} missing from {uniques:?}"
        );
    }
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn telemetry_has_a_time_range_index(pool: PgPool) {
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE tablename = 'telemetry' AND indexdef LIKE '%timestamp%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        indexes
            .iter()
            .any(|d| d.contains("(device_id, \"timestamp\")")),
        "{indexes:?}"
    );
}

async fn table_counts(pool: &PgPool) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in ["chains", "branches", "devices", "controllers", "carts"] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(pool)
            .await
            .unwrap();
        counts.push(n);
    }
    counts
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn seeding_the_sample_world_twice_leaves_the_same_rows(pool: PgPool) {
    let text = std::fs::read_to_string(cartwise_fixtures::world_path()).unwrap();
    let world = World::parse(&text).unwrap();

    seed::seed(&pool, &world).await.unwrap();
    let first = table_counts(&pool).await;
    let ids_first: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM carts ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();

    seed::seed(&pool, &world).await.unwrap();
    let second = table_counts(&pool).await;
    let ids_second: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM carts ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();

    let expected = [
        world_counts::CHAINS,
        world_counts::BRANCHES,
        world_counts::DEVICES,
        world_counts::CONTROLLERS,
        world_counts::CARTS,
    ]
    .map(|n| n as i64);
    assert_eq!(first, expected);
    assert_eq!(second, first);
    assert_eq!(ids_second, ids_first, "re-seeding must keep row identities");
}

#[sqlx::test(migrator = "cartwise_cloud_hub::db::MIGRATOR")]
async fn seeded_posts_are_numbered_per_branch_in_board_order(pool: PgPool) {
    let text = std::fs::read_to_string(cartwise_fixtures::world_path()).unwrap();
    seed::seed(&pool, &World::parse(&text).unwrap())
        .await
        .unwrap();
    let rows: Vec<(i32, i32, i32)> = sqlx::query_as(
        "SELECT c.cart_number, c.locker_id, k.controller_address
         FROM carts c JOIN controllers k ON k.id = c.controller_id
         JOIN branches b ON b.id = c.branch_id
         WHERE b.branch_code = 'ST-RA' ORDER BY c.cart_number",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 48);
    assert_eq!(rows[0], (1, 0, 0));
    assert_eq!(rows[16], (17, 16, 1));
    assert_eq!(
        rows[32],
        (33, 32, 0),
        "the second Pi starts at its first_post_number"
    );
}
