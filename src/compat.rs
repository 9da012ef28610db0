//! The repmgr 5.x shared-memory functions, with repmgr's names, strictness and results.
//!
//! Scripts, the repmgr command line and other nodes call these over SQL, so their behaviour
//! is kept exactly, including the values returned when the library is not preloaded: NULL
//! for most, -1 for `get_new_primary()` and `get_upstream_last_seen()`.

use pgrx::prelude::*;

use crate::db::{Db, Local};
use crate::error::Failure;
use crate::shmem::{self, ELECTION_RERUN_NOTIFICATION, NO_VOTE};

fn now() -> i64 {
    unsafe { pg_sys::GetCurrentTimestamp() }
}

fn timestamp(ts: i64) -> Option<TimestampWithTimeZone> {
    TimestampWithTimeZone::try_from(ts).ok()
}

/// Sets this node's id in shared memory, once, and restores a persisted pause.
#[pg_extern(strict, volatile)]
fn set_local_node_id(node_id: i32) {
    shmem::set_local_node_id(node_id);
}

#[pg_extern(strict, volatile)]
fn get_local_node_id() -> Option<i32> {
    shmem::read().map(|s| s.local_node_id)
}

#[pg_extern(strict, volatile)]
fn standby_set_last_updated() -> Option<TimestampWithTimeZone> {
    let ts = now();
    shmem::update(|s| s.last_updated = ts).and_then(|_| timestamp(ts))
}

#[pg_extern(strict, volatile)]
fn standby_get_last_updated() -> Option<TimestampWithTimeZone> {
    shmem::read().and_then(|s| timestamp(s.last_updated))
}

#[pg_extern(strict, volatile)]
fn set_upstream_last_seen(upstream_node_id: i32) {
    let ts = now();
    shmem::update(|s| {
        s.upstream_last_seen = ts;
        s.upstream_node_id = upstream_node_id;
    });
}

/// Whole seconds since the upstream was last seen, or -1 if never.
#[pg_extern(strict, volatile)]
fn get_upstream_last_seen() -> i32 {
    shmem::read().map_or(-1, |s| s.upstream_last_seen_secs(now()))
}

#[pg_extern(strict, volatile)]
fn get_upstream_node_id() -> Option<i32> {
    shmem::read().map(|s| s.upstream_node_id)
}

#[pg_extern(strict, volatile)]
fn set_upstream_node_id(node_id: i32) {
    let refused = shmem::update(|s| {
        if node_id == s.local_node_id {
            return true;
        }
        s.upstream_node_id = node_id;
        false
    });
    if refused == Some(true) {
        Failure::invalid("upstream node id cannot be the same as the local node id")
            .hint("Pass the id of the node this one streams from.")
            .raise();
    }
}

/// Tells this node to follow `node_id` (or, with -2, to re-run the election). Refused for
/// a node a standby can never stream from: the witness, or this node itself. An id this
/// node's catalog does not know yet is taken (the catalog may lag a new primary's) and
/// ignored with a warning if it is still unknown when the worker acts on it.
#[pg_extern(strict, volatile)]
fn notify_follow_primary(node_id: i32) {
    if node_id != ELECTION_RERUN_NOTIFICATION {
        let me = crate::config::node_id();
        let target = crate::catalog::nodes(&mut Local)
            .ok()
            .and_then(|n| n.into_iter().find(|n| n.node_id == node_id));
        let refusal = match &target {
            _ if node_id == me => Some(format!("node {node_id} is this node itself")),
            Some(t) if t.node_type == repmgr_core::node::NodeType::Witness => {
                Some(format!("{} is the witness", t.describe()))
            }
            _ => None,
        };
        if let Some(why) = refusal {
            Failure::invalid(format!(
                "node {me} cannot be told to follow node {node_id}: {why}"
            ))
            .hint("A standby follows the primary or another standby; see SELECT * FROM repmgr.show_nodes.")
            .raise();
        }
    }
    let local = shmem::update(|s| {
        if s.local_node_id != -1 {
            s.candidate_node_id = node_id;
            s.follow_new_primary = true;
        }
        s.local_node_id
    });
    match local {
        Some(-1) | None => {}
        Some(me) if node_id == ELECTION_RERUN_NOTIFICATION => {
            info!("node {me} received notification to rerun promotion candidate election")
        }
        Some(me) => info!("node {me} received notification to follow node {node_id}"),
    }
}

/// The node this one was told to follow, or -1.
#[pg_extern(strict, volatile)]
fn get_new_primary() -> i32 {
    match shmem::read() {
        Some(s) if s.follow_new_primary => s.candidate_node_id,
        _ => -1,
    }
}

#[pg_extern(strict, volatile)]
fn reset_voting_status() {
    shmem::update(|s| {
        if s.local_node_id != -1 {
            s.voting_status = NO_VOTE;
            s.candidate_node_id = -1;
            s.follow_new_primary = false;
        }
    });
}

/// The monitoring worker's process id, or -1 when it is not running.
#[pg_extern(strict, volatile)]
fn get_repmgrd_pid() -> Option<i32> {
    shmem::read().map(|s| s.daemon_pid)
}

#[pg_extern(strict, volatile)]
fn repmgrd_is_running() -> Option<bool> {
    shmem::read().map(|s| s.worker_running())
}

/// Pauses (or resumes) automatic actions on this node; survives a restart.
#[pg_extern(strict, volatile)]
fn repmgrd_pause(pause: bool) {
    shmem::set_paused(pause);
}

#[pg_extern(strict, volatile)]
fn repmgrd_is_paused() -> Option<bool> {
    shmem::read().map(|s| s.paused)
}

/// The WAL receiver's process id, 0 when there is none.
#[pg_extern(strict, volatile)]
fn get_wal_receiver_pid() -> Option<i32> {
    shmem::read()?;
    let rows = Local
        .read("SELECT pid FROM pg_catalog.pg_stat_wal_receiver", &[])
        .ok()?;
    Some(rows.get(0, 0).and_then(|p| p.parse().ok()).unwrap_or(0))
}
