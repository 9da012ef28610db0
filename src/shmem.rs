//! The node's shared state, visible to every backend and to the monitoring worker.
//!
//! It exists only when the library is loaded through `shared_preload_libraries` (PostgreSQL
//! hands out shared memory only then). Every accessor therefore returns `None` when it is
//! absent, and callers fall back to the values repmgr documents for that case. Like repmgr's,
//! this state is wiped by a server restart, except the pause flag, which is also kept in a
//! small file under the data directory, and the failover protocol's durable state, which is
//! read back from its own file (see [`crate::durable`]) whenever shared memory is set up.

use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::prelude::*;
use pgrx::{PGRXSharedMemory, PgLwLock, pg_shmem_init};
use repmgr_core::lease::Timing;
use repmgr_core::rejoin::Status;
use repmgr_core::state::State;

/// Timestamp value meaning "never" for `upstream_last_seen`.
pub const NEVER: i64 = i64::MIN;

const ERROR_CAPACITY: usize = 512;

/// repmgr's "re-run the election" value for `notify_follow_primary()`.
pub const ELECTION_RERUN_NOTIFICATION: i32 = -2;

/// `voting_status` when no election is in progress (repmgr's VS_NO_VOTE).
pub const NO_VOTE: i32 = 0;

/// The timing used until the worker publishes the configured one.
pub const DEFAULT_TIMING: Timing = Timing {
    heartbeat: std::time::Duration::from_millis(200),
    fence: std::time::Duration::from_millis(1600),
    lease: std::time::Duration::from_millis(2100),
};

/// What a node knows of the failover protocol when its shared memory is set up: its saved
/// term, support and fence, and, if it was a primary, a lease with no confirmation (fenced
/// until its voters confirm).
fn failover_at_start() -> State {
    let node_id = crate::config::node_id();
    State::new(
        node_id,
        crate::durable::load(node_id),
        crate::clock::now(),
        crate::clock::incarnation(),
        DEFAULT_TIMING,
    )
}

/// A manual action a backend asks of the worker.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `repmgr.promote()`: `force` promotes without a majority of the voters.
    Promote { force: bool, allow_data_loss: bool },
    /// `repmgr.follow()`: stream from this node.
    Follow { node_id: i32 },
}

/// The one manual request slot: a backend submits, the worker takes it, works, and answers.
#[derive(Copy, Clone)]
pub struct Request {
    /// Number of the newest request submitted.
    seq: u64,
    /// Number of the newest request answered; `seq > done` while one is in progress.
    done: u64,
    action: Option<Action>,
    /// The session waiting for the answer, woken when it is given.
    requester: i32,
    ok: bool,
    answer: [u8; ERROR_CAPACITY],
    answer_len: u16,
}

impl Request {
    const EMPTY: Request = Request {
        seq: 0,
        done: 0,
        action: None,
        requester: 0,
        ok: false,
        answer: [0; ERROR_CAPACITY],
        answer_len: 0,
    };

    fn answer(&mut self, seq: u64, outcome: &std::result::Result<String, String>) {
        if seq != self.seq || self.done == seq {
            return;
        }
        let text = match outcome {
            Ok(t) | Err(t) => t,
        };
        self.answer_len = copy_text(&mut self.answer, text);
        self.ok = outcome.is_ok();
        self.done = seq;
        self.action = None;
    }
}

/// Copies as much of `text` as fits, cut on a character boundary. Returns the length.
fn copy_text(buf: &mut [u8; ERROR_CAPACITY], text: &str) -> u16 {
    let mut len = text.len().min(ERROR_CAPACITY);
    while !text.is_char_boundary(len) {
        len -= 1;
    }
    buf[..len].copy_from_slice(&text.as_bytes()[..len]);
    len as u16
}

#[derive(Copy, Clone)]
#[repr(C)]
pub struct SharedState {
    /// The failover protocol's state: the worker drives it, backends answer other nodes from
    /// it and check it at every commit that wrote something.
    pub failover: State,
    pub request: Request,
    pub local_node_id: i32,
    pub daemon_pid: i32,
    pub paused: bool,
    pub upstream_node_id: i32,
    /// `TimestampTz` of the last successful upstream check, or [`NEVER`].
    pub upstream_last_seen: i64,
    /// `TimestampTz` of the last monitoring update sent by this standby (0 until the first).
    pub last_updated: i64,
    pub voting_status: i32,
    pub current_electoral_term: i32,
    pub candidate_node_id: i32,
    pub follow_new_primary: bool,
    /// `TimestampTz` when the worker last finished a monitoring round (0: never).
    pub last_round_at: i64,
    /// Set while the worker connects to its database; still set at the next start means
    /// the connection failed (the database does not exist yet).
    pub worker_connecting: bool,
    last_error: [u8; ERROR_CAPACITY],
    last_error_len: u16,
    pub last_error_at: i64,
    /// Promotions of this node (automatic or manual) and fencings of it, since the server
    /// started: the metrics' counters.
    pub promotions: u64,
    pub fencings: u64,
    /// The automatic rejoin's state (1 + its index in `rejoin::Status::STATES`, 0: none
    /// needed) and what it says.
    rejoin_state: u8,
    rejoin: [u8; ERROR_CAPACITY],
    rejoin_len: u16,
}

impl Default for SharedState {
    fn default() -> Self {
        SharedState {
            failover: failover_at_start(),
            request: Request::EMPTY,
            local_node_id: -1,
            daemon_pid: -1,
            paused: false,
            upstream_node_id: -1,
            upstream_last_seen: NEVER,
            last_updated: 0,
            voting_status: NO_VOTE,
            current_electoral_term: 0,
            candidate_node_id: -1,
            follow_new_primary: false,
            last_round_at: 0,
            worker_connecting: false,
            last_error: [0; ERROR_CAPACITY],
            last_error_len: 0,
            last_error_at: 0,
            promotions: 0,
            fencings: 0,
            rejoin_state: 0,
            rejoin: [0; ERROR_CAPACITY],
            rejoin_len: 0,
        }
    }
}

impl SharedState {
    /// Whole seconds since the upstream was last seen, -1 if never (repmgr's convention).
    pub fn upstream_last_seen_secs(&self, now: i64) -> i32 {
        if self.upstream_last_seen == NEVER {
            -1
        } else {
            ((now - self.upstream_last_seen) / 1_000_000) as i32
        }
    }

    /// Whether the worker whose pid is recorded is alive.
    pub fn worker_running(&self) -> bool {
        self.daemon_pid > 0 && unsafe { libc::kill(self.daemon_pid, 0) } == 0
    }

    /// The last error recorded on this node and when (`TimestampTz`).
    pub fn last_error(&self) -> Option<(String, i64)> {
        let len = usize::from(self.last_error_len);
        (len > 0).then(|| {
            (
                String::from_utf8_lossy(&self.last_error[..len]).into_owned(),
                self.last_error_at,
            )
        })
    }

    /// Where the automatic rejoin stands: its state word and what it says.
    pub fn rejoin(&self) -> Option<(&'static str, String)> {
        let state = Status::STATES.get(usize::from(self.rejoin_state).checked_sub(1)?)?;
        let len = usize::from(self.rejoin_len);
        Some((
            state,
            String::from_utf8_lossy(&self.rejoin[..len]).into_owned(),
        ))
    }

    pub fn set_rejoin(&mut self, status: Option<&Status>) {
        match status {
            None => {
                self.rejoin_state = 0;
                self.rejoin_len = 0;
            }
            Some(st) => {
                let i = Status::STATES.iter().position(|s| *s == st.state());
                self.rejoin_state = i.map_or(0, |i| i as u8 + 1);
                self.rejoin_len = copy_text(&mut self.rejoin, &st.describe());
            }
        }
    }
}

unsafe impl PGRXSharedMemory for SharedState {}

static STATE: PgLwLock<SharedState> = unsafe { PgLwLock::new(c"repmgr_shared_state") };

/// Set in `_PG_init` while preloading and inherited by every forked backend; false in a
/// backend that loaded the library on demand.
static AVAILABLE: AtomicBool = AtomicBool::new(false);

/// Requests the shared memory. Only valid while preloading.
pub fn init() {
    pg_shmem_init!(STATE);
    AVAILABLE.store(true, Ordering::Relaxed);
}

pub fn available() -> bool {
    AVAILABLE.load(Ordering::Relaxed)
}

/// A copy of the state, or `None` without shared memory.
pub fn read() -> Option<SharedState> {
    available().then(|| *STATE.share())
}

/// Applies `f` under the exclusive lock, or returns `None` without shared memory. Keep `f`
/// short and free of anything that can raise an error.
pub fn update<R>(f: impl FnOnce(&mut SharedState) -> R) -> Option<R> {
    available().then(|| f(&mut STATE.exclusive()))
}

/// Where the pause flag survives a restart, relative to the data directory (the working
/// directory of every server process), in repmgr's `<node_id>:<0|1>` format.
const PAUSE_FILE: &str = "pg_stat/repmgrd_state.txt";

/// Pauses or resumes automatic actions and persists the choice. False without shared memory.
pub fn set_paused(pause: bool) -> bool {
    let Some(local) = update(|s| {
        s.paused = pause;
        s.local_node_id
    }) else {
        return false;
    };
    if let Err(e) = std::fs::write(PAUSE_FILE, format!("{local}:{}", i32::from(pause))) {
        pgrx::warning!(
            "repmgr: could not persist the pause state in {PAUSE_FILE}: {e}; it will not survive a restart"
        );
    }
    true
}

/// Sets this node's id once, and restores the pause flag persisted for that id.
pub fn set_local_node_id(node_id: i32) {
    let saved = std::fs::read_to_string(PAUSE_FILE).ok().and_then(|s| {
        let (id, paused) = s.trim_end_matches('\0').trim().split_once(':')?;
        Some((id.parse::<i32>().ok()?, paused == "1"))
    });
    update(|s| {
        if s.local_node_id == -1 {
            s.local_node_id = node_id;
        }
        if let Some((id, paused)) = saved
            && id == s.local_node_id
        {
            s.paused = paused;
        }
    });
}

/// Remembers an error message for `node_status()`. Silently does nothing without shared memory.
pub fn record_error(message: &str) {
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    update(|s| {
        s.last_error_len = copy_text(&mut s.last_error, message);
        s.last_error_at = now;
    });
}

/// Hands `action` to the worker and wakes it. Returns the request's number, or why not.
pub fn submit(action: Action) -> std::result::Result<u64, String> {
    let (seq, pid) = update(|s| {
        let r = &mut s.request;
        if r.seq > r.done && s.daemon_pid > 0 {
            return Err(match r.action {
                Some(a) => format!("another manual request ({a:?}) is waiting for the worker"),
                None => "the worker is still carrying out another manual request".to_string(),
            });
        }
        r.seq += 1;
        r.done = r.done.max(r.seq - 1);
        r.action = Some(action);
        r.requester = unsafe { pg_sys::MyProcPid };
        Ok((r.seq, s.daemon_pid))
    })
    .ok_or("repmgr is not in shared_preload_libraries")??;
    wake(pid);
    Ok(seq)
}

/// Wakes the monitoring worker, so that it acts on a change of the shared state at once (a
/// vote this backend granted: the worker then stops streaming from the old primary).
pub fn wake_worker() {
    if let Some(pid) = read().map(|s| s.daemon_pid) {
        wake(pid);
    }
}

/// Sets the latch of the process `pid` (the worker), if it still runs.
fn wake(pid: i32) {
    if pid <= 0 {
        return;
    }
    unsafe {
        let proc = pg_sys::BackendPidGetProc(pid);
        if !proc.is_null() {
            pg_sys::SetLatch(&raw mut (*proc).procLatch);
        }
    }
}

/// The answer to request `seq`, once the worker gave it.
pub fn answer(seq: u64) -> Option<std::result::Result<String, String>> {
    let s = read()?;
    let r = &s.request;
    (r.seq == seq && r.done == seq).then(|| {
        let text = String::from_utf8_lossy(&r.answer[..usize::from(r.answer_len)]).into_owned();
        if r.ok { Ok(text) } else { Err(text) }
    })
}

/// Whether a manual request waits for the worker.
pub fn request_waiting() -> bool {
    read().is_some_and(|s| s.request.action.is_some())
}

/// The worker takes the waiting request, if any.
pub fn take_request() -> Option<(u64, Action)> {
    update(|s| s.request.action.take().map(|a| (s.request.seq, a))).flatten()
}

/// The worker answers request `seq` and wakes the session waiting for it.
pub fn finish_request(seq: u64, outcome: &std::result::Result<String, String>) {
    if let Some(pid) = update(|s| {
        s.request.answer(seq, outcome);
        s.request.requester
    }) {
        wake(pid);
    }
}

/// A starting worker answers a request its predecessor left unfinished.
pub fn abandon_request() {
    update(|s| {
        let seq = s.request.seq;
        s.request.answer(
            seq,
            &Err("the monitoring worker restarted while carrying out this request; check repmgr.node_status() and try again".into()),
        );
    });
}
