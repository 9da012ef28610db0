//! A steady write load that records every acknowledged commit, for failover tests and
//! benchmarks.
//!
//! A thread inserts consecutive integers, one small transaction every `every`, through a
//! multi-host connection string with `target_session_attrs=read-write`, as an application
//! would, or through a proxy that alone decides where writes go; after an error it reconnects
//! and goes on. Each
//! acknowledged integer is recorded with the moment its commit returned, and with the node
//! that committed it and its transaction id (to look for it in WAL a rewind discarded).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use repmgr_pq::{Conn, PollWaiter};

/// An acknowledged commit: the value and when its commit returned.
pub type Ack = (i64, Instant);

/// Where an acknowledged commit was made: its value, the node (`repmgr.node_id`) and the
/// transaction id as WAL records name it (32 bits).
pub type Origin = (i64, Option<i32>, u32);

/// Wall-clock time of an acknowledgement, in seconds since the epoch, to compare with
/// timestamps the servers record (same machine, same clock).
pub fn wall(at: Instant) -> f64 {
    let age = Instant::now().saturating_duration_since(at);
    (std::time::SystemTime::now() - age)
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub struct Load {
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    /// Set by the writer once it has seen `paused`, between two writes.
    idle: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
    origins: Arc<Mutex<Vec<Origin>>>,
    handle: Option<JoinHandle<()>>,
}

impl Load {
    /// Starts writing into `table` (created if missing) through `conninfo`, a multi-host
    /// string from which libpq picks the writable node.
    pub fn start(conninfo: &str, table: &str, every: Duration) -> Load {
        Load::spawn(
            format!("{conninfo} target_session_attrs=read-write connect_timeout=2"),
            table,
            every,
        )
    }

    /// Starts writing into `table` through a proxy at `conninfo` (HAProxy), which alone
    /// decides where writes go: the client asks nothing of the node it reaches.
    pub fn through_proxy(conninfo: &str, table: &str, every: Duration) -> Load {
        Load::spawn(format!("{conninfo} connect_timeout=2"), table, every)
    }

    fn spawn(conninfo: String, table: &str, every: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let idle = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let origins = Arc::new(Mutex::new(Vec::new()));
        let (s, p, i, a) = (stop.clone(), paused.clone(), idle.clone(), acks.clone());
        let o = origins.clone();
        let table = table.to_string();
        let handle = std::thread::spawn(move || {
            let mut next: i64 = 1;
            let mut conn: Option<Conn> = None;
            let timeout = Duration::from_secs(2);
            while !s.load(Ordering::Relaxed) {
                if p.load(Ordering::SeqCst) {
                    i.store(true, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                if conn.as_ref().is_none_or(|c| !c.is_usable()) {
                    conn = Conn::connect(
                        &conninfo,
                        &[],
                        &[],
                        Instant::now() + timeout,
                        &mut PollWaiter,
                    )
                    .ok();
                    if let Some(c) = conn.as_mut() {
                        let create =
                            format!("CREATE TABLE IF NOT EXISTS {table} (id bigint PRIMARY KEY)");
                        if c.query(&create, &[], Instant::now() + timeout, &mut PollWaiter)
                            .is_err()
                        {
                            conn = None;
                        }
                    }
                    if conn.is_none() {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                }
                let c = conn.as_mut().expect("connected above");
                let v = next.to_string();
                let sql = format!(
                    "INSERT INTO {table} VALUES ($1::bigint) RETURNING current_setting('repmgr.node_id', true), (pg_catalog.pg_current_xact_id()::text::bigint % 4294967296)::text"
                );
                match c.query(&sql, &[Some(&v)], Instant::now() + timeout, &mut PollWaiter) {
                    Ok(r) => {
                        a.lock().expect("acks").push((next, Instant::now()));
                        let node = r.get(0, 0).and_then(|n| n.parse().ok());
                        let xid = r.get(0, 1).and_then(|x| x.parse().ok()).unwrap_or(0);
                        o.lock().expect("origins").push((next, node, xid));
                        next += 1;
                    }
                    // A refused commit (fenced) or a broken connection: try elsewhere, with
                    // a new value, since this one may have committed without an answer.
                    Err(_) => {
                        conn = None;
                        next += 1;
                    }
                }
                std::thread::sleep(every);
            }
        });
        Load {
            stop,
            paused,
            idle,
            acks,
            origins,
            handle: Some(handle),
        }
    }

    /// Stops writing, returning once no write is in flight (an acknowledged write is then
    /// in the primary's WAL before anything the caller does next). Bounded by the write
    /// timeout.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.idle.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn resume(&self) {
        // Cleared first, so that a later pause waits for the writer to see it again.
        self.idle.store(false, Ordering::SeqCst);
        self.paused.store(false, Ordering::SeqCst);
    }

    /// The acknowledged commits so far.
    pub fn acks(&self) -> Vec<Ack> {
        self.acks.lock().expect("acks").clone()
    }

    /// Where each acknowledged commit so far was made.
    pub fn origins(&self) -> Vec<Origin> {
        self.origins.lock().expect("origins").clone()
    }

    /// Stops the writer and returns every acknowledged commit.
    pub fn stop(mut self) -> Vec<Ack> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.acks()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The longest time without an acknowledged commit among `acks` after `from`, and where it
/// started: (gap, last ack before it).
pub fn longest_gap(acks: &[Ack], from: Instant) -> Option<(Duration, Instant)> {
    acks.windows(2)
        .filter(|w| w[1].1 >= from)
        .map(|w| (w[1].1 - w[0].1, w[0].1))
        .max_by_key(|(g, _)| *g)
}
