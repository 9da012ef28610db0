//! The worker's side of automatic failover.
//!
//! On a standby or witness: confirm the primary every heartbeat (an asynchronous poll, so the
//! worker never waits on a frozen primary), look around when it goes quiet, and — a standby
//! that may be promoted — stand for election, promote, and tell the others to follow. On a
//! primary: keep the lease's voter list current, move past failed elections, and notice when
//! the lease is lost (fence, or shut down). Every decision is a pure function of
//! `repmgr-core` (`vote`, `lease`, `election`); this module gathers what they need and carries
//! out what they decide, in the order the simulator (`sim/`) checks.

use std::os::fd::RawFd;
use std::time::Duration;

use pgrx::prelude::*;
use repmgr_core::election::{self, Answer, Kind, Me, Peer as Candidate, Plan, Rules};
use repmgr_core::event;
use repmgr_core::lease::{Lease, NodeId, PollReply, Stamp, Timing};
use repmgr_core::node::NodeType;
use repmgr_core::template;
use repmgr_core::vote::Heard;
use repmgr_pq::{Conn, Interest, Step};

use crate::catalog::NodeRecord;
use crate::config::{FenceAction, Settings};
use crate::db::{Db, Local};
use crate::events::Event;
use crate::peer::{Peer, PeerCache};
use crate::shmem::{self, DEFAULT_TIMING};
use crate::{clock, manual, protocol};

/// What the worker should wait for before calling [`Failover::tick`] again.
pub struct Wait {
    pub socket: Option<(RawFd, Interest)>,
    pub timeout: Duration,
}

/// A voter's pre-vote answer: how things look there, the primary it follows (with its term),
/// and where that node's timeline began.
type PreVote = (Answer, Option<(NodeId, u64)>, u64);

/// An asynchronous poll connection to the primary.
struct Polling {
    target: NodeRecord,
    conn: Conn,
    /// When the statement in flight (or the connection attempt) started.
    since: Duration,
    busy: bool,
    /// The statement in flight only echoes a fresh stamp.
    echo_poll: bool,
}

/// One loss of the primary, as a standby lives it: from its lease running out until it hears
/// a primary again.
#[derive(Clone, Copy)]
struct Outage {
    /// The primary lost, and when it was last heard.
    leader: Option<NodeId>,
    since: Duration,
    /// The WAL receiver was stopped for the election.
    disconnected: bool,
}

/// Events and log lines the failover side produced, for the monitor to record.
pub type Outbox = Vec<Event>;

pub struct Failover {
    settings: Settings,
    timing: Timing,
    /// The registered nodes and this node, as of the last monitoring round.
    nodes: Vec<NodeRecord>,
    me: Option<NodeRecord>,
    in_recovery: bool,
    polling: Option<Polling>,
    next_poll: Duration,
    /// Echo the stamp just received without waiting for the next heartbeat.
    echo_now: bool,
    /// A primary learnt from other voters, newer than what the catalog copy says.
    leader_hint: Option<(NodeId, u64)>,
    peers: PeerCache,
    retry_at: Duration,
    /// Why this standby declined to stand, as last logged in the current outage.
    last_plan: Option<String>,
    was_leading: Option<bool>,
    reported_replaced: bool,
    outage: Option<Outage>,
    /// The term of a promotion not yet written to the catalog.
    unrecorded: Option<u64>,
    pub outbox: Outbox,
}

fn node_kind(t: NodeType) -> Kind {
    match t {
        NodeType::Primary => Kind::Primary,
        NodeType::Standby => Kind::Standby,
        NodeType::Witness => Kind::Witness,
    }
}

/// An id for this run of the server: stamps from an earlier run are never counted.
pub fn incarnation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}

/// A small pseudo-random backoff, so candidates that failed together do not retry together.
fn jitter(lo: Duration, hi: Duration) -> Duration {
    let seed = clock::now().subsec_nanos() as u64 ^ u64::from(unsafe { pg_sys::MyProcPid } as u32);
    lo + Duration::from_micros(seed % (hi.saturating_sub(lo).as_micros().max(1) as u64))
}

impl Failover {
    pub fn new(settings: Settings) -> Failover {
        let mut f = Failover {
            timing: DEFAULT_TIMING,
            settings,
            nodes: Vec::new(),
            me: None,
            in_recovery: true,
            polling: None,
            next_poll: Duration::ZERO,
            echo_now: false,
            leader_hint: None,
            peers: PeerCache::default(),
            retry_at: Duration::ZERO,
            last_plan: None,
            was_leading: None,
            reported_replaced: false,
            outage: None,
            unrecorded: None,
            outbox: Vec::new(),
        };
        f.apply_timing();
        f
    }

    /// Takes reloaded settings; an invalid timing combination is refused, keeping the last one.
    pub fn reload(&mut self, settings: Settings) {
        self.settings = settings;
        self.peers = PeerCache::default();
        self.apply_timing();
    }

    fn apply_timing(&mut self) {
        match &self.settings.failover.timing {
            Ok(t) => self.timing = *t,
            Err(rule) => warning!(
                "repmgr: refusing the failover timing settings: {rule}; keeping heartbeat {} ms, fence {} ms, lease {} ms",
                self.timing.heartbeat.as_millis(),
                self.timing.fence.as_millis(),
                self.timing.lease.as_millis()
            ),
        }
        let timing = self.timing;
        shmem::update(|s| s.failover.timing = timing);
    }

    /// Settings for election traffic: short deadlines, so a dead voter costs little.
    fn election_settings(&self) -> Settings {
        let mut s = self.settings.clone();
        let budget = (self.timing.heartbeat * 2).max(Duration::from_millis(300));
        s.peer_connect_timeout = s.peer_connect_timeout.min(budget);
        s.peer_statement_timeout = s.peer_statement_timeout.min(budget);
        s
    }

    /// The monitoring round's view of the catalog and of this node.
    pub fn observe(&mut self, nodes: &[NodeRecord], me: &NodeRecord, in_recovery: bool) {
        self.nodes = nodes.to_vec();
        self.me = Some(me.clone());
        self.in_recovery = in_recovery;
    }

    /// The timing in force.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// How long this node's voter has heard nothing from the primary; `None` before it first
    /// heard it (right after a start, when silence says nothing yet).
    pub fn silence(&self) -> Option<Duration> {
        let st = shmem::read()?;
        st.failover.voter.last_heard?;
        Some(st.failover.voter.silence(clock::now()))
    }

    fn is_primary(&self) -> bool {
        !self.in_recovery
            && self
                .me
                .as_ref()
                .is_some_and(|m| m.node_type != NodeType::Witness)
    }

    /// The other active voters.
    fn others(&self) -> Vec<&NodeRecord> {
        let me = self.me.as_ref().map_or(0, |m| m.node_id);
        self.nodes
            .iter()
            .filter(|n| n.active && n.node_id != me)
            .collect()
    }

    /// One step: never blocks, except during an election (bounded by short deadlines).
    pub fn tick(&mut self) -> Wait {
        let idle = Wait {
            socket: None,
            timeout: self.timing.heartbeat,
        };
        if self.me.is_none() {
            return idle;
        }
        if self.is_primary() {
            self.polling = None;
            self.keep_lease();
            return idle;
        }
        self.drop_lease_if_any();
        let socket = self.poll();
        self.track_outage();
        let now = clock::now();
        let look =
            shmem::read().is_some_and(|s| s.failover.voter.should_look_around(now, &self.timing));
        if look && now >= self.retry_at {
            self.look_around();
        }
        let timeout = self
            .next_poll
            .saturating_sub(clock::now())
            .clamp(Duration::from_millis(5), self.timing.heartbeat);
        Wait { socket, timeout }
    }

    /// The primary this node should follow and confirm: one learnt from other voters in a
    /// term at least ours, else the one it last heard or voted for, else the catalog's.
    pub fn current_primary(&self) -> Option<NodeRecord> {
        let me = self.me.as_ref()?.node_id;
        let voter = shmem::read().map(|s| s.failover.voter);
        let term = voter.map_or(0, |v| v.durable.term);
        let pick = |id: NodeId| {
            self.nodes
                .iter()
                .find(|n| n.node_id == id && id != me)
                .cloned()
        };
        self.leader_hint
            .filter(|(_, t)| *t >= term)
            .and_then(|(id, _)| pick(id))
            .or_else(|| voter.and_then(|v| v.leader).and_then(pick))
            .or_else(|| {
                self.nodes
                    .iter()
                    .find(|n| n.node_type == NodeType::Primary && n.active && n.node_id != me)
                    .cloned()
            })
    }

    fn target(&self) -> Option<NodeRecord> {
        self.current_primary()
    }

    /// Notices the start and end of an outage; a standby that hears the same primary again
    /// records that the failover was called off (`repmgrd_failover_abort`).
    fn track_outage(&mut self) {
        let Some(v) = shmem::read().map(|s| s.failover.voter) else {
            return;
        };
        let now = clock::now();
        if v.lease_expired(now, &self.timing) {
            if self.outage.is_none() {
                self.outage = Some(Outage {
                    leader: v.leader,
                    since: v.last_heard.unwrap_or(v.started),
                    disconnected: false,
                });
            }
            return;
        }
        self.last_plan = None;
        let Some(o) = self.outage.take() else { return };
        let Some(me) = self.me.as_ref() else { return };
        if o.leader.is_some() && v.leader == o.leader && me.node_type == NodeType::Standby {
            let details = format!(
                "{} hears primary node {} again after {} ms without it; no failover took place",
                me.describe(),
                o.leader.unwrap_or(0),
                now.saturating_sub(o.since).as_millis()
            );
            log!("repmgr: {details}");
            self.outbox.push(Event::new(
                me.node_id,
                event::REPMGRD_FAILOVER_ABORT,
                details,
            ));
        }
    }

    /// Drives the poll connection. Returns the socket to wait on, if any.
    fn poll(&mut self) -> Option<(RawFd, Interest)> {
        let target = self.target()?;
        let now = clock::now();
        let budget = self.timing.heartbeat * 2;
        if self.polling.as_ref().is_some_and(|p| {
            p.target.node_id != target.node_id || p.target.conninfo != target.conninfo
        }) {
            self.polling = None;
            self.next_poll = now;
        }
        if self.polling.is_none() {
            if now < self.next_poll {
                return None;
            }
            let settings = &self.settings;
            let (defaults, forced) = crate::peer::parameters(&target.conninfo, settings);
            match Conn::start(
                &target.conninfo,
                &crate::peer::borrowed(&defaults),
                &crate::peer::borrowed(&forced),
            ) {
                Ok(conn) => {
                    self.polling = Some(Polling {
                        target: target.clone(),
                        conn,
                        since: now,
                        busy: false,
                        echo_poll: false,
                    })
                }
                Err(_) => {
                    self.next_poll = now + self.timing.heartbeat;
                    return None;
                }
            }
        }
        let p = self.polling.as_mut().expect("set above");
        loop {
            match p.conn.step() {
                Err(_) => break,
                Ok(Step::Wait(interest)) => {
                    if now.saturating_sub(p.since) > budget {
                        // Connecting or answering took too long: start afresh next time.
                        break;
                    }
                    return Some((p.conn.socket(), interest));
                }
                Ok(Step::Idle) => {
                    // A fresh stamp is echoed at once, so the primary counts a confirmation
                    // at most one heartbeat old; regular polls come every heartbeat.
                    let echo_poll = self.echo_now;
                    if !echo_poll && now < self.next_poll {
                        return None;
                    }
                    let (term, echo) = shmem::read().map_or((0, None), |s| {
                        (s.failover.voter.durable.term, s.failover.voter.echo)
                    });
                    let me = self.me.as_ref().map_or(0, |m| m.node_id).to_string();
                    let term = term.to_string();
                    let inc = echo.map(|e| e.incarnation.to_string());
                    let at = echo.map(|e| e.at.as_micros().to_string());
                    let sent = p.conn.send(
                        "SELECT term, accepted, holds_lease, incarnation, at_us FROM repmgr.lease_poll($1::int, $2::bigint, $3::bigint, $4::bigint)",
                        &[Some(&me), Some(&term), inc.as_deref(), at.as_deref()],
                    );
                    if sent.is_err() {
                        break;
                    }
                    p.since = now;
                    p.busy = true;
                    p.echo_poll = echo_poll;
                    self.echo_now = false;
                    if !echo_poll {
                        self.next_poll = now + self.timing.heartbeat;
                    }
                }
                Ok(Step::Done(result)) => {
                    p.busy = false;
                    let from = p.target.node_id;
                    let regular = !p.echo_poll;
                    let mut alive = false;
                    if let Ok(rows) = result
                        && let (Some(term), Some(inc), Some(at)) =
                            (rows.get(0, 0), rows.get(0, 3), rows.get(0, 4))
                    {
                        let reply = PollReply {
                            term: term.parse().unwrap_or(0),
                            accepted: rows.get(0, 1) == Some("t"),
                            leading: rows.get(0, 2) == Some("t"),
                            stamp: Stamp {
                                incarnation: inc.parse().unwrap_or(0),
                                at: Duration::from_micros(at.parse().unwrap_or(0)),
                            },
                        };
                        alive = self.heard(from, &reply);
                    }
                    if !(alive && regular) {
                        return None;
                    }
                    self.echo_now = true;
                    return self.poll();
                }
            }
        }
        self.polling = None;
        self.next_poll = now + self.timing.heartbeat;
        None
    }

    /// Applies a poll reply to this node's voter, saving a changed term before it is echoed.
    /// Returns whether the primary was heard (its stamp is to be echoed).
    fn heard(&mut self, from: NodeId, reply: &PollReply) -> bool {
        let now = clock::now();
        let timing = self.timing;
        shmem::update(|s| {
            let before = s.failover.voter;
            match s.failover.voter.heard(now, from, reply, &timing) {
                Heard::Alive { persist: true } if !protocol::persist(&s.failover) => {
                    s.failover.voter = before;
                    false
                }
                Heard::Alive { .. } => true,
                Heard::Stale => false,
            }
        })
        .unwrap_or(false)
    }

    /// A primary in the protocol holds a lease over the current voters, moves past failed
    /// elections, and reacts when it loses the lease.
    fn keep_lease(&mut self) {
        let others: Vec<NodeId> = self.others().iter().map(|n| n.node_id).collect();
        let now = clock::now();
        let me = self.me.as_ref().map_or(0, |m| m.node_id);
        let fence = self.timing.fence;
        let (leading, newer) = shmem::update(|s| {
            let f = &mut s.failover;
            let mut changed = false;
            match f.lease.as_mut() {
                None => {
                    let term = f.voter.durable.term.max(1);
                    // A primary that had no lease (first start under the protocol, or just
                    // registered) waits for its voters like any other: it cannot know it was
                    // not replaced. With two voters or fewer none is needed.
                    f.lease = Some(Lease::new(term, incarnation(), &others, None));
                    changed = true;
                }
                Some(l) => {
                    if l.others().collect::<Vec<_>>() != others {
                        l.set_voters(&others);
                        changed = true;
                    }
                    if l.overtake(now, fence).is_some() {
                        changed = true;
                    }
                }
            }
            f.armed = true;
            f.voter.durable.supports = Some(me);
            if changed {
                protocol::persist(f);
            }
            let l = f.lease.expect("set above");
            (l.may_commit(now, fence), l.newer_term)
        })
        .unwrap_or((true, None));
        if self.was_leading != Some(leading) {
            self.mark_read_only(!leading);
            if self.was_leading.is_some() {
                if leading {
                    let details = format!("node {me} holds its lease again: commits are allowed");
                    log!("repmgr: {details}");
                    self.outbox
                        .push(Event::new(me, event::REPMGRD_PRIMARY_UNFENCED, details));
                } else {
                    let replaced = newer.map_or(String::new(), |t| format!("; a voter is in term {t}, so this node was probably replaced and needs repmgr node rejoin"));
                    warning!(
                        "repmgr: node {me} lost its lease: commits that write are refused{replaced}"
                    );
                    self.outbox.push(Event::new(
                        me,
                        event::REPMGRD_PRIMARY_FENCED,
                        format!("node {me} fenced: not confirmed by enough voters{replaced}"),
                    ));
                    if self.settings.failover.fence_action == FenceAction::Shutdown {
                        warning!("repmgr: repmgr.fence_action = shutdown: stopping the server");
                        unsafe { libc::kill(pg_sys::PostmasterPid, libc::SIGINT) };
                    }
                }
            }
            self.was_leading = Some(leading);
        }
        if let (false, Some(t), false) = (leading, newer, self.reported_replaced) {
            self.reported_replaced = true;
            warning!(
                "repmgr: node {me} was replaced: its voters are in term {t}; it stays fenced and needs repmgr node rejoin"
            );
        }
        if leading {
            self.reported_replaced = false;
            self.record_promotion();
        }
    }

    /// Writes this node's promotion to the catalog: it is the primary, the old one is not,
    /// and the term. A new primary without its lease yet (the votes are stale by the time
    /// pg_promote returns, or the promotion was forced) cannot commit: it tries again on every
    /// tick until it holds its lease.
    fn record_promotion(&mut self) {
        let (Some(term), Some(me)) = (self.unrecorded, self.me.as_ref()) else {
            return;
        };
        let id = me.node_id.to_string();
        let recorded = crate::monitor::write_transaction(|| {
            Local.write("UPDATE repmgr.nodes SET active = false WHERE type = 'primary' AND active AND node_id <> $1::int", &[Some(&id)])?;
            Local.write("UPDATE repmgr.nodes SET type = 'primary', upstream_node_id = NULL, active = true WHERE node_id = $1::int", &[Some(&id)])?;
            Local.write(
                "UPDATE repmgr.voting_term SET term = $1::int",
                &[Some(&term.to_string())],
            )
        });
        match recorded {
            Ok(_) => self.unrecorded = None,
            Err(f) if crate::fence::refusal().is_some() => debug1!(
                "repmgr: the promotion waits for the lease to reach the catalog: {}",
                f.message
            ),
            Err(f) => {
                warning!(
                    "repmgr: promoted, but could not update the catalog: {}",
                    f.message
                );
                self.unrecorded = None;
            }
        }
    }

    /// Makes new sessions on a fenced primary read-only by default, so that clients routing
    /// with `target_session_attrs=read-write` skip it, and undoes that once it holds its lease
    /// again (a restart keeps the marking: a fenced node restarts fenced).
    fn mark_read_only(&mut self, fenced: bool) {
        // The configuration file's value: the worker's own session keeps writes enabled.
        let on = unsafe {
            let v = pg_sys::GetConfigOptionResetString(c"default_transaction_read_only".as_ptr());
            !v.is_null() && std::ffi::CStr::from_ptr(v).to_bytes() == b"on"
        };
        if on == fenced {
            return;
        }
        let value = fenced.then_some("on");
        if let Err(f) = crate::follow::set_and_reload(&[("default_transaction_read_only", value)]) {
            warning!(
                "repmgr: could not change default_transaction_read_only: {}",
                f.message
            );
        }
    }

    /// A node that runs as a standby or witness holds no lease.
    fn drop_lease_if_any(&mut self) {
        self.was_leading = None;
        shmem::update(|s| {
            if s.failover.lease.is_some() {
                s.failover.lease = None;
                s.failover.armed = false;
                protocol::persist(&s.failover);
            }
        });
    }

    /// Asks every other voter how things look (the pre-vote), and learns from the answers: a
    /// newer term ends support for the old primary, and the newest primary is the one to follow.
    fn ask_around(&mut self) -> Vec<(NodeRecord, Option<PreVote>)> {
        let es = self.election_settings();
        let others: Vec<NodeRecord> = self.others().into_iter().cloned().collect();
        let mut answers: Vec<(NodeRecord, Option<PreVote>)> = Vec::new();
        for n in others {
            let got = self.peers.get(&n, &es).and_then(|p| {
                p.run(
                    "SELECT term, holds_lease, in_recovery, silence_ms, lsn, paused, diverged, primary_id, primary_term, switch_lsn FROM repmgr.vote_info()",
                    &[],
                )
            });
            let parsed = match got {
                Ok(r) if !r.rows.is_empty() => {
                    let int = |c: usize| r.get(0, c).and_then(|v| v.parse::<i64>().ok());
                    let answer = Answer {
                        term: int(0).unwrap_or(0) as u64,
                        leading: r.get(0, 1) == Some("t"),
                        in_recovery: r.get(0, 2) == Some("t"),
                        silence: Duration::from_millis(int(3).unwrap_or(0).max(0) as u64),
                        lsn: int(4).map(|l| l as u64),
                        unavailable: r.get(0, 5) == Some("t") || r.get(0, 6) == Some("t"),
                        diverged: r.get(0, 6) == Some("t"),
                    };
                    let primary = int(7).zip(int(8)).map(|(p, t)| (p as NodeId, t as u64));
                    Some((answer, primary, int(9).unwrap_or(0) as u64))
                }
                Ok(_) => None,
                Err(_) => {
                    self.peers.forget(n.node_id);
                    None
                }
            };
            answers.push((n, parsed));
        }
        let me = self.me.as_ref().map_or(0, |m| m.node_id);
        let newest = answers
            .iter()
            .filter_map(|(_, a)| a.as_ref().map(|(a, _, _)| a.term))
            .max()
            .unwrap_or(0);
        shmem::update(|s| {
            if s.failover.voter.learn_term(newest) {
                protocol::persist(&s.failover);
            }
        });
        let my_term = shmem::read().map_or(0, |s| s.failover.voter.durable.term);
        self.leader_hint = answers
            .iter()
            .filter_map(|(_, a)| a.as_ref().and_then(|(_, p, _)| *p))
            .filter(|(p, t)| *p != me && *t >= my_term)
            .max_by_key(|(_, t)| *t);
        answers
    }

    /// The lease ran out here: look around; a standby that may be promoted then decides
    /// whether to stand.
    fn look_around(&mut self) {
        let answers = self.ask_around();
        let now = clock::now();
        self.retry_at = now + jitter(Duration::from_millis(200), Duration::from_millis(1000));
        let me = self.me.clone().expect("checked by tick");
        if !self.in_recovery || me.node_type == NodeType::Witness {
            return;
        }
        let st = shmem::read().expect("the worker runs with shared memory");
        let f = st.failover;
        if self.settings.failover.disconnect_on_failover && f.voter.lease_expired(now, &self.timing)
        {
            self.disconnect_wal_receiver(&me);
        }
        let my_lsn = protocol_received_lsn();
        let Some((quorum, replayed_all)) = quorum_view() else {
            return;
        };
        let primary_location = self
            .nodes
            .iter()
            .find(|n| n.node_type == NodeType::Primary && n.active)
            .map(|p| p.location.clone());
        let me_view = Me {
            node_id: me.node_id,
            term: f.voter.durable.term,
            lsn: my_lsn.unwrap_or(0),
            silence: f.voter.silence(now),
            location: me.location.clone(),
            priority: me.priority,
            automatic: self.settings.failover.automatic,
            paused: st.paused || f.diverged,
            replayed_all,
        };
        let peers: Vec<Candidate> = answers
            .iter()
            .map(|(n, a)| Candidate {
                node_id: n.node_id,
                kind: node_kind(n.node_type),
                location: n.location.clone(),
                priority: n.priority,
                automatic: true,
                answer: a.as_ref().map(|(a, _, _)| a.clone()),
            })
            .collect();
        let rules = Rules {
            timing: self.timing,
            max_lag: self.settings.failover.max_lag,
            visibility_consensus: self.settings.failover.visibility_consensus,
            primary_location,
            quorum,
        };
        match election::plan(&me_view, &peers, &rules) {
            Plan::Stand { term } => {
                // For the validation command: nodes that answered, and those of them that
                // lost the primary too (this node counts in both).
                let answered: Vec<&Answer> = answers
                    .iter()
                    .filter_map(|(_, a)| a.as_ref().map(|(a, _, _)| a))
                    .collect();
                let lost = answered
                    .iter()
                    .filter(|a| a.silence >= self.timing.lease)
                    .count();
                let counts = (answered.len() + 1, lost + 1);
                let voters: Vec<NodeRecord> = answers.iter().map(|(n, _)| n.clone()).collect();
                self.stand(term, &me, my_lsn.unwrap_or(0), &voters, counts)
            }
            other => {
                let text = match other {
                    Plan::Defer { to } => format!("node {to} is the better candidate"),
                    Plan::Wait { reason } => reason,
                    Plan::Stand { .. } => unreachable!(),
                };
                // Said once per reason and outage. A plan made before the lease ran out (no
                // leader for half a lease) is not said: it must not hide the same reason later.
                if self.last_plan.as_ref() != Some(&text) && me_view.silence >= self.timing.lease {
                    log!(
                        "repmgr: {} lost the primary but does not stand for election: {text}",
                        me.describe()
                    );
                    if !self.settings.failover.automatic && self.last_plan.is_none() {
                        self.outbox.push(Event::new(
                            me.node_id,
                            event::STANDBY_DISCONNECT_MANUAL,
                            format!(
                                "{} lost the primary; repmgr.failover is manual",
                                me.describe()
                            ),
                        ));
                    }
                    self.last_plan = Some(text);
                }
            }
        }
    }

    /// `repmgr.standby_disconnect_on_failover`: stops this standby's WAL receiver once per
    /// outage, so the positions compared in the election stop moving. The startup process
    /// starts a new one after `wal_retrieve_retry_interval`, or the follow repoints it.
    fn disconnect_wal_receiver(&mut self, me: &NodeRecord) {
        if self.outage.is_some_and(|o| o.disconnected) {
            return;
        }
        if let Some(o) = self.outage.as_mut() {
            o.disconnected = true;
        }
        // The WAL receiver is an auxiliary process, which pg_terminate_backend() refuses to
        // signal; the server's own user may.
        let pid: Option<i32> = crate::monitor::in_transaction(|| {
            Local.read("SELECT pid FROM pg_catalog.pg_stat_wal_receiver", &[])
        })
        .ok()
        .and_then(|r| r.get(0, 0).and_then(|v| v.parse().ok()));
        if let Some(pid) = pid.filter(|p| *p > 0)
            && unsafe { libc::kill(pid, libc::SIGTERM) } == 0
        {
            log!(
                "repmgr: {} stopped its WAL receiver (pid {pid}) for the election (repmgr.standby_disconnect_on_failover)",
                me.describe()
            );
        }
    }

    /// Runs `repmgr.failover_validation_command`, if set, with `%v` the visible nodes and `%u`
    /// those that lost the primary. Returns whether the election may go on.
    fn validated(&mut self, me: &NodeRecord, (visible, lost): (usize, usize)) -> bool {
        let Some(cmd) = self.settings.failover.validation_command.clone() else {
            return true;
        };
        let line = template::render(
            &cmd,
            &[
                ('n', &me.node_id.to_string()),
                ('a', &me.node_name),
                ('v', &visible.to_string()),
                ('u', &lost.to_string()),
                ('t', &(self.nodes.len()).to_string()),
            ],
        );
        let ok = crate::command::run(
            "failover_validation_command",
            &line,
            Duration::from_secs(10),
        )
        .is_some_and(|s| s.success());
        if !ok {
            log!(
                "repmgr: failover_validation_command refused the election; trying again in {} ms",
                self.settings.failover.election_rerun_interval.as_millis()
            );
            self.retry_at = clock::now() + self.settings.failover.election_rerun_interval;
        }
        ok
    }

    /// Supports itself in `term` (saved before anyone is asked), then asks `voters` for their
    /// votes until a majority is reached. `None` when its own vote could not be saved.
    fn campaign(
        &mut self,
        term: u64,
        me: &NodeRecord,
        lsn: u64,
        voters: &[NodeRecord],
        manual: bool,
    ) -> Option<Campaign> {
        let saved = shmem::update(|s| {
            let before = s.failover.voter.durable;
            s.failover.voter.durable = repmgr_core::vote::Durable {
                term,
                supports: Some(me.node_id),
            };
            let ok = protocol::persist(&s.failover);
            if !ok {
                s.failover.voter.durable = before;
            }
            ok
        });
        if saved != Some(true) {
            return None;
        }
        log!(
            "repmgr: {} stands for election in term {term}",
            me.describe()
        );
        let mut c = Campaign {
            asked_at: clock::now(),
            total: voters.len() + 1,
            grants: Vec::new(),
            refusals: Vec::new(),
        };
        let es = self.election_settings();
        // The failed primary last: it is the one most likely not to answer.
        let mut order: Vec<&NodeRecord> = voters.iter().collect();
        order.sort_by_key(|n| n.node_type == NodeType::Primary);
        let (term_s, me_s, lsn_s) = (term.to_string(), me.node_id.to_string(), lsn.to_string());
        let manual_s = manual.to_string();
        for n in order {
            if c.won() {
                break;
            }
            let answer = self.peers.get(n, &es).and_then(|p| {
                p.run(
                    "SELECT granted, reason FROM repmgr.request_vote($1::bigint, $2::int, $3::bigint, $4::boolean)",
                    &[Some(&term_s), Some(&me_s), Some(&lsn_s), Some(&manual_s)],
                )
            });
            match answer {
                Ok(r) if r.get(0, 0) == Some("t") => c.grants.push(n.node_id),
                Ok(r) => {
                    let why = r.get(0, 1).unwrap_or("no reason").to_string();
                    log!(
                        "repmgr: {} refused its vote in term {term}: {why}",
                        n.describe()
                    );
                    c.refusals.push(format!("{}: {why}", n.describe()));
                }
                Err(f) => {
                    self.peers.forget(n.node_id);
                    c.refusals.push(format!(
                        "{}: no answer ({})",
                        n.describe(),
                        crate::error::mask_text(&f.message)
                    ));
                }
            }
        }
        Some(c)
    }

    /// Runs the vote in `term`; promotes on a majority.
    fn stand(
        &mut self,
        term: u64,
        me: &NodeRecord,
        lsn: u64,
        voters: &[NodeRecord],
        counts: (usize, usize),
    ) {
        if !self.validated(me, counts) {
            return;
        }
        let Some(c) = self.campaign(term, me, lsn, voters, false) else {
            return;
        };
        if !c.won() {
            log!(
                "repmgr: {} lost the election in term {term}: {} of {} votes",
                me.describe(),
                c.grants.len() + 1,
                c.total
            );
            self.retry_at =
                clock::now() + jitter(Duration::from_millis(300), Duration::from_millis(1500));
            return;
        }
        // Failures are logged and recorded as events inside.
        let _ = self.promote(term, &c, me, lsn, event::REPMGRD_FAILOVER_PROMOTE);
    }

    /// `repmgr.promote()`: promotes this standby in a new term, refused while a working
    /// primary answers. Without `force`, only with a majority of votes and no reachable standby
    /// ahead of it. Returns what happened, or why not (with a hint, see [`manual::refusal`]).
    pub fn manual_promote(&mut self, force: bool, allow_data_loss: bool) -> Result<String, String> {
        let me = self.me.clone().ok_or("this node is not registered")?;
        if !self.in_recovery {
            return Err(manual::refusal(
                format!(
                    "{} is not a standby: it is already running as {}",
                    me.describe(),
                    if me.node_type == NodeType::Witness {
                        "the witness"
                    } else {
                        "a primary"
                    }
                ),
                "Run repmgr.promote() on the standby to promote.",
            ));
        }
        let answers = self.ask_around();
        if let Some((n, _)) = answers
            .iter()
            .find(|(_, a)| a.as_ref().is_some_and(|(a, _, _)| a.leading))
        {
            return Err(manual::refusal(
                format!(
                    "{} is a working primary: repmgr.promote() refuses while the cluster has one",
                    n.describe()
                ),
                "To change roles safely, use repmgr standby switchover; to replace a primary that is about to go, stop it first.",
            ));
        }
        let now = clock::now();
        let st = shmem::read().ok_or("no shared memory")?;
        let f = st.failover;
        if f.diverged {
            return Err(manual::refusal(
                format!(
                    "{}'s timeline diverged from the cluster's: promoting it would lose what the primary wrote since",
                    me.describe()
                ),
                "Rejoin it with repmgr node rejoin, or promote another standby.",
            ));
        }
        let silence = f.voter.silence(now);
        if f.voter.last_heard.is_some() && !f.voter.lease_expired(now, &self.timing) && !force {
            return Err(manual::refusal(
                format!(
                    "{} heard from the primary {} ms ago (the lease is {} ms): it may still be running",
                    me.describe(),
                    silence.as_millis(),
                    self.timing.lease.as_millis()
                ),
                "Wait until the lease has run out and try again, or pass force => true if you know the primary is gone.",
            ));
        }
        let lsn = protocol_received_lsn().unwrap_or(0);
        let ahead = answers.iter().find_map(|(n, a)| {
            let (a, _, _) = a.as_ref()?;
            (a.in_recovery && !a.diverged && a.lsn? > lsn)
                .then(|| (n.describe(), a.lsn.unwrap_or(0)))
        });
        if let (Some((who, theirs)), false) = (&ahead, force) {
            return Err(manual::refusal(
                format!(
                    "{who} has received more WAL ({}) than {} ({}): promoting this node would lose the difference",
                    repmgr_core::lsn::Lsn(*theirs),
                    me.describe(),
                    repmgr_core::lsn::Lsn(lsn)
                ),
                "Promote that node instead, or pass force => true to accept losing those transactions.",
            ));
        }
        if !allow_data_loss {
            let (quorum, replayed_all) = quorum_view()
                .ok_or("cannot read the published synchronous quorum (see the server log)")?;
            let reports: Vec<repmgr_core::quorum::Report> = answers
                .iter()
                .filter_map(|(n, a)| {
                    let (a, _, _) = a.as_ref()?;
                    (a.in_recovery && !a.diverged).then_some(repmgr_core::quorum::Report {
                        node_id: n.node_id,
                        lsn: a.lsn?,
                    })
                })
                .collect();
            let verdict = if quorum.is_sync() && !replayed_all {
                Err("it is still replaying the WAL it received".to_string())
            } else {
                repmgr_core::quorum::may_promote(&quorum, me.node_id, lsn, &reports)
            };
            if let Err(why) = verdict {
                return Err(manual::refusal(
                    format!(
                        "{} cannot be promoted without risking acknowledged commits (repmgr.synchronous_standbys): {why}",
                        me.describe()
                    ),
                    "Promote the member of the quorum that has everything, bring the missing members back, or pass allow_data_loss => true to accept losing acknowledged commits.",
                ));
            }
        }
        let term = answers
            .iter()
            .filter_map(|(_, a)| a.as_ref().map(|(a, _, _)| a.term))
            .chain([f.voter.durable.term, f.lease.map_or(0, |l| l.term)])
            .max()
            .unwrap_or(0)
            + 1;
        let voters: Vec<NodeRecord> = answers.iter().map(|(n, _)| n.clone()).collect();
        let c = self.campaign(term, &me, lsn, &voters, true).ok_or(
            "could not save this node's own vote in the data directory (see the server log)",
        )?;
        if !c.won() && !force {
            return Err(manual::refusal(
                format!(
                    "{} got {} of {} votes in term {term}; a majority ({}) is needed: {}",
                    me.describe(),
                    c.grants.len() + 1,
                    c.total,
                    repmgr_core::lease::majority(c.total),
                    c.refusals.join("; ")
                ),
                "Bring the other voters back, or pass force => true if you know the old primary is gone (with three voters or more the node then stays fenced until a majority confirms it).",
            ));
        }
        let details = self.promote(term, &c, &me, lsn, event::STANDBY_PROMOTE)?;
        Ok(if c.won() {
            details
        } else {
            format!(
                "{details} (forced: {} of {} votes)",
                c.grants.len() + 1,
                c.total
            )
        })
    }

    /// Becomes the primary of `term`: lease first (the votes are its confirmations), then
    /// pg_promote, the catalog, the event, and a word to every other node.
    fn promote(
        &mut self,
        term: u64,
        c: &Campaign,
        me: &NodeRecord,
        lsn: u64,
        event: &'static str,
    ) -> Result<String, String> {
        // With a synchronous quorum, the first commit as a primary already waits for it.
        match crate::quorum::prepare_promotion(&self.settings, me.node_id) {
            Ok(Some(names)) => log!(
                "repmgr: {} starts as primary with synchronous_standby_names = '{names}'",
                me.describe()
            ),
            Ok(None) => {}
            Err(f) => {
                let details = format!(
                    "{} won the election in term {term} but could not set synchronous_standby_names before promoting: {}",
                    me.describe(),
                    f.message
                );
                warning!("repmgr: {details}");
                let mut ev = Event::new(me.node_id, event::REPMGRD_PROMOTE_ERROR, details.clone());
                ev.successful = false;
                self.outbox.push(ev);
                return Err(manual::refusal(details, "See the server log of this node."));
            }
        }
        let others: Vec<NodeId> = self.others().iter().map(|n| n.node_id).collect();
        shmem::update(|s| {
            s.failover.lease = Some(Lease::new(
                term,
                incarnation(),
                &others,
                Some((c.asked_at, &c.grants)),
            ));
            s.failover.armed = true;
            s.failover.switch_lsn = lsn;
            protocol::persist(&s.failover);
        });
        let old = self
            .nodes
            .iter()
            .find(|n| n.node_type == NodeType::Primary && n.active)
            .cloned();
        if !end_recovery(PROMOTE_TIMEOUT) {
            let details = format!(
                "{} won the election in term {term} but pg_promote() failed or did not finish within 60 s",
                me.describe()
            );
            warning!("repmgr: {details}");
            let mut ev = Event::new(me.node_id, event::REPMGRD_PROMOTE_ERROR, details.clone());
            ev.successful = false;
            self.outbox.push(ev);
            shmem::update(|s| {
                s.failover.lease = None;
                s.failover.armed = false;
                protocol::persist(&s.failover);
            });
            return Err(manual::refusal(details, "See the server log of this node."));
        }
        self.in_recovery = false;
        self.outage = None;
        self.unrecorded = Some(term);
        self.record_promotion();
        let details = match &old {
            Some(o) => format!(
                "{} promoted to primary in term {term}; {} is no longer primary",
                me.describe(),
                o.describe()
            ),
            None => format!("{} promoted to primary in term {term}", me.describe()),
        };
        log!("repmgr: {details}");
        let mut ev = Event::new(me.node_id, event, details.clone());
        if let Some(o) = &old {
            ev = ev.about(o.node_id, &o.node_name, &o.conninfo);
        }
        self.outbox.push(ev);
        let es = self.election_settings();
        let id = me.node_id.to_string();
        for n in self
            .others()
            .into_iter()
            .filter(|n| n.node_type != NodeType::Primary)
            .cloned()
            .collect::<Vec<_>>()
        {
            if let Err(f) = Peer::connect(&n.conninfo, &n.describe(), &es).and_then(|mut p| {
                p.run("SELECT repmgr.notify_follow_primary($1::int)", &[Some(&id)])
            }) {
                log!(
                    "repmgr: could not tell {} to follow: {}",
                    n.describe(),
                    crate::error::mask_text(&f.message)
                );
            }
        }
        Ok(details)
    }
}

/// Longest wait for the startup process to finish a promotion.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(60);

/// Asks the startup process to promote and waits until recovery has ended. pg_promote()'s
/// own wait looks every 100 ms, which clients would see as write outage; this looks every
/// 10 ms. The wait goes on through a shutdown request: the promotion is under way either way,
/// and the catalog must learn of it.
fn end_recovery(timeout: Duration) -> bool {
    let asked =
        crate::monitor::in_transaction(|| Local.read("SELECT pg_catalog.pg_promote(false)", &[]))
            .ok()
            .is_some_and(|r| r.get(0, 0) == Some("t"));
    let deadline = std::time::Instant::now() + timeout;
    while asked && std::time::Instant::now() < deadline {
        if !unsafe { pg_sys::RecoveryInProgress() } {
            return true;
        }
        if !crate::peer::sleep(Duration::from_millis(10)) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    false
}

/// The votes a candidate gathered in one term.
struct Campaign {
    /// When the first vote was asked: the votes confirm the new lease from then.
    asked_at: Duration,
    /// Voters, the candidate included.
    total: usize,
    grants: Vec<NodeId>,
    refusals: Vec<String>,
}

impl Campaign {
    fn won(&self) -> bool {
        election::won(self.grants.len() + 1, self.total)
    }
}

/// The synchronous quorum published in this standby's catalog, and whether it had replayed
/// everything it received before reading it (so the catalog is as new as its position).
/// `None` when it cannot be read (logged).
fn quorum_view() -> Option<(repmgr_core::quorum::Config, bool)> {
    let read = || -> crate::error::Result<_> {
        // Two transactions: the second one's snapshot includes all that the first saw replayed.
        let r = crate::monitor::in_transaction(|| {
            Local.read(
                "SELECT COALESCE(pg_catalog.pg_last_wal_receive_lsn() <= pg_catalog.pg_last_wal_replay_lsn(), true)",
                &[],
            )
        })?;
        let replayed_all = r.get(0, 0) == Some("t");
        let quorum = crate::monitor::in_transaction(|| crate::quorum::published(&mut Local))?;
        Ok((quorum, replayed_all))
    };
    match read() {
        Ok(v) => Some(v),
        Err(f) => {
            log!(
                "repmgr: cannot read the published synchronous quorum: {}",
                f.message
            );
            None
        }
    }
}

/// This standby's WAL position in bytes (see [`protocol::received_lsn`]).
fn protocol_received_lsn() -> Option<u64> {
    crate::monitor::in_transaction(protocol::received_lsn)
}
