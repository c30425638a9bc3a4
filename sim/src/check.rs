//! The invariants of the design (1–6, and trusted durations) checked at quiescence on every
//! replica and on the projection the hub would write.

use std::collections::{BTreeMap, BTreeSet};

use cartwise_schema::{RentalId, RentalStatus};
use cartwise_sync_core::DocId;
use cartwise_sync_core::authority::actor_allowed;

use crate::pi::Run;
use crate::world::{Node, POSTS, World};

fn closed(status: RentalStatus) -> bool {
    !status.is_open()
}

fn pulsed(status: RentalStatus) -> bool {
    !matches!(
        status,
        RentalStatus::Unlocking | RentalStatus::Cancelled | RentalStatus::FailedUnlock
    )
}

/// A broken invariant's name and what was seen.
type Broken = (&'static str, String);

/// One check over the quiesced world.
type Check = fn(&mut World) -> Result<(), Broken>;

/// Runs every check; the first broken invariant is recorded in `world.failure`.
pub fn check(world: &mut World) {
    let checks: [Check; 6] = [
        isolation,
        durable,
        exactly_once,
        convergence,
        anomalies,
        clocks,
    ];
    for check in checks {
        if let Err((invariant, detail)) = check(world) {
            world.fail(invariant, detail);
            return;
        }
    }
}

/// 6: every change of every copy was written by its document's owner; nothing left its
/// branch.
fn isolation(world: &mut World) -> Result<(), Broken> {
    let hub_actors = world.hub_actors.clone();
    let pi_branch: Vec<usize> = world.pis.iter().map(|p| p.branch).collect();
    let branch_of_doc: BTreeMap<DocId, usize> = world
        .pis
        .iter()
        .map(|p| (DocId::device(p.id), p.branch))
        .chain(
            world
                .branches
                .iter()
                .enumerate()
                .map(|(i, b)| (b.intents, i)),
        )
        .collect();
    let tech_branch: Vec<usize> = world.techs.iter().map(|t| t.branch).collect();
    for (node, doc, copy) in world.replicas() {
        let scope = match node {
            Node::Pi(p) => Some(pi_branch[p]),
            Node::Tech(t) => Some(tech_branch[t]),
            Node::Hub => None,
        };
        if let Some(scope) = scope
            && branch_of_doc.get(&doc) != Some(&scope)
            && !copy.get_heads().is_empty()
        {
            return Err((
                "6-isolation",
                format!("{node:?} holds {doc} of another branch"),
            ));
        }
        // The changes' metadata names their actors without rebuilding every change.
        for change in copy.get_changes_meta(&[]) {
            if !actor_allowed(&doc, &change.actor, &hub_actors) {
                return Err((
                    "6-isolation",
                    format!(
                        "{node:?}'s copy of {doc} holds a change by actor {}",
                        change.actor.to_hex_string()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// 1: every acknowledged rental is on its Pi's disk and at the hub; every unlock pulse is
/// explained by a durable record and every unlocked rental by a pulse; nothing is left
/// `unlocking`.
fn durable(world: &mut World) -> Result<(), Broken> {
    for (rental, &p) in &world.acknowledged {
        let pi = &world.pis[p];
        match pi.disk.rentals.get(rental) {
            Some(row) if pulsed(row.status) => {}
            other => {
                return Err((
                    "1-durable",
                    format!(
                        "acknowledged rental {rental} at {} is {:?} on its disk",
                        pi.name,
                        other.map(|r| r.status)
                    ),
                ));
            }
        }
        if !world.hub.projection.rows.iter().any(|r| r.id == *rental) {
            return Err((
                "1-durable",
                format!("acknowledged rental {rental} never reached the hub"),
            ));
        }
    }
    for pi in &world.pis {
        for post in 1..=POSTS {
            let pulses = pi.board.pulses[usize::from(post - 1)];
            let rentals = pi
                .disk
                .rentals
                .values()
                .filter(|r| r.post == post && pulsed(r.status))
                .count() as u64;
            // A cancelled rental may or may not have opened its lock (the cart was docked back
            // before the reconcile read the board): it explains an unlock, never requires one.
            let cancelled = pi
                .disk
                .rentals
                .values()
                .filter(|r| r.post == post && r.status == RentalStatus::Cancelled)
                .count() as u64;
            let maintenance = pi
                .disk
                .intent_runs
                .values()
                .filter(|run| matches!(run, Run::Done { status: "applied", unlock: Some(x) } if *x == post))
                .count() as u64;
            if pulses > rentals + cancelled + maintenance {
                return Err((
                    "1-durable",
                    format!(
                        "{} post {post}: {pulses} unlocks, only {rentals} rentals and {maintenance} maintenance unlocks recorded (an unrecorded unlock)",
                        pi.name
                    ),
                ));
            }
            if rentals > pulses {
                return Err((
                    "1-durable",
                    format!(
                        "{} post {post}: {rentals} rentals, {pulses} unlocks (a phantom rental)",
                        pi.name
                    ),
                ));
            }
        }
        if let Some(row) = pi
            .disk
            .rentals
            .values()
            .find(|r| r.status == RentalStatus::Unlocking)
        {
            return Err((
                "1-durable",
                format!("{} left {} unlocking", pi.name, row.id),
            ));
        }
    }
    Ok(())
}

/// 2: every copy of a document has the hub's heads; the projection agrees with every Pi's
/// ledger; every intent has its one outcome.
fn convergence(world: &mut World) -> Result<(), Broken> {
    let reference: BTreeMap<DocId, Vec<automerge::ChangeHash>> = world
        .hub
        .docs
        .iter_mut()
        .map(|(doc, copy)| (*doc, copy.get_heads()))
        .collect();
    let mut expected: Vec<(Node, DocId)> = Vec::new();
    for (p, pi) in world.pis.iter().enumerate() {
        let branch = &world.branches[pi.branch];
        for &q in &branch.pis {
            expected.push((Node::Pi(p), DocId::device(world.pis[q].id)));
        }
        expected.push((Node::Pi(p), branch.intents));
        expected.push((Node::Hub, DocId::device(pi.id)));
    }
    for (t, tech) in world.techs.iter().enumerate() {
        for &q in &world.branches[tech.branch].pis {
            expected.push((Node::Tech(t), DocId::device(world.pis[q].id)));
        }
    }
    let held: BTreeMap<(Node, DocId), Vec<automerge::ChangeHash>> = world
        .replicas()
        .into_iter()
        .map(|(node, doc, copy)| ((node, doc), copy.get_heads()))
        .collect();
    for (node, doc) in expected {
        let want = reference.get(&doc).cloned().unwrap_or_default();
        let have = held.get(&(node, doc)).cloned().unwrap_or_default();
        if want != have {
            return Err((
                "2-convergence",
                format!("{node:?}'s copy of {doc} differs from the hub's after quiescence"),
            ));
        }
    }
    let pr = &world.hub.projection;
    let conflicted: BTreeSet<String> = pr
        .anomalies
        .values()
        .filter(|(kind, _)| kind == "conflicting_return")
        .filter_map(|(_, rental)| rental.clone())
        .collect();
    for pi in &world.pis {
        for row in pi.disk.rentals.values() {
            let Some(projected) = pr.rows.iter().find(|r| r.id == row.id) else {
                return Err((
                    "2-convergence",
                    format!(
                        "{}'s rental {} ({}) is not in the projection",
                        pi.name, row.id, row.status
                    ),
                ));
            };
            let same = if conflicted.contains(&row.id.to_string()) {
                closed(projected.status) == closed(row.status)
            } else {
                projected.status == row.status
            };
            if !same || projected.origin != pi.id || projected.post != row.post {
                return Err((
                    "2-convergence",
                    format!(
                        "rental {} is {} at {} but {} in the projection",
                        row.id, row.status, pi.name, projected.status
                    ),
                ));
            }
        }
    }
    for row in &pr.rows {
        let origin = world.pis.iter().find(|p| p.id == row.origin);
        if !origin.is_some_and(|p| p.disk.rentals.contains_key(&row.id)) {
            return Err((
                "2-convergence",
                format!("projected rental {} has no origin record", row.id),
            ));
        }
    }
    for intent in &world.hub.intents {
        let Some(pi) = world.pis.iter().find(|p| p.id == intent.device) else {
            continue;
        };
        let run = pi.disk.intent_runs.get(&intent.id);
        let projected = pr.outcomes.get(&intent.id);
        match (run, projected) {
            (Some(Run::Done { status, .. }), Some((device, shown)))
                if *device == pi.id && shown == status => {}
            _ => {
                return Err((
                    "2-convergence",
                    format!(
                        "intent {} for {}: run {run:?}, projected outcome {projected:?}",
                        intent.id, pi.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// 3: each rental once in the projection; each dock closes at most one rental, each rental
/// is closed by at most one dock (or the conflict is recorded); every dock was sensed once.
fn exactly_once(world: &mut World) -> Result<(), Broken> {
    let pr = &world.hub.projection;
    let mut seen = BTreeSet::new();
    for row in &pr.rows {
        if !seen.insert(row.id) {
            return Err((
                "3-exactly-once",
                format!("rental {} appears twice in the projection", row.id),
            ));
        }
    }
    let mut closes: BTreeMap<RentalId, u32> = BTreeMap::new();
    for (p, pi) in world.pis.iter().enumerate() {
        let physical = world.docks.get(&p).copied().unwrap_or(0);
        // A cart taken and docked back at its own post while the Pi was off leaves no trace
        // on the board: the reconcile cancels that rental instead.
        let cancelled = pi
            .disk
            .rentals
            .values()
            .filter(|r| r.status == RentalStatus::Cancelled)
            .count() as u64;
        let recorded = pi.disk.docks.len() as u64;
        if recorded > physical || physical > recorded + cancelled {
            return Err((
                "3-exactly-once",
                format!(
                    "{}: {physical} carts docked, {} docks recorded",
                    pi.name,
                    pi.disk.docks.len()
                ),
            ));
        }
        for dock in &pi.disk.docks {
            if let Some(r) = dock.closed {
                *closes.entry(r).or_default() += 1;
            }
        }
    }
    let conflicted: BTreeSet<String> = pr
        .anomalies
        .values()
        .filter(|(kind, _)| kind == "conflicting_return")
        .filter_map(|(_, rental)| rental.clone())
        .collect();
    for (rental, n) in closes {
        if n > 1 && !conflicted.contains(&rental.to_string()) {
            return Err((
                "3-exactly-once",
                format!("rental {rental} closed by {n} docks with no conflicting_return recorded"),
            ));
        }
    }
    Ok(())
}

/// 5: what cannot hold while partitioned is recorded once the data meets: unmatched docks,
/// one phone's open rentals at two Pis.
fn anomalies(world: &mut World) -> Result<(), Broken> {
    let pr = &world.hub.projection;
    for pi in &world.pis {
        let unmatched = pi.disk.docks.iter().filter(|d| d.closed.is_none()).count();
        let shown = pr
            .anomalies
            .iter()
            .filter(|((device, _), (kind, _))| *device == pi.id && kind == "unmatched_dock")
            .count();
        if shown < unmatched {
            return Err((
                "5-anomalies",
                format!("{}: {unmatched} unmatched docks, {shown} shown", pi.name),
            ));
        }
        let recorded = pi.disk.anomaly_keys.len();
        let shown_all = pr
            .anomalies
            .keys()
            .filter(|(device, _)| *device == pi.id)
            .count();
        if shown_all < recorded {
            return Err((
                "5-anomalies",
                format!(
                    "{}: {recorded} anomalies recorded, {shown_all} shown",
                    pi.name
                ),
            ));
        }
    }
    let mut open: BTreeMap<String, Vec<(usize, RentalId)>> = BTreeMap::new();
    for (p, pi) in world.pis.iter().enumerate() {
        for row in pi.disk.rentals.values().filter(|r| r.status.is_open()) {
            open.entry(row.phone.clone()).or_default().push((p, row.id));
        }
    }
    for (phone, rentals) in open {
        let devices: BTreeSet<usize> = rentals.iter().map(|(p, _)| *p).collect();
        if devices.len() < 2 {
            continue;
        }
        let ids: BTreeSet<String> = rentals.iter().map(|(_, r)| r.to_string()).collect();
        let flagged = pr.anomalies.values().any(|(kind, rental)| {
            kind == "duplicate_phone_rental" && rental.as_ref().is_some_and(|r| ids.contains(r))
        });
        if !flagged {
            return Err((
                "5-anomalies",
                format!(
                    "{phone} has open rentals at {} Pis and no duplicate_phone_rental",
                    devices.len()
                ),
            ));
        }
    }
    Ok(())
}

/// Time: every device's hybrid logical clock only moved forward, across reboots with wrong
/// wall clocks.
fn clocks(world: &mut World) -> Result<(), Broken> {
    for pi in &world.pis {
        if pi.disk.hlc_regressions > 0 {
            return Err((
                "time",
                format!(
                    "{} issued {} HLC values not after the previous",
                    pi.name, pi.disk.hlc_regressions
                ),
            ));
        }
    }
    Ok(())
}
