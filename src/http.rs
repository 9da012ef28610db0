//! The HTTP listener for health checks and metrics, on threads of the monitoring worker.
//!
//! The worker's main thread publishes a [`View`] of the node after every pass of its loop;
//! the listener thread and the connection threads it starts read only that copy and the
//! clock. They never call into PostgreSQL (the server is not thread-safe and pgrx panics on
//! any call from a second thread), and they start with every signal blocked so that the
//! postmaster's SIGTERM and SIGHUP still reach the main thread. What to answer is decided in
//! [`repmgr_core::health`].
//!
//! A client cannot hold the worker up: the main thread only swaps the published copy under a
//! lock that readers hold for a clone. Each connection gets [`DEADLINE`] to send its request
//! head (at most 8 KiB) and to take the answer; beyond [`MAX_CONNECTIONS`] at once, new
//! connections are closed straight away. Slow or hostile clients can therefore make health
//! checks fail for a while, never delay monitoring or failover.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pgrx::prelude::*;
use repmgr_core::health::{self, Method, Parsed, View};

use crate::clock;

/// How long a connection may take to send its request and receive the answer.
pub const DEADLINE: Duration = Duration::from_secs(2);

/// Connections served at once; more are closed on arrival.
pub const MAX_CONNECTIONS: usize = 32;

/// The most a refused request may still send before its connection is closed.
const DRAIN_LIMIT: usize = 4 << 20;

/// How long past [`DEADLINE`] a refused request's input is still taken.
const DRAIN_TIME: Duration = Duration::from_millis(500);

/// How often the listener thread looks at its stop flag unwoken (a drop wakes it at once).
const POLL: Duration = Duration::from_millis(200);

/// The latest view published by the main thread.
static VIEW: Mutex<Option<View>> = Mutex::new(None);

/// Replaces the published view (main thread).
pub fn publish(view: View) {
    *VIEW.lock().unwrap_or_else(|e| e.into_inner()) = Some(view);
}

fn current() -> Option<View> {
    VIEW.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// A running listener; dropping it stops the thread.
pub struct Listener {
    /// What it listens on, as configured: (`repmgr.http_listen_address`, `repmgr.http_port`).
    pub config: (String, u16),
    stop: Arc<AtomicBool>,
    /// Written to on drop: the thread wakes at once. A worker whose postmaster died drops
    /// its listener before it tells the voters, so this wait is part of every failover.
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let byte = [1u8];
        unsafe { libc::write(self.wake.as_raw_fd(), byte.as_ptr().cast(), 1) };
        if let Some(t) = self.thread.take() {
            // Connection threads finish within DEADLINE on their own and hold nothing of
            // ours but the view's lock, briefly.
            let _ = t.join();
        }
    }
}

/// The socket addresses for a `listen_addresses`-style list: names, IPs, `*` for all.
fn addresses(list: &str, port: u16) -> std::result::Result<Vec<SocketAddr>, String> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if item == "*" {
            out.push(SocketAddr::from(([0, 0, 0, 0], port)));
            continue;
        }
        let host = item.trim_start_matches('[').trim_end_matches(']');
        let found: Vec<SocketAddr> = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve \"{item}\": {e}"))?
            .collect();
        out.extend(found);
    }
    if out.is_empty() {
        return Err("repmgr.http_listen_address lists no address".into());
    }
    Ok(out)
}

/// Starts listening (main thread: binding errors are reported here, not lost in a thread).
pub fn start(address: &str, port: u16) -> std::result::Result<Listener, String> {
    let mut listeners = Vec::new();
    for a in addresses(address, port)? {
        let l = TcpListener::bind(a).map_err(|e| format!("cannot listen on {a}: {e}"))?;
        l.set_nonblocking(true)
            .map_err(|e| format!("cannot listen on {a}: {e}"))?;
        listeners.push(l);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let mut pipe = [0; 2];
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(format!(
            "cannot start the listener thread: {}",
            std::io::Error::last_os_error()
        ));
    }
    let (woken, wake) = unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    let thread = with_signals_blocked(|| {
        std::thread::Builder::new()
            .name("repmgr http".into())
            .stack_size(256 << 10)
            .spawn(move || accept_loop(listeners, woken, flag))
    })
    .map_err(|e| format!("cannot start the listener thread: {e}"))?;
    Ok(Listener {
        config: (address.to_string(), port),
        stop,
        wake,
        thread: Some(thread),
    })
}

/// Runs `f` with every signal blocked on this thread, so threads it starts inherit a full
/// mask and the kernel delivers the server's signals to the main thread only.
fn with_signals_blocked<R>(f: impl FnOnce() -> R) -> R {
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let r = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r
    }
}

fn accept_loop(listeners: Vec<TcpListener>, woken: OwnedFd, stop: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    let mut fds: Vec<libc::pollfd> = listeners
        .iter()
        .map(|l| l.as_raw_fd())
        .chain([woken.as_raw_fd()])
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        let ready = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                POLL.as_millis() as libc::c_int,
            )
        };
        if ready <= 0 {
            continue;
        }
        for l in &listeners {
            // Take everything queued: a flood must not pile up in the backlog.
            loop {
                match l.accept() {
                    Ok((s, _)) => admit(s, &active),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => break,
                }
            }
        }
    }
}

fn admit(s: TcpStream, active: &Arc<AtomicUsize>) {
    if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
        active.fetch_sub(1, Ordering::AcqRel);
        return; // dropped: closed at once
    }
    let count = active.clone();
    let spawned = std::thread::Builder::new()
        .name("repmgr http conn".into())
        .stack_size(256 << 10)
        .spawn(move || {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve(s)));
            count.fetch_sub(1, Ordering::AcqRel);
        });
    if spawned.is_err() {
        active.fetch_sub(1, Ordering::AcqRel);
    }
}

fn serve(mut s: TcpStream) {
    let started = Instant::now();
    let _ = s.set_nonblocking(false);
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let (answer, head_only, unread) = loop {
        let left = DEADLINE.saturating_sub(started.elapsed());
        if left.is_zero() {
            break (health::error(408, "the request took too long"), false, true);
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
        match health::parse(&buf) {
            Parsed::Incomplete => continue,
            Parsed::Invalid(status, why) => break (health::error(status, why), false, true),
            Parsed::Complete(req) => {
                let view = current();
                let head_only = req.method == Method::Head;
                break (
                    health::respond(&req, view.as_ref(), clock::now()),
                    head_only,
                    false,
                );
            }
        }
    };
    let _ = s.set_write_timeout(Some(
        DEADLINE
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(100)),
    ));
    let _ = s.write_all(&answer.encode(head_only));
    let _ = s.shutdown(Shutdown::Write);
    if unread {
        // Closing with unread input would reset the connection and could destroy the answer
        // before the client reads it: take (and drop) what it still sends, within the
        // deadline.
        let mut drained = 0;
        while drained < DRAIN_LIMIT {
            let left = (DEADLINE + DRAIN_TIME).saturating_sub(started.elapsed());
            if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
                break;
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    }
}

/// The worker's side: keeps the listener in line with the settings.
#[derive(Default)]
pub struct Http {
    listener: Option<Listener>,
    /// The last failure to listen, logged once.
    failed: Option<(String, u16)>,
}

impl Http {
    /// Starts, moves or stops the listener after the settings (re)load.
    pub fn configure(&mut self, address: Option<&str>, port: u16) {
        let wanted = address.map(|a| (a.to_string(), port));
        if self.listener.as_ref().map(|l| &l.config) == wanted.as_ref() {
            return;
        }
        if let Some(old) = self.listener.take() {
            let (a, p) = old.config.clone();
            drop(old);
            log!("repmgr: stopped the health endpoints on {a} port {p}");
        }
        let Some((a, p)) = wanted else {
            self.failed = None;
            return;
        };
        match start(&a, p) {
            Ok(l) => {
                log!(
                    "repmgr: health endpoints and metrics on {a} port {p} (/primary, /replica, /read-only, /health, /status, /metrics)"
                );
                self.listener = Some(l);
                self.failed = None;
            }
            Err(why) if self.failed.as_ref() != Some(&(a.clone(), p)) => {
                warning!(
                    "repmgr: health endpoints not started: {why}; fix repmgr.http_listen_address or repmgr.http_port and reload"
                );
                self.failed = Some((a, p));
            }
            Err(_) => {}
        }
    }

    /// Whether views are being served (so worth building).
    pub fn serving(&self) -> bool {
        self.listener.is_some()
    }
}

/// Builds the views the worker publishes: database facts after each monitoring round, the
/// failover state and loop timings at every pass.
#[derive(Default)]
pub struct Publisher {
    /// The last database facts, in a view whose other fields are filled at publication.
    base: Option<View>,
    loop_duration: health::Histogram,
}

impl Publisher {
    /// Records how long a pass of the worker's loop worked.
    pub fn observe(&mut self, work: Duration) {
        self.loop_duration.observe(work);
    }

    /// Reads the database facts again (main thread, after a monitoring round). Keeps the old
    /// ones when the node cannot say (extension not created yet, node not registered).
    pub fn refresh(&mut self, settings: &crate::config::Settings) {
        let read = crate::db::in_transaction(|| {
            let s = crate::status::node_status(settings)?;
            let standbys = if s.in_recovery {
                Vec::new()
            } else {
                crate::status::replication_lag(settings)?
            };
            let slots = if s.role == "witness" {
                Vec::new()
            } else {
                crate::slots::view(&mut crate::db::Local, s.in_recovery)?
            };
            Ok::<_, crate::error::Failure>((s, standbys, slots))
        });
        let Ok((s, standbys, logical_slots)) = read else {
            return;
        };
        // An unregistered node is nothing a load balancer should send anything to.
        let (Some(node_id), Some(_)) = (s.node_id, &s.registered_type) else {
            self.base = None;
            return;
        };
        let role = match s.role.as_str() {
            "standby" => health::Role::Standby,
            "witness" => health::Role::Witness,
            _ => health::Role::Primary,
        };
        let lsn = |l: Option<crate::pglsn::PgLsn>| l.map(|l| l.0);
        let interval = settings.monitor.retry.monitor_interval;
        self.base = Some(View {
            node_id,
            node_name: s.node_name,
            role,
            timeline: s.timeline,
            current_lsn: lsn(s.current_lsn),
            receive_lsn: lsn(s.receive_lsn),
            replay_lsn: lsn(s.replay_lsn),
            upstream_node_id: s.upstream_node_id,
            upstream_node_name: s.upstream_node_name,
            wal_receiver: s.wal_receiver_status,
            lag_bytes: match (s.replication_lag_bytes, s.apply_lag_bytes) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            },
            lag_seconds: s.replication_lag_seconds,
            upstream_last_seen: None,
            standbys: standbys
                .into_iter()
                .map(|l| health::StandbyLag {
                    node_id: l.node_id,
                    node_name: l.node_name,
                    state: l.state.unwrap_or_default(),
                    lag_bytes: l.replication_lag_bytes,
                    lag_seconds: l.replay_lag_seconds,
                    synchronous: matches!(l.sync_state.as_deref(), Some("sync" | "quorum")),
                })
                .collect(),
            synchronous_standbys: settings.failover.synchronous_standbys,
            logical_slots,
            term: 0,
            paused: false,
            lease: None,
            armed: false,
            fence: Duration::ZERO,
            failovers_total: 0,
            fencings_total: 0,
            rejoin: None,
            loop_duration: health::Histogram::default(),
            published_at: Duration::ZERO,
            stale_after: Duration::from_secs(5) + 2 * interval,
        });
    }

    /// Publishes the view with the shared state as it is now.
    pub fn publish(&self) {
        let (Some(base), Some(st)) = (&self.base, crate::shmem::read()) else {
            return;
        };
        let mut v = base.clone();
        let now_ts = unsafe { pg_sys::GetCurrentTimestamp() };
        v.term = st.failover.term();
        v.paused = st.paused;
        v.lease = st.failover.lease;
        v.armed = st.failover.armed;
        v.fence = st.failover.timing.fence;
        v.failovers_total = st.promotions;
        v.fencings_total = st.fencings;
        v.rejoin = st.rejoin();
        v.upstream_last_seen = match st.upstream_last_seen_secs(now_ts) {
            s if s < 0 || v.role == health::Role::Primary => None,
            s => Some(i64::from(s)),
        };
        v.loop_duration = self.loop_duration.clone();
        v.published_at = clock::now();
        publish(v);
    }
}
