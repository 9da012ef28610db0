//! The fence: no transaction that wrote anything commits on a primary without its lease.
//!
//! Every backend runs this check when a transaction that has a transaction id is about to
//! commit (or prepare), and again once it has committed: a commit that finished after the
//! lease ran out is not acknowledged to its client. It reads the lease from shared memory and compares its newest
//! sufficient confirmation with `repmgr.fence_timeout` on CLOCK_BOOTTIME, on its own: it does
//! not need the monitoring worker to be running, or to have noticed anything, so a node that
//! was frozen and wakes up refuses at once. Reads, and transactions that wrote nothing, are
//! not affected.
//!
//! A backend whose postmaster has died (`kill -9` of the postmaster, the OOM killer) lives on
//! until it next waits for its client, and could still commit and acknowledge while its lease
//! lasts, although the server is gone and a standby is about to take over. The same two
//! checks refuse that too, whatever the lease says.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::PgSqlErrorCode;
use pgrx::prelude::*;

use crate::error::Failure;
use crate::{clock, shmem};

/// Registers the check for every backend. Only while preloading (the postmaster's callback
/// list is inherited by every process it starts).
pub fn install() {
    unsafe { pg_sys::RegisterXactCallback(Some(check_commit), std::ptr::null_mut()) };
}

/// Why this node may not commit now, if it may not.
pub fn refusal() -> Option<Failure> {
    lease_check().and_then(Result::err)
}

/// `None` while no lease is in force (the worker has not armed the fence: failover is
/// manual, or this primary has not yet started under the protocol); otherwise whether the
/// lease allows a commit now.
fn lease_check() -> Option<Result<(), Failure>> {
    let st = shmem::read()?;
    let f = st.failover;
    let lease = f.lease.filter(|_| f.armed)?;
    let now = clock::now();
    if lease.may_commit(now, f.timing.fence) {
        return Some(Ok(()));
    }
    let age = match lease.valid_until(f.timing.fence) {
        Some(Some(until)) => format!(
            "its confirmations ran out {} ms ago",
            now.saturating_sub(until).as_millis()
        ),
        _ => "it has not been confirmed by enough voters since it started".to_string(),
    };
    let (needed, others) = lease.needs();
    Some(Err(
        Failure::new(
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            format!("cannot commit: node {} is fenced: {age}", f.node_id),
        )
        .detail(format!(
            "A primary needs fresh confirmations from {needed} of its {others} other voters (repmgr.fence_timeout is {} ms){}; without them another node may have been promoted.",
            f.timing.fence.as_millis(),
            if lease.changing() { ", under both the node list and the one before it" } else { "" }
        ))
        .hint("Send writes to the current primary (SELECT * FROM repmgr.daemon_status()). If this node was replaced, it rejoins that primary by itself while repmgr.auto_rejoin is on; otherwise run repmgr node rejoin."),
    ))
}

/// Why this session may not commit because its postmaster has exited, if it has.
fn orphaned() -> Option<Failure> {
    // The pipe itself, not PostgreSQL's flag set by the parent-death signal: that signal can
    // come a moment after the postmaster's sockets closed, which peers already see.
    // Single-user mode has no postmaster and no pipe. The read raises FATAL only if the pipe
    // cannot be read.
    if !unsafe { pg_sys::IsUnderPostmaster }
        || unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| PostmasterIsAliveInternal()) }
    {
        return None;
    }
    let node = shmem::read().map_or("this node".to_string(), |s| {
        format!("node {}", s.failover.node_id)
    });
    Some(
        Failure::new(
            PgSqlErrorCode::ERRCODE_CRASH_SHUTDOWN,
            format!("cannot commit: the postmaster of {node} has exited"),
        )
        .detail("This session outlived its server (the postmaster was killed); a standby may be promoted at any moment, and a commit acknowledged here could be lost.")
        .hint("Reconnect once the server has restarted or another node is primary (SELECT * FROM repmgr.daemon_status() on a standby says which)."),
    )
}

unsafe extern "C-unwind" {
    /// Reads the postmaster-death pipe: false once the postmaster has exited (pmsignal.c).
    /// Not in pgrx's bindings.
    fn PostmasterIsAliveInternal() -> bool;
}

/// Set at pre-commit for a transaction that wrote, read once it has committed.
static WROTE: AtomicBool = AtomicBool::new(false);

/// Set at pre-commit for a transaction that wrote under a lease. One that passed while none
/// was in force (the moment a primary first starts under the protocol) is acknowledged even
/// if the lease armed meanwhile is not yet confirmed: withholding it would protect nothing
/// the moment before did not already allow.
static LEASED: AtomicBool = AtomicBool::new(false);

#[pg_guard]
unsafe extern "C-unwind" fn check_commit(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT | XACT_EVENT_PRE_PREPARE => {
            // A transaction without an id wrote nothing: reads always go through.
            if unsafe { pg_sys::GetTopTransactionIdIfAny() } == pg_sys::InvalidTransactionId
                || unsafe { pg_sys::RecoveryInProgress() }
            {
                return;
            }
            if let Some(f) = orphaned() {
                f.raise();
            }
            let lease = lease_check();
            if let Some(Err(f)) = lease {
                f.raise();
            }
            WROTE.store(true, Ordering::Relaxed);
            LEASED.store(lease.is_some(), Ordering::Relaxed);
        }
        XACT_EVENT_COMMIT | XACT_EVENT_PREPARE if WROTE.swap(false, Ordering::Relaxed) => {
            let leased = LEASED.swap(false, Ordering::Relaxed);
            if orphaned().is_some() || (leased && refusal().is_some()) {
                withhold_acknowledgement();
            }
        }
        XACT_EVENT_ABORT => {
            WROTE.store(false, Ordering::Relaxed);
            LEASED.store(false, Ordering::Relaxed);
        }
        _ => {}
    }
}

/// The commit passed the check above but finished only after the lease ran out (or the
/// postmaster died): its commit
/// record went out before the fence, and a synchronous standby's acknowledgement may have
/// released it long after, when another node may already have been promoted without it. The
/// client must not hear "COMMIT": its connection is shut down instead, so the outcome stays
/// unknown to it, as after a crash. The transaction itself ends normally (an error here would
/// try to abort a committed transaction, which PostgreSQL turns into a PANIC).
fn withhold_acknowledgement() {
    let port = unsafe { pg_sys::MyProcPort };
    if port.is_null() {
        return;
    }
    // `sock` is the first member of PostgreSQL's `Port` (checked in the headers of 15, 16, 17
    // and 18), which pgrx leaves opaque.
    let sock = unsafe { *(port as *const libc::c_int) };
    if sock < 0 {
        return;
    }
    unsafe { libc::shutdown(sock, libc::SHUT_RDWR) };
    log!(
        "repmgr: a commit finished after this node was fenced or its postmaster exited; its client is disconnected without an acknowledgement"
    );
}
