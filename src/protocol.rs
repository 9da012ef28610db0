//! The failover protocol between nodes: SQL functions that other nodes' workers call.
//!
//! `lease_poll` runs on the primary (a voter confirming it), `vote_info` and `request_vote`
//! on every voter (a candidate asking around, then asking for votes). Each decision is a pure
//! function of `repmgr-core` applied to this node's shared state under its lock; a change a
//! vote depends on reaches disk before the answer leaves (see [`crate::durable`]). None is
//! executable by PUBLIC: grant them to the role in `repmgr.conninfo`.

use pgrx::prelude::*;
use repmgr_core::durable::Saved;
use repmgr_core::election;
use repmgr_core::lease::{Stamp, Timing};
use repmgr_core::vote::{VoteRequest, VoterFacts};

use crate::db::{Db, Local};
use crate::shmem::{self, FailoverState};
use crate::{catalog, clock, durable};

fn in_recovery() -> bool {
    unsafe { pg_sys::RecoveryInProgress() }
}

/// What this node saves for `state` (its durable voter state, and its lease voters if any).
pub fn saved(state: &FailoverState) -> Saved {
    let durable = match state.lease {
        Some(l) => repmgr_core::vote::Durable {
            term: l.term.max(state.voter.durable.term),
            supports: Some(state.node_id),
        },
        None => state.voter.durable,
    };
    Saved {
        node_id: state.node_id,
        durable,
        lease_voters: state.lease.map(|l| l.others().collect()),
    }
}

/// Saves `state`. Called with the shared-state lock held, so the file always ends with the
/// newest state whoever writes it.
pub fn persist(state: &FailoverState) -> bool {
    match durable::save(&saved(state)) {
        Ok(()) => true,
        Err(e) => {
            warning!("repmgr: could not save the failover state in the data directory: {e}");
            false
        }
    }
}

/// A voter confirms this primary. No row: this node is not a primary in the protocol.
#[pg_extern(volatile)]
fn lease_poll(
    voter_id: i32,
    voter_term: i64,
    echo_incarnation: Option<i64>,
    echo_at_us: Option<i64>,
) -> TableIterator<
    'static,
    (
        name!(term, i64),
        name!(accepted, bool),
        name!(holds_lease, bool),
        name!(incarnation, i64),
        name!(at_us, i64),
    ),
> {
    if in_recovery() {
        return TableIterator::new(std::iter::empty());
    }
    let echo = echo_incarnation.zip(echo_at_us).map(|(i, at)| Stamp {
        incarnation: i as u64,
        at: std::time::Duration::from_micros(at.max(0) as u64),
    });
    let now = clock::now();
    let reply = shmem::update(|s| {
        let fence = s.failover.timing.fence;
        s.failover
            .lease
            .as_mut()
            .map(|l| l.poll(now, voter_id, voter_term.max(0) as u64, echo, fence))
    })
    .flatten();
    TableIterator::new(reply.map(|r| {
        (
            r.term as i64,
            r.accepted,
            r.leading,
            r.stamp.incarnation as i64,
            r.stamp.at.as_micros() as i64,
        )
    }))
}

/// How much WAL this standby holds, in bytes: what it received, or what it replayed when
/// that is further. After a restart, until its WAL receiver streams again, the received
/// position is unknown or only the start of the current segment, while replay has gone
/// through everything on disk: comparing received positions alone would make a standby that
/// holds the most WAL look behind.
pub(crate) fn received_lsn() -> Option<u64> {
    let rows = Local
        .read(
            "SELECT (GREATEST(pg_catalog.pg_last_wal_receive_lsn(), pg_catalog.pg_last_wal_replay_lsn()) - '0/0')::bigint",
            &[],
        )
        .ok()?;
    rows.get(0, 0).and_then(|v| v.parse().ok())
}

/// How things look from this node: the pre-vote answer.
#[pg_extern(volatile)]
#[allow(clippy::type_complexity)]
fn vote_info() -> TableIterator<
    'static,
    (
        name!(node_id, i32),
        name!(term, i64),
        name!(holds_lease, bool),
        name!(in_recovery, bool),
        name!(silence_ms, i64),
        name!(lsn, Option<i64>),
        name!(paused, bool),
        name!(diverged, bool),
        name!(primary_id, Option<i32>),
        name!(primary_term, Option<i64>),
        name!(switch_lsn, i64),
    ),
> {
    let Some(st) = shmem::read() else {
        return TableIterator::new(std::iter::empty());
    };
    let f = st.failover;
    let now = clock::now();
    let recovery = in_recovery();
    let leading = !recovery && f.lease.is_some_and(|l| l.may_commit(now, f.timing.fence));
    let silence = match (recovery, f.lease) {
        (false, Some(_)) if leading => 0,
        (false, Some(_)) => i64::MAX / 2,
        _ => f.voter.silence(now).as_millis() as i64,
    };
    let (primary_id, primary_term) = match f.lease {
        Some(l) if !recovery => (Some(f.node_id), Some(l.term as i64)),
        _ => match f
            .voter
            .leader
            .filter(|_| !f.voter.lease_expired(now, &f.timing))
        {
            Some(l) => (Some(l), Some(f.voter.durable.term as i64)),
            None => (None, None),
        },
    };
    let lsn = if recovery {
        received_lsn().map(|l| l as i64)
    } else {
        None
    };
    TableIterator::once((
        f.node_id,
        f.voter.durable.term.max(f.lease.map_or(0, |l| l.term)) as i64,
        leading,
        recovery,
        silence,
        lsn,
        st.paused,
        f.diverged,
        primary_id,
        primary_term,
        f.switch_lsn as i64,
    ))
}

/// Why `candidate` may not be promoted, from this node's copy of the catalog. A manual
/// promotion (`repmgr.promote()`) may pick a node automatic failover never would. `lenient`
/// checks only what the candidate is: a manual promotion, or a witness, whose copy of the
/// node list is only refreshed every `repmgr.witness_sync_interval` and may still show a
/// rejoined node as inactive (the data nodes' replicated catalogs check the rest).
fn candidate_ineligible(candidate: i32, lenient: bool) -> Option<String> {
    let nodes = catalog::nodes(&mut Local).ok()?;
    match nodes.iter().find(|n| n.node_id == candidate) {
        None => Some(format!("node {candidate} is not registered")),
        // A node registered as primary may be a former primary rejoined as a standby that
        // this copy of the catalog has not caught up with yet (a witness copies the list
        // every repmgr.witness_sync_interval); it asks from recovery, so only a witness is
        // refused for what it is.
        Some(n) if n.node_type == repmgr_core::node::NodeType::Witness => {
            Some(format!("{} is the witness", n.describe()))
        }
        Some(_) if lenient => None,
        Some(n) if !n.active => Some(format!("{} is inactive", n.describe())),
        Some(n) => {
            election::ineligible(n.priority, true).map(|why| format!("{}: {why}", n.describe()))
        }
    }
}

/// A candidate asks for this node's vote in `term` (`manual`: for `repmgr.promote()`).
#[pg_extern(volatile)]
fn request_vote(
    term: i64,
    candidate: i32,
    lsn: i64,
    manual: default!(bool, false),
) -> TableIterator<
    'static,
    (
        name!(term, i64),
        name!(granted, bool),
        name!(reason, String),
    ),
> {
    let Some(st) = shmem::read() else {
        return TableIterator::once((
            0,
            false,
            "repmgr is not in shared_preload_libraries on this node".to_string(),
        ));
    };
    let recovery = in_recovery();
    let witness = catalog::nodes(&mut Local)
        .ok()
        .and_then(|n| n.into_iter().find(|n| n.node_id == st.failover.node_id))
        .is_some_and(|n| n.node_type == repmgr_core::node::NodeType::Witness);
    let facts = VoterFacts {
        // A standby that holds a lease has won its election and is promoting: it must not
        // help a rival win a later term while pg_promote() runs.
        is_primary: (!recovery || st.failover.lease.is_some()) && !witness,
        received_lsn: if recovery && !st.failover.diverged {
            received_lsn()
        } else {
            None
        },
        candidate_ineligible: candidate_ineligible(candidate, manual || witness),
    };
    let req = VoteRequest {
        term: term.max(0) as u64,
        candidate,
        lsn: lsn.max(0) as u64,
    };
    let now = clock::now();
    let reply = shmem::update(|s| {
        let timing: Timing = s.failover.timing;
        let before = s.failover.voter.durable;
        let reply = s.failover.voter.decide(now, &req, &facts, &timing);
        if s.failover.voter.durable != before && !persist(&s.failover) {
            // Not on disk: the vote must not leave this node.
            s.failover.voter.durable = before;
            return repmgr_core::vote::VoteReply {
                term: before.term,
                granted: false,
                reason: "could not save the vote durably".into(),
            };
        }
        reply
    })
    .expect("shared memory was read above");
    if reply.granted {
        log!(
            "repmgr: node {} votes for node {candidate} in term {term}",
            st.failover.node_id
        );
    }
    TableIterator::once((reply.term as i64, reply.granted, reply.reason))
}

/// A switchover stopped `node_id`, the primary this node follows, and verified from its
/// control file that it shut down cleanly: this voter stops waiting for the lease to run out,
/// so that the new primary's votes come at once. Returns whether `node_id` was the primary
/// this node follows.
#[pg_extern(volatile)]
fn primary_stopped(node_id: i32) -> bool {
    let now = clock::now();
    let known = shmem::update(|s| {
        let timing = s.failover.timing;
        s.failover.voter.primary_gone(now, node_id, &timing)
    })
    .unwrap_or(false);
    if known {
        log!("repmgr: told that primary node {node_id} shut down cleanly for a switchover");
    }
    known
}
