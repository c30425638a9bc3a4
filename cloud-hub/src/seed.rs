//! Loads a seed world into Postgres idempotently: seeding twice leaves the same rows.
//!
//! Rows are keyed by the world's fixed ids (chains, branches, devices) or by their natural
//! unique keys (controllers by device, port and address; carts by branch and number), and the
//! whole world goes in one transaction, so a failure leaves nothing half-written.

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::world::{Branch, Chain, Device, World};

/// What seeding wrote, counted per table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SeedCounts {
    pub chains: usize,
    pub branches: usize,
    pub devices: usize,
    pub controllers: usize,
    pub carts: usize,
}

/// Upserts every row of `world` in one transaction.
pub async fn seed(pool: &PgPool, world: &World) -> Result<SeedCounts, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut counts = SeedCounts::default();
    for chain in &world.chains {
        upsert_chain(&mut tx, chain).await?;
        counts.chains += 1;
        for branch in &chain.branches {
            upsert_branch(&mut tx, chain.id, branch).await?;
            counts.branches += 1;
            for device in &branch.devices {
                upsert_device(&mut tx, branch.id, device).await?;
                counts.devices += 1;
                let (controllers, carts) = upsert_posts(&mut tx, branch.id, device).await?;
                counts.controllers += controllers;
                counts.carts += carts;
            }
        }
    }
    tx.commit().await?;
    Ok(counts)
}

async fn upsert_chain(
    tx: &mut Transaction<'_, Postgres>,
    chain: &Chain,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO chains (id, name, slug, description) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE
         SET name = EXCLUDED.name, slug = EXCLUDED.slug, description = EXCLUDED.description",
    )
    .bind(chain.id)
    .bind(&chain.name)
    .bind(&chain.slug)
    .bind(&chain.description)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn upsert_branch(
    tx: &mut Transaction<'_, Postgres>,
    chain_id: Uuid,
    branch: &Branch,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO branches (id, chain_id, name, branch_code, address, city, latitude, longitude)
         VALUES ($1, $2, $3, $4, $5, $6, $7::float8::numeric(10, 8), $8::float8::numeric(11, 8))
         ON CONFLICT (id) DO UPDATE
         SET chain_id = EXCLUDED.chain_id, name = EXCLUDED.name,
             branch_code = EXCLUDED.branch_code, address = EXCLUDED.address,
             city = EXCLUDED.city, latitude = EXCLUDED.latitude, longitude = EXCLUDED.longitude",
    )
    .bind(branch.id)
    .bind(chain_id)
    .bind(&branch.name)
    .bind(&branch.branch_code)
    .bind(&branch.address)
    .bind(&branch.city)
    .bind(branch.latitude)
    .bind(branch.longitude)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn upsert_device(
    tx: &mut Transaction<'_, Postgres>,
    branch_id: Uuid,
    device: &Device,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO devices (id, branch_id, device_name, mac_address, serial_number)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO UPDATE
         SET branch_id = EXCLUDED.branch_id, device_name = EXCLUDED.device_name,
             mac_address = EXCLUDED.mac_address, serial_number = EXCLUDED.serial_number",
    )
    .bind(device.id)
    .bind(branch_id)
    .bind(&device.device_name)
    .bind(&device.mac_address)
    .bind(&device.serial_number)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Upserts the device's controllers and their posts; returns (controllers, carts).
async fn upsert_posts(
    tx: &mut Transaction<'_, Postgres>,
    branch_id: Uuid,
    device: &Device,
) -> Result<(usize, usize), sqlx::Error> {
    let mut controllers = Vec::with_capacity(device.boards.len());
    for &board in &device.boards {
        let id: Uuid = sqlx::query_scalar(
            "INSERT INTO controllers (device_id, controller_address, port, baudrate)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (device_id, port, controller_address) DO UPDATE
             SET baudrate = EXCLUDED.baudrate
             RETURNING id",
        )
        .bind(device.id)
        .bind(i32::from(board))
        .bind(&device.port)
        .bind(device.baudrate)
        .fetch_one(&mut **tx)
        .await?;
        controllers.push((board, id));
    }
    let mut carts = 0;
    for post in device.posts() {
        let controller_id = controllers
            .iter()
            .find(|(board, _)| *board == post.board)
            .map(|c| c.1);
        sqlx::query(
            "INSERT INTO carts (branch_id, controller_id, cart_number, locker_id)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (branch_id, cart_number) DO UPDATE
             SET controller_id = EXCLUDED.controller_id, locker_id = EXCLUDED.locker_id",
        )
        .bind(branch_id)
        .bind(controller_id)
        .bind(post.cart_number)
        .bind(post.locker_id)
        .execute(&mut **tx)
        .await?;
        carts += 1;
    }
    Ok((controllers.len(), carts))
}
