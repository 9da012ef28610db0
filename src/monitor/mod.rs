//! One monitoring round, on a primary, a standby or a witness.
//!
//! Each round reads this node's state once (a short local transaction), performs the checks
//! its role needs, and turns what it saw into events and log lines through the pure trackers
//! of `repmgr-core` ([`Upstream`], [`repmgr_core::children::Children`]). Events that cannot be
//! written yet (the primary is unreachable) wait in an outbox with the time they happened, and
//! are written as soon as a primary answers. Nothing here sleeps: the round returns how long
//! the worker may wait before the next one.

mod primary;
mod standby;
mod witness;

use std::time::{Duration, Instant};

use pgrx::prelude::*;
use repmgr_core::children::Children;
use repmgr_core::event;
use repmgr_core::node::NodeType;
use repmgr_core::upstream::{Transition, Upstream};

use crate::catalog::{self, NodeRecord};
use crate::config::{CheckType, Settings};
use crate::db::{Db, Local, in_transaction};
use crate::error::Result;
use crate::events::{self, Event};
use crate::failover::Failover;
use crate::peer::{self, Peer, PeerCache as Peers};
use crate::shmem;

/// The worker must stop and not be restarted.
#[derive(Debug)]
pub struct Stop;

/// How long a repointed standby may take to stream before the follow is reported failed.
const FOLLOW_CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// A repointing waiting for streaming to be confirmed.
struct PendingFollow {
    target: NodeRecord,
    since: Duration,
    event: &'static str,
    /// The `repmgr.follow()` request waiting for the outcome, if any.
    request: Option<u64>,
}

/// Most events kept while no primary can take them; older ones are dropped (and logged).
const OUTBOX_LIMIT: usize = 1000;

/// At most this many events of one kind are recorded per [`EVENT_WINDOW`]; more are counted
/// and the count given with the next one recorded, so nothing writes events in a loop.
const EVENTS_PER_WINDOW: usize = 10;
const EVENT_WINDOW: Duration = Duration::from_secs(60);

/// What this node is, as far as monitoring goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Primary,
    Standby,
    Witness,
}

/// This node's state, read at the start of a round.
struct Snapshot {
    in_recovery: bool,
    nodes: Vec<NodeRecord>,
    /// The catalog as the failover state machine reads it (the nodes and the membership).
    catalog: repmgr_core::driver::Catalog,
    /// The standby's receive position and its last replayed commit time.
    receive_lsn: Option<String>,
    last_replay: Option<String>,
    /// Bytes received but not yet replayed.
    apply_lag: Option<String>,
    /// application_name of every WAL sender (on a primary).
    streaming: Vec<String>,
    /// When the snapshot was taken, as `timestamptz` text.
    taken_at: String,
}

impl Snapshot {
    fn node(&self, id: i32) -> Option<&NodeRecord> {
        self.nodes.iter().find(|n| n.node_id == id)
    }

    fn primary(&self) -> Option<&NodeRecord> {
        self.nodes
            .iter()
            .find(|n| n.node_type == NodeType::Primary && n.active)
    }
}

/// Writes pending events through `db`, inside a local transaction so that notification
/// commands run when it commits. Events that fail stay queued, in order.
fn flush(outbox: &mut Vec<Event>, settings: &Settings, db: &mut dyn Db) {
    if outbox.is_empty() {
        return;
    }
    let pending = std::mem::take(outbox);
    *outbox = in_transaction(|| {
        let mut rest = pending.into_iter();
        for ev in rest.by_ref() {
            if let Err(f) = events::record(Some(&mut *db), settings, ev.clone()) {
                log!(
                    "repmgr: could not record event \"{}\" on {}: {}",
                    ev.name,
                    db.label(),
                    crate::error::mask_text(&f.message)
                );
                return std::iter::once(ev).chain(rest).collect();
            }
        }
        Vec::new()
    });
}

/// Writes pending events on the primary through a connection to it.
fn flush_to(outbox: &mut Vec<Event>, settings: &Settings, peers: &mut Peers, primary: &NodeRecord) {
    if outbox.is_empty() {
        return;
    }
    match peers.get(primary, settings) {
        Ok(p) => flush(outbox, settings, p),
        Err(f) => log!(
            "repmgr: {} events wait for the primary: {}",
            outbox.len(),
            crate::error::mask_text(&f.message)
        ),
    }
}

/// `TimestampTz` now.
fn timestamp_now() -> i64 {
    unsafe { pg_sys::GetCurrentTimestamp() }
}

pub struct Monitor {
    settings: Settings,
    clock: Instant,
    peers: Peers,
    outbox: Vec<Event>,
    role: Option<Role>,
    /// Why the worker is idle, as last logged (so it is logged once).
    waiting: Option<String>,
    /// The upstream being watched and its state (standby and witness).
    upstream: Option<(i32, Upstream)>,
    children: Children,
    next_child_check: Duration,
    next_housekeeping: Duration,
    /// When a fenced primary next looks for a primary to record its events on.
    next_outbox_try: Duration,
    next_witness_sync: Duration,
    last_status_line: Option<Duration>,
    started: bool,
    /// The role it last monitored in, for events: a new `repmgrd_reload` only when it changes.
    entered: Option<Role>,
    /// When recent events of each kind were queued, and how many were held back since.
    recent_events: Vec<(&'static str, Duration)>,
    held_back: Vec<(&'static str, usize)>,
    /// The failover protocol's side of this worker.
    failover: Failover,
    /// The synchronous quorum, while this node is the primary.
    quorum: crate::quorum::Keeper,
    /// Failover slots: the standby's settings, the primary's `synchronized_standby_slots`.
    slots: crate::slots::Keeper,
    pending_follow: Option<PendingFollow>,
    /// The node a confirmed follow repointed this standby to, and the upstream its record
    /// named then: the record's change reaches this node by replication a moment later, and
    /// until it does the standby watches the node it streams from, not the dead one.
    followed: Option<(NodeRecord, Option<i32>)>,
}

impl Monitor {
    pub fn new(settings: Settings) -> Monitor {
        Monitor {
            failover: Failover::new(settings.clone()),
            quorum: crate::quorum::Keeper::default(),
            slots: crate::slots::Keeper::default(),
            pending_follow: None,
            followed: None,
            settings,
            clock: Instant::now(),
            peers: Peers::default(),
            outbox: Vec::new(),
            role: None,
            waiting: None,
            upstream: None,
            children: Children::new(),
            next_child_check: Duration::ZERO,
            next_housekeeping: Duration::ZERO,
            next_outbox_try: Duration::ZERO,
            next_witness_sync: Duration::ZERO,
            last_status_line: None,
            started: false,
            entered: None,
            recent_events: Vec::new(),
            held_back: Vec::new(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn me(&self) -> String {
        self.settings.describe()
    }

    /// Applies reloaded settings and reports what changed.
    pub fn reload(&mut self, new: Settings) {
        self.failover.reload(new.clone());
        let old = std::mem::replace(&mut self.settings, new);
        let m = (&old.monitor, &self.settings.monitor);
        let mut changes = Vec::new();
        if m.0.retry != m.1.retry {
            changes.push(format!(
                "monitor_interval {} ms, reconnect_attempts {}, reconnect_interval {} ms",
                m.1.retry.monitor_interval.as_millis(),
                m.1.retry.attempts,
                m.1.retry.retry_interval.as_millis()
            ));
        }
        if old.failover != self.settings.failover {
            changes.push(match &self.settings.failover.timing {
                Ok(t) => format!(
                    "failover settings (heartbeat {} ms, fence {} ms, lease {} ms)",
                    t.heartbeat.as_millis(),
                    t.fence.as_millis(),
                    t.lease.as_millis()
                ),
                Err(rule) => format!("failover timing refused: {rule}"),
            });
        }
        if m.0.check_type != m.1.check_type {
            changes.push(format!("connection_check_type {:?}", m.1.check_type).to_lowercase());
        }
        if m.0 != m.1 && changes.is_empty() {
            changes.push("monitoring settings".into());
        }
        if old.conninfo != self.settings.conninfo
            || old.peer_connect_timeout != self.settings.peer_connect_timeout
        {
            changes.push("connection settings".into());
            self.peers = Peers::default();
        }
        if let Some((_, u)) = self.upstream.as_mut() {
            u.set_policy(self.settings.monitor.retry);
        }
        let details = if changes.is_empty() {
            "configuration reloaded; no monitoring setting changed".to_string()
        } else {
            format!("configuration reloaded: {}", changes.join("; "))
        };
        log!("repmgr: {}", details);
        self.queue(Event::new(
            self.settings.node_id,
            event::REPMGRD_RELOAD,
            details,
        ));
    }

    /// Keeps an event until a primary can take it.
    fn queue(&mut self, mut ev: Event) {
        let now = self.clock.elapsed();
        self.recent_events
            .retain(|(_, t)| now.saturating_sub(*t) < EVENT_WINDOW);
        let recent = self
            .recent_events
            .iter()
            .filter(|(n, _)| *n == ev.name)
            .count();
        if recent >= EVENTS_PER_WINDOW {
            match self.held_back.iter_mut().find(|(n, _)| *n == ev.name) {
                Some((_, count)) => *count += 1,
                None => {
                    log!(
                        "repmgr: more than {EVENTS_PER_WINDOW} \"{}\" events in {} s; holding the next ones back",
                        ev.name,
                        EVENT_WINDOW.as_secs()
                    );
                    self.held_back.push((ev.name, 1));
                }
            }
            return;
        }
        self.recent_events.push((ev.name, now));
        if let Some(i) = self.held_back.iter().position(|(n, _)| *n == ev.name) {
            let (_, count) = self.held_back.remove(i);
            ev.details = format!(
                "{} ({count} more \"{}\" events were held back in the minute before)",
                ev.details, ev.name
            );
        }
        ev.at.get_or_insert_with(timestamp_now);
        if ev.successful {
            match ev.name {
                event::REPMGRD_FAILOVER_PROMOTE | event::STANDBY_PROMOTE => {
                    shmem::update(|s| s.promotions += 1);
                }
                event::REPMGRD_PRIMARY_FENCED => {
                    shmem::update(|s| s.fencings += 1);
                }
                _ => {}
            }
        }
        if self.outbox.len() >= OUTBOX_LIMIT {
            let dropped = self.outbox.remove(0);
            log!(
                "repmgr: no primary reachable for a while; dropping the oldest pending event \"{}\"",
                dropped.name
            );
        }
        self.outbox.push(ev);
    }

    /// Logs why the worker idles, once per reason.
    fn wait_for(&mut self, reason: String) -> Duration {
        if let Some((seq, _)) = shmem::take_request() {
            let refusal = crate::manual::refusal(
                format!("the monitoring worker is not monitoring yet: {reason}"),
                "Create the extension and register this node first (see the server log of this node).",
            );
            shmem::finish_request(seq, &Err(refusal));
        }
        if self.waiting.as_ref() != Some(&reason) {
            log!("repmgr: {reason}");
            self.waiting = Some(reason);
        }
        self.role = None;
        self.settings.monitor.retry.monitor_interval
    }

    /// Reads this node's state, or `None` while the extension is not created.
    fn snapshot(&self) -> Result<Option<Snapshot>> {
        in_transaction(|| {
            let ext = Local.read(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'repmgr')",
                &[],
            )?;
            if ext.get(0, 0) != Some("t") {
                return Ok(None);
            }
            let failover_catalog = catalog::failover_catalog(&mut Local)?;
            let nodes = failover_catalog.nodes.clone();
            let r = Local.read(
                "SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.pg_last_wal_receive_lsn()::text,
                        pg_catalog.pg_last_xact_replay_timestamp()::text,
                        (pg_catalog.pg_last_wal_receive_lsn() - pg_catalog.pg_last_wal_replay_lsn())::bigint::text,
                        (SELECT pg_catalog.array_to_string(pg_catalog.array_agg(application_name), E'\\n')
                           FROM pg_catalog.pg_stat_replication),
                        pg_catalog.clock_timestamp()::text",
                &[],
            )?;
            let text = |c: usize| r.get(0, c).map(str::to_string);
            Ok(Some(Snapshot {
                in_recovery: r.get(0, 0) == Some("t"),
                nodes,
                catalog: failover_catalog,
                receive_lsn: text(1),
                last_replay: text(2),
                apply_lag: text(3),
                streaming: r
                    .get(0, 4)
                    .map(|s| s.lines().map(str::to_string).collect())
                    .unwrap_or_default(),
                taken_at: text(5).unwrap_or_default(),
            }))
        })
    }

    /// One step of the failover protocol (between rounds too): what to wait for next.
    /// The postmaster died: see [`crate::failover::Failover::announce_exit`].
    pub fn announce_exit(&self) {
        self.failover.announce_exit();
    }

    pub fn tick_failover(&mut self) -> crate::failover::Wait {
        let wait = self.failover.tick();
        for ev in std::mem::take(&mut self.failover.outbox) {
            self.queue(ev);
        }
        wait
    }

    /// Whether a round should run now rather than at its time: a follow notification is
    /// waiting (following fast is part of a failover).
    pub fn round_wanted(&self) -> bool {
        shmem::read().is_some_and(|s| s.follow_new_primary && !s.paused) || shmem::request_waiting()
    }

    /// One round. Returns how long to wait before the next, or [`Stop`].
    pub fn round(&mut self) -> std::result::Result<Duration, Stop> {
        let now = self.clock.elapsed();
        let settings = &self.settings;
        if settings.node_id <= 0 {
            return Ok(self.wait_for("repmgr.node_id is not set on this node; the monitoring worker idles until it is set and the server restarted".into()));
        }
        let snap = match self.snapshot() {
            Ok(Some(s)) => s,
            Ok(None) => {
                // The catalog is gone (DROP EXTENSION): the failover protocol keeps what it
                // knows, and says so.
                let in_recovery = unsafe { pg_sys::RecoveryInProgress() };
                self.failover.observe(None, in_recovery);
                let db = self.settings.database.clone();
                return Ok(self.wait_for(format!(
                    "waiting for CREATE EXTENSION repmgr in database \"{db}\" before monitoring"
                )));
            }
            Err(f) => {
                log!(
                    "repmgr: could not read this node's state: {}",
                    crate::error::mask_text(&f.message)
                );
                return Ok(self.settings.monitor.retry.monitor_interval);
            }
        };
        self.failover
            .observe(Some(snap.catalog.clone()), snap.in_recovery);
        let Some(me) = snap.node(self.settings.node_id).cloned() else {
            // A witness whose own record vanished from its copy (the primary's node list was
            // emptied and restored) keeps copying the primary's, or it would never see it
            // restored.
            if self.entered == Some(Role::Witness) && !snap.in_recovery {
                self.resync_witness(now, &snap);
            }
            let me = self.me();
            return Ok(self.wait_for(format!(
                "waiting for {me} to be registered before monitoring"
            )));
        };
        self.waiting = None;
        let role = match (snap.in_recovery, me.node_type) {
            (true, _) => Role::Standby,
            (false, NodeType::Witness) => Role::Witness,
            (false, _) => Role::Primary,
        };
        if self.role != Some(role) {
            self.enter(role, &snap, &me);
        }
        if let Some((seq, action)) = shmem::take_request() {
            self.manual(now, seq, action, role, &snap, &me);
        }
        let pause = match role {
            Role::Primary => self.primary_round(now, &snap, &me),
            Role::Standby => self.standby_round(now, &snap, &me)?,
            Role::Witness => self.witness_round(now, &snap, &me)?,
        };
        let finished = timestamp_now();
        shmem::update(|s| s.last_round_at = finished);
        self.status_line(now, role, &snap);
        Ok(pause)
    }

    /// Carries out a `repmgr.promote()` or `repmgr.follow()` request; a follow is answered once
    /// streaming is confirmed.
    fn manual(
        &mut self,
        now: Duration,
        seq: u64,
        action: shmem::Action,
        role: Role,
        snap: &Snapshot,
        me: &NodeRecord,
    ) {
        if role != Role::Standby {
            let what = if role == Role::Primary {
                "the primary"
            } else {
                "the witness"
            };
            let hint = "Run it on a standby.";
            return shmem::finish_request(
                seq,
                &Err(crate::manual::refusal(
                    format!("{} is not a standby: it runs as {what}", me.describe()),
                    hint,
                )),
            );
        }
        match action {
            shmem::Action::Promote {
                force,
                allow_data_loss,
            } => {
                // Answered through the request slot once the state machine is done.
                self.failover.manual_promote(seq, force, allow_data_loss);
            }
            shmem::Action::Follow { node_id } => {
                let target = snap.node(node_id).filter(|t| {
                    t.node_id != me.node_id && t.active && t.node_type != NodeType::Witness
                });
                let Some(target) = target.cloned() else {
                    return shmem::finish_request(
                        seq,
                        &Err(crate::manual::refusal(
                            format!(
                                "node {node_id} cannot be followed: it must be another active, registered primary or standby"
                            ),
                            "See SELECT * FROM repmgr.show_nodes.",
                        )),
                    );
                };
                if let Err(why) =
                    self.start_follow(now, snap, me, &target, event::STANDBY_FOLLOW, Some(seq))
                {
                    shmem::finish_request(seq, &Err(why));
                }
            }
        }
    }

    /// Starts monitoring in `role`: fresh trackers and a `repmgrd_start` (first time) or
    /// `repmgrd_reload` (role changed) event.
    fn enter(&mut self, role: Role, snap: &Snapshot, me: &NodeRecord) {
        self.role = Some(role);
        self.upstream = None;
        self.children = Children::new();
        self.next_child_check = Duration::ZERO;
        self.next_witness_sync = Duration::ZERO;
        self.quorum = crate::quorum::Keeper::default();
        if role == Role::Primary {
            shmem::update(|s| s.upstream_node_id = -1);
        }
        let what = match role {
            Role::Primary => format!(
                "monitoring cluster primary \"{}\" (ID: {})",
                me.node_name, me.node_id
            ),
            Role::Standby | Role::Witness => {
                let up = standby::upstream_of(me, snap).map_or("unknown".to_string(), |u| {
                    format!("\"{}\" (ID: {})", u.node_name, u.node_id)
                });
                if role == Role::Witness {
                    format!("witness monitoring connection to primary node {up}")
                } else {
                    format!("monitoring connection to upstream node {up}")
                }
            }
        };
        // Back in the role it had before a pause (unregistered for a moment, the catalog
        // briefly empty): nothing new to say, or a flapping catalog would say it every round.
        if self.entered == Some(role) {
            return;
        }
        self.entered = Some(role);
        log!("repmgr: {} {what}", self.me());
        let event = if self.started {
            event::REPMGRD_RELOAD
        } else {
            event::REPMGRD_START
        };
        self.started = true;
        self.queue(Event::new(me.node_id, event, what));
    }

    /// Whether `upstream` is up and due for its check (starting to track it if it is new).
    fn check_due(&mut self, now: Duration, upstream: &NodeRecord) -> bool {
        if self.upstream.as_ref().map(|(id, _)| *id) != Some(upstream.node_id) {
            self.upstream = Some((upstream.node_id, Upstream::new(self.settings.monitor.retry)));
        }
        self.upstream
            .as_ref()
            .is_some_and(|(_, u)| u.is_up() && u.next_check() <= now)
    }

    /// Checks the upstream when a check is due and reports what changed. `observed` is the
    /// outcome of an exchange the round already had with it, which then stands for the check.
    /// Returns whether the upstream is up.
    fn watch_upstream(
        &mut self,
        now: Duration,
        upstream: &NodeRecord,
        observed: Option<bool>,
    ) -> bool {
        if self.upstream.as_ref().map(|(id, _)| *id) != Some(upstream.node_id) {
            self.upstream = Some((upstream.node_id, Upstream::new(self.settings.monitor.retry)));
        }
        let due = observed.is_some()
            || self
                .upstream
                .as_ref()
                .is_some_and(|(_, u)| u.next_check() <= now);
        if due {
            let ok = observed.unwrap_or_else(|| self.check(upstream));
            if ok {
                let seen = timestamp_now();
                shmem::update(|s| {
                    s.upstream_last_seen = seen;
                    s.upstream_node_id = upstream.node_id;
                });
            }
            let tracker = &mut self.upstream.as_mut().expect("set above").1;
            let policy = self.settings.monitor.retry;
            let up = format!(
                "upstream node \"{}\" (ID: {})",
                upstream.node_name, upstream.node_id
            );
            match tracker.observe(now, ok) {
                Some(Transition::Disconnected) => {
                    log!(
                        "repmgr: unable to connect to {up}; checking {} more time(s), {} ms apart",
                        policy.attempts,
                        policy.retry_interval.as_millis()
                    );
                    self.queue(Event::new(
                        self.settings.node_id,
                        event::REPMGRD_UPSTREAM_DISCONNECT,
                        format!("unable to connect to {up}"),
                    ));
                }
                Some(Transition::Down { after }) => {
                    warning!(
                        "repmgr: {up} has been unreachable for {} ms; monitoring in degraded state",
                        after.as_millis()
                    );
                }
                Some(Transition::Reconnected { after }) => {
                    let details = format!("reconnected to {up} after {} seconds", after.as_secs());
                    log!("repmgr: {details}");
                    self.queue(Event::new(
                        self.settings.node_id,
                        event::REPMGRD_UPSTREAM_RECONNECT,
                        details,
                    ));
                }
                None => {}
            }
        }
        self.upstream.as_ref().is_some_and(|(_, u)| u.is_up())
    }

    /// How long until the upstream's next check is due.
    fn until_next_check(&self) -> Duration {
        let next = self
            .upstream
            .as_ref()
            .map_or(self.settings.monitor.retry.monitor_interval, |(_, u)| {
                u.next_check()
            });
        next.saturating_sub(self.clock.elapsed())
            .max(Duration::from_millis(10))
    }

    /// Stops the worker once the upstream has been down for `degraded_monitoring_timeout`.
    fn degraded_check(&self, now: Duration) -> std::result::Result<(), Stop> {
        let (Some(limit), Some(since)) = (
            self.settings.monitor.degraded_timeout,
            self.upstream.as_ref().and_then(|(_, u)| u.down_since()),
        ) else {
            return Ok(());
        };
        if now.saturating_sub(since) <= limit {
            return Ok(());
        }
        warning!(
            "repmgr: monitoring has been degraded for more than {} s (repmgr.degraded_monitoring_timeout); the worker stops until the server restarts",
            limit.as_secs()
        );
        Err(Stop)
    }

    /// Checks that `node` answers, the way `repmgr.connection_check_type` says.
    fn check(&mut self, node: &NodeRecord) -> bool {
        let settings = &self.settings;
        match settings.monitor.check_type {
            CheckType::Ping => peer::ping(&node.conninfo, settings),
            CheckType::Connection => {
                Peer::connect(&node.conninfo, &node.describe(), settings).is_ok()
            }
            CheckType::Query => {
                let ok = self
                    .peers
                    .get(node, settings)
                    .and_then(|p| p.run("SELECT 1", &[]))
                    .is_ok();
                if !ok {
                    self.peers.forget(node.node_id);
                }
                ok
            }
        }
    }

    /// Logs how things are, every `repmgr.log_status_interval`.
    fn status_line(&mut self, now: Duration, role: Role, snap: &Snapshot) {
        let Some(every) = self.settings.monitor.log_status_interval else {
            return;
        };
        if self.last_status_line.is_some_and(|t| now < t + every) {
            return;
        }
        self.last_status_line = Some(now);
        let paused = if shmem::read().is_some_and(|s| s.paused) {
            " (paused: no automatic actions)"
        } else {
            ""
        };
        let state = match role {
            Role::Primary => {
                let (attached, total) = self.children.counts();
                format!("monitoring cluster primary; {attached} of {total} child nodes attached")
            }
            Role::Standby | Role::Witness => {
                let up = self
                    .upstream
                    .as_ref()
                    .and_then(|(id, _)| snap.node(*id))
                    .map_or("unknown".into(), NodeRecord::describe);
                match self.upstream.as_ref().and_then(|(_, u)| u.down_since()) {
                    Some(since) => format!(
                        "monitoring upstream {up} in degraded state: unreachable for {} s",
                        now.saturating_sub(since).as_secs()
                    ),
                    None => format!("monitoring upstream {up} in normal state"),
                }
            }
        };
        log!("repmgr: {} {state}{paused}", self.me());
    }

    /// Records `repmgrd_shutdown` if a primary takes it within a short grace period.
    pub fn shutdown(&mut self, why: &str) {
        log!("repmgr: monitoring worker on {} stopping: {why}", self.me());
        if self.role.is_none() {
            return;
        }
        self.queue(Event::new(
            self.settings.node_id,
            event::REPMGRD_SHUTDOWN,
            why,
        ));
        let grace = Duration::from_millis(500);
        self.settings.peer_connect_timeout = self.settings.peer_connect_timeout.min(grace);
        self.settings.peer_statement_timeout = self.settings.peer_statement_timeout.min(grace);
        crate::latch::finishing(|| {
            if self.role == Some(Role::Primary) {
                if crate::fence::refusal().is_none() {
                    flush(&mut self.outbox, &self.settings, &mut Local);
                }
            } else if let Some(primary) = self
                .snapshot()
                .ok()
                .flatten()
                .and_then(|s| s.primary().cloned())
            {
                flush_to(&mut self.outbox, &self.settings, &mut self.peers, &primary);
            }
        });
    }
}
