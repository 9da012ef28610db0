//! The failover protocol between nodes: SQL functions that other nodes' workers call.
//!
//! `lease_poll` runs on the primary (a voter confirming it), `vote_info` and `request_vote`
//! on every voter (a candidate asking around, then asking for votes), `membership_changed`
//! in the catalog trigger of the primary. Each is one call into [`repmgr_core::state::State`]
//! under this node's shared-state lock; a change a vote depends on reaches disk before the
//! answer leaves. None is executable by PUBLIC: grant them to the role in `repmgr.conninfo`.

use std::time::Duration;

use pgrx::prelude::*;
use repmgr_core::election::Answer;
use repmgr_core::lease::{Membership, Poll, Stamp};
use repmgr_core::lsn::Position;
use repmgr_core::state::{Local as LocalFacts, PreVote};
use repmgr_core::vote::{VoteRequest, VoterFacts, catalog_objection};

use crate::db::Local;
use crate::error::Failure;
use crate::raise::{OrRaise, required};
use crate::{catalog, clock, durable, shmem};

fn in_recovery() -> bool {
    unsafe { pg_sys::RecoveryInProgress() }
}

fn micros(v: i64) -> Duration {
    Duration::from_micros(v.max(0) as u64)
}

/// A voter confirms this primary. No row: this node is not a primary in the protocol.
#[pg_extern(volatile)]
#[allow(clippy::type_complexity)]
fn lease_poll(
    voter_id: Option<i32>,
    voter_term: Option<i64>,
    echo_incarnation: Option<i64>,
    echo_at_us: Option<i64>,
    echo_fence_us: default!(Option<i64>, "NULL"),
    voter_version: default!(Option<i64>, "0"),
    voter_wait_ms: default!(Option<i64>, "0"),
) -> TableIterator<
    'static,
    (
        name!(term, i64),
        name!(accepted, bool),
        name!(holds_lease, bool),
        name!(yielding, bool),
        name!(incarnation, i64),
        name!(at_us, i64),
        name!(fence_us, i64),
        name!(heartbeat_ms, i64),
    ),
> {
    let f = "repmgr.lease_poll()";
    let poll = Poll {
        voter: required(voter_id, "voter_id", f),
        term: required(voter_term, "voter_term", f).max(0) as u64,
        echo: match (echo_incarnation, echo_at_us) {
            (Some(i), Some(at)) => Some(Stamp {
                incarnation: i as u64,
                at: micros(at),
                // A stamp echoed without its fence counts for no longer than the current one.
                fence: echo_fence_us.map_or(Duration::MAX, micros),
            }),
            _ => None,
        },
        version: voter_version.unwrap_or(0).max(0) as u64,
        wait: Duration::from_millis(voter_wait_ms.unwrap_or(0).max(0) as u64),
    };
    let now = clock::now();
    let recovery = in_recovery();
    let reply = shmem::update(|s| s.failover.answer_poll(now, recovery, &poll)).flatten();
    TableIterator::new(reply.map(|r| {
        (
            r.term as i64,
            r.accepted,
            r.leading,
            r.yielding,
            r.stamp.incarnation as i64,
            r.stamp.at.as_micros() as i64,
            r.stamp.fence.as_micros() as i64,
            r.heartbeat.as_millis() as i64,
        )
    }))
}

/// How much WAL this standby holds: the timeline and position of what it received, or of
/// what it replayed when that is further. After a restart, until its WAL receiver streams
/// again, the received position is unknown or only the start of the current segment, while
/// replay has gone through everything on disk: comparing received positions alone would make
/// a standby that holds the most WAL look behind. Read from shared memory (the WAL
/// receiver's and the startup process's), so a backend answers without a query. Where its
/// timeline began is read from that timeline's history file in `pg_wal` (the server runs in
/// the data directory).
pub(crate) fn received_position() -> Option<Position> {
    let (mut receive_tli, mut replay_tli) = (0, 0);
    let received = unsafe { pg_sys::GetWalRcvFlushRecPtr(std::ptr::null_mut(), &mut receive_tli) };
    let replayed = unsafe { pg_sys::GetXLogReplayRecPtr(&mut replay_tli) };
    let (timeline, lsn) = if received > replayed {
        (receive_tli, received)
    } else {
        (replay_tli, replayed)
    };
    let start = if timeline > 1 {
        std::fs::read_to_string(format!("pg_wal/{timeline:08X}.history"))
            .ok()
            .and_then(|h| repmgr_core::lsn::timeline_start(&h))
            .map_or(0, |l| l.0)
    } else {
        0
    };
    (lsn > 0).then_some(Position {
        timeline,
        start,
        lsn,
    })
}

/// The position part of [`received_position`].
pub(crate) fn received_lsn() -> Option<u64> {
    received_position().map(|p| p.lsn)
}

/// The columns of `repmgr.vote_info()` that [`parse_vote_info`] reads, in its order.
pub const VOTE_INFO_COLUMNS: &str = "term, holds_lease, in_recovery, silence_ms, lost, lsn, unavailable, diverged, priority, version, primary_id, primary_term, switch_lsn, heartbeat_ms, fence_ms, lease_ms, wait_ms, sync_quorum, timeline, timeline_start";

/// The statement that asks a node how things look from there: `repmgr.vote_info()`, and its
/// usable copies of failover slots, which `vote_info()` does not return (a column added to
/// it would break the elections of a cluster upgraded one node at a time).
pub fn vote_info_query() -> String {
    format!(
        "SELECT {VOTE_INFO_COLUMNS}, {} FROM repmgr.vote_info()",
        crate::slots::READY_COPIES
    )
}

/// A pre-vote answer from the row of [`vote_info_query`].
pub fn parse_vote_info(r: &repmgr_pq::Rows) -> Option<PreVote> {
    if r.rows.is_empty() {
        return None;
    }
    let int = |c: usize| r.get(0, c).and_then(|v| v.parse::<i64>().ok());
    let yes = |c: usize| r.get(0, c) == Some("t");
    let ms = |c: usize| Duration::from_millis(int(c).unwrap_or(0).max(0) as u64);
    Some(PreVote {
        answer: Answer {
            term: int(0)?.max(0) as u64,
            leading: yes(1),
            in_recovery: yes(2),
            silence: ms(3),
            lost: yes(4),
            lsn: int(5).map(|l| l.max(0) as u64),
            timeline: int(18).unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32,
            timeline_start: int(19).unwrap_or(0).max(0) as u64,
            unavailable: yes(6),
            diverged: yes(7),
            priority: int(8).unwrap_or(0) as i32,
            failover_slots: int(20).unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32,
            version: int(9).unwrap_or(0).max(0) as u64,
            sync_quorum: int(17).unwrap_or(0).max(0) as u64,
        },
        primary: int(10)
            .zip(int(11))
            .map(|(p, t)| (p as i32, t.max(0) as u64)),
        switch_lsn: int(12).unwrap_or(0).max(0) as u64,
        timing: repmgr_core::lease::Timing {
            heartbeat: ms(13),
            fence: ms(14),
            lease: ms(15),
        },
        wait: ms(16),
    })
}

/// How things look from this node: the pre-vote answer, with this node's timing.
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
        name!(lost, bool),
        name!(lsn, Option<i64>),
        name!(unavailable, bool),
        name!(paused, bool),
        name!(diverged, bool),
        name!(priority, i32),
        name!(version, i64),
        name!(primary_id, Option<i32>),
        name!(primary_term, Option<i64>),
        name!(switch_lsn, i64),
        name!(heartbeat_ms, i64),
        name!(fence_ms, i64),
        name!(lease_ms, i64),
        name!(wait_ms, i64),
        name!(sync_quorum, i64),
        name!(timeline, i64),
        name!(timeline_start, i64),
    ),
> {
    let Some(st) = shmem::read() else {
        return TableIterator::new(std::iter::empty());
    };
    let recovery = in_recovery();
    let position = received_position().filter(|_| recovery);
    let local = LocalFacts {
        in_recovery: recovery,
        lsn: position.map(|p| p.lsn),
        timeline: position.map_or(0, |p| p.timeline),
        timeline_start: position.map_or(0, |p| p.start),
        paused: st.paused,
        // Not among vote_info()'s columns: the asking node reads it itself.
        failover_slots: 0,
        sync_quorum: if recovery {
            crate::quorum::sync_version(&mut Local)
        } else {
            0
        },
    };
    let p = st.failover.pre_vote(clock::now(), &local);
    let a = &p.answer;
    let ms = |d: Duration| d.as_millis().min(i64::MAX as u128 / 2) as i64;
    TableIterator::once((
        st.failover.node_id,
        a.term as i64,
        a.leading,
        a.in_recovery,
        ms(a.silence),
        a.lost,
        a.lsn.map(|l| l as i64),
        a.unavailable,
        st.paused,
        a.diverged,
        a.priority,
        a.version as i64,
        p.primary.map(|(id, _)| id),
        p.primary.map(|(_, t)| t as i64),
        p.switch_lsn as i64,
        ms(p.timing.heartbeat),
        ms(p.timing.fence),
        ms(p.timing.lease),
        ms(p.wait),
        a.sync_quorum as i64,
        i64::from(a.timeline),
        a.timeline_start as i64,
    ))
}

/// A candidate asks for this node's vote in `term` (`manual`: for `repmgr.promote()`), with
/// the fence it will run with, the membership version of its node list and its usable copies
/// of the failover slots. (SQL `repmgr.request_vote`; its C symbol is new in 0.3.0, see
/// [`request_vote`].)
#[pg_extern(volatile, name = "request_vote")]
#[allow(clippy::too_many_arguments)]
fn request_vote_with_slots(
    term: Option<i64>,
    candidate: Option<i32>,
    lsn: Option<i64>,
    manual: default!(Option<bool>, "false"),
    fence_us: default!(Option<i64>, "NULL"),
    version: default!(Option<i64>, "0"),
    quorum_version: default!(Option<i64>, "0"),
    timeline: default!(Option<i64>, "0"),
    timeline_start: default!(Option<i64>, "0"),
    failover_slots: default!(Option<i32>, "0"),
) -> TableIterator<
    'static,
    (
        name!(term, i64),
        name!(granted, bool),
        name!(reason, String),
    ),
> {
    let asked = Asked {
        term,
        candidate,
        lsn,
        manual,
        fence_us,
        version,
        quorum_version,
        timeline,
        timeline_start,
        failover_slots: failover_slots.unwrap_or(0).max(0) as u32,
    };
    TableIterator::once(decide_vote(asked))
}

/// `repmgr.request_vote` as catalogs before 0.3.0 define it, without the candidate's copies of
/// the failover slots: a server running this library keeps such a catalog until `ALTER
/// EXTENSION repmgr UPDATE`, and candidates running an older library call it so. Such a
/// candidate is taken to hold no copies.
#[pg_extern(volatile, sql = false)]
#[allow(clippy::too_many_arguments)]
fn request_vote(
    term: Option<i64>,
    candidate: Option<i32>,
    lsn: Option<i64>,
    manual: default!(Option<bool>, "false"),
    fence_us: default!(Option<i64>, "NULL"),
    version: default!(Option<i64>, "0"),
    quorum_version: default!(Option<i64>, "0"),
    timeline: default!(Option<i64>, "0"),
    timeline_start: default!(Option<i64>, "0"),
) -> TableIterator<
    'static,
    (
        name!(term, i64),
        name!(granted, bool),
        name!(reason, String),
    ),
> {
    request_vote_with_slots(
        term,
        candidate,
        lsn,
        manual,
        fence_us,
        version,
        quorum_version,
        timeline,
        timeline_start,
        None,
    )
}

/// A vote request's arguments, as SQL passed them.
struct Asked {
    term: Option<i64>,
    candidate: Option<i32>,
    lsn: Option<i64>,
    manual: Option<bool>,
    fence_us: Option<i64>,
    version: Option<i64>,
    quorum_version: Option<i64>,
    timeline: Option<i64>,
    timeline_start: Option<i64>,
    failover_slots: u32,
}

/// This voter's answer to a vote request: its term, whether granted, and why not.
fn decide_vote(asked: Asked) -> (i64, bool, String) {
    let Asked {
        term,
        candidate,
        lsn,
        manual,
        fence_us,
        version,
        quorum_version,
        timeline,
        timeline_start,
        failover_slots,
    } = asked;
    let f = "repmgr.request_vote()";
    let (term, candidate, lsn) = (
        required(term, "term", f),
        required(candidate, "candidate", f),
        required(lsn, "lsn", f),
    );
    let Some(st) = shmem::read() else {
        return (
            0,
            false,
            "repmgr is not in shared_preload_libraries on this node".to_string(),
        );
    };
    let settings = crate::config::Settings::current();
    let recovery = in_recovery();
    let nodes = catalog::nodes(&mut Local).unwrap_or_default();
    let witness = nodes
        .iter()
        .find(|n| n.node_id == st.failover.node_id)
        .is_some_and(|n| n.node_type == repmgr_core::node::NodeType::Witness);
    let req = VoteRequest {
        term: term.max(0) as u64,
        candidate,
        lsn: lsn.max(0) as u64,
        timeline: timeline.unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32,
        timeline_start: timeline_start.unwrap_or(0).max(0) as u64,
        // A candidate that does not say is taken to run with the longest fence.
        fence: fence_us.map_or(repmgr_core::lease::MAX_FENCE, micros),
        version: version.unwrap_or(0).max(0) as u64,
        quorum_version: quorum_version.unwrap_or(0).max(0) as u64,
        failover_slots,
    };
    let may_stand = settings.failover.automatic && settings.priority > 0 && !st.paused;
    let position = received_position().filter(|_| recovery && !st.failover.diverged);
    let facts = VoterFacts {
        is_primary: !recovery && !witness,
        received_lsn: position.map(|p| p.lsn),
        timeline: position.map_or(0, |p| p.timeline),
        timeline_start: position.map_or(0, |p| p.start),
        may_stand,
        max_lag: settings.failover.max_lag,
        failover_slots: if recovery {
            crate::slots::count_ready(&mut Local)
        } else {
            0
        },
        // Unreadable counts as a member: the stricter answer.
        quorum_member: recovery
            && crate::quorum::published(&mut Local)
                .map_or(true, |q| q.members.contains(&st.failover.node_id)),
        sync_quorum: if recovery && !st.failover.diverged {
            crate::quorum::sync_version(&mut Local)
        } else {
            0
        },
        candidate_ineligible: catalog_objection(
            candidate,
            nodes.iter().find(|n| n.node_id == candidate),
            manual.unwrap_or(false) || witness,
            st.failover.version < req.version,
        ),
        version: st.failover.version,
    };
    let now = clock::now();
    let reply = shmem::update(|s| s.failover.vote(now, &req, &facts, &mut durable::StateFile))
        .expect("shared memory was read above");
    if reply.granted {
        log!(
            "repmgr: node {} votes for node {candidate} in term {term}",
            st.failover.node_id
        );
        // WAL the old primary sends from now on is on a branch the candidate does not
        // continue: stop receiving it at once, without waiting for the worker (which may be
        // in the middle of a connection attempt). A standby of the candidate itself goes on,
        // and so does a paused one: a switchover pauses every node and repoints them itself.
        let follows_candidate = nodes
            .iter()
            .find(|n| n.node_id == st.failover.node_id)
            .is_some_and(|n| n.upstream_node_id == Some(candidate));
        if recovery && !follows_candidate && !st.paused {
            crate::follow::detach(
                &settings.describe(),
                &format!("at once: it voted for node {candidate} in term {term}"),
                true,
            );
        }
        shmem::wake_worker();
    }
    (reply.term as i64, reply.granted, reply.reason)
}

/// A switchover stopped `node_id`, the primary this node follows, and verified from its
/// control file that it shut down cleanly: this voter stops waiting for the lease to run out,
/// so that the new primary's votes come at once. Returns whether `node_id` was the primary
/// this node follows.
#[pg_extern(volatile, strict)]
fn primary_stopped(node_id: i32) -> bool {
    let now = clock::now();
    let known = shmem::update(|s| s.failover.primary_stopped(now, node_id)).unwrap_or(false);
    if known {
        log!("repmgr: told that primary node {node_id} shut down cleanly for a switchover");
    }
    known
}

/// The orphaned worker of primary `node_id` says, as its last act, that its postmaster
/// exited while it led in `term` under the lease `incarnation`: no process of that server can
/// commit any more (see `fence.rs`), so this voter stops waiting for its lease to run out if
/// that is the lease it last confirmed, and wakes its worker to look around. Returns whether
/// it counted.
#[pg_extern(volatile, strict)]
fn primary_exited(node_id: i32, term: i64, incarnation: i64) -> bool {
    let now = clock::now();
    let counted = shmem::update(|s| {
        s.failover
            .primary_exited(now, node_id, term.max(0) as u64, incarnation as u64)
    })
    .unwrap_or(false);
    if counted {
        log!(
            "repmgr: the worker of primary node {node_id} reports that its postmaster exited: not waiting for its lease to run out"
        );
        shmem::wake_worker();
    }
    counted
}

/// Set by [`vouch_removal`] for the rest of this backend's transaction.
static VOUCHED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The caller (`unregister_node(..., force => true)` of a node that cannot be reached)
/// vouches that the voters this transaction removes are gone for good: the primary stops
/// counting the node list before the change, so that a primary fenced by dead voters can
/// be repaired. Lasts until the end of the transaction.
#[pg_extern(volatile)]
fn vouch_removal() {
    VOUCHED.store(true, std::sync::atomic::Ordering::Relaxed);
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, || {
        VOUCHED.store(false, std::sync::atomic::Ordering::Relaxed)
    });
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Abort, || {
        VOUCHED.store(false, std::sync::atomic::Ordering::Relaxed)
    });
}

/// How long a change of the node list waits for the previous one to reach the voters.
pub const MEMBERSHIP_WAIT: Duration = Duration::from_secs(10);

/// Called by the trigger on `repmgr.nodes`, in the transaction that changes the voters, with
/// the new voters and the version the trigger gives them: a primary in the failover protocol
/// counts the new node list from now on (and the old one until enough voters have seen it),
/// saved before the change may commit. Waits up to 10 s for an earlier change to settle, then
/// refuses. Returns `version`.
#[pg_extern(volatile, strict)]
fn membership_changed(version: i64, voters: Vec<i32>) -> i64 {
    let view = Membership::new(version.max(0) as u64, voters);
    let vouched = VOUCHED.load(std::sync::atomic::Ordering::Relaxed);
    // The previous change settled, and the new list would not fence this primary: a standby
    // registered a moment ago confirms only once its worker has seen its record, and a
    // registration right after it would otherwise be refused at commit.
    let waited = crate::latch::poll(MEMBERSHIP_WAIT, Duration::from_millis(100), || {
        let settled = vouched
            || shmem::read().is_none_or(|s| {
                s.failover.lease.is_none_or(|l| !l.changing())
                    && s.failover.may_commit_with(clock::now(), &view)
            });
        Ok(settled.then_some(()))
    })
    .or_raise();
    let fenced_by_it = !vouched
        && shmem::read().is_some_and(|s| {
            s.failover.lease.is_some_and(|l| !l.changing())
                && !s.failover.may_commit_with(clock::now(), &view)
        });
    if waited.is_none() && fenced_by_it {
        Failure::state(format!(
            "cannot change the node list now: with voters {:?} this primary would not be confirmed by enough of them to keep its lease, and it still was not after {} s",
            view.voters,
            MEMBERSHIP_WAIT.as_secs()
        ))
        .hint("repmgr.node_check() on the primary lists the voters it is missing; once their workers confirm it, try again.")
        .raise();
    }
    if vouched {
        warning!(
            "repmgr: the node list changes to {:?} with the operator's word that the nodes removed are gone for good",
            view.voters
        );
    }
    let outcome = shmem::update(|s| {
        s.failover
            .change_view(&view, vouched, &mut durable::StateFile)
    });
    match (waited, outcome) {
        (_, None) | (_, Some(Ok(()))) => {
            let v = view.version;
            pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Abort, move || {
                shmem::update(|s| s.failover.undo_view(v, &mut durable::StateFile));
            });
            version
        }
        (_, Some(Err(why))) => Failure::state(format!("cannot change the node list now: {why}"))
            .hint("Try again in a few seconds, once the standbys and the witness have replayed the previous change; repmgr.node_check() shows the voters that have not.")
            .raise(),
    }
}
