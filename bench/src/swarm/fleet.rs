//! The swarm's fleet: one chain, branches of ten devices each, seeded into the scratch
//! database through the hub's own seeding (`cartwise_cloud_hub::seed`), and each device's
//! certificate signed by its chain's CA with the function enrollment signs with
//! (`pki::sign_device_csr`, for a key and CSR made the way `cartwise-edge enroll` makes them)
//! and recorded in `device_certificates`, so the hub accepts it exactly as an enrolled one.
//! Enrollment over the wire is not what the swarm measures.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use cartwise_cloud_hub::world::{Branch, Chain, Device, World};
use cartwise_cloud_hub::{pki, seed};
use cartwise_schema::{BranchId, ChainId, DeviceId};
use cartwise_sync_core::identity::{DeviceCredentials, PeerIdentity, device_csr_params};
use sqlx::PgPool;
use uuid::Uuid;

/// Devices per branch (a large supermarket has a handful of corrals; ten is generous).
pub const DEVICES_PER_BRANCH: usize = 10;
/// Posts per device when the devices get boards (one KR-CU16).
pub const POSTS_PER_DEVICE: u16 = 16;

/// One device of the fleet: what its identity file would hold, and its first post.
#[derive(Debug, Clone)]
pub struct FleetDevice {
    /// Certificate, key and CAs.
    pub credentials: DeviceCredentials,
    /// Its first post number (posts `first_post .. first_post + 16` when it has a board).
    pub first_post: u16,
}

/// Seeds `devices` devices (ten per branch; each with one board of 16 posts when `boards`)
/// and issues their certificates.
pub async fn build(
    pool: &PgPool,
    devices: usize,
    boards: bool,
) -> anyhow::Result<Vec<FleetDevice>> {
    let chain = Uuid::now_v7();
    let branches = devices.div_ceil(DEVICES_PER_BRANCH);
    let mut world = World {
        chains: vec![Chain {
            id: chain,
            name: "Swarm".to_owned(),
            slug: format!("swarm-{chain}"),
            description: Some("benchmark fleet".to_owned()),
            branches: Vec::with_capacity(branches),
        }],
    };
    let mut planned = Vec::with_capacity(devices);
    for b in 0..branches {
        let branch = Uuid::now_v7();
        let mut list = Vec::new();
        for i in 0..DEVICES_PER_BRANCH.min(devices - b * DEVICES_PER_BRANCH) {
            let device = Uuid::now_v7();
            let first_post = 1 + POSTS_PER_DEVICE * i as u16;
            list.push(Device {
                id: device,
                device_name: format!("swarm-{b}-{i}"),
                mac_address: None,
                serial_number: None,
                port: "/dev/ttyUSB0".to_owned(),
                baudrate: 19_200,
                boards: if boards { vec![0] } else { Vec::new() },
                first_post_number: i32::from(first_post),
            });
            planned.push((
                PeerIdentity::device(
                    ChainId::from_uuid(chain),
                    BranchId::from_uuid(branch),
                    DeviceId::from_uuid(device),
                ),
                first_post,
            ));
        }
        world.chains[0].branches.push(Branch {
            id: branch,
            name: format!("Swarm branch {b}"),
            branch_code: format!("SW-{}-{b}", &chain.simple().to_string()[24..]),
            address: None,
            city: None,
            latitude: None,
            longitude: None,
            devices: list,
        });
    }
    seed::seed(pool, &world)
        .await
        .context("seeding the swarm's branches and devices")?;
    let platform = pki::load_or_create_hub_identity(pool)
        .await
        .context("creating the hub's certificate")?
        .platform_ca;
    let ca = pki::load_or_create_chain_ca(pool, ChainId::from_uuid(chain))
        .await
        .context("creating the chain CA")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut fleet = Vec::with_capacity(devices);
    let (mut serials, mut ids, mut not_after) = (Vec::new(), Vec::new(), Vec::new());
    for (identity, first_post) in planned {
        let key = rcgen::KeyPair::generate().context("generating a device key")?;
        let csr = device_csr_params()
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .context("making a certificate request")?;
        let issued = pki::sign_device_csr(&ca, &csr, &identity, now)
            .context("signing a device certificate")?;
        let credentials = DeviceCredentials::from_pem(
            &issued.cert_chain_pem,
            &key.serialize_pem(),
            &ca.cert_pem,
            &platform.cert_pem,
        )
        .context("reading back an issued certificate")?;
        serials.push(issued.serial_hex);
        ids.push(*identity.device.as_uuid());
        not_after.push(issued.not_after_unix as f64);
        fleet.push(FleetDevice {
            credentials,
            first_post,
        });
    }
    // What `pki::record_issued` writes, for the whole fleet in one statement.
    sqlx::query(
        "INSERT INTO device_certificates (serial, device_id, chain_id, not_after) \
         SELECT s, d, $3, to_timestamp(n) FROM UNNEST($1::text[], $2::uuid[], $4::float8[]) \
         AS t(s, d, n)",
    )
    .bind(&serials)
    .bind(&ids)
    .bind(chain)
    .bind(&not_after)
    .execute(pool)
    .await
    .context("recording the issued certificates")?;
    Ok(fleet)
}
