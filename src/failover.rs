//! The worker's side of failover: the adapter between PostgreSQL and the state machine.
//!
//! Every decision, and the order of everything, is [`repmgr_core::driver::Driver`]'s: this
//! module feeds it what the worker observes (time, the catalog, poll replies, answers and
//! votes of other nodes, the outcome of a promotion) and carries out the actions it returns
//! (a poll over libpq, SQL on other nodes, `pg_promote()`, catalog writes, ALTER SYSTEM, a
//! signal, an event, a log line, the answer to an operator's request). The simulator (`sim/`)
//! drives the same state machine.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::time::Duration;

use pgrx::prelude::*;
use repmgr_core::driver::{Action, Catalog, Driver, Input, Level, LocalFacts, Upstream};
use repmgr_core::lease::{NodeId, Poll, PollReply, Stamp, Timing};
use repmgr_core::node::NodeRecord;
use repmgr_core::template;
use repmgr_core::vote::{EXIT_REPORT_WITHIN, VoteReply};
use repmgr_pq::{Conn, Interest, Step};

use crate::config::Settings;
use crate::db::{Db, Local, in_transaction, write_transaction};
use crate::events::Event;
use crate::peer::{Peer, PeerCache};
use crate::shmem::{self, DEFAULT_TIMING};
use crate::{clock, durable, manual, protocol};

/// What the worker should wait for before calling [`Failover::tick`] again.
pub struct Wait {
    pub socket: Option<(RawFd, Interest)>,
    pub timeout: Duration,
}

/// The poll connection to the primary, and the poll waiting to go or in flight on it.
struct Polling {
    target: NodeRecord,
    conn: Conn,
    poll: Option<Poll>,
    busy: bool,
}

/// Events the failover side produced, for the monitor to record.
pub type Outbox = Vec<Event>;

pub struct Failover {
    settings: Settings,
    driver: Driver,
    polling: Option<Polling>,
    peers: PeerCache,
    pub outbox: Outbox,
}

impl Failover {
    pub fn new(settings: Settings) -> Failover {
        let seed = clock::incarnation() ^ u64::from(unsafe { pg_sys::MyProcPid } as u32);
        let driver = Driver::new(
            settings.node_id,
            settings.failover.driver(settings.priority),
            DEFAULT_TIMING,
            seed,
        );
        shmem::update(|s| driver.publish(&mut s.failover));
        let mut f = Failover {
            settings,
            driver,
            polling: None,
            peers: PeerCache::default(),
            outbox: Vec::new(),
        };
        f.refuse_timing_if_invalid();
        f
    }

    fn refuse_timing_if_invalid(&mut self) {
        if let Err(rule) = &self.settings.failover.timing {
            let t = self.driver.timing();
            warning!(
                "repmgr: refusing the failover timing settings: {rule}; keeping heartbeat {} ms, fence {} ms, lease {} ms",
                t.heartbeat.as_millis(),
                t.fence.as_millis(),
                t.lease.as_millis()
            );
        }
    }

    /// Takes reloaded settings; an invalid timing combination is refused, keeping the last one.
    pub fn reload(&mut self, settings: Settings) {
        let s = settings.failover.driver(settings.priority);
        self.settings = settings;
        self.peers = PeerCache::default();
        self.feed(Input::Reload(s));
    }

    /// The monitoring round's view of the catalog (`None`: the extension is missing) and of
    /// this node.
    pub fn observe(&mut self, catalog: Option<Catalog>, in_recovery: bool) {
        // Recovery refuses writes by itself. A marking a standby inherited from a fenced
        // primary's files (cloned or rewound while it was fenced) would otherwise make new
        // sessions read-only for a moment after a promotion, while the node reports itself
        // writable.
        if in_recovery {
            mark_read_only(false);
        }
        self.feed(Input::Observe {
            catalog,
            in_recovery,
        });
    }

    /// The timing in force.
    pub fn timing(&self) -> Timing {
        self.driver.timing()
    }

    /// How long this node's voter has heard nothing from the primary; `None` before it first
    /// heard it.
    pub fn silence(&self) -> Option<Duration> {
        let st = shmem::read()?;
        self.driver.silence(&st.failover, clock::now())
    }

    /// The primary this node should follow and confirm.
    pub fn current_primary(&self) -> Option<NodeRecord> {
        let st = shmem::read()?;
        self.driver.current_primary(&st.failover)
    }

    /// Whether to stream from another node now (see [`Driver::follow_decision`]).
    pub fn follow_decision(&mut self, upstream: Upstream) -> Option<(NodeRecord, &'static str)> {
        let st = shmem::read()?;
        let decision = self.driver.follow_decision(&st.failover, upstream);
        for a in self.driver.take_actions() {
            self.perform(a);
        }
        decision
    }

    /// The postmaster died (`kill -9`, the OOM killer) while this node led: tells every other
    /// voter, which then need not wait for the lease to run out. No process of this server
    /// can commit any more (`fence.rs` reads the postmaster-death pipe at both checks), and
    /// the report names the lease, so that a late one cannot free a voter from a later life of
    /// this node. The calls run in parallel on threads with plain `poll()` (the process latch
    /// no longer waits once the postmaster is gone, and the threads call only libpq), for at
    /// most `repmgr.peer_connect_timeout`, capped at 1 s.
    pub fn announce_exit(&self) {
        let Some(st) = shmem::read() else { return };
        let f = &st.failover;
        let Some(lease) = f.lease.filter(|_| f.armed) else {
            return;
        };
        let voters = self.driver.voters();
        if voters.is_empty() || unsafe { pg_sys::RecoveryInProgress() } {
            return;
        }
        let deadline =
            std::time::Instant::now() + self.settings.peer_connect_timeout.min(EXIT_REPORT_WITHIN);
        let args = [
            f.node_id.to_string(),
            lease.term.to_string(),
            (lease.incarnation as i64).to_string(),
        ];
        let calls: Vec<_> = voters
            .iter()
            .map(|n| {
                let (defaults, forced) = crate::peer::parameters(&n.conninfo, &self.settings);
                let conninfo = n.conninfo.clone();
                let args = args.clone();
                std::thread::spawn(move || -> Result<bool, String> {
                    let mut waiter = repmgr_pq::PollWaiter;
                    let mut c = Conn::connect(
                        &conninfo,
                        &crate::peer::borrowed(&defaults),
                        &crate::peer::borrowed(&forced),
                        deadline,
                        &mut waiter,
                    )
                    .map_err(|e| e.message)?;
                    let params: Vec<Option<&str>> = args.iter().map(|a| Some(a.as_str())).collect();
                    let r = c
                        .query(
                            "SELECT repmgr.primary_exited($1::int, $2::bigint, $3::bigint)",
                            &params,
                            deadline,
                            &mut waiter,
                        )
                        .map_err(|e| e.message)?;
                    Ok(r.get(0, 0) == Some("t"))
                })
            })
            .collect();
        let mut counted = 0;
        let mut failed = Vec::new();
        for (n, call) in voters.iter().zip(calls) {
            match call.join() {
                Ok(Ok(true)) => counted += 1,
                Ok(Ok(false)) => {}
                Ok(Err(e)) => failed.push(format!(
                    "{}: {}",
                    n.describe(),
                    crate::error::mask_text(e.trim())
                )),
                Err(_) => failed.push(format!("{}: the call failed", n.describe())),
            }
        }
        log!(
            "repmgr: the postmaster of {} exited while it was primary in term {}; {counted} of {} voters stop waiting for its lease{}",
            self.settings.describe(),
            lease.term,
            voters.len(),
            if failed.is_empty() {
                String::new()
            } else {
                format!(" (not told: {})", failed.join("; "))
            }
        );
    }

    /// `repmgr.promote()`, request `seq`: answered through the request slot when done.
    pub fn manual_promote(&mut self, seq: u64, force: bool, allow_data_loss: bool) {
        self.feed(Input::ManualPromote {
            seq,
            force,
            allow_data_loss,
        });
    }

    /// A `repmgr.notify_follow_primary()` from `from`.
    pub fn notified(&mut self, from: NodeId) {
        self.feed(Input::Notified { from });
    }

    /// One step: never blocks, except during an election (bounded by short deadlines).
    pub fn tick(&mut self) -> Wait {
        // repmgr.pause() takes effect at once: a switchover pauses every node, then makes
        // their wait run out.
        let paused = shmem::read().is_some_and(|s| s.paused);
        self.feed(Input::Paused(paused));
        self.feed(Input::Tick);
        let socket = self.drive_poll();
        let timeout = self.driver.next_tick(clock::now());
        Wait { socket, timeout }
    }

    /// Gives one input to the state machine (under the shared-state lock, since the state it
    /// changes is what backends answer from) and carries out what it asks.
    fn feed(&mut self, input: Input) {
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            let now = clock::now();
            let driver = &mut self.driver;
            let actions = shmem::update(|s| {
                let actions = driver.step(now, &mut s.failover, &mut durable::StateFile, input);
                s.set_rejoin(driver.rejoin_status(now).as_ref());
                actions
            })
            .unwrap_or_default();
            for a in actions {
                queue.extend(self.perform(a));
            }
        }
    }

    /// Settings for election traffic: short deadlines, so a dead voter costs little.
    fn election_settings(&self) -> Settings {
        let mut s = self.settings.clone();
        let budget = (self.timing().heartbeat * 2).max(Duration::from_millis(300));
        s.peer_connect_timeout = s.peer_connect_timeout.min(budget);
        s.peer_statement_timeout = s.peer_statement_timeout.min(budget);
        s
    }

    /// Carries out one action; returns the inputs its outcome gives.
    fn perform(&mut self, action: Action) -> Vec<Input> {
        match action {
            Action::Poll { target, poll } => {
                self.start_poll(target, poll);
                Vec::new()
            }
            Action::ClosePoll => {
                self.polling = None;
                Vec::new()
            }
            Action::AskAround { round, to } => self.ask_around(round, &to),
            Action::Validate {
                round,
                visible,
                lost,
                total,
            } => vec![Input::Validated {
                round,
                ok: self.validated(visible, lost, total),
            }],
            Action::StopWalReceiver => {
                crate::follow::stop_wal_receiver(
                    &self.settings.describe(),
                    "for the election (repmgr.standby_disconnect_on_failover)",
                );
                Vec::new()
            }
            Action::Rejoin { why } => match crate::rejoin::start(&self.settings, &why) {
                Ok(()) => Vec::new(),
                Err((why, retry)) => vec![Input::RejoinRefused { why, retry }],
            },
            Action::Detach { from } => {
                crate::follow::detach(
                    &self.settings.describe(),
                    &format!("to stop streaming from node {from}"),
                    false,
                );
                Vec::new()
            }
            Action::RequestVotes {
                term,
                request,
                manual,
                to,
            } => {
                self.request_votes(term, &request, manual, &to);
                Vec::new()
            }
            Action::Promote { term } => vec![Input::Promoted {
                term,
                result: self.promote(),
            }],
            Action::RecordPromotion { term } => {
                let (result, retry) = record_promotion(self.settings.node_id, term);
                vec![Input::Recorded {
                    term,
                    result,
                    retry,
                }]
            }
            Action::NotifyFollow { to } => {
                self.notify_follow(&to);
                Vec::new()
            }
            Action::MarkReadOnly(fenced) => {
                mark_read_only(fenced);
                Vec::new()
            }
            Action::Shutdown => {
                unsafe { libc::kill(pg_sys::PostmasterPid, libc::SIGINT) };
                Vec::new()
            }
            Action::Event(e) => {
                let mut ev = Event::new(self.settings.node_id, e.name, e.details);
                ev.successful = e.successful;
                if let Some(o) = &e.about {
                    ev = ev.about(o.node_id, &o.node_name, &o.conninfo);
                }
                self.outbox.push(ev);
                Vec::new()
            }
            Action::Log(level, text) => {
                let text = crate::error::mask_text(&text);
                match level {
                    Level::Debug => debug1!("repmgr: {text}"),
                    Level::Info => log!("repmgr: {text}"),
                    Level::Warning => warning!("repmgr: {text}"),
                }
                Vec::new()
            }
            Action::Answer { seq, outcome } => {
                let outcome = outcome.map_err(|r| manual::refusal(r.message, &r.hint));
                shmem::finish_request(seq, &outcome);
                Vec::new()
            }
        }
    }

    /// Opens (or reuses) the poll connection to `target` and queues `poll` on it.
    fn start_poll(&mut self, target: NodeRecord, poll: Poll) {
        if self.polling.as_ref().is_some_and(|p| {
            p.target.node_id != target.node_id || p.target.conninfo != target.conninfo
        }) {
            self.polling = None;
        }
        if self.polling.is_none() {
            let (defaults, forced) = crate::peer::parameters(&target.conninfo, &self.settings);
            match Conn::start(
                &target.conninfo,
                &crate::peer::borrowed(&defaults),
                &crate::peer::borrowed(&forced),
            ) {
                Ok(conn) => {
                    self.polling = Some(Polling {
                        target,
                        conn,
                        poll: None,
                        busy: false,
                    })
                }
                Err(_) => {
                    let from = target.node_id;
                    self.feed(Input::PollReply { from, reply: None });
                    return;
                }
            }
        }
        if let Some(p) = self.polling.as_mut() {
            p.poll = Some(poll);
        }
    }

    /// Drives the poll connection: sends the queued poll once connected, hands the reply to
    /// the state machine. Returns the socket to wait on, if any.
    fn drive_poll(&mut self) -> Option<(RawFd, Interest)> {
        loop {
            let p = self.polling.as_mut()?;
            let from = p.target.node_id;
            match p.conn.step() {
                Err(_) => {
                    self.polling = None;
                    self.feed(Input::PollReply { from, reply: None });
                    return None;
                }
                Ok(Step::Wait(interest)) => return Some((p.conn.socket(), interest)),
                Ok(Step::Idle) => {
                    let poll = p.poll.take()?;
                    let args = poll_args(&poll);
                    let args: Vec<Option<&str>> = args.iter().map(|a| a.as_deref()).collect();
                    if p.conn
                        .send(
                            "SELECT term, accepted, holds_lease, yielding, incarnation, at_us, fence_us, heartbeat_ms FROM repmgr.lease_poll($1::int, $2::bigint, $3::bigint, $4::bigint, $5::bigint, $6::bigint, $7::bigint)",
                            &args,
                        )
                        .is_err()
                    {
                        self.polling = None;
                        self.feed(Input::PollReply { from, reply: None });
                        return None;
                    }
                    p.busy = true;
                }
                Ok(Step::Done(result)) => {
                    p.busy = false;
                    let reply = result.ok().and_then(|rows| parse_poll_reply(&rows));
                    self.feed(Input::PollReply { from, reply });
                }
            }
        }
    }

    /// Asks every voter how things look (`repmgr.vote_info()`), and reads this node's facts.
    fn ask_around(&mut self, round: u64, to: &[NodeRecord]) -> Vec<Input> {
        let es = self.election_settings();
        let mut inputs = vec![Input::Local {
            round,
            facts: local_facts(),
        }];
        for n in to {
            let got = self
                .peers
                .get(n, &es)
                .and_then(|p| p.run(&protocol::vote_info_query(), &[]));
            let answer = match got {
                Ok(r) => protocol::parse_vote_info(&r),
                Err(_) => {
                    self.peers.forget(n.node_id);
                    None
                }
            };
            inputs.push(Input::PreVote {
                round,
                from: n.node_id,
                answer,
            });
        }
        inputs
    }

    /// Asks `to` for their votes in order, until the state machine has what it needs.
    fn request_votes(
        &mut self,
        term: u64,
        request: &repmgr_core::vote::VoteRequest,
        manual: bool,
        to: &[NodeRecord],
    ) {
        let es = self.election_settings();
        let args = [
            term.to_string(),
            request.candidate.to_string(),
            request.lsn.to_string(),
            manual.to_string(),
            request.fence.as_micros().to_string(),
            request.version.to_string(),
            request.quorum_version.to_string(),
            request.timeline.to_string(),
            request.timeline_start.to_string(),
            request.failover_slots.to_string(),
        ];
        let args: Vec<Option<&str>> = args.iter().map(|a| Some(a.as_str())).collect();
        for n in to {
            if !self.driver.collecting_votes(term) {
                break;
            }
            let answer = self.peers.get(n, &es).and_then(|p| {
                match p.run(
                    "SELECT term, granted, reason FROM repmgr.request_vote($1::bigint, $2::int, $3::bigint, $4::boolean, $5::bigint, $6::bigint, $7::bigint, $8::bigint, $9::bigint, $10::int)",
                    &args,
                ) {
                    // A catalog not yet updated to 0.3.0 (a rolling upgrade): the request
                    // without the copies of the failover slots.
                    Err(f) if f.code == pgrx::PgSqlErrorCode::ERRCODE_UNDEFINED_FUNCTION => p.run(
                        "SELECT term, granted, reason FROM repmgr.request_vote($1::bigint, $2::int, $3::bigint, $4::boolean, $5::bigint, $6::bigint, $7::bigint, $8::bigint, $9::bigint)",
                        &args[..9],
                    ),
                    other => other,
                }
            });
            let reply = match answer {
                Ok(r) => Ok(VoteReply {
                    term: r.get(0, 0).and_then(|v| v.parse().ok()).unwrap_or(0),
                    granted: r.get(0, 1) == Some("t"),
                    reason: r.get(0, 2).unwrap_or("no reason").to_string(),
                }),
                Err(f) => {
                    self.peers.forget(n.node_id);
                    Err(crate::error::mask_text(&f.message))
                }
            };
            self.feed(Input::Vote {
                term,
                from: n.node_id,
                reply,
            });
        }
    }

    /// Sets the synchronous standbys to start with, then ends recovery.
    fn promote(&mut self) -> Result<Option<String>, String> {
        // With a synchronous quorum, the first commit as a primary already waits for it.
        let names = crate::quorum::prepare_promotion(&self.settings, self.settings.node_id)
            .map_err(|f| {
                format!(
                    "could not set synchronous_standby_names before promoting: {}",
                    f.message
                )
            })?;
        if !end_recovery(PROMOTE_TIMEOUT) {
            return Err("pg_promote() failed or did not finish within 60 s".into());
        }
        Ok(names)
    }

    fn notify_follow(&mut self, to: &[NodeRecord]) {
        let es = self.election_settings();
        let id = self.settings.node_id.to_string();
        for n in to {
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
    }

    /// Runs `repmgr.failover_validation_command` with `%v` the visible nodes and `%u` those
    /// that lost the primary. Returns whether the election may go on.
    fn validated(&self, visible: usize, lost: usize, total: usize) -> bool {
        let Some(cmd) = self.settings.failover.validation_command.clone() else {
            return true;
        };
        let line = template::render(
            &cmd,
            &[
                ('n', &self.settings.node_id.to_string()),
                ('a', &self.settings.node_name),
                ('v', &visible.to_string()),
                ('u', &lost.to_string()),
                ('t', &total.to_string()),
            ],
        );
        crate::command::run(
            "failover_validation_command",
            &line,
            Duration::from_secs(10),
        )
        .is_some_and(|s| s.success())
    }
}

fn poll_args(p: &Poll) -> [Option<String>; 7] {
    [
        Some(p.voter.to_string()),
        Some(p.term.to_string()),
        p.echo.map(|e| e.incarnation.to_string()),
        p.echo.map(|e| e.at.as_micros().to_string()),
        p.echo.map(|e| e.fence.as_micros().to_string()),
        Some(p.version.to_string()),
        Some(p.wait.as_millis().to_string()),
    ]
}

fn parse_poll_reply(rows: &repmgr_pq::Rows) -> Option<PollReply> {
    let int = |c: usize| rows.get(0, c).and_then(|v| v.parse::<u64>().ok());
    Some(PollReply {
        term: int(0)?,
        accepted: rows.get(0, 1) == Some("t"),
        leading: rows.get(0, 2) == Some("t"),
        yielding: rows.get(0, 3) == Some("t"),
        stamp: Stamp {
            incarnation: int(4)?,
            at: Duration::from_micros(int(5)?),
            fence: Duration::from_micros(int(6)?),
        },
        heartbeat: Duration::from_millis(int(7)?),
    })
}

/// This node's facts for an election: its WAL position, and the synchronous quorum its
/// catalog publishes with whether it had replayed everything it received before reading it
/// (so the catalog is as new as its position).
fn local_facts() -> LocalFacts {
    let position =
        protocol::received_position().filter(|_| unsafe { pg_sys::RecoveryInProgress() });
    let (lsn, timeline, timeline_start) = (
        position.map(|p| p.lsn),
        position.map_or(0, |p| p.timeline),
        position.map_or(0, |p| p.start),
    );
    let failover_slots = if position.is_some() {
        crate::slots::ready_copies()
    } else {
        0
    };
    // Without the catalog (DROP EXTENSION) there is nothing to read, and no error either.
    let catalog = in_transaction(|| {
        Local.read(
            "SELECT pg_catalog.to_regclass('repmgr.synchronous_quorum') IS NOT NULL",
            &[],
        )
    })
    .ok()
    .is_some_and(|r| r.get(0, 0) == Some("t"));
    if !catalog {
        return LocalFacts {
            lsn,
            timeline,
            timeline_start,
            quorum: None,
            quorum_version: 0,
            failover_slots,
        };
    }
    let read = || -> crate::error::Result<_> {
        // Two transactions: the second one's snapshot includes all that the first saw replayed.
        let r = in_transaction(|| {
            Local.read(
                "SELECT COALESCE(pg_catalog.pg_last_wal_receive_lsn() <= pg_catalog.pg_last_wal_replay_lsn(), true)",
                &[],
            )
        })?;
        let replayed_all = r.get(0, 0) == Some("t");
        let publication = in_transaction(|| crate::quorum::publication(&mut Local))?;
        Ok((publication, replayed_all))
    };
    match read() {
        Ok(((quorum, quorum_version), replayed_all)) => LocalFacts {
            lsn,
            timeline,
            timeline_start,
            quorum: Some((quorum, replayed_all)),
            quorum_version,
            failover_slots,
        },
        Err(f) => {
            log!(
                "repmgr: cannot read the published synchronous quorum: {}",
                f.message
            );
            LocalFacts {
                lsn,
                timeline,
                timeline_start,
                quorum: None,
                quorum_version: 0,
                failover_slots,
            }
        }
    }
}

/// Writes this node's promotion to the catalog: it is the primary, the old one is not, and
/// the term. Returns the outcome and whether it may succeed later (this node does not hold
/// its lease yet, or an earlier change of the node list is still settling).
fn record_promotion(me: NodeId, term: u64) -> (Result<(), String>, bool) {
    let id = me.to_string();
    let recorded = write_transaction(|| {
        Local.write("UPDATE repmgr.nodes SET active = false WHERE type = 'primary' AND active AND node_id <> $1::int", &[Some(&id)])?;
        Local.write("UPDATE repmgr.nodes SET type = 'primary', upstream_node_id = NULL, active = true WHERE node_id = $1::int", &[Some(&id)])?;
        Local.write(
            "UPDATE repmgr.voting_term SET term = $1::int",
            &[Some(&term.to_string())],
        )
    });
    match recorded {
        Ok(_) => (Ok(()), false),
        Err(f) => {
            let retry = crate::fence::refusal().is_some()
                || f.code == pgrx::PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE;
            (Err(f.message), retry)
        }
    }
}

/// Makes new sessions on a fenced primary read-only by default, so that clients routing
/// with `target_session_attrs=read-write` skip it, and undoes that once it holds its lease
/// again (a restart keeps the marking: a fenced node restarts fenced).
fn mark_read_only(fenced: bool) {
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

/// Longest wait for the startup process to finish a promotion.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(60);

/// Asks the startup process to promote and waits until recovery has ended. pg_promote()'s
/// own wait looks every 100 ms, which clients would see as write outage; this looks every
/// 10 ms. The wait goes on for a moment through a shutdown request, since the promotion may
/// be under way and the catalog must learn of it; not longer, since a shutdown stops the
/// startup process too (a fast shutdown during an election waited out the whole 60 s, and
/// pg_ctl gave up on it).
///
/// The request is repeated every [`PROMOTE_NUDGE`]: a startup process that takes it while
/// streaming has failed can go on to sleep `wal_retrieve_retry_interval` (5 s by default)
/// before acting on it, and only a new signal wakes it. Seen on PostgreSQL 15 under load: the
/// election winner promoted 5 s late, after its voters' leases had run out.
fn end_recovery(timeout: Duration) -> bool {
    let promote = || {
        in_transaction(|| Local.read("SELECT pg_catalog.pg_promote(false)", &[]))
            .ok()
            .is_some_and(|r| r.get(0, 0) == Some("t"))
    };
    let asked = promote();
    let started = std::time::Instant::now();
    let mut deadline = started + timeout;
    let mut nudged = started;
    while asked && std::time::Instant::now() < deadline {
        if !unsafe { pg_sys::RecoveryInProgress() } {
            return true;
        }
        if nudged.elapsed() >= PROMOTE_NUDGE {
            nudged = std::time::Instant::now();
            promote();
        }
        if !crate::latch::sleep(Duration::from_millis(10)) {
            deadline = deadline.min(std::time::Instant::now() + PROMOTE_SHUTDOWN_GRACE);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    false
}

/// How long [`end_recovery`] still waits once the worker is asked to stop.
const PROMOTE_SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// How often [`end_recovery`] repeats its request.
const PROMOTE_NUDGE: Duration = Duration::from_millis(200);
