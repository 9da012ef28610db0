//! The monitoring worker's side of failover, as a deterministic state machine.
//!
//! [`Driver::step`] takes one [`Input`] (time passed, a poll reply, a pre-vote answer, a vote,
//! the outcome of a promotion, an operator's request, the catalog as the last monitoring round
//! read it) together with this node's shared [`State`] and its [`Disk`], and returns the
//! [`Action`]s to carry out: poll the primary, ask the other voters, request votes, promote,
//! record the promotion, fence, tell others to follow, record an event, log a line, answer
//! the operator. It performs no I/O and reads no clock; the caller passes the time. The
//! extension's worker (`src/failover.rs`) carries the actions out against PostgreSQL and
//! libpq; the simulator (`sim/`) carries them out against simulated nodes, networks and
//! disks. Both drive this very code, so what the simulator checks is what runs.
//!
//! On a standby or witness: confirm the primary every heartbeat, look around when it goes
//! quiet, and — a standby that may be promoted — stand for election, promote, and tell the
//! others to follow. On a primary: keep the lease over the current membership, move past
//! failed elections, and notice when the lease is lost (fence, or shut down).

use std::time::Duration;

use crate::election::{self, Answer, Kind, Me, Peer, Plan, Rules};
use crate::event;
use crate::lease::{Lease, Membership, NodeId, Poll, PollReply, Timing, lease_for, majority};
use crate::lsn::Lsn;
use crate::node::{NodeRecord, NodeType};
use crate::quorum;
use crate::rejoin::{self, AutoRejoin, Rejoin};
use crate::state::{Disk, PreVote, State};
use crate::vote::{Heard, VoteReply, VoteRequest};

/// What the driver reads of this node's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The timing, or why the configured combination is refused (the last valid one stays).
    pub timing: Result<Timing, String>,
    /// `repmgr.failover = automatic`.
    pub automatic: bool,
    pub priority: i32,
    pub max_lag: u64,
    pub visibility_consensus: bool,
    /// Whether `repmgr.failover_validation_command` is set.
    pub validation_command: bool,
    pub election_rerun_interval: Duration,
    pub disconnect_on_failover: bool,
    /// `repmgr.fence_action = shutdown`.
    pub fence_shutdown: bool,
    /// `repmgr.auto_rejoin`.
    pub auto_rejoin: AutoRejoin,
}

/// The catalog of this node, as a monitoring round read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    pub nodes: Vec<NodeRecord>,
    /// The membership version (`repmgr.membership`), the voters before its last change, and
    /// the node that made it (a primary, which has seen it).
    pub version: u64,
    pub previous: Vec<NodeId>,
    pub changed_by: Option<NodeId>,
}

impl Catalog {
    /// The voters of this catalog: its active nodes.
    pub fn membership(&self) -> Membership {
        Membership::new(
            self.version,
            self.nodes.iter().filter(|n| n.votes()).map(|n| n.node_id),
        )
    }

    fn previous_membership(&self) -> Membership {
        Membership::new(0, self.previous.iter().copied())
    }

    /// The versions this catalog proves: its writer has seen its own change.
    fn known_versions(&self) -> Vec<(NodeId, u64)> {
        self.changed_by
            .map(|n| (n, self.version))
            .into_iter()
            .collect()
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeRecord> {
        self.nodes.iter().find(|n| n.node_id == id)
    }

    /// The registered active primary.
    pub fn primary(&self) -> Option<&NodeRecord> {
        self.nodes
            .iter()
            .find(|n| n.node_type == NodeType::Primary && n.active)
    }
}

/// The node a standby streams from, as its monitoring sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upstream {
    pub node: Option<NodeId>,
    /// Its last check failed.
    pub unreachable: bool,
    /// Its reconnect attempts are used up.
    pub down: bool,
    /// This standby streams from nobody (its `primary_conninfo` is empty): it detached from
    /// a primary that was replaced ([`Action::Detach`]), or was set up that way.
    pub detached: bool,
}

/// This node's facts the election needs, read when it looks around.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFacts {
    /// Received (or replayed, if further) WAL position, its timeline (0: unknown) and where
    /// that timeline began.
    pub lsn: Option<u64>,
    pub timeline: u32,
    pub timeline_start: u64,
    /// The synchronous quorum published in this node's catalog, and whether it had replayed
    /// all it received when it read it; `None` when it could not be read.
    pub quorum: Option<(quorum::Config, bool)>,
    /// Where that quorum was written (a WAL position; 0: none).
    pub quorum_version: u64,
    /// Its usable copies of failover slots (see [`election::Answer::failover_slots`]).
    pub failover_slots: u32,
}

/// What happens to the driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Time passed.
    Tick,
    /// A monitoring round read the catalog (`None`: the extension is missing) and the role.
    Observe {
        catalog: Option<Catalog>,
        in_recovery: bool,
    },
    Reload(Settings),
    /// `repmgr.pause()` changed.
    Paused(bool),
    /// The answer to [`Action::Poll`]: `None` when the poll failed or the node is no primary.
    PollReply {
        from: NodeId,
        reply: Option<PollReply>,
    },
    /// The answer to [`Action::AskAround`] from one voter (`None`: no answer).
    PreVote {
        round: u64,
        from: NodeId,
        answer: Option<PreVote>,
    },
    /// This node's facts for [`Action::AskAround`].
    Local {
        round: u64,
        facts: LocalFacts,
    },
    /// `repmgr.failover_validation_command` ran.
    Validated {
        round: u64,
        ok: bool,
    },
    /// The answer to [`Action::RequestVotes`] from one voter, or why it gave none.
    Vote {
        term: u64,
        from: NodeId,
        reply: Result<VoteReply, String>,
    },
    /// [`Action::Promote`] finished: the synchronous standbys it starts with, or why not.
    Promoted {
        term: u64,
        result: Result<Option<String>, String>,
    },
    /// [`Action::RecordPromotion`] finished; `retry` when the write may succeed later (this
    /// node does not hold its lease yet, or an earlier membership change is still settling).
    Recorded {
        term: u64,
        result: Result<(), String>,
        retry: bool,
    },
    /// `repmgr.notify_follow_primary()` from `from`: it says it is the new primary.
    Notified {
        from: NodeId,
    },
    /// [`Action::Rejoin`] could not start: why, and whether it may work later (no writable
    /// primary yet) or never will as things are (pg_rewind cannot run, too many attempts).
    RejoinRefused {
        why: String,
        retry: bool,
    },
    /// `repmgr.promote()`, request number `seq`.
    ManualPromote {
        seq: u64,
        force: bool,
        allow_data_loss: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warning,
}

/// An event to record in `repmgr.events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub name: &'static str,
    pub details: String,
    pub successful: bool,
    /// The other node it is about (`%p`, `%a`, `%c`).
    pub about: Option<NodeRecord>,
}

/// A refusal of an operator's request: what is wrong, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    pub hint: String,
}

fn refusal(message: impl Into<String>, hint: &str) -> Refusal {
    Refusal {
        message: message.into(),
        hint: hint.into(),
    }
}

/// What the caller must carry out, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Call `repmgr.lease_poll()` on `target` (reusing the connection when it is the same).
    Poll {
        target: NodeRecord,
        poll: Poll,
    },
    /// Give up the poll in flight and its connection.
    ClosePoll,
    /// Call `repmgr.vote_info()` on each of `to`, and read this node's [`LocalFacts`].
    AskAround {
        round: u64,
        to: Vec<NodeRecord>,
    },
    /// Run `repmgr.failover_validation_command` with these counts.
    Validate {
        round: u64,
        visible: usize,
        lost: usize,
        total: usize,
    },
    /// Stop this standby's WAL receiver (`repmgr.standby_disconnect_on_failover`).
    StopWalReceiver,
    /// Stop streaming from `from` and do not reconnect (empty `primary_conninfo`): this
    /// standby moved to a newer term than the one `from` leads in, so WAL `from` writes from
    /// now on is on a branch the next primary does not continue.
    Detach {
        from: NodeId,
    },
    /// Call `repmgr.request_vote()` on `to`, in order, until told to promote.
    RequestVotes {
        term: u64,
        request: VoteRequest,
        manual: bool,
        to: Vec<NodeRecord>,
    },
    /// Set the synchronous standbys to start with, then end recovery (the lease is set).
    Promote {
        term: u64,
    },
    /// Write the promotion of `term` to the catalog: this node primary, the old one inactive.
    RecordPromotion {
        term: u64,
    },
    /// Tell these nodes to follow this one (`repmgr.notify_follow_primary()`).
    NotifyFollow {
        to: Vec<NodeRecord>,
    },
    /// Make new sessions read-only by default (fenced), or undo it.
    MarkReadOnly(bool),
    /// Rejoin the current primary as a standby, outside the server (which must stop for a
    /// rewind): a replaced primary, or a standby whose timeline diverged. `why` says which.
    Rejoin {
        why: String,
    },
    /// `repmgr.fence_action = shutdown`: stop the server.
    Shutdown,
    Event(Event),
    Log(Level, String),
    /// Answer the operator's request `seq`.
    Answer {
        seq: u64,
        outcome: Result<String, Refusal>,
    },
}

/// A manual promotion in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Manual {
    seq: u64,
    force: bool,
    allow_data_loss: bool,
}

/// One loss of the primary, as a standby lives it: from its lease running out until it hears
/// a primary again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Outage {
    leader: Option<NodeId>,
    since: Duration,
    /// The WAL receiver was stopped for the election.
    disconnected: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct Asking {
    round: u64,
    until: Duration,
    manual: Option<Manual>,
    to: Vec<NodeRecord>,
    answers: Vec<(NodeId, Option<PreVote>)>,
    local: Option<LocalFacts>,
}

#[derive(Debug, Clone, PartialEq)]
struct Voting {
    term: u64,
    until: Duration,
    /// When the votes were asked: they confirm the new lease from then.
    asked_at: Duration,
    lsn: u64,
    manual: Option<Manual>,
    to: Vec<NodeId>,
    replied: Vec<NodeId>,
    grants: Vec<NodeId>,
    refusals: Vec<String>,
    /// The membership versions the voters reported when asked around.
    versions: Vec<(NodeId, u64)>,
}

impl Voting {
    fn total(&self) -> usize {
        self.to.len() + 1
    }

    fn won(&self) -> bool {
        election::won(self.grants.len() + 1, self.total())
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Idle,
    Asking(Asking),
    /// Waiting for the validation command before standing in `term`.
    Validating {
        round: u64,
        term: u64,
        lsn: u64,
        slots: u32,
        to: Vec<NodeRecord>,
        versions: Vec<(NodeId, u64)>,
    },
    Voting(Voting),
    Promoting(Voting),
}

/// The worker's failover state machine. See the module documentation.
#[derive(Debug, Clone)]
pub struct Driver {
    node_id: NodeId,
    settings: Settings,
    timing: Timing,
    catalog: Option<Catalog>,
    /// Every node record seen, newest first by id: a leader whose record vanished from the
    /// catalog is still polled, so that removing a record never causes an election by itself.
    known: Vec<NodeRecord>,
    /// This node's record as last seen, and whether the current catalog still lists it.
    me: Option<NodeRecord>,
    registered: bool,
    in_recovery: bool,
    paused: bool,
    rng: u64,
    // Polling.
    in_flight: Option<(NodeRecord, Duration, bool)>,
    next_poll: Duration,
    echo_now: bool,
    /// A primary learnt from other voters (or its own notification), with its term.
    leader_hint: Option<(NodeId, u64)>,
    /// Where the quorum in this node's catalog was written, as read at its last look around:
    /// sent with its vote requests.
    quorum_version: u64,
    /// The heartbeat the primary last heard asks for, when shorter than this node's own.
    leader_heartbeat: Option<Duration>,
    // Elections.
    retry_at: Duration,
    round: u64,
    phase: Phase,
    /// Why this standby declined to stand, as last said in the current outage.
    last_plan: Option<String>,
    /// The standby this one defers to in the current outage, and since when; and those it
    /// deferred to that did not win within [`DEFER_PATIENCE`] leases.
    deferring: Option<(NodeId, Duration)>,
    passed_over: Vec<NodeId>,
    outage: Option<Outage>,
    // As a primary.
    was_leading: Option<bool>,
    /// The lease's incarnation and lapse count when last looked at.
    lapses_seen: Option<(u64, u32)>,
    reported_replaced: bool,
    /// A node that said it is the new primary (`repmgr.notify_follow_primary()`), not yet
    /// followed.
    notified: Option<NodeId>,
    /// The term of a promotion not yet written to the catalog, and whether a write is out.
    unrecorded: Option<u64>,
    recording: bool,
    /// The catalog lost this node's record or the primary's: said once.
    said_unlisted: bool,
    rejoin: Rejoin,
    /// The timeline of this standby's WAL and where it began, as the last look around read
    /// them (vote requests carry them).
    timeline: (u32, u64),
    /// Since when this primary has been fenced (it looks around once that lasts a lease).
    fenced_since: Option<Duration>,
    /// What this standby streams from, as the monitoring round last passed it (updated at
    /// once by a follow or detach decided here).
    upstream: Option<Upstream>,
    /// The last primary this voter supported, and in which term.
    last_support: Option<(NodeId, u64)>,
    /// The primary it last detached from, and the term it was in then: once per term, even
    /// while a monitoring round has not yet seen the emptied `primary_conninfo`.
    detached_in: Option<(NodeId, u64)>,
    /// Saving the lease state failed: said once until it works again.
    said_save_failed: bool,
    actions: Vec<Action>,
}

/// How many of its leases a standby defers to another before passing it over: time enough for
/// that one to stand, be voted for and promote.
const DEFER_PATIENCE: u32 = 2;

/// Past the moment a voter's rule runs out, how long before asking again (so that its
/// answer says it lost the primary).
const ASK_MARGIN: Duration = Duration::from_millis(10);

/// How soon to ask again a voter that answered before the report of the primary's exit
/// reached it (this node had it already: they are sent at once).
const ASK_TOLD: Duration = Duration::from_millis(30);

/// How long, from `now`, until a majority of `voters` (this one included) will have heard
/// nothing from the primary for as long as their rule needs, by the others' `answers` (each
/// says how long it has been silent and how long it waits); `None` when too few answered or a
/// majority already has.
fn majority_lost_in(
    now: Duration,
    me: &crate::vote::Voter,
    timing: &Timing,
    answers: &[(NodeId, Option<PreVote>)],
    voters: usize,
) -> Option<Duration> {
    let mine = me.wait_needed(timing).saturating_sub(me.silence(now));
    let mut left: Vec<Duration> = answers
        .iter()
        .filter_map(|(_, p)| p.as_ref())
        .map(|p| {
            if p.answer.lost {
                Duration::ZERO
            } else {
                p.wait.saturating_sub(p.answer.silence)
            }
        })
        .chain(std::iter::once(mine))
        .collect();
    left.sort();
    let needed = majority(voters);
    left.get(needed - 1).copied().filter(|d| !d.is_zero())
}

/// The membership versions the voters of round `a` reported.
fn versions_of(a: &Asking) -> Vec<(NodeId, u64)> {
    a.answers
        .iter()
        .filter_map(|(id, p)| p.as_ref().map(|p| (*id, p.answer.version)))
        .collect()
}

fn kind(t: NodeType) -> Kind {
    match t {
        NodeType::Primary => Kind::Primary,
        NodeType::Standby => Kind::Standby,
        NodeType::Witness => Kind::Witness,
    }
}

impl Driver {
    /// A driver for node `node_id` with `settings`; `seed` varies its back-off between nodes.
    pub fn new(node_id: NodeId, settings: Settings, fallback: Timing, seed: u64) -> Driver {
        let timing = settings.timing.clone().unwrap_or(fallback);
        Driver {
            node_id,
            settings,
            timing,
            catalog: None,
            known: Vec::new(),
            me: None,
            registered: false,
            in_recovery: true,
            paused: false,
            rng: seed ^ 0x2545_F491_4F6C_DD1D,
            in_flight: None,
            next_poll: Duration::ZERO,
            echo_now: false,
            leader_hint: None,
            quorum_version: 0,
            leader_heartbeat: None,
            notified: None,
            retry_at: Duration::ZERO,
            round: 0,
            phase: Phase::Idle,
            last_plan: None,
            deferring: None,
            passed_over: Vec::new(),
            outage: None,
            was_leading: None,
            lapses_seen: None,
            reported_replaced: false,
            unrecorded: None,
            recording: false,
            said_unlisted: false,
            rejoin: Rejoin::default(),
            timeline: (0, 0),
            fenced_since: None,
            upstream: None,
            last_support: None,
            detached_in: None,
            said_save_failed: false,
            actions: Vec::new(),
        }
    }

    /// The timing in force.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Publishes this node's settings in its shared state (timing, candidacy); call once at
    /// start, then [`Input::Reload`] does it.
    pub fn publish(&self, state: &mut State) {
        state.timing = self.timing;
        state.automatic = self.settings.automatic;
        state.priority = self.settings.priority;
    }

    /// Whether it is collecting votes in `term` (the caller asks the next voter, or stops).
    pub fn collecting_votes(&self, term: u64) -> bool {
        matches!(&self.phase, Phase::Voting(v) if v.term == term)
    }

    /// Whether it has looked at its lease as a primary since it took the role: from then on
    /// it reports every lapse of it.
    pub fn watches_lease(&self) -> bool {
        self.was_leading.is_some()
    }

    /// Whether this primary last saw itself holding its lease (`None` before it looked).
    pub fn sees_itself_leading(&self) -> Option<bool> {
        self.was_leading
    }

    /// Whether an election or promotion is under way.
    pub fn busy(&self) -> bool {
        self.phase != Phase::Idle
    }

    /// When the driver next needs a [`Input::Tick`], from `now`.
    pub fn next_tick(&self, now: Duration) -> Duration {
        let heartbeat = self.heartbeat();
        let due = match &self.phase {
            Phase::Asking(a) => a.until,
            Phase::Voting(v) => v.until,
            _ => self.next_poll.max(now),
        };
        due.saturating_sub(now)
            .clamp(Duration::from_millis(5), heartbeat)
    }

    /// A small deterministic pseudo-random back-off, so candidates that failed together do
    /// not retry together.
    fn jitter(&mut self, lo: Duration, hi: Duration) -> Duration {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        lo + Duration::from_micros(z % (hi.saturating_sub(lo).as_micros().max(1) as u64))
    }

    fn say(&mut self, level: Level, text: String) {
        self.actions.push(Action::Log(level, text));
    }

    fn event(&mut self, name: &'static str, details: String, about: Option<NodeRecord>) {
        self.actions.push(Action::Event(Event {
            name,
            details,
            successful: true,
            about,
        }));
    }

    fn failed_event(&mut self, name: &'static str, details: String) {
        self.actions.push(Action::Event(Event {
            name,
            details,
            successful: false,
            about: None,
        }));
    }

    fn describe_me(&self) -> String {
        match &self.me {
            Some(m) => m.describe(),
            None => format!("node {}", self.node_id),
        }
    }

    fn record(&self, id: NodeId) -> Option<NodeRecord> {
        self.known.iter().find(|n| n.node_id == id).cloned()
    }

    /// The membership this node counts votes in: its catalog's, while the catalog lists it.
    fn view(&self) -> Option<Membership> {
        self.catalog
            .as_ref()
            .filter(|_| self.registered)
            .map(Catalog::membership)
    }

    /// The other voters of [`Driver::view`], as records.
    pub fn voters(&self) -> Vec<NodeRecord> {
        let Some(view) = self.view() else {
            return Vec::new();
        };
        view.others(self.node_id)
            .filter_map(|id| self.record(id))
            .collect()
    }

    fn is_primary(&self) -> bool {
        !self.in_recovery
            && self
                .me
                .as_ref()
                .is_some_and(|m| m.node_type != NodeType::Witness)
    }

    /// The primary this node should follow and confirm: one learnt from other voters in a
    /// term at least ours, else the one it last heard or voted for, else the catalog's.
    pub fn current_primary(&self, state: &State) -> Option<NodeRecord> {
        let term = state.term();
        let me = self.node_id;
        let pick = |id: NodeId| self.record(id).filter(|_| id != me);
        self.leader_hint
            .filter(|(_, t)| *t >= term)
            .and_then(|(id, _)| pick(id))
            .or_else(|| state.voter.leader.and_then(pick))
            .or_else(|| {
                self.catalog
                    .as_ref()
                    .and_then(|c| c.primary().cloned())
                    .filter(|p| p.node_id != me)
            })
    }

    /// Whether this standby should stream from another node now, and which (with the event to
    /// record once it does): the primary it knows, when that is another node and its
    /// `upstream` is down (its reconnect attempts are used up) or is a primary that was
    /// replaced; or the node that said it is the new primary (a failover follow when the
    /// upstream does not answer). Never while paused (a notification then waits), and never
    /// a witness or this node itself.
    pub fn follow_decision(
        &mut self,
        state: &State,
        upstream: Upstream,
    ) -> Option<(NodeRecord, &'static str)> {
        self.upstream = Some(upstream);
        self.note_detached(state, upstream);
        let decision = self.choose_upstream(state, upstream);
        if let Some((t, _)) = &decision {
            self.upstream = Some(Upstream {
                node: Some(t.node_id),
                unreachable: false,
                down: false,
                detached: false,
            });
        }
        decision
    }

    fn choose_upstream(
        &mut self,
        state: &State,
        upstream: Upstream,
    ) -> Option<(NodeRecord, &'static str)> {
        if self.paused || !self.in_recovery {
            return None;
        }
        if let Some(id) = self.notified.take() {
            return match self.record(id) {
                Some(t) if t.node_type != NodeType::Witness && id != self.node_id => {
                    let failover = self.current_primary(state).is_some_and(|p| p.node_id == id)
                        && upstream.node.is_some_and(|u| u != id)
                        && upstream.unreachable;
                    (upstream.node != Some(id)).then_some((
                        t,
                        if failover {
                            event::REPMGRD_FAILOVER_FOLLOW
                        } else {
                            event::STANDBY_FOLLOW
                        },
                    ))
                }
                Some(t) => {
                    let what = if id == self.node_id {
                        "itself"
                    } else {
                        "the witness"
                    };
                    self.say(
                        Level::Warning,
                        format!(
                            "{} was told to follow {}, which is {what}; ignoring (a standby follows the primary or another standby)",
                            self.describe_me(),
                            t.describe()
                        ),
                    );
                    None
                }
                None => {
                    self.say(
                        Level::Warning,
                        format!(
                            "{} was told to follow node {id}, which is not a registered node; ignoring",
                            self.describe_me()
                        ),
                    );
                    None
                }
            };
        }
        let p = self.current_primary(state)?;
        if p.node_type == NodeType::Witness {
            return None;
        }
        if upstream.detached {
            // Streams again from a primary this voter supports in its term (the old one, if it
            // won its role back in a newer term), never from one it moved past.
            return self
                .superseded(state, p.node_id)
                .is_none()
                .then_some((p, event::REPMGRD_FAILOVER_FOLLOW));
        }
        if upstream.node == Some(p.node_id) {
            return None;
        }
        // A primary that was replaced still streams what it wrote before its fence, on a
        // branch nobody continues: a standby left on it would look ahead of the new timeline
        // and hold every election back. A cascaded standby stays on its upstream. Nor does it
        // move to a primary this voter has moved past (a catalog copy can still name the
        // replaced one when its successor died before its promotion reached this node).
        let replaced = upstream
            .node
            .and_then(|u| self.record(u))
            .is_some_and(|u| u.node_type == NodeType::Primary);
        ((upstream.down || replaced) && self.superseded(state, p.node_id).is_none())
            .then_some((p, event::REPMGRD_FAILOVER_FOLLOW))
    }

    /// Why this voter no longer supports primary `id` in its own term, if it does not: it
    /// supports another node there (it voted, or heard a newer primary), it learnt of a term
    /// newer than the one it last supported `id` in, or the last node it supported is another
    /// one. Nothing while it never supported anyone since it started with no saved support,
    /// and nothing for supporting itself: a former primary that streams again (rejoined, or
    /// demoted by a switchover) streams from one that came after it.
    fn superseded(&self, state: &State, id: NodeId) -> Option<String> {
        let d = state.voter.durable;
        match (d.supports, self.last_support) {
            (Some(x), _) if x == id || x == self.node_id => None,
            (Some(x), _) => Some(format!("it supports node {x} in term {}", d.term)),
            (None, Some((n, t))) if n == id && t < d.term => Some(format!(
                "it is in term {}, newer than term {t} in which it supported node {id}",
                d.term
            )),
            (None, Some((n, t))) if n != id && n != self.node_id => Some(format!(
                "it is in term {}, and the last primary it supported was node {n} (term {t})",
                d.term
            )),
            (None, _) => None,
        }
    }

    /// A standby streaming straight from a primary this voter moved past stops at once: that
    /// primary may wake from a freeze or a partition and send WAL nobody acknowledged, on a
    /// branch the next primary does not continue. A cascaded standby follows its upstream.
    fn detach_if_superseded(&mut self, state: &State) {
        let d = state.voter.durable;
        if let Some(x) = d.supports {
            self.last_support = Some((x, d.term));
        }
        let Some(up) = self.upstream.filter(|u| !u.detached) else {
            return;
        };
        let Some((u, why)) = self.superseded_upstream(state, up) else {
            return;
        };
        self.detached_in = Some((u.node_id, d.term));
        self.upstream = Some(Upstream {
            detached: true,
            ..up
        });
        self.actions.push(Action::Detach { from: u.node_id });
        self.report_detach(&u, &why);
    }

    /// The primary `up` streams from, when this voter moved past it and has not detached
    /// from it in this term yet, with why.
    fn superseded_upstream(&self, state: &State, up: Upstream) -> Option<(NodeRecord, String)> {
        let u = up.node.and_then(|u| self.record(u))?;
        if u.node_type != NodeType::Primary || u.node_id == self.node_id || self.paused {
            return None;
        }
        if self.detached_in == Some((u.node_id, state.voter.durable.term)) {
            return None;
        }
        let why = self.superseded(state, u.node_id)?;
        Some((u, why))
    }

    /// The backend that granted this voter's vote detached it already (`up` is what a
    /// monitoring round saw): recorded as the worker's own detach would be, with no action.
    /// Without this, once the follow that comes next repoints it, its catalog would still name
    /// the old upstream until that change replicates, and a detach then would undo the follow
    /// (seen in CI: with a synchronous quorum the new primary waited for this standby for
    /// ever).
    fn note_detached(&mut self, state: &State, up: Upstream) {
        if !up.detached {
            return;
        }
        if let Some((u, why)) = self.superseded_upstream(state, up) {
            self.detached_in = Some((u.node_id, state.voter.durable.term));
            self.report_detach(&u, &why);
        }
    }

    fn report_detach(&mut self, u: &NodeRecord, why: &str) {
        let details = format!(
            "{} stopped streaming from {}: {why}, so WAL that node writes from now on is not part of the cluster's history; it streams again once it follows the current primary",
            self.describe_me(),
            u.describe()
        );
        self.say(Level::Warning, details.clone());
        self.event(event::REPMGRD_UPSTREAM_DISCONNECT, details, Some(u.clone()));
    }

    /// Log lines and events that a query like [`Driver::follow_decision`] produced.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// How long this node's voter has heard nothing from the primary; `None` before it first
    /// heard it (right after a start, when silence says nothing yet).
    pub fn silence(&self, state: &State, now: Duration) -> Option<Duration> {
        state.voter.last_heard?;
        Some(state.voter.silence(now))
    }

    /// Takes one input and returns what to do.
    pub fn step(
        &mut self,
        now: Duration,
        state: &mut State,
        disk: &mut dyn Disk,
        input: Input,
    ) -> Vec<Action> {
        match input {
            Input::Tick => self.tick(now, state, disk),
            Input::Observe {
                catalog,
                in_recovery,
            } => self.observe(state, catalog, in_recovery),
            Input::Reload(settings) => self.reload(state, settings),
            Input::Paused(p) => self.paused = p,
            Input::PollReply { from, reply } => self.poll_reply(now, state, disk, from, reply),
            Input::PreVote {
                round,
                from,
                answer,
            } => {
                if let Phase::Asking(a) = &mut self.phase
                    && a.round == round
                    && !a.answers.iter().any(|(id, _)| *id == from)
                {
                    a.answers.push((from, answer));
                }
                self.close_round(now, state, disk, false);
            }
            Input::Local { round, facts } => {
                if let Phase::Asking(a) = &mut self.phase
                    && a.round == round
                {
                    a.local = Some(facts);
                }
                self.close_round(now, state, disk, false);
            }
            Input::Validated { round, ok } => self.validated(now, state, disk, round, ok),
            Input::Vote { term, from, reply } => self.vote(now, state, disk, term, from, reply),
            Input::Promoted { term, result } => self.promoted(now, state, disk, term, result),
            Input::Recorded {
                term,
                result,
                retry,
            } => self.recorded(term, result, retry),
            Input::Notified { from } => {
                // Whom to follow, not who the primary is: the target may be a standby
                // (cascading), and the primary's catalog row is what a follow updates.
                if from != self.node_id {
                    self.notified = Some(from);
                }
            }
            Input::ManualPromote {
                seq,
                force,
                allow_data_loss,
            } => self.manual_promote(now, seq, force, allow_data_loss),
            Input::RejoinRefused { why, retry } => self.rejoin_refused(now, why, retry),
        }
        std::mem::take(&mut self.actions)
    }

    fn reload(&mut self, state: &mut State, settings: Settings) {
        match &settings.timing {
            Ok(t) => self.timing = *t,
            Err(rule) => {
                let t = self.timing;
                self.say(
                    Level::Warning,
                    format!(
                        "refusing the failover timing settings: {rule}; keeping heartbeat {} ms, fence {} ms, lease {} ms",
                        t.heartbeat.as_millis(),
                        t.fence.as_millis(),
                        t.lease.as_millis()
                    ),
                );
            }
        }
        self.settings = settings;
        // A changed configuration may have fixed what stood in the way.
        self.rejoin.reloaded();
        self.publish(state);
    }

    fn observe(&mut self, state: &mut State, catalog: Option<Catalog>, in_recovery: bool) {
        self.in_recovery = in_recovery;
        let Some(catalog) = catalog else {
            // The extension is gone (DROP EXTENSION): keep what is known, stand for nothing.
            if self.registered {
                self.say(
                    Level::Warning,
                    format!(
                        "{}: the repmgr catalog is gone; the failover protocol keeps confirming the primary it knows, and no election starts until this node is registered again",
                        self.describe_me()
                    ),
                );
            }
            self.registered = false;
            state.member = false;
            self.catalog = None;
            return;
        };
        for n in &catalog.nodes {
            self.known.retain(|k| k.node_id != n.node_id);
            self.known.push(n.clone());
        }
        state.version = state.version.max(catalog.version);
        let mine = catalog.node(self.node_id).cloned();
        self.registered = mine.is_some();
        state.member = mine.as_ref().is_some_and(|m| m.active);
        if let Some(m) = mine {
            self.me = Some(m);
            self.said_unlisted = false;
        } else if self.me.is_some() && !self.said_unlisted {
            self.said_unlisted = true;
            self.say(
                Level::Warning,
                format!(
                    "{} is no longer listed in the catalog; it keeps its role in the failover protocol (it keeps confirming its primary, or its lease), and no election starts from it until it is registered again",
                    self.describe_me()
                ),
            );
        }
        self.catalog = Some(catalog);
    }

    fn tick(&mut self, now: Duration, state: &mut State, disk: &mut dyn Disk) {
        if self.me.is_none() {
            return;
        }
        if self.is_primary() {
            if self.in_flight.take().is_some() {
                self.actions.push(Action::ClosePoll);
            }
            self.keep_lease(now, state, disk);
            return;
        }
        if !matches!(self.phase, Phase::Promoting(_)) {
            self.drop_lease_if_any(state, disk);
        }
        self.poll(now, state);
        self.track_outage(now, state);
        self.detach_if_superseded(state);
        let diverged = state.diverged
            && self
                .me
                .as_ref()
                .is_some_and(|m| m.node_type == NodeType::Standby);
        self.want_rejoin(
            now,
            diverged.then_some("its timeline diverged from the primary's"),
        );
        match &self.phase {
            Phase::Idle
                if state.voter.should_look_around(now, &self.timing) && now >= self.retry_at =>
            {
                self.look_around(now, None);
            }
            Phase::Asking(a) if now >= a.until => self.close_round(now, state, disk, true),
            Phase::Voting(v) if now >= v.until => {
                let v = v.clone();
                self.lost(now, state, disk, v);
            }
            _ => {}
        }
    }

    /// Sends the next poll when one is due (and none in flight); gives up one that took too
    /// long.
    /// How often to poll: this node's heartbeat, or the primary's when that is shorter.
    fn heartbeat(&self) -> Duration {
        self.leader_heartbeat
            .map_or(self.timing.heartbeat, |h| h.min(self.timing.heartbeat))
            .max(Duration::from_millis(1))
    }

    fn poll(&mut self, now: Duration, state: &State) {
        // A candidate supports itself: it confirms nobody until its campaign is over.
        if matches!(self.phase, Phase::Voting(_) | Phase::Promoting(_)) {
            if self.in_flight.take().is_some() {
                self.actions.push(Action::ClosePoll);
            }
            return;
        }
        let Some(target) = self.current_primary(state) else {
            if self.in_flight.take().is_some() {
                self.actions.push(Action::ClosePoll);
            }
            return;
        };
        let heartbeat = self.heartbeat();
        let budget = heartbeat * 2;
        if let Some((t, sent, _)) = &self.in_flight {
            let stale = t.node_id != target.node_id || t.conninfo != target.conninfo;
            if stale || now.saturating_sub(*sent) > budget {
                self.in_flight = None;
                self.actions.push(Action::ClosePoll);
                self.next_poll = if stale { now } else { now + heartbeat };
            } else {
                return;
            }
        }
        let echo_only = self.echo_now;
        if !echo_only && now < self.next_poll {
            return;
        }
        self.echo_now = false;
        if !echo_only {
            self.next_poll = now + heartbeat;
        }
        self.in_flight = Some((target.clone(), now, echo_only));
        self.actions.push(Action::Poll {
            target,
            poll: Poll {
                voter: self.node_id,
                term: state.term(),
                echo: state.voter.echo,
                version: state.version,
                // So that a fenced primary knows how long to yield.
                wait: state.voter.wait_needed(&self.timing),
            },
        });
    }

    fn poll_reply(
        &mut self,
        now: Duration,
        state: &mut State,
        disk: &mut dyn Disk,
        from: NodeId,
        reply: Option<PollReply>,
    ) {
        let Some((target, _, echo_only)) = self.in_flight.take() else {
            return;
        };
        if target.node_id != from || matches!(self.phase, Phase::Voting(_) | Phase::Promoting(_)) {
            return;
        }
        let Some(reply) = reply else {
            return;
        };
        let alive = state
            .durably(disk, |s| s.voter.heard(now, from, &reply))
            .is_some_and(|h| matches!(h, Heard::Alive { .. }));
        if alive {
            self.leader_heartbeat = Some(reply.heartbeat);
        }
        // A fresh stamp is echoed at once, so the primary counts a confirmation at most one
        // heartbeat old; regular polls come every heartbeat.
        if alive && !echo_only {
            self.echo_now = true;
            self.poll(now, state);
        }
    }

    /// Notices the start and end of an outage; a standby that hears the same primary again
    /// records that the failover was called off (`repmgrd_failover_abort`).
    fn track_outage(&mut self, now: Duration, state: &mut State) {
        let v = state.voter;
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
        self.deferring = None;
        self.passed_over.clear();
        let Some(o) = self.outage.take() else { return };
        state.declined = false;
        let standby = self
            .me
            .as_ref()
            .is_some_and(|m| m.node_type == NodeType::Standby);
        if o.leader.is_some() && v.leader == o.leader && standby {
            let details = format!(
                "{} hears primary node {} again after {} ms without it; no failover took place",
                self.describe_me(),
                o.leader.unwrap_or(0),
                now.saturating_sub(o.since).as_millis()
            );
            self.say(Level::Info, details.clone());
            self.event(event::REPMGRD_FAILOVER_ABORT, details, None);
        }
    }

    /// A primary in the protocol holds a lease over its membership, moves past failed
    /// elections, and reacts when it loses the lease.
    fn keep_lease(&mut self, now: Duration, state: &mut State, disk: &mut dyn Disk) {
        let me = self.node_id;
        let fence = self.timing.fence;
        let view = self.view();
        let previous = self.catalog.as_ref().map(Catalog::previous_membership);
        let known = self
            .catalog
            .as_ref()
            .map(Catalog::known_versions)
            .unwrap_or_default();
        let saved = state.durably(disk, |s| {
            let mut warn = None;
            match s.lease.as_mut() {
                None => {
                    // A primary that had no lease (first start under the protocol, or just
                    // registered) waits for its voters like any other: it cannot know it was
                    // not replaced. With two voters or fewer none is needed.
                    let views: Vec<Membership> = view
                        .iter()
                        .cloned()
                        .chain(previous.iter().filter(|p| !p.voters.is_empty()).cloned())
                        .collect();
                    let views = if views.is_empty() {
                        vec![Membership::new(0, [me])]
                    } else {
                        views
                    };
                    let term = s.term().max(1);
                    let inc = s.next_incarnation();
                    let mut lease = Lease::new(term, inc, me, &views, None);
                    lease.note_versions(&known);
                    s.lease = Some(lease);
                    s.lead_in(term);
                }
                Some(l) => {
                    // A change the catalog trigger did not announce (it was bypassed).
                    if let Some(v) = view.as_ref().filter(|v| v.version > l.version())
                        && !l.change_view(v)
                    {
                        warn = Some(v.version);
                    }
                    if let Some(t) = l.overtake(now, fence) {
                        s.lead_in(t);
                    }
                }
            }
            s.armed = true;
            if s.voter.durable.supports != Some(me) {
                let term = s.term();
                s.lead_in(term);
            }
            warn
        });
        if saved.is_some() {
            self.said_save_failed = false;
        }
        match saved {
            None if self.said_save_failed => {}
            None => {
                self.said_save_failed = true;
                self.say(
                    Level::Warning,
                    "could not save the lease state in the data directory; keeping the previous one until it can be saved"
                        .into(),
                );
            }
            Some(Some(v)) => self.say(
                Level::Warning,
                format!(
                    "the node list changed again (version {v}) before its previous change reached the voters; this primary counts every list still in use"
                ),
            ),
            Some(None) => {}
        }
        let Some(l) = state.lease else { return };
        let leading = l.may_commit(now, fence);
        // A fenced primary nobody polls any more (its voters follow a newer primary; it was
        // stopped, frozen or cut off meanwhile) asks them how things look, to learn it was
        // replaced.
        if leading {
            self.fenced_since = None;
        } else {
            let since = *self.fenced_since.get_or_insert(now);
            if now >= since + self.timing.lease && self.phase == Phase::Idle && now >= self.retry_at
            {
                self.look_around(now, None);
            }
        }
        if matches!(&self.phase, Phase::Asking(a) if now >= a.until) {
            self.close_round(now, state, disk, true);
        }
        let Some(l) = state.lease else { return };
        let newer = l.newer_term;
        let lapses = l.lapses();
        let seen = self.lapses_seen.replace((l.incarnation, lapses.count));
        if let (Some(true), true, Some((inc, count)), Some(to)) =
            (self.was_leading, leading, seen, lapses.to)
            && inc == l.incarnation
            && count != lapses.count
        {
            // Lost and won back between two looks: still a fencing, which operators count.
            let refused = to.saturating_sub(lapses.from).as_millis();
            let details = format!(
                "node {me} fenced: not confirmed by enough voters for {refused} ms (commits that write were refused), then confirmed again"
            );
            self.say(Level::Warning, details.clone());
            self.event(event::REPMGRD_PRIMARY_FENCED, details, None);
            self.event(
                event::REPMGRD_PRIMARY_UNFENCED,
                format!("node {me} holds its lease again: commits are allowed"),
                None,
            );
        }
        if self.was_leading != Some(leading) {
            self.actions.push(Action::MarkReadOnly(!leading));
            if self.was_leading.is_some() {
                if leading {
                    let details = format!("node {me} holds its lease again: commits are allowed");
                    self.say(Level::Info, details.clone());
                    self.event(event::REPMGRD_PRIMARY_UNFENCED, details, None);
                } else {
                    let replaced = newer.map_or(String::new(), |t| {
                        format!("; a voter is in term {t}, so this node was probably replaced")
                    });
                    self.say(
                        Level::Warning,
                        format!(
                            "node {me} lost its lease: commits that write are refused{replaced}"
                        ),
                    );
                    self.event(
                        event::REPMGRD_PRIMARY_FENCED,
                        format!("node {me} fenced: not confirmed by enough voters{replaced}"),
                        None,
                    );
                    if self.settings.fence_shutdown {
                        self.say(
                            Level::Warning,
                            "repmgr.fence_action = shutdown: stopping the server".into(),
                        );
                        self.actions.push(Action::Shutdown);
                    }
                }
            }
            self.was_leading = Some(leading);
        }
        if let (false, Some(t), false) = (leading, newer, self.reported_replaced) {
            self.reported_replaced = true;
            let next = match self.settings.auto_rejoin {
                AutoRejoin::On => {
                    "it rejoins the new primary once one answers (repmgr.auto_rejoin)"
                }
                AutoRejoin::Pause => "it stays fenced: repmgr.auto_rejoin is pause",
                AutoRejoin::Off => "it stays fenced and needs repmgr node rejoin",
            };
            self.say(
                Level::Warning,
                format!("node {me} was replaced: its voters are in term {t}; {next}"),
            );
        }
        let replaced = newer
            .filter(|_| !leading)
            .map(|t| format!("it was replaced as primary: its voters are in term {t}"));
        self.want_rejoin(now, replaced.as_deref());
        if leading {
            self.reported_replaced = false;
            if let (Some(term), false) = (self.unrecorded, self.recording) {
                self.recording = true;
                self.actions.push(Action::RecordPromotion { term });
            }
        }
    }

    /// Asks for an automatic rejoin while `why` holds (a replaced primary, a diverged
    /// standby), when [`Rejoin::want`] says it is time.
    fn want_rejoin(&mut self, now: Duration, why: Option<&str>) {
        if !self
            .rejoin
            .want(now, why, self.settings.auto_rejoin, self.paused)
        {
            return;
        }
        let why = why.unwrap_or_default().to_string();
        self.say(
            Level::Warning,
            format!(
                "{}: {why}; rejoining the current primary as a standby (repmgr.auto_rejoin)",
                self.describe_me()
            ),
        );
        self.actions.push(Action::Rejoin { why });
    }

    fn rejoin_refused(&mut self, now: Duration, why: String, retry: bool) {
        let me = self.describe_me();
        let details = if retry {
            format!("{me} cannot rejoin yet: {why}")
        } else {
            format!(
                "{me} does not rejoin automatically: {why}; it stays as it is until repmgr node rejoin or a reload"
            )
        };
        let wait = self.rejoin.refused(now, why, retry);
        if retry {
            self.say(
                Level::Info,
                format!("{details}; trying again in {} s", wait.as_secs()),
            );
        } else {
            self.say(Level::Warning, details.clone());
            self.failed_event(event::NODE_REJOIN, details);
        }
    }

    /// Where this node's automatic rejoin stands at `now`, if it needs one.
    pub fn rejoin_status(&self, now: Duration) -> Option<rejoin::Status> {
        self.rejoin
            .status(now, self.settings.auto_rejoin, self.paused)
    }

    fn recorded(&mut self, term: u64, result: Result<(), String>, retry: bool) {
        if self.unrecorded != Some(term) {
            return;
        }
        self.recording = false;
        match result {
            Ok(()) => self.unrecorded = None,
            Err(why) if retry => self.say(
                Level::Debug,
                format!("the promotion waits to reach the catalog: {why}"),
            ),
            Err(why) => {
                self.say(
                    Level::Warning,
                    format!("promoted, but could not update the catalog: {why}"),
                );
                self.unrecorded = None;
            }
        }
    }

    /// A node that runs as a standby or witness holds no lease.
    fn drop_lease_if_any(&mut self, state: &mut State, disk: &mut dyn Disk) {
        self.was_leading = None;
        self.lapses_seen = None;
        if state.lease.is_some() {
            self.drop_lease(state, disk, "after leaving the primary role");
        }
    }

    /// Forgets the lease, durably; says so when the disk refuses (`when`: after what).
    fn drop_lease(&mut self, state: &mut State, disk: &mut dyn Disk, when: &str) {
        let saved = state.durably(disk, |s| {
            s.lease = None;
            s.armed = false;
        });
        if saved.is_none() {
            self.say(
                Level::Warning,
                format!("could not save the failover state in the data directory {when}"),
            );
        }
    }

    /// Asks every other voter how things look (the pre-vote).
    fn look_around(&mut self, now: Duration, manual: Option<Manual>) {
        self.round += 1;
        let to = if self.registered {
            self.voters()
        } else {
            // Not a member: still find out who leads, from the nodes it knows.
            self.known
                .iter()
                .filter(|n| n.node_id != self.node_id && n.active)
                .cloned()
                .collect()
        };
        let wait = (self.timing.heartbeat * 2).max(Duration::from_millis(300));
        self.phase = Phase::Asking(Asking {
            round: self.round,
            until: now + wait,
            manual,
            to: to.clone(),
            answers: Vec::new(),
            local: None,
        });
        self.retry_at = now + self.jitter(Duration::from_millis(200), Duration::from_millis(1000));
        self.actions.push(Action::AskAround {
            round: self.round,
            to,
        });
    }

    /// Once every voter answered (or the wait is over) and this node's facts are in, learns
    /// from the answers, then decides.
    fn close_round(&mut self, now: Duration, state: &mut State, disk: &mut dyn Disk, late: bool) {
        let Phase::Asking(a) = &self.phase else {
            return;
        };
        let complete = a.local.is_some() && a.answers.len() >= a.to.len();
        if !complete && !late {
            return;
        }
        let Phase::Asking(a) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            unreachable!("checked above")
        };
        // A newer term ends support for the old primary; the newest primary is the one to
        // follow.
        let newest = a
            .answers
            .iter()
            .filter_map(|(_, p)| p.as_ref().map(|p| p.answer.term))
            .max()
            .unwrap_or(0);
        if self.is_primary() {
            // A fenced primary that looked around: a newer term means it was replaced. It
            // keeps its own vote (it supports itself in its term).
            if let Some(l) = state.lease.as_mut() {
                l.note_newer_term(newest);
            }
        } else if state
            .durably(disk, |s| s.voter.learn_term(newest))
            .is_none()
        {
            self.say(
                Level::Warning,
                format!("could not save term {newest} learnt from the other voters"),
            );
        }
        let my_term = state.term();
        let me = self.node_id;
        self.leader_hint = a
            .answers
            .iter()
            .filter_map(|(_, p)| p.as_ref().and_then(|p| p.primary))
            .filter(|(p, t)| *p != me && *t >= my_term)
            .max_by_key(|(_, t)| *t);
        let local = a.local.clone().unwrap_or(LocalFacts {
            lsn: None,
            timeline: 0,
            timeline_start: 0,
            quorum: None,
            quorum_version: 0,
            failover_slots: 0,
        });
        self.quorum_version = local.quorum_version;
        self.timeline = (local.timeline, local.timeline_start);
        match a.manual {
            Some(m) => self.manual_checks(now, state, disk, m, &a, &local),
            None => self.decide(now, state, disk, &a, &local),
        }
    }

    /// The lease ran out here and the voters answered: a standby that may be promoted decides
    /// whether to stand.
    fn decide(
        &mut self,
        now: Duration,
        state: &mut State,
        disk: &mut dyn Disk,
        a: &Asking,
        local: &LocalFacts,
    ) {
        let Some(me) = self.me.clone() else { return };
        if !self.in_recovery || me.node_type == NodeType::Witness || !self.registered {
            return;
        }
        let f = *state;
        if self.settings.disconnect_on_failover
            && f.voter.lease_expired(now, &self.timing)
            && let Some(o) = self.outage.as_mut()
            && !o.disconnected
        {
            o.disconnected = true;
            self.actions.push(Action::StopWalReceiver);
        }
        let Some((quorum, replayed_all)) = local.quorum.clone() else {
            self.say(
                Level::Info,
                "cannot read the published synchronous quorum; not standing now".into(),
            );
            return;
        };
        let primary_location = self
            .catalog
            .as_ref()
            .and_then(|c| c.primary())
            .map(|p| p.location.clone());
        let silence = f.voter.silence(now);
        let me_view = Me {
            node_id: me.node_id,
            term: f.term(),
            lsn: local.lsn.unwrap_or(0),
            timeline: local.timeline,
            timeline_start: local.timeline_start,
            silence,
            lost: f.voter.lease_expired(now, &self.timing),
            location: me.location.clone(),
            priority: me.priority.min(self.settings.priority),
            failover_slots: local.failover_slots,
            automatic: self.settings.automatic,
            paused: self.paused,
            diverged: f.diverged,
            replayed_all,
            version: f.version,
            quorum_version: local.quorum_version,
        };
        let peers: Vec<Peer> =
            a.to.iter()
                .map(|n| Peer {
                    node_id: n.node_id,
                    kind: kind(n.node_type),
                    location: n.location.clone(),
                    answer: a
                        .answers
                        .iter()
                        .find(|(id, _)| *id == n.node_id)
                        .and_then(|(_, p)| p.as_ref().map(|p| p.answer.clone())),
                })
                .collect();
        if let Some((to, since)) = self.deferring
            && now >= since + self.timing.lease * DEFER_PATIENCE
            && !self.passed_over.contains(&to)
        {
            self.say(
                Level::Info,
                format!(
                    "{} deferred to node {to} for {} ms and it did not win: it is passed over in this outage",
                    me.describe(),
                    now.saturating_sub(since).as_millis()
                ),
            );
            self.passed_over.push(to);
            self.deferring = None;
        }
        let rules = Rules {
            max_lag: self.settings.max_lag,
            visibility_consensus: self.settings.visibility_consensus,
            primary_location,
            quorum,
            passed_over: self.passed_over.clone(),
        };
        let plan = election::plan(&me_view, &peers, &rules);
        match &plan {
            Plan::Defer { to } if self.deferring.is_none_or(|(d, _)| d != *to) => {
                self.deferring = Some((*to, now));
            }
            Plan::Defer { .. } => {}
            _ => self.deferring = None,
        }
        match plan {
            Plan::Stand { term } => {
                state.declined = false;
                if self.settings.validation_command {
                    // For the command: nodes that answered, and those that lost the primary
                    // too (this node counts in both).
                    let answered: Vec<&Answer> =
                        peers.iter().filter_map(|p| p.answer.as_ref()).collect();
                    let lost = answered.iter().filter(|a| a.lost).count();
                    self.phase = Phase::Validating {
                        round: a.round,
                        term,
                        lsn: me_view.lsn,
                        slots: me_view.failover_slots,
                        to: a.to.clone(),
                        versions: versions_of(a),
                    };
                    self.actions.push(Action::Validate {
                        round: a.round,
                        visible: answered.len() + 1,
                        lost: lost + 1,
                        total: a.to.len() + 1,
                    });
                } else {
                    let versions = versions_of(a);
                    let (lsn, slots) = (me_view.lsn, me_view.failover_slots);
                    self.campaign(now, state, disk, term, (lsn, slots), &a.to, versions, None);
                }
            }
            other => {
                if let Plan::Wait { lasting: false, .. } = other
                    && let Some(in_) =
                        majority_lost_in(now, &f.voter, &self.timing, &a.answers, a.to.len() + 1)
                {
                    // Ask again the moment enough voters will have waited out their rule,
                    // not up to a second later at the jittered retry: the host-loss case,
                    // where every voter's lease runs out within a heartbeat of the others'.
                    // A few milliseconds of jitter keep two standbys from asking at once.
                    let at = now + in_ + self.jitter(ASK_MARGIN, ASK_MARGIN * 3);
                    self.retry_at = self.retry_at.min(at);
                }
                // This voter was told the primary is down; the others are told in the same
                // moment, and one that answered before its report arrived has it a few
                // milliseconds later. Ask again soon while the reports can still be arriving,
                // rather than at the jittered retry up to a second away.
                if let Plan::Wait { lasting: false, .. } = other
                    && f.voter
                        .told_gone
                        .is_some_and(|t| now.saturating_sub(t) < crate::vote::EXIT_REPORT_WITHIN)
                {
                    let at = now + self.jitter(ASK_TOLD, ASK_TOLD * 2);
                    self.retry_at = self.retry_at.min(at);
                }
                let text = match other {
                    Plan::Defer { to } => format!("node {to} is the better candidate"),
                    Plan::Wait { reason, lasting } => {
                        state.declined = lasting;
                        reason
                    }
                    Plan::Stand { .. } => unreachable!("handled above"),
                };
                // Said once per reason and outage. A plan made before the lease ran out (no
                // leader for half a lease) is not said: it must not hide the same reason later.
                if self.last_plan.as_ref() != Some(&text) && me_view.lost {
                    self.say(
                        Level::Info,
                        format!(
                            "{} lost the primary but does not stand for election: {text}",
                            me.describe()
                        ),
                    );
                    if !self.settings.automatic && self.last_plan.is_none() {
                        self.event(
                            event::STANDBY_DISCONNECT_MANUAL,
                            format!(
                                "{} lost the primary; repmgr.failover is manual",
                                me.describe()
                            ),
                            None,
                        );
                    }
                    self.last_plan = Some(text);
                }
            }
        }
    }

    fn validated(
        &mut self,
        now: Duration,
        state: &mut State,
        disk: &mut dyn Disk,
        round: u64,
        ok: bool,
    ) {
        let Phase::Validating { round: r, .. } = &self.phase else {
            return;
        };
        if *r != round {
            return;
        }
        let Phase::Validating {
            term,
            lsn,
            slots,
            to,
            versions,
            ..
        } = std::mem::replace(&mut self.phase, Phase::Idle)
        else {
            unreachable!("checked above")
        };
        if ok {
            self.campaign(now, state, disk, term, (lsn, slots), &to, versions, None);
        } else {
            let wait = self.settings.election_rerun_interval;
            self.say(
                Level::Info,
                format!(
                    "failover_validation_command refused the election; trying again in {} ms",
                    wait.as_millis()
                ),
            );
            self.retry_at = now + wait;
        }
    }

    /// Supports itself in `term` (saved before anyone is asked), then asks `to` for votes,
    /// telling them its received WAL and its usable copies of the failover slots.
    /// Returns false when its own vote could not be saved.
    #[allow(clippy::too_many_arguments)]
    fn campaign(
        &mut self,
        now: Duration,
        state: &mut State,
        disk: &mut dyn Disk,
        term: u64,
        (lsn, failover_slots): (u64, u32),
        to: &[NodeRecord],
        versions: Vec<(NodeId, u64)>,
        manual: Option<Manual>,
    ) -> bool {
        let me = self.node_id;
        let fence = self.timing.fence;
        // Forced or not, its own vote must not come while a primary may still count its
        // last confirmation.
        if !state.voter.may_switch(now) {
            let until =
                lease_for(state.voter.durable.fence).saturating_sub(state.voter.silence(now));
            let why = format!(
                "{} confirmed node {} {} ms ago: that confirmation may count for {} ms more, and this node may not stand before",
                self.describe_me(),
                state
                    .voter
                    .leader
                    .or(state.voter.durable.supports)
                    .unwrap_or(0),
                state.voter.silence(now).as_millis(),
                until.as_millis()
            );
            match manual {
                Some(m) => self.actions.push(Action::Answer {
                    seq: m.seq,
                    outcome: Err(refusal(why, "Try again once that time has passed.")),
                }),
                None => self.say(Level::Info, why),
            }
            return true;
        }
        let saved = state.durably(disk, |s| {
            s.voter.durable = crate::vote::Durable {
                term,
                supports: Some(me),
                fence,
            };
            s.standing = true;
        });
        if saved.is_none() {
            self.say(
                Level::Warning,
                format!("could not save this node's own vote in term {term}; not standing"),
            );
            return false;
        }
        if self.in_flight.take().is_some() {
            self.actions.push(Action::ClosePoll);
        }
        self.say(
            Level::Info,
            format!("{} stands for election in term {term}", self.describe_me()),
        );
        // The failed primary last: it is the one most likely not to answer.
        let mut order: Vec<NodeRecord> = to.to_vec();
        order.sort_by_key(|n| n.node_type == NodeType::Primary);
        let wait = (self.timing.heartbeat * 2).max(Duration::from_millis(500));
        let request = VoteRequest {
            term,
            candidate: me,
            lsn,
            timeline: self.timeline.0,
            timeline_start: self.timeline.1,
            fence,
            version: state.version,
            quorum_version: self.quorum_version,
            failover_slots,
        };
        let voting = Voting {
            term,
            until: now + wait,
            asked_at: now,
            lsn,
            manual,
            to: order.iter().map(|n| n.node_id).collect(),
            replied: Vec::new(),
            grants: Vec::new(),
            refusals: Vec::new(),
            versions,
        };
        if voting.won() {
            // Alone in its view (it needs no other vote).
            self.promote(now, state, disk, voting);
            return true;
        }
        self.phase = Phase::Voting(voting);
        self.actions.push(Action::RequestVotes {
            term,
            request,
            manual: manual.is_some(),
            to: order,
        });
        true
    }

    fn vote(
        &mut self,
        now: Duration,
        state: &mut State,
        disk: &mut dyn Disk,
        term: u64,
        from: NodeId,
        reply: Result<VoteReply, String>,
    ) {
        let Phase::Voting(v) = &mut self.phase else {
            return;
        };
        if v.term != term || v.replied.contains(&from) || !v.to.contains(&from) {
            return;
        }
        v.replied.push(from);
        let who = self
            .known
            .iter()
            .find(|n| n.node_id == from)
            .map_or(format!("node {from}"), NodeRecord::describe);
        match reply {
            Ok(r) if r.granted && r.term == term => v.grants.push(from),
            Ok(r) => {
                let why = if r.reason.is_empty() {
                    "no reason".to_string()
                } else {
                    r.reason
                };
                v.refusals.push(format!("{who}: {why}"));
                self.actions.push(Action::Log(
                    Level::Info,
                    format!("{who} refused its vote in term {term}: {why}"),
                ));
            }
            Err(e) => v.refusals.push(format!("{who}: no answer ({e})")),
        }
        let v = v.clone();
        if v.won() {
            self.promote(now, state, disk, v);
        } else if v.replied.len() >= v.to.len() {
            self.lost(now, state, disk, v);
        }
    }

    fn lost(&mut self, now: Duration, state: &mut State, disk: &mut dyn Disk, v: Voting) {
        self.phase = Phase::Idle;
        if !(v.manual.is_some_and(|m| m.force)) {
            state.standing = false;
        }
        match v.manual {
            Some(m) if m.force => self.promote(now, state, disk, v),
            Some(m) => {
                let r = refusal(
                    format!(
                        "{} got {} of {} votes in term {}; a majority ({}) is needed: {}",
                        self.describe_me(),
                        v.grants.len() + 1,
                        v.total(),
                        v.term,
                        majority(v.total()),
                        v.refusals.join("; ")
                    ),
                    "Bring the other voters back, or pass force => true if you know the old primary is gone (with three voters or more the node then stays fenced until a majority confirms it).",
                );
                self.actions.push(Action::Answer {
                    seq: m.seq,
                    outcome: Err(r),
                });
            }
            None => {
                self.say(
                    Level::Info,
                    format!(
                        "{} lost the election in term {}: {} of {} votes",
                        self.describe_me(),
                        v.term,
                        v.grants.len() + 1,
                        v.total()
                    ),
                );
                self.retry_at =
                    now + self.jitter(Duration::from_millis(300), Duration::from_millis(1500));
            }
        }
    }

    /// Becomes the primary of the term won: lease first (the votes are its confirmations),
    /// then the promotion itself.
    fn promote(&mut self, _now: Duration, state: &mut State, disk: &mut dyn Disk, v: Voting) {
        let me = self.node_id;
        let fence = self.timing.fence;
        let views: Vec<Membership> = self
            .view()
            .into_iter()
            .chain(
                self.catalog
                    .as_ref()
                    .map(Catalog::previous_membership)
                    .filter(|p| !p.voters.is_empty()),
            )
            .collect();
        let known: Vec<(NodeId, u64)> = v
            .versions
            .iter()
            .copied()
            .chain(self.catalog.iter().flat_map(Catalog::known_versions))
            .collect();
        let saved = state.durably(disk, |s| {
            let inc = s.next_incarnation();
            let mut lease = Lease::new(
                v.term,
                inc,
                me,
                &views,
                Some((v.asked_at, fence, &v.grants)),
            );
            lease.note_versions(&known);
            s.lease = Some(lease);
            s.armed = true;
            s.switch_lsn = v.lsn;
            s.lead_in(v.term);
        });
        if saved.is_none() {
            let details = format!(
                "{} won the election in term {} but could not save its lease in the data directory",
                self.describe_me(),
                v.term
            );
            self.say(Level::Warning, details.clone());
            self.failed_event(event::REPMGRD_PROMOTE_ERROR, details.clone());
            if let Some(m) = v.manual {
                self.actions.push(Action::Answer {
                    seq: m.seq,
                    outcome: Err(refusal(details, "See the server log of this node.")),
                });
            }
            self.phase = Phase::Idle;
            state.standing = false;
            return;
        }
        let term = v.term;
        self.phase = Phase::Promoting(v);
        self.actions.push(Action::Promote { term });
    }

    fn promoted(
        &mut self,
        _now: Duration,
        state: &mut State,
        disk: &mut dyn Disk,
        term: u64,
        result: Result<Option<String>, String>,
    ) {
        let Phase::Promoting(v) = &self.phase else {
            return;
        };
        if v.term != term {
            return;
        }
        let Phase::Promoting(v) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            unreachable!("checked above")
        };
        state.standing = false;
        let me = self.describe_me();
        let names = match result {
            Err(why) => {
                let details = format!("{me} won the election in term {term} but {why}");
                self.say(Level::Warning, details.clone());
                self.failed_event(event::REPMGRD_PROMOTE_ERROR, details.clone());
                self.drop_lease(state, disk, "after the failed promotion");
                if let Some(m) = v.manual {
                    self.actions.push(Action::Answer {
                        seq: m.seq,
                        outcome: Err(refusal(details, "See the server log of this node.")),
                    });
                }
                return;
            }
            Ok(names) => names,
        };
        if let Some(names) = names {
            self.say(
                Level::Info,
                format!("{me} starts as primary with synchronous_standby_names = '{names}'"),
            );
        }
        self.in_recovery = false;
        self.outage = None;
        self.unrecorded = Some(term);
        self.recording = true;
        self.actions.push(Action::RecordPromotion { term });
        let old = self.catalog.as_ref().and_then(|c| c.primary().cloned());
        let details = match &old {
            Some(o) => format!(
                "{me} promoted to primary in term {term}; {} is no longer primary",
                o.describe()
            ),
            None => format!("{me} promoted to primary in term {term}"),
        };
        self.say(Level::Info, details.clone());
        let name = if v.manual.is_some() {
            event::STANDBY_PROMOTE
        } else {
            event::REPMGRD_FAILOVER_PROMOTE
        };
        self.event(name, details.clone(), old);
        let to: Vec<NodeRecord> = self
            .voters()
            .into_iter()
            .filter(|n| n.node_type != NodeType::Primary)
            .collect();
        self.actions.push(Action::NotifyFollow { to });
        if let Some(m) = v.manual {
            let text = if v.won() {
                details
            } else {
                format!(
                    "{details} (forced: {} of {} votes)",
                    v.grants.len() + 1,
                    v.total()
                )
            };
            self.actions.push(Action::Answer {
                seq: m.seq,
                outcome: Ok(text),
            });
        }
    }

    /// `repmgr.promote()`: promotes this standby in a new term, refused while a working
    /// primary answers. Without `force`, only with a majority of votes and no reachable standby
    /// ahead of it. With a synchronous quorum, never a node that may lack acknowledged commits
    /// unless `allow_data_loss`.
    fn manual_promote(&mut self, now: Duration, seq: u64, force: bool, allow_data_loss: bool) {
        let answer = |r: Refusal| Action::Answer {
            seq,
            outcome: Err(r),
        };
        let Some(me) = self.me.clone() else {
            self.actions.push(answer(refusal(
                format!("node {} is not registered", self.node_id),
                "Register it first (SELECT repmgr.register_standby()).",
            )));
            return;
        };
        if !self.registered {
            self.actions.push(answer(refusal(
                format!(
                    "{} is not registered in this node's catalog: it cannot be promoted",
                    me.describe()
                ),
                "Register it again first (SELECT repmgr.register_standby(force => true)).",
            )));
            return;
        }
        if !self.in_recovery {
            let what = if me.node_type == NodeType::Witness {
                "the witness"
            } else {
                "a primary"
            };
            self.actions.push(answer(refusal(
                format!(
                    "{} is not a standby: it is already running as {what}",
                    me.describe()
                ),
                "Run repmgr.promote() on the standby to promote.",
            )));
            return;
        }
        if self.phase != Phase::Idle {
            self.actions.push(answer(refusal(
                format!("{} is in an election right now", me.describe()),
                "Wait a moment and check repmgr.node_status() before trying again.",
            )));
            return;
        }
        self.look_around(
            now,
            Some(Manual {
                seq,
                force,
                allow_data_loss,
            }),
        );
    }

    fn manual_checks(
        &mut self,
        now: Duration,
        state: &mut State,
        disk: &mut dyn Disk,
        m: Manual,
        a: &Asking,
        local: &LocalFacts,
    ) {
        let me = self.describe_me();
        let refuse = |d: &mut Driver, r: Refusal| {
            d.actions.push(Action::Answer {
                seq: m.seq,
                outcome: Err(r),
            })
        };
        let answers: Vec<(&NodeRecord, &PreVote)> =
            a.to.iter()
                .filter_map(|n| {
                    a.answers
                        .iter()
                        .find(|(id, _)| *id == n.node_id)
                        .and_then(|(_, p)| p.as_ref().map(|p| (n, p)))
                })
                .collect();
        if let Some((n, _)) = answers.iter().find(|(_, p)| p.answer.leading) {
            return refuse(
                self,
                refusal(
                    format!(
                        "{} is a working primary: repmgr.promote() refuses while the cluster has one",
                        n.describe()
                    ),
                    "To change roles safely, use repmgr standby switchover; to replace a primary that is about to go, stop it first.",
                ),
            );
        }
        let f = *state;
        if f.diverged {
            return refuse(
                self,
                refusal(
                    format!(
                        "{me}'s timeline diverged from the cluster's: promoting it would lose what the primary wrote since"
                    ),
                    "Rejoin it with repmgr node rejoin, or promote another standby.",
                ),
            );
        }
        if f.voter.last_heard.is_some() && !f.voter.lease_expired(now, &self.timing) && !m.force {
            return refuse(
                self,
                refusal(
                    format!(
                        "{me} heard from the primary {} ms ago (it waits {} ms): it may still be running",
                        f.voter.silence(now).as_millis(),
                        f.voter.wait_needed(&self.timing).as_millis()
                    ),
                    "Wait until the lease has run out and try again, or pass force => true if you know the primary is gone.",
                ),
            );
        }
        let lsn = local.lsn.unwrap_or(0);
        let mine = crate::lsn::Position {
            timeline: local.timeline,
            start: local.timeline_start,
            lsn,
        };
        let ahead = answers.iter().find_map(|(n, p)| {
            let a = &p.answer;
            (a.in_recovery && !a.diverged && mine.lacks(a.position()?) > 0)
                .then(|| (n.describe(), a.timeline, a.lsn.unwrap_or(0)))
        });
        if let (Some((who, tli, theirs)), false) = (&ahead, m.force) {
            return refuse(
                self,
                refusal(
                    format!(
                        "{who} has received more WAL (timeline {tli}, {}) than {me} (timeline {}, {}): promoting this node would lose the difference",
                        Lsn(*theirs),
                        local.timeline,
                        Lsn(lsn)
                    ),
                    "Promote that node instead, or pass force => true to accept losing those transactions.",
                ),
            );
        }
        if !m.allow_data_loss {
            let Some((q, replayed_all)) = local.quorum.clone() else {
                return refuse(
                    self,
                    refusal(
                        "cannot read the published synchronous quorum (see the server log)",
                        "Try again; if it persists, check the server log of this node.",
                    ),
                );
            };
            let reports: Vec<quorum::Report> = answers
                .iter()
                .filter_map(|(n, p)| {
                    let a = &p.answer;
                    (a.in_recovery && !a.diverged).then_some(quorum::Report {
                        node_id: n.node_id,
                        position: a.position()?,
                    })
                })
                .collect();
            let newer = election::newer_quorum(
                local.quorum_version,
                answers.iter().map(|(n, p)| (n.node_id, &p.answer)),
            );
            let verdict = if let Some(why) = newer {
                Err(why)
            } else if q.is_sync() && !replayed_all {
                Err("it is still replaying the WAL it received".to_string())
            } else {
                quorum::may_promote(&q, self.node_id, mine, &reports)
            };
            if let Err(why) = verdict {
                return refuse(
                    self,
                    refusal(
                        format!(
                            "{me} cannot be promoted without risking acknowledged commits (repmgr.synchronous_standbys): {why}"
                        ),
                        "Promote the member of the quorum that has everything, bring the missing members back, or pass allow_data_loss => true to accept losing acknowledged commits.",
                    ),
                );
            }
        }
        let term = answers
            .iter()
            .map(|(_, p)| p.answer.term)
            .chain([f.term()])
            .max()
            .unwrap_or(0)
            + 1;
        let to = a.to.clone();
        let versions = versions_of(a);
        let standing = (lsn, local.failover_slots);
        if !self.campaign(now, state, disk, term, standing, &to, versions, Some(m)) {
            refuse(
                self,
                refusal(
                    "could not save this node's own vote in the data directory (see the server log)",
                    "Check the data directory's disk and permissions, then try again.",
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::Answer;
    use crate::vote::{Durable, Voter};

    const MS: Duration = Duration::from_millis(1);

    fn timing() -> Timing {
        Timing {
            heartbeat: 200 * MS,
            fence: 1600 * MS,
            lease: 2100 * MS,
        }
    }

    /// A voter's answer: silent for `silence` ms, lost or not.
    fn answer(silence: u64, lost: bool) -> Option<PreVote> {
        Some(PreVote {
            answer: Answer {
                term: 1,
                in_recovery: true,
                silence: Duration::from_millis(silence),
                lost,
                lsn: Some(100),
                timeline: 1,
                priority: 100,
                version: 1,
                ..Answer::default()
            },
            primary: None,
            switch_lsn: 0,
            timing: timing(),
            wait: 2100 * MS,
        })
    }

    #[test]
    fn the_next_look_comes_when_a_majority_will_have_lost_the_primary() {
        // This voter last heard the primary at 1000 ms: its rule runs out at 3100 ms.
        let mut me = Voter::new(Durable::default(), Duration::ZERO);
        me.last_heard = Some(1000 * MS);
        let now = 2900 * MS;
        // Three voters (with the primary): two of three. Node 3, silent for 2000 ms, has 100
        // ms left; this node 200 ms: the majority is there in 200 ms.
        let t = timing();
        let third = |p| vec![(1, None), (3, p)];
        assert_eq!(
            majority_lost_in(now, &me, &t, &third(answer(2000, false)), 3),
            Some(200 * MS)
        );
        // Node 3 already lost it: this node's own rule is what is left.
        assert_eq!(
            majority_lost_in(now, &me, &t, &third(answer(2500, true)), 3),
            Some(200 * MS)
        );
        // Node 3 did not answer: one voter out of three is not a majority.
        assert_eq!(majority_lost_in(now, &me, &t, &third(None), 3), None);
        // Node 3 has 400 ms left, this node 200: both are needed.
        assert_eq!(
            majority_lost_in(now, &me, &t, &third(answer(1700, false)), 3),
            Some(400 * MS)
        );
        // Once a majority has lost it there is nothing to wait for.
        assert_eq!(
            majority_lost_in(3200 * MS, &me, &t, &third(answer(2500, true)), 3),
            None
        );
    }
}
