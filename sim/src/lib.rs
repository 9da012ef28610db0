//! Deterministic simulation of the failover protocol.
//!
//! N simulated nodes (a primary, standbys, optionally a witness) run the pure decision code of
//! `repmgr-core` — the voter ([`Voter`]), the lease ([`Lease`]) and the election planner
//! ([`election::plan`]) — exactly as the worker does, over a simulated network with delays,
//! loss, symmetric and one-way partitions, on clocks that drift, through crashes, restarts and
//! frozen processes. Everything is driven by one seeded random generator, so a seed replays a
//! schedule exactly. After every step the simulator checks the invariants:
//!
//! 1. at no moment can two nodes commit (hold a lease and run as a primary);
//! 2. a node's term never decreases, and a term has at most one winner;
//! 3. a promoted node had received at least as much WAL as every voter that elected it, and
//!    those voters (with it) were a majority;
//! 4. once every fault is healed, exactly one node holds a lease within a bounded time.
//!
//! The orchestration here (when to poll, when to ask around, when to stand) mirrors the
//! worker's (`src/failover.rs`); the decisions themselves are the same functions.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

use repmgr_core::election::{self, Answer, Kind, Me, Peer, Plan, Rules};
use repmgr_core::lease::{self, Lease, MAX_DRIFT_PPM, NodeId, PollReply, Stamp, Timing};
use repmgr_core::vote::{Durable, Heard, VoteReply, VoteRequest, Voter, VoterFacts};

/// A small, fast, seedable generator (SplitMix64): no dependency, same sequence everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `per_million` / 1 000 000.
    pub fn chance(&mut self, per_million: u64) -> bool {
        self.next_u64() % 1_000_000 < per_million
    }
}

/// Real (simulated) time in microseconds.
type Us = u64;

const MS: Us = 1000;
const TICK: Us = 10 * MS;

fn dur(us: Us) -> Duration {
    Duration::from_micros(us)
}

/// How long a voter waits for pre-vote answers and for votes.
const ASK_WAIT: Us = 300 * MS;
const VOTE_WAIT: Us = 500 * MS;
/// A poll without an answer is abandoned after this and sent again (as the worker does).
const POLL_TIMEOUT: Us = 500 * MS;

/// What a schedule looks like.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    /// Data nodes (the first is the initial primary).
    pub data_nodes: usize,
    pub witness: bool,
    /// How long faults are injected.
    pub faults_for: Duration,
    /// How long everything may take to settle once faults are healed.
    pub settle_for: Duration,
    pub timing: Timing,
}

impl Config {
    /// A random shape for `seed`: 3 to 7 voters, with or without a witness.
    pub fn random(seed: u64) -> Config {
        let mut rng = Rng::new(seed ^ 0xC0FFEE);
        let witness = rng.chance(400_000);
        let voters = rng.range(3, 7) as usize;
        Config {
            seed,
            data_nodes: if witness { voters - 1 } else { voters },
            witness,
            faults_for: Duration::from_secs(20),
            settle_for: Duration::from_secs(20),
            timing: Timing {
                heartbeat: Duration::from_millis(250),
                fence: Duration::from_millis(1500),
                lease: Duration::from_millis(2500),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Primary,
    Standby,
    Witness,
}

#[derive(Debug, Clone)]
enum Msg {
    Poll {
        term: u64,
        echo: Option<Stamp>,
    },
    PollReply(PollReply),
    /// The polled node is not a primary (the worker's poll then returns nothing at once).
    NotPrimary,
    Ask {
        round: u64,
    },
    /// `primary`: the primary this voter hears (or is), with its term.
    Answer {
        round: u64,
        answer: Answer,
        primary: Option<(NodeId, u64)>,
    },
    VoteReq(VoteRequest),
    Vote(VoteReply),
    NewPrimary {
        term: u64,
    },
}

#[derive(Debug)]
struct Envelope {
    at: Us,
    seq: u64,
    from: usize,
    to: usize,
    msg: Msg,
}

impl PartialEq for Envelope {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Envelope {}
impl PartialOrd for Envelope {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Envelope {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

#[derive(Debug)]
enum Phase {
    Asking {
        round: u64,
        until: Duration,
        answers: Vec<(usize, Answer)>,
    },
    Voting {
        term: u64,
        until: Duration,
        asked_at: Duration,
        grants: Vec<usize>,
    },
}

struct Node {
    id: NodeId,
    role: Role,
    up: bool,
    frozen_until: Option<Us>,
    /// Clock rate offset in parts per million, and its reading at real time 0.
    rate_ppm: i64,
    offset: Us,
    durable: Durable,
    voter: Voter,
    lease: Option<Lease>,
    incarnation: u64,
    /// Received WAL (standby) or written WAL (primary).
    lsn: u64,
    /// The WAL position where this node's timeline began (primaries).
    promoted_at: u64,
    /// Whom it polls and streams from.
    source: Option<usize>,
    diverged: bool,
    next_poll: Duration,
    poll_sent: Option<Duration>,
    phase: Option<Phase>,
    retry_at: Duration,
    rounds: u64,
    /// The newest term of a primary learnt from answers in the current look-around.
    best_seen: u64,
    was_leading: bool,
}

impl Node {
    /// Polls `to` from now on, dropping any poll still waiting on the previous one.
    fn follow(&mut self, to: usize) {
        if self.source != Some(to) {
            self.source = Some(to);
            self.poll_sent = None;
            self.next_poll = Duration::ZERO;
        }
    }

    fn local(&self, real: Us) -> Duration {
        dur(self.offset + (real as i128 + real as i128 * self.rate_ppm as i128 / 1_000_000) as Us)
    }

    fn running(&self, now: Us) -> bool {
        self.up && self.frozen_until.is_none_or(|t| t <= now)
    }

    fn leading(&self, local: Duration, timing: &Timing) -> bool {
        self.role == Role::Primary
            && self
                .lease
                .as_ref()
                .is_some_and(|l| l.may_commit(local, timing.fence))
    }
}

/// What a finished schedule looked like.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub promotions: u64,
    pub elections: u64,
    pub commits: u64,
}

/// A broken invariant, with the tail of the trace that led to it.
#[derive(Debug)]
pub struct Violation {
    pub seed: u64,
    pub what: String,
    pub trace: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {}: {}\n--- last events ---\n{}",
            self.seed, self.what, self.trace
        )
    }
}

struct World {
    cfg: Config,
    rng: Rng,
    now: Us,
    nodes: Vec<Node>,
    queue: BinaryHeap<Reverse<Envelope>>,
    seq: u64,
    /// `blocked[a][b]`: messages from a to b are lost.
    blocked: Vec<Vec<bool>>,
    loss_per_million: u64,
    /// Messages delayed far beyond LAN latency, per million (none once faults are healed).
    slow_per_million: u64,
    trace: VecDeque<String>,
    winners: HashMap<u64, usize>,
    report: Report,
    /// Real times at which healing events are due: (time, node, what).
    pending: Vec<(Us, usize, &'static str)>,
    /// Each node's highest term so far.
    max_terms: Vec<u64>,
}

/// Runs one schedule.
pub fn run(cfg: &Config) -> Result<Report, Violation> {
    let mut w = World::new(cfg.clone());
    let fault_end = cfg.faults_for.as_micros() as Us;
    let end = fault_end + cfg.settle_for.as_micros() as Us;
    while w.now < end {
        w.now += TICK;
        if w.now < fault_end {
            w.inject_faults();
        } else if w.now < fault_end + TICK {
            w.heal_all();
        }
        w.apply_pending();
        w.deliver();
        for i in 0..w.nodes.len() {
            if w.nodes[i].running(w.now) {
                w.tick(i);
            }
        }
        w.replicate();
        w.check()?;
    }
    let leaders: Vec<NodeId> = (0..w.nodes.len())
        .filter(|i| {
            let n = &w.nodes[*i];
            n.running(w.now) && n.leading(n.local(w.now), &cfg.timing)
        })
        .map(|i| w.nodes[i].id)
        .collect();
    if leaders.len() != 1 {
        return Err(w.violation(format!(
            "{} s after every fault healed, {} nodes hold a lease ({leaders:?}); exactly one should",
            cfg.settle_for.as_secs(),
            leaders.len()
        )));
    }
    Ok(w.report)
}

impl World {
    fn new(cfg: Config) -> World {
        let mut rng = Rng::new(cfg.seed);
        let total = cfg.data_nodes + usize::from(cfg.witness);
        // Rates within ±MAX_DRIFT/2 of true time, so any two differ by at most MAX_DRIFT.
        let half = i64::from(MAX_DRIFT_PPM) / 2;
        let nodes: Vec<Node> = (0..total)
            .map(|i| {
                let role = if i == 0 {
                    Role::Primary
                } else if i < cfg.data_nodes {
                    Role::Standby
                } else {
                    Role::Witness
                };
                let durable = Durable {
                    term: 1,
                    supports: Some(1),
                };
                let rate_ppm = rng.range(0, 2 * half as u64) as i64 - half;
                let offset = rng.range(0, 1_000_000_000);
                let mut n = Node {
                    id: i as NodeId + 1,
                    role,
                    up: true,
                    frozen_until: None,
                    rate_ppm,
                    offset,
                    durable,
                    voter: Voter::new(durable, Duration::ZERO),
                    lease: None,
                    incarnation: 1,
                    lsn: 0,
                    promoted_at: 0,
                    source: (i != 0).then_some(0),
                    diverged: false,
                    next_poll: Duration::ZERO,
                    poll_sent: None,
                    phase: None,
                    retry_at: Duration::ZERO,
                    rounds: 0,
                    best_seen: 0,
                    was_leading: i == 0,
                };
                n.voter = Voter::new(durable, n.local(0));
                n
            })
            .collect();
        let mut w = World {
            blocked: vec![vec![false; total]; total],
            cfg,
            rng,
            now: 0,
            nodes,
            queue: BinaryHeap::new(),
            seq: 0,
            loss_per_million: 0,
            slow_per_million: 20_000,
            trace: VecDeque::new(),
            winners: HashMap::new(),
            report: Report::default(),
            pending: Vec::new(),
            max_terms: vec![1; total],
        };
        // The initial primary starts with confirmations from everyone, as after a clean start.
        let others = w.others(0);
        let local = w.nodes[0].local(0);
        w.nodes[0].lease = Some(Lease::new(1, 1, &others, Some((local, &others))));
        w.winners.insert(1, 0);
        w
    }

    fn log(&mut self, line: String) {
        if self.trace.len() >= 300 {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("{:>9.3}s {line}", self.now as f64 / 1e6));
    }

    fn violation(&self, what: String) -> Violation {
        let mut trace = String::new();
        for l in &self.trace {
            let _ = writeln!(trace, "{l}");
        }
        Violation {
            seed: self.cfg.seed,
            what,
            trace,
        }
    }

    /// Every other voter's id.
    fn others(&self, i: usize) -> Vec<NodeId> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| n.id)
            .collect()
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if self.blocked[from][to] || self.rng.chance(self.loss_per_million) {
            return;
        }
        // Mostly LAN delays, sometimes a long one.
        let delay = if self.rng.chance(self.slow_per_million) {
            self.rng.range(50 * MS, 800 * MS)
        } else {
            self.rng.range(100, 3 * MS)
        };
        self.seq += 1;
        self.queue.push(Reverse(Envelope {
            at: self.now + delay,
            seq: self.seq,
            from,
            to,
            msg,
        }));
    }

    fn deliver(&mut self) {
        let mut later = Vec::new();
        while let Some(Reverse(e)) = self.queue.peek() {
            if e.at > self.now {
                break;
            }
            let Reverse(e) = self.queue.pop().expect("peeked");
            let to = &self.nodes[e.to];
            if !to.up {
                continue;
            }
            if !to.running(self.now) {
                // A frozen process does not read its socket; the kernel keeps the bytes.
                later.push(e);
                continue;
            }
            self.handle(e);
        }
        for mut e in later {
            e.at = self.now + TICK;
            self.queue.push(Reverse(e));
        }
    }

    fn handle(&mut self, e: Envelope) {
        let (from, to) = (e.from, e.to);
        let local = self.nodes[to].local(self.now);
        let timing = self.cfg.timing;
        match e.msg {
            Msg::Poll { term, echo } => {
                let from_id = self.nodes[from].id;
                let is_primary = self.nodes[to].role == Role::Primary;
                let reply = match self.nodes[to].lease.as_mut() {
                    Some(l) if is_primary => {
                        Msg::PollReply(l.poll(local, from_id, term, echo, timing.fence))
                    }
                    _ => Msg::NotPrimary,
                };
                self.send(to, from, reply);
            }
            Msg::NotPrimary => {
                self.nodes[to].poll_sent = None;
            }
            Msg::PollReply(reply) => {
                let from_id = self.nodes[from].id;
                let n = &mut self.nodes[to];
                if n.role == Role::Primary {
                    return;
                }
                n.poll_sent = None;
                if let Heard::Alive { .. } = n.voter.heard(local, from_id, &reply, &timing) {
                    n.durable = n.voter.durable;
                    n.follow(from);
                }
            }
            Msg::Ask { round } => {
                let n = &self.nodes[to];
                let leading = n.leading(local, &timing);
                let answer = Answer {
                    term: n.durable.term,
                    leading,
                    in_recovery: n.role == Role::Standby,
                    silence: match n.role {
                        Role::Primary if leading => Duration::ZERO,
                        Role::Primary => timing.lease * 10,
                        _ => n.voter.silence(local),
                    },
                    lsn: (n.role == Role::Standby).then_some(n.lsn),
                    unavailable: n.diverged,
                    diverged: n.diverged,
                };
                let primary = if n.role == Role::Primary {
                    n.lease.as_ref().map(|l| (n.id, l.term))
                } else {
                    n.voter
                        .leader
                        .filter(|_| n.voter.silence(local) < timing.lease)
                        .map(|l| (l, n.durable.term))
                };
                self.send(
                    to,
                    from,
                    Msg::Answer {
                        round,
                        answer,
                        primary,
                    },
                );
            }
            Msg::Answer {
                round,
                answer,
                primary,
            } => {
                // Poll the primary with the newest term that anyone hears (or is).
                let me = &self.nodes[to];
                if let Some((p, term)) = primary.filter(|(p, t)| {
                    *p != me.id && *t >= me.durable.term && me.role != Role::Primary
                }) && term >= self.nodes[to].best_seen
                {
                    self.nodes[to].best_seen = term;
                    if self.nodes[to].source != Some((p - 1) as usize) {
                        let id = self.nodes[to].id;
                        self.log(format!("node {id} now polls node {p} (term {term})"));
                    }
                    self.nodes[to].follow((p - 1) as usize);
                }
                if let Some(Phase::Asking {
                    round: r, answers, ..
                }) = self.nodes[to].phase.as_mut()
                    && *r == round
                {
                    let term = answer.term;
                    answers.push((from, answer));
                    let n = &mut self.nodes[to];
                    if n.role != Role::Primary && n.voter.learn_term(term) {
                        n.durable = n.voter.durable;
                    }
                }
            }
            Msg::VoteReq(req) => {
                let candidate = (req.candidate - 1) as usize;
                let facts = VoterFacts {
                    is_primary: self.nodes[to].role == Role::Primary,
                    // A diverged standby's WAL is on a timeline nobody continues: no yardstick.
                    received_lsn: (self.nodes[to].role == Role::Standby
                        && !self.nodes[to].diverged)
                        .then_some(self.nodes[to].lsn),
                    candidate_ineligible: (self.nodes[candidate].role == Role::Witness)
                        .then(|| "a witness".to_string()),
                };
                let n = &mut self.nodes[to];
                let reply = n.voter.decide(local, &req, &facts, &timing);
                if reply.granted {
                    n.durable = n.voter.durable;
                    // If it wins, it is the one to poll; if not, silence leads to a new look.
                    n.follow(candidate);
                    let (id, lsn) = (n.id, n.lsn);
                    self.log(format!(
                        "node {id} (lsn {lsn}) votes for node {} in term {}",
                        req.candidate, req.term
                    ));
                }
                self.send(to, from, Msg::Vote(reply));
            }
            Msg::Vote(reply) => {
                let n = &mut self.nodes[to];
                if let Some(Phase::Voting { term, grants, .. }) = n.phase.as_mut()
                    && reply.granted
                    && reply.term == *term
                    && !grants.contains(&from)
                {
                    grants.push(from);
                }
            }
            Msg::NewPrimary { term } => {
                let n = &mut self.nodes[to];
                if n.role != Role::Primary && term >= n.durable.term {
                    n.follow(from);
                    if n.role == Role::Standby && n.lsn > self.nodes[from].promoted_at {
                        self.nodes[to].diverged = true;
                    }
                }
            }
        }
    }

    /// One step of one running node.
    fn tick(&mut self, i: usize) {
        let timing = self.cfg.timing;
        let local = self.nodes[i].local(self.now);
        if self.nodes[i].role == Role::Primary {
            let id = self.nodes[i].id;
            if let Some(term) = self.nodes[i]
                .lease
                .as_mut()
                .and_then(|l| l.overtake(local, timing.fence))
            {
                self.nodes[i].durable = Durable {
                    term,
                    supports: Some(id),
                };
                self.log(format!(
                    "node {id} overtakes a failed election: now term {term}"
                ));
            }
            let leading = self.nodes[i].leading(local, &timing);
            if leading != self.nodes[i].was_leading {
                self.nodes[i].was_leading = leading;
                self.log(format!(
                    "node {id} {} its lease",
                    if leading { "holds" } else { "lost" }
                ));
            }
            if leading {
                self.nodes[i].lsn += self.rng.range(0, 4000);
                self.report.commits += 1;
            }
            return;
        }
        // Poll whoever we think is the primary.
        let n = &self.nodes[i];
        let poll_due = local >= n.next_poll
            && n.poll_sent
                .is_none_or(|s| local.saturating_sub(s) > dur(POLL_TIMEOUT));
        if let (Some(src), true) = (n.source, poll_due) {
            let (term, echo) = (n.durable.term, n.voter.echo);
            self.nodes[i].poll_sent = Some(local);
            self.nodes[i].next_poll = local + timing.heartbeat;
            self.send(i, src, Msg::Poll { term, echo });
        }
        self.elect(i, local);
    }

    /// The election steps of voter `i`: ask around once the lease expired; a standby may stand.
    fn elect(&mut self, i: usize, local: Duration) {
        let timing = self.cfg.timing;
        match self.nodes[i].phase.take() {
            None => {
                let n = &self.nodes[i];
                if !n.voter.should_look_around(local, &timing) || local < n.retry_at {
                    return;
                }
                let round = n.rounds + 1;
                self.nodes[i].rounds = round;
                self.nodes[i].best_seen = 0;
                self.nodes[i].phase = Some(Phase::Asking {
                    round,
                    until: local + dur(ASK_WAIT),
                    answers: Vec::new(),
                });
                for j in 0..self.nodes.len() {
                    if j != i {
                        self.send(i, j, Msg::Ask { round });
                    }
                }
            }
            Some(Phase::Asking {
                round,
                until,
                answers,
            }) => {
                if local < until && answers.len() + 1 < self.nodes.len() {
                    self.nodes[i].phase = Some(Phase::Asking {
                        round,
                        until,
                        answers,
                    });
                    return;
                }
                let backoff = dur(self.rng.range(200 * MS, 1000 * MS));
                self.nodes[i].retry_at = local + backoff;
                if self.nodes[i].role != Role::Standby || self.nodes[i].diverged {
                    return;
                }
                let peers: Vec<Peer> = (0..self.nodes.len())
                    .filter(|j| *j != i)
                    .map(|j| Peer {
                        node_id: self.nodes[j].id,
                        kind: match self.nodes[j].role {
                            Role::Primary => Kind::Primary,
                            Role::Standby => Kind::Standby,
                            Role::Witness => Kind::Witness,
                        },
                        location: "default".into(),
                        priority: if self.nodes[j].role == Role::Witness {
                            0
                        } else {
                            100
                        },
                        automatic: true,
                        answer: answers
                            .iter()
                            .find(|(k, _)| *k == j)
                            .map(|(_, a)| a.clone()),
                    })
                    .collect();
                let n = &self.nodes[i];
                let me = Me {
                    node_id: n.id,
                    term: n.durable.term,
                    lsn: n.lsn,
                    silence: n.voter.silence(local),
                    location: "default".into(),
                    priority: 100,
                    automatic: true,
                    paused: false,
                    replayed_all: true,
                };
                let rules = Rules {
                    timing,
                    max_lag: 16 << 20,
                    visibility_consensus: true,
                    primary_location: None,
                    quorum: repmgr_core::quorum::Config::none(),
                };
                let plan = election::plan(&me, &peers, &rules);
                if !matches!(plan, Plan::Stand { .. }) {
                    let id = self.nodes[i].id;
                    self.log(format!("node {id}: {plan:?}"));
                }
                if let Plan::Stand { term } = plan {
                    let n = &mut self.nodes[i];
                    n.durable = Durable {
                        term,
                        supports: Some(n.id),
                    };
                    n.voter.durable = n.durable;
                    let req = VoteRequest {
                        term,
                        candidate: n.id,
                        lsn: n.lsn,
                    };
                    n.phase = Some(Phase::Voting {
                        term,
                        until: local + dur(VOTE_WAIT),
                        asked_at: local,
                        grants: Vec::new(),
                    });
                    self.report.elections += 1;
                    let id = n.id;
                    self.log(format!("node {id} stands in term {term}"));
                    for j in 0..self.nodes.len() {
                        if j != i {
                            self.send(i, j, Msg::VoteReq(req));
                        }
                    }
                }
            }
            Some(Phase::Voting {
                term,
                until,
                asked_at,
                grants,
            }) => {
                if self.nodes[i].durable.term != term {
                    return;
                }
                if election::won(grants.len() + 1, self.nodes.len()) {
                    self.promote(i, term, asked_at, &grants);
                } else if local < until {
                    self.nodes[i].phase = Some(Phase::Voting {
                        term,
                        until,
                        asked_at,
                        grants,
                    });
                } else {
                    self.nodes[i].retry_at = local + dur(self.rng.range(300 * MS, 1500 * MS));
                }
            }
        }
    }

    fn promote(&mut self, i: usize, term: u64, asked_at: Duration, grants: &[usize]) {
        if let Some(prev) = self.winners.insert(term, i)
            && prev != i
        {
            panic_later(
                &mut self.trace,
                format!(
                    "term {term} won by nodes {} and {}",
                    self.nodes[prev].id, self.nodes[i].id
                ),
            );
        }
        let others = self.others(i);
        let grant_ids: Vec<NodeId> = grants.iter().map(|g| self.nodes[*g].id).collect();
        let n = &mut self.nodes[i];
        n.role = Role::Primary;
        n.incarnation += 1;
        n.lease = Some(Lease::new(
            term,
            n.incarnation,
            &others,
            Some((asked_at, &grant_ids)),
        ));
        n.promoted_at = n.lsn;
        n.source = None;
        n.phase = None;
        self.report.promotions += 1;
        let (id, lsn) = (n.id, n.lsn);
        self.log(format!(
            "node {id} promoted in term {term} at lsn {lsn} with votes from {grant_ids:?}"
        ));
        for j in 0..self.nodes.len() {
            if j != i {
                self.send(i, j, Msg::NewPrimary { term });
            }
        }
    }

    /// Standbys receive WAL from their source while both run and the link is up.
    fn replicate(&mut self) {
        for i in 0..self.nodes.len() {
            let Some(src) = self.nodes[i].source else {
                continue;
            };
            let ok = self.nodes[i].role == Role::Standby
                && !self.nodes[i].diverged
                && self.nodes[i].running(self.now)
                && self.nodes[src].running(self.now)
                && self.nodes[src].role == Role::Primary
                && !self.blocked[src][i]
                && !self.blocked[i][src];
            if ok {
                let lag = self.rng.range(0, 20_000);
                let target = self.nodes[src].lsn.saturating_sub(lag);
                if target > self.nodes[i].lsn {
                    self.nodes[i].lsn = target;
                }
            }
        }
    }

    fn check(&mut self) -> Result<(), Violation> {
        if let Some(what) = self.trace.iter().find(|l| l.contains("INVARIANT")) {
            return Err(self.violation(what.clone()));
        }
        let timing = self.cfg.timing;
        let leaders: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|n| n.running(self.now) && n.leading(n.local(self.now), &timing))
            .map(|n| n.id)
            .collect();
        if leaders.len() > 1 {
            return Err(self.violation(format!(
                "nodes {leaders:?} can all commit at the same moment"
            )));
        }
        for i in 0..self.nodes.len() {
            let term = self.nodes[i].durable.term;
            if term < self.max_terms[i] {
                return Err(self.violation(format!(
                    "node {}'s term went back from {} to {term}",
                    self.nodes[i].id, self.max_terms[i]
                )));
            }
            self.max_terms[i] = term;
        }
        Ok(())
    }

    fn inject_faults(&mut self) {
        let n = self.nodes.len();
        let victim = self.rng.range(0, n as u64 - 1) as usize;
        let now = self.now;
        let id = self.nodes[victim].id;
        if self.rng.chance(1500) && self.nodes[victim].up {
            self.crash(victim);
            let back = now + self.rng.range(1000 * MS, 8000 * MS);
            self.pending.push((back, victim, "restart"));
        } else if self.rng.chance(2000) && self.nodes[victim].running(now) {
            let until = now + self.rng.range(200 * MS, 6000 * MS);
            self.nodes[victim].frozen_until = Some(until);
            self.log(format!("node {id} frozen for {} ms", (until - now) / MS));
        } else if self.rng.chance(1500) {
            for j in 0..n {
                self.blocked[victim][j] = j != victim;
                self.blocked[j][victim] = j != victim;
            }
            let back = now + self.rng.range(1000 * MS, 8000 * MS);
            self.pending.push((back, victim, "reconnect"));
            self.log(format!("node {id} cut off"));
        } else if self.rng.chance(1500) {
            let other = self.rng.range(0, n as u64 - 1) as usize;
            if other != victim {
                self.blocked[victim][other] = true;
                let both = self.rng.chance(500_000);
                if both {
                    self.blocked[other][victim] = true;
                }
                self.log(format!(
                    "link {id} -> {} cut{}",
                    self.nodes[other].id,
                    if both { " both ways" } else { " one way" }
                ));
                let back = now + self.rng.range(500 * MS, 6000 * MS);
                self.pending.push((back, victim, "reconnect"));
            }
        } else if self.rng.chance(1000) {
            self.loss_per_million = self.rng.range(0, 300_000);
            self.log(format!(
                "message loss now {}%",
                self.loss_per_million / 10_000
            ));
        }
    }

    fn crash(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.up = false;
        n.frozen_until = None;
        n.lease = None;
        n.phase = None;
        n.poll_sent = None;
        let id = n.id;
        self.log(format!("node {id} crashed"));
    }

    fn restart(&mut self, i: usize) {
        let now = self.now;
        let others = self.others(i);
        let n = &mut self.nodes[i];
        if n.up {
            return;
        }
        n.up = true;
        let local = n.local(now);
        n.voter = Voter::new(n.durable, local);
        n.incarnation += 1;
        n.next_poll = local;
        n.retry_at = local;
        if n.role == Role::Primary {
            // It comes back as a primary with no confirmation: fenced until voters confirm.
            n.lease = Some(Lease::new(n.durable.term, n.incarnation, &others, None));
        }
        let id = n.id;
        self.log(format!("node {id} restarted"));
    }

    fn apply_pending(&mut self) {
        let now = self.now;
        let due: Vec<(Us, usize, &'static str)> = self
            .pending
            .iter()
            .copied()
            .filter(|(t, _, _)| *t <= now)
            .collect();
        self.pending.retain(|(t, _, _)| *t > now);
        for (_, i, what) in due {
            match what {
                "restart" => self.restart(i),
                _ => {
                    for j in 0..self.nodes.len() {
                        self.blocked[i][j] = false;
                        self.blocked[j][i] = false;
                    }
                    let id = self.nodes[i].id;
                    self.log(format!("node {id} reconnected"));
                }
            }
        }
    }

    fn heal_all(&mut self) {
        self.log("healing every fault".into());
        self.loss_per_million = 0;
        self.slow_per_million = 0;
        for row in &mut self.blocked {
            row.iter_mut().for_each(|b| *b = false);
        }
        self.pending.clear();
        for i in 0..self.nodes.len() {
            self.nodes[i].frozen_until = None;
            self.restart(i);
        }
    }
}

/// Records an invariant breach found deep inside a step; `check` reports it.
fn panic_later(trace: &mut VecDeque<String>, what: String) {
    trace.push_back(format!("INVARIANT: {what}"));
}

/// Runs `count` schedules from `first_seed`; returns the totals, or the first violation.
pub fn run_many(first_seed: u64, count: u64) -> Result<Report, Violation> {
    let mut total = Report::default();
    for seed in first_seed..first_seed + count {
        let r = run(&Config::random(seed))?;
        total.promotions += r.promotions;
        total.elections += r.elections;
        total.commits += r.commits;
    }
    Ok(total)
}

/// The confirmations a primary of `voters` needs, re-exported for reports.
pub fn confirmations_needed(voters: usize) -> usize {
    lease::confirmations_needed(voters)
}
