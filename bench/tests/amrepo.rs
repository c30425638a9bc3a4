//! The automerge-repo side of the same-workload comparison at a tiny size: the real sync
//! server and device driver (`bench/amrepo/`) must converge, every rental returned and stored.
//!
//! Needs Node ≥ 20 and the npm registry (`npm ci` into `target/amrepo/`). Without them the test
//! says what is missing and passes, unless `CARTWISE_BROWSER_TESTS=1` (set by `./install.sh
//! test`, which installs Node) makes a missing Node a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cartwise_bench::amrepo;
use cartwise_bench::dashboard::workspace_root;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_converge_on_the_automerge_repo_sync_server() {
    let root = workspace_root();
    let dir = match amrepo::prepare(&root).await.unwrap() {
        Ok(dir) => dir,
        Err(why) => {
            let node_required = std::env::var("CARTWISE_BROWSER_TESTS").is_ok_and(|v| v == "1");
            assert!(
                !(node_required && matches!(why, amrepo::Unavailable::Node(_))),
                "Node ≥ 20 required but {why}"
            );
            eprintln!("skipping the automerge-repo test: {why}");
            return;
        }
    };
    let run = amrepo::measure(&dir, 2, 2, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(run.devices, 2);
    assert_eq!(run.rentals_per_device, 2);
    assert_eq!(run.events, 8, "2 devices × 2 rentals × (lend + return)");
    assert!(
        run.converge_ms > 0.0,
        "convergence is measured from the first write: {run:?}"
    );
    assert!(
        run.converge_ms >= run.written_ms,
        "the server cannot hold what is not written"
    );
    assert!(run.events_per_s > 0.0);
}
