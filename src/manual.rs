//! Manual promotion and follow: `repmgr.promote()` and `repmgr.follow()`.
//!
//! The session that calls them does not act itself: it hands the request to this node's
//! monitoring worker through shared memory and waits for the answer. The worker is the only
//! process on a node that stands for election, promotes or repoints replication, so a manual
//! request can never race an automatic one on the same node.

use std::time::{Duration, Instant};

use pgrx::prelude::*;

use crate::config::Settings;
use crate::error::Failure;
use crate::shmem::{self, Action};

/// Longest a caller waits: an election, `pg_promote()` (up to 60 s) or a follow's wait for
/// streaming (30 s), with room to spare. The caller's statement_timeout still applies.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(90);

/// Separates the message from the hint in an answer.
const HINT: char = '\u{1f}';

/// A refusal from the worker, with what to do next.
pub fn refusal(message: impl Into<String>, hint: &str) -> String {
    format!("{}{HINT}{hint}", message.into())
}

/// Hands `action` to the worker and waits for its answer.
fn ask_worker(action: Action, what: &str) -> String {
    let settings = Settings::current();
    let running = shmem::read().is_some_and(|s| s.worker_running());
    if !running {
        Failure::state(format!(
            "{what} needs the repmgr monitoring worker, which is not running on {}",
            settings.describe()
        ))
        .hint("Put 'repmgr' in shared_preload_libraries and restart PostgreSQL; repmgr.node_check() shows what else is missing.")
        .raise();
    }
    let seq = shmem::submit(action).unwrap_or_else(|why| {
        Failure::state(format!("{what} on {}: {why}", settings.describe()))
            .hint("Wait for it to finish and try again.")
            .raise()
    });
    let started = Instant::now();
    loop {
        if let Some(answer) = shmem::answer(seq) {
            return answer.unwrap_or_else(|text| {
                let (message, hint) = text.split_once(HINT).unwrap_or((&text, ""));
                let f = Failure::state(message);
                if hint.is_empty() {
                    f.raise()
                } else {
                    f.hint(hint).raise()
                }
            });
        }
        if started.elapsed() > ANSWER_TIMEOUT {
            Failure::state(format!(
                "{what}: the monitoring worker on {} did not answer within {} s",
                settings.describe(),
                ANSWER_TIMEOUT.as_secs()
            ))
            .hint("It may still finish: check repmgr.node_status(), the events table and the server log before trying again.")
            .raise();
        }
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                50,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        check_for_interrupts!();
    }
}

/// Promotes this standby to primary, in a new term. Refused while a working primary answers.
/// Without `force` it needs the votes of a majority of the voters and must have received at
/// least as much WAL as every standby it can reach; `force` skips both (for a cluster that
/// lost its majority: the operator vouches that the old primary is gone). With a synchronous
/// quorum it also refuses a node that may lack acknowledged commits, unless
/// `allow_data_loss`; and, from PostgreSQL 17, a node whose copies of the failover slots are
/// not usable, unless `allow_slot_loss`. (SQL `repmgr.promote`; its C symbol is new in 0.3.0,
/// see [`promote`].)
#[pg_extern(volatile, name = "promote")]
fn promote_checking_slots(
    force: default!(Option<bool>, "false"),
    allow_data_loss: default!(Option<bool>, "false"),
    allow_slot_loss: default!(Option<bool>, "false"),
) -> String {
    let f = "repmgr.promote()";
    if !crate::raise::required(allow_slot_loss, "allow_slot_loss", f) {
        refuse_unready_slots(&Settings::current());
    }
    promote(force, allow_data_loss)
}

/// `repmgr.promote(force, allow_data_loss)` as catalogs before 0.3.0 define it: a server
/// running this library keeps such a catalog until `ALTER EXTENSION repmgr UPDATE`, the last
/// step of a rolling upgrade, and its calls reach this symbol with two arguments. It does not
/// check the failover slots' copies: that catalog has no way to say `allow_slot_loss`.
#[pg_extern(volatile, sql = false)]
fn promote(
    force: default!(Option<bool>, "false"),
    allow_data_loss: default!(Option<bool>, "false"),
) -> String {
    let f = "repmgr.promote()";
    let force = crate::raise::required(force, "force", f);
    let allow_data_loss = crate::raise::required(allow_data_loss, "allow_data_loss", f);
    ask_worker(
        Action::Promote {
            force,
            allow_data_loss,
        },
        "repmgr.promote()",
    )
}

/// Raises an error naming this standby's copies of failover slots that a consumer could not
/// go on from after its promotion (not yet usable, or invalidated).
fn refuse_unready_slots(settings: &Settings) {
    if !settings.manages_failover_slots() || !unsafe { pg_sys::RecoveryInProgress() } {
        return;
    }
    let copies = crate::slots::copies(&mut crate::db::Local).unwrap_or_else(|f| f.raise());
    let unready: Vec<String> = copies
        .iter()
        .filter(|c| !c.ready())
        .map(|c| c.state())
        .collect();
    if unready.is_empty() {
        return;
    }
    Failure::state(format!(
        "repmgr.promote() on {}: its copies of the failover slots are not all usable: {}; their consumers could not go on from this node",
        settings.describe(),
        unready.join("; ")
    ))
    .hint("Wait until repmgr.node_check() shows them ready (a copy becomes usable once its slot's consumer confirms newer changes), promote a standby whose copies are, or pass allow_slot_loss => true to promote anyway.")
    .raise()
}

/// Makes this standby stream from `node_id` (another standby, or the primary) and waits until
/// it does.
#[pg_extern(volatile)]
fn follow(node_id: Option<i32>) -> String {
    let node_id = crate::raise::required(node_id, "node_id", "repmgr.follow()");
    ask_worker(Action::Follow { node_id }, "repmgr.follow()")
}
