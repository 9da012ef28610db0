//! Deterministic simulation of the failover protocol, driving the real state machine.
//!
//! Every simulated node runs the very code the extension's worker and backends run: its
//! [`Driver`] (the worker's whole failover sequence) and its [`State`] (what backends answer
//! to polls, pre-vote questions and vote requests), each with its own settings — timing,
//! failover mode, priority, location — changed mid-run by reloads. This module is only the
//! world around them: clocks that drift, a network with delays, loss and partitions, disks
//! that may fail to save, PostgreSQL's timelines and catalog replication, a witness copying
//! the node list, crashes, restarts, frozen processes, and an operator who registers,
//! unregisters, pauses, promotes, repoints, and loses and restores the catalog. Actions the
//! driver asks for are carried out here as the worker carries them out against PostgreSQL.
//! One seeded generator drives everything, so a seed replays a schedule exactly.
//!
//! After every step the simulator checks, independently of the code under test:
//!
//! 1. at no moment can two nodes commit (run as a primary holding a lease);
//! 2. a node's term never decreases, and a term has at most one winner by majority;
//! 3. a promoted node had received at least as much WAL as every voter that elected it,
//!    could have stood itself and held no fewer usable copies of the failover slots, and is
//!    within `repmgr.max_lag_on_failover` of the others; none behind a synchronous quorum's
//!    member that elected it;
//! 4. once every fault is healed, a leader holds its lease within a bounded time whenever
//!    the surviving nodes could elect one (by a rule of its own, not the election's code);
//! 5. with a synchronous quorum published, every commit a primary acknowledged through it is
//!    in the history of every node promoted after it (until an operator forces a promotion);
//! 6. a running primary whose worker watches its lease, and that could commit, then could
//!    not, reports the fencing (`repmgrd_primary_fenced`) within a second of its own clock,
//!    even when it got its lease back before its worker looked again; a lapse while its worker
//!    sees it fenced (it said so, or it started fenced) is part of that fencing.
//!
//! The primaries' quorum keepers ([`quorum::Keeper`], the extension's own) run too: they
//! publish the quorum in the replicated catalog and set `synchronous_standby_names`, whose
//! members' flushed positions are what acknowledges a commit.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

use repmgr_core::driver::{Action, Catalog, Driver, Input, LocalFacts, Settings, Upstream};
use repmgr_core::durable::Saved;
use repmgr_core::event;
use repmgr_core::lease::{
    Lease, MAX_DRIFT_PPM, Membership, NodeId, Poll, PollReply, Timing, lease_for, majority,
};
use repmgr_core::node::{NodeRecord, NodeType};
use repmgr_core::quorum::{self, Keeper, KeeperAction, Observed};
use repmgr_core::rejoin::AutoRejoin;
use repmgr_core::state::{Disk, Local, PreVote, State};
use repmgr_core::vote::{VoteReply, VoteRequest, VoterFacts, catalog_objection};

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

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.range(0, items.len() as u64 - 1) as usize]
    }
}

/// Real (simulated) time in microseconds.
type Us = u64;

/// Backends a primary has: once this many commits wait for their synchronous
/// acknowledgement, no new one starts.
const BACKENDS: usize = 64;

const MS: Us = 1000;
const TICK: Us = 10 * MS;
/// How often a node's monitoring round reads its catalog (`repmgr.monitor_interval`).
const MONITOR_INTERVAL: Duration = Duration::from_secs(1);
/// How often the witness copies the node list (`repmgr.witness_sync_interval`).
const WITNESS_SYNC: Duration = Duration::from_secs(15);
/// After this long without streaming, a standby's upstream counts as down (reconnect
/// attempts exhausted).
const UPSTREAM_DOWN_AFTER: Us = 3000 * MS;
/// A connected standby has received what its source wrote this long ago: the random lag
/// below holds back only recent WAL, as a walsender sends an idle primary's last bytes at
/// once.
const SENT_WITHIN: Us = 200 * MS;
/// A stopped WAL receiver starts again after `wal_retrieve_retry_interval`.
const WAL_RETRY: Us = 5000 * MS;

fn dur(us: Us) -> Duration {
    Duration::from_micros(us)
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// One node's settings and registration.
#[derive(Debug, Clone)]
pub struct NodeSetup {
    pub settings: Settings,
    pub location: String,
    /// The priority registered in the catalog.
    pub priority: i32,
    /// `repmgr.synchronous_standbys` and `repmgr.synchronous_mode`.
    pub synchronous_standbys: u32,
    pub synchronous_mode: quorum::Mode,
    /// Its usable copies of failover slots while a standby (PostgreSQL 17+): some standbys
    /// have them, some not, as when one lacks a slot or has not caught up.
    pub failover_slots: u32,
}

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
    /// Every node's settings, by index.
    pub nodes: Vec<NodeSetup>,
    /// The primary at the end of the faults is lost for good: the others must replace it.
    pub lose_primary: bool,
    /// Operator actions (registration, pause, manual promotion, catalog loss) are injected.
    pub operator: bool,
}

/// Settings every node starts from: the extension's defaults.
pub fn default_settings() -> Settings {
    Settings {
        timing: Ok(Timing {
            heartbeat: ms(200),
            fence: ms(1600),
            lease: ms(2100),
        }),
        automatic: true,
        priority: 100,
        max_lag: 16 << 20,
        visibility_consensus: true,
        validation_command: false,
        election_rerun_interval: ms(15_000),
        disconnect_on_failover: false,
        fence_shutdown: false,
        auto_rejoin: AutoRejoin::On,
    }
}

/// A timing valid on its own node, drawn so that nodes disagree: some leases shorter than
/// other nodes' fences need.
pub fn random_timing(rng: &mut Rng) -> Timing {
    let heartbeat = ms(rng.pick(&[50, 100, 200, 250, 500]));
    let fence = heartbeat * 4 + ms(rng.range(0, 4000));
    let lease = lease_for(fence) + ms(rng.range(0, 1500));
    Timing {
        heartbeat,
        fence,
        lease,
    }
}

impl Config {
    /// A random shape for `seed`: 3 to 7 voters, with or without a witness, every node with
    /// settings of its own.
    pub fn random(seed: u64) -> Config {
        let mut rng = Rng::new(seed ^ 0xC0FFEE);
        let witness = rng.chance(400_000);
        let voters = rng.range(3, 7) as usize;
        let data_nodes = if witness { voters - 1 } else { voters };
        let two_sites = rng.chance(300_000);
        // Drawn apart, so that the asynchronous schedules stay those of earlier versions.
        let mut sync_rng = Rng::new(seed ^ 0x5_1DE_CA5);
        let cluster_n = if sync_rng.chance(500_000) {
            sync_rng.range(1, 2) as u32
        } else {
            0
        };
        // Its own stream too: the schedules of earlier versions stay as they were.
        let mut rejoin_rng = Rng::new(seed ^ 0x2E_301E);
        let mut slots_rng = Rng::new(seed ^ 0x0005_1075);
        let nodes = (0..voters)
            .map(|i| {
                let mut s = default_settings();
                s.auto_rejoin = if rejoin_rng.chance(100_000) {
                    AutoRejoin::Off
                } else if rejoin_rng.chance(100_000) {
                    AutoRejoin::Pause
                } else {
                    AutoRejoin::On
                };
                s.timing = Ok(random_timing(&mut rng));
                let is_witness = i >= data_nodes;
                if i > 0 && !is_witness {
                    s.automatic = !rng.chance(200_000);
                    if rng.chance(100_000) {
                        s.priority = 0;
                    } else {
                        s.priority = rng.range(50, 150) as i32;
                    }
                }
                s.disconnect_on_failover = rng.chance(200_000);
                let location = if two_sites && rng.chance(400_000) {
                    "b"
                } else {
                    "a"
                };
                // Mostly the cluster's setting, sometimes one of the node's own.
                let synchronous_standbys = if sync_rng.chance(200_000) {
                    sync_rng.range(0, 2) as u32
                } else {
                    cluster_n
                };
                let synchronous_mode = if sync_rng.chance(300_000) {
                    quorum::Mode::Preferred
                } else {
                    quorum::Mode::Strict
                };
                NodeSetup {
                    priority: if is_witness { 0 } else { s.priority },
                    settings: s,
                    location: location.into(),
                    synchronous_standbys,
                    synchronous_mode,
                    failover_slots: if is_witness {
                        0
                    } else {
                        slots_rng.range(0, 2) as u32
                    },
                }
            })
            .collect();
        Config {
            seed,
            data_nodes,
            witness,
            faults_for: Duration::from_secs(20),
            settle_for: Duration::from_secs(25),
            nodes,
            lose_primary: rng.chance(300_000),
            operator: true,
        }
    }
}

#[derive(Debug, Clone)]
enum Msg {
    Poll(Poll),
    PollReply(Option<PollReply>),
    Ask {
        round: u64,
    },
    Answer {
        round: u64,
        pre: PreVote,
    },
    VoteReq {
        req: VoteRequest,
        manual: bool,
    },
    Vote {
        term: u64,
        reply: VoteReply,
    },
    Notify,
    /// `repmgr.primary_exited()`: the orphaned worker of a primary whose postmaster died.
    Exited {
        term: u64,
        incarnation: u64,
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

/// A node's data directory's failover state file, which may refuse to be written.
struct SimDisk {
    saved: Option<Saved>,
    /// Saves fail while set (a full or failing disk).
    failing: bool,
}

impl Disk for SimDisk {
    fn save(&mut self, s: &Saved) -> bool {
        if self.failing {
            return false;
        }
        self.saved = Some(s.clone());
        true
    }
}

/// A timeline: where it branched from its parent.
#[derive(Debug, Clone, Copy)]
struct Timeline {
    parent: Option<usize>,
    start: u64,
}

/// A WAL position: a timeline and a byte position on it.
type Pos = (usize, u64);

/// A catalog written by a primary at a WAL position (`None`: the extension was dropped).
struct CatalogWrite {
    at: Pos,
    catalog: Option<Catalog>,
}

struct Node {
    id: NodeId,
    witness: bool,
    /// A data node's server is in recovery (a standby).
    in_recovery: bool,
    up: bool,
    /// Lost for good: never restarted.
    lost: bool,
    frozen_until: Option<Us>,
    /// Clock rate offset in parts per million, and its reading at real time 0.
    rate_ppm: i64,
    offset: Us,
    state: State,
    driver: Driver,
    disk: SimDisk,
    setup: NodeSetup,
    paused: bool,
    /// WAL received (standby) or written (primary).
    pos: Pos,
    /// The node it streams from.
    source: Option<usize>,
    /// When it last streamed (real time), for "the upstream is down".
    streamed_at: Us,
    wal_stopped_until: Us,
    next_observe: Duration,
    next_tick: Duration,
    /// The witness's own copy of the catalog.
    copy: Option<Catalog>,
    next_copy: Duration,
    /// `synchronous_standby_names` (kept in postgresql.auto.conf across restarts).
    sync_names: quorum::Config,
    /// The worker's quorum keeper (a new one at each restart).
    keeper: Keeper,
    /// Commits written but waiting for their synchronous acknowledgement, by position.
    waiting: Vec<u64>,
    /// Its own positions over the last moments: WAL older than [`SENT_WITHIN`] has reached
    /// every standby streaming from it.
    written: VecDeque<(Us, Pos)>,
    /// Whether, at the last check, it ran as a primary that could commit.
    held_lease: bool,
    /// Since when (its own clock) a lapse of its lease has gone unreported.
    unreported_fence: Option<Duration>,
    /// Timelines this node already held WAL past the start of when they began: a divergence
    /// from one of them was there at the promotion (a voter's `max_lag_on_failover`, or WAL
    /// the winner lacked), not received later from a replaced primary.
    ahead_at_branch: Vec<usize>,
}

impl Node {
    fn local(&self, real: Us) -> Duration {
        dur(self.offset + (real as i128 + real as i128 * self.rate_ppm as i128 / 1_000_000) as Us)
    }

    fn running(&self, now: Us) -> bool {
        self.up && self.frozen_until.is_none_or(|t| t <= now)
    }

    fn is_primary(&self) -> bool {
        !self.witness && !self.in_recovery
    }

    /// Whether it can commit now: a running primary whose fence lets it.
    fn can_commit(&self, now: Us) -> bool {
        self.running(now) && self.is_primary() && self.state.may_commit(self.local(now))
    }
}

/// What a finished schedule looked like.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub promotions: u64,
    pub elections: u64,
    pub commits: u64,
    /// Commits acknowledged under a synchronous quorum.
    pub acknowledged: u64,
    pub operator_actions: u64,
    /// Standbys found holding WAL the primary they follow does not have (each would need a
    /// rewind).
    pub divergences: u64,
    /// Of those, the ones that received that WAL after the promotion that began the primary's
    /// timeline (from a replaced primary): what detaching from it prevents.
    pub late_divergences: u64,
    /// Automatic rejoins carried out.
    pub rejoins: u64,
    /// Reports of a primary's exited postmaster sent, and those a voter counted (it stopped
    /// waiting for the lease).
    pub exits_reported: u64,
    pub exits_counted: u64,
    /// Promotions of a candidate behind a voter that elected it and could have stood itself:
    /// the candidate held more usable copies of the failover slots.
    pub ranked_by_slots: u64,
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

/// A vote granted: the voter, its position when it compared (none: it had none to compare),
/// the lag it allowed, and whether it allowed that lag only for the candidate's copies of the
/// failover slots (it could have stood itself).
type Grant = (NodeId, Option<Pos>, u64, bool);

struct World {
    cfg: Config,
    rng: Rng,
    now: Us,
    nodes: Vec<Node>,
    timelines: Vec<Timeline>,
    writes: Vec<CatalogWrite>,
    queue: BinaryHeap<Reverse<Envelope>>,
    seq: u64,
    /// `blocked[a][b]`: messages from a to b are lost.
    blocked: Vec<Vec<bool>>,
    loss_per_million: u64,
    /// Messages delayed far beyond LAN latency, per million (none once faults are healed).
    slow_per_million: u64,
    trace: VecDeque<String>,
    winners: HashMap<u64, usize>,
    /// Per (term, candidate): every vote granted.
    grants: HashMap<(u64, NodeId), Vec<Grant>>,
    /// Vote requests sent, with the candidate's position and how many voters it counts (itself
    /// included), by term.
    requests: HashMap<(u64, NodeId), (Pos, usize)>,
    report: Report,
    /// Real times at which healing events are due: (time, node, what).
    pending: Vec<(Us, usize, &'static str)>,
    /// Each node's highest term so far.
    max_terms: Vec<u64>,
    manual_seq: u64,
    /// The published quorum, as written by primaries at WAL positions (it replicates with
    /// the catalog; a TRUNCATE of repmgr.nodes leaves it).
    quorum_writes: Vec<(Pos, quorum::Config)>,
    /// Per timeline, the furthest commit acknowledged through a published synchronous quorum,
    /// and by which node: what no later promotion may lose.
    acked: HashMap<usize, (u64, NodeId)>,
    /// Nodes with a forced repmgr.promote() under way, by the request's sequence number.
    forcing: HashMap<usize, u64>,
    /// A forced promotion happened: the operator accepted losing commits, and the schedule
    /// no longer checks that none is lost.
    forced: bool,
    broken: Option<String>,
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
            if cfg.operator {
                w.operate();
            }
        } else if w.now < fault_end + TICK {
            w.heal_all();
        }
        w.apply_pending();
        w.deliver();
        for i in 0..w.nodes.len() {
            if w.nodes[i].running(w.now) {
                w.step_node(i);
            }
        }
        w.replicate();
        w.acknowledge();
        w.check()?;
    }
    w.check_recovered()?;
    Ok(w.report)
}

fn record(id: NodeId, kind: NodeType, setup: &NodeSetup, upstream: Option<NodeId>) -> NodeRecord {
    NodeRecord {
        node_id: id,
        upstream_node_id: upstream,
        active: true,
        node_name: format!("node{id}"),
        node_type: kind,
        location: setup.location.clone(),
        priority: setup.priority,
        conninfo: format!("host=node{id}"),
        repluser: "repmgr".into(),
        slot_name: None,
        config_file: String::new(),
    }
}

impl World {
    fn new(cfg: Config) -> World {
        let mut rng = Rng::new(cfg.seed);
        let total = cfg.nodes.len();
        // Rates within ±MAX_DRIFT/2 of true time, so any two differ by at most MAX_DRIFT.
        let half = i64::from(MAX_DRIFT_PPM) / 2;
        let records: Vec<NodeRecord> = (0..total)
            .map(|i| {
                let id = i as NodeId + 1;
                let kind = if i == 0 {
                    NodeType::Primary
                } else if i < cfg.data_nodes {
                    NodeType::Standby
                } else {
                    NodeType::Witness
                };
                record(id, kind, &cfg.nodes[i], (i > 0).then_some(1))
            })
            .collect();
        let catalog = Catalog {
            nodes: records,
            version: 1,
            previous: Vec::new(),
            changed_by: Some(1),
        };
        let nodes: Vec<Node> = (0..total)
            .map(|i| {
                let id = i as NodeId + 1;
                let setup = cfg.nodes[i].clone();
                let rate_ppm = rng.range(0, 2 * half as u64) as i64 - half;
                let offset = rng.range(1_000_000, 1_000_000_000);
                let fallback = setup.settings.timing.clone().unwrap_or(Timing {
                    heartbeat: ms(200),
                    fence: ms(1600),
                    lease: ms(2100),
                });
                let driver = Driver::new(id, setup.settings.clone(), fallback, rng.next_u64());
                let mut n = Node {
                    id,
                    witness: i >= cfg.data_nodes,
                    in_recovery: i != 0 && i < cfg.data_nodes,
                    up: true,
                    lost: false,
                    frozen_until: None,
                    rate_ppm,
                    offset,
                    state: State::new(id, None, Duration::ZERO, rng.next_u64() >> 8, fallback),
                    driver,
                    disk: SimDisk {
                        saved: None,
                        failing: false,
                    },
                    setup,
                    paused: false,
                    pos: (0, 0),
                    source: (i != 0 && i < cfg.data_nodes).then_some(0),
                    streamed_at: 0,
                    wal_stopped_until: 0,
                    next_observe: Duration::ZERO,
                    next_tick: Duration::ZERO,
                    copy: (i >= cfg.data_nodes).then(|| catalog.clone()),
                    next_copy: Duration::ZERO,
                    sync_names: quorum::Config::none(),
                    keeper: Keeper::default(),
                    waiting: Vec::new(),
                    written: VecDeque::new(),
                    held_lease: false,
                    unreported_fence: None,
                    ahead_at_branch: Vec::new(),
                };
                let local = n.local(0);
                n.state = State::new(id, None, local, n.state.incarnation, fallback);
                n.driver.publish(&mut n.state);
                n.state.voter.durable.term = 1;
                n.state.voter.durable.supports = Some(1);
                n.state.voter.durable.fence = fallback.fence.max(ms(1));
                n.next_observe = local;
                n.next_tick = local;
                n
            })
            .collect();
        let mut w = World {
            blocked: vec![vec![false; total]; total],
            cfg,
            rng,
            now: 0,
            nodes,
            timelines: vec![Timeline {
                parent: None,
                start: 0,
            }],
            writes: vec![CatalogWrite {
                at: (0, 0),
                catalog: Some(catalog.clone()),
            }],
            queue: BinaryHeap::new(),
            seq: 0,
            loss_per_million: 0,
            slow_per_million: 20_000,
            trace: VecDeque::new(),
            winners: HashMap::new(),
            grants: HashMap::new(),
            requests: HashMap::new(),
            report: Report::default(),
            pending: Vec::new(),
            max_terms: vec![1; total],
            manual_seq: 0,
            quorum_writes: Vec::new(),
            acked: HashMap::new(),
            forcing: HashMap::new(),
            forced: false,
            broken: None,
        };
        // The initial primary starts with confirmations from everyone, as after a clean start,
        // and every voter knows its fence.
        let view = catalog.membership();
        let others: Vec<NodeId> = view.others(1).collect();
        let p = &mut w.nodes[0];
        let local = p.local(0);
        let fence = p.state.timing.fence;
        let inc = p.state.next_incarnation();
        p.state.lease = Some(Lease::new(
            1,
            inc,
            1,
            &[view],
            Some((local, fence, &others)),
        ));
        p.state.armed = true;
        for n in &mut w.nodes {
            n.state.voter.durable.fence = fence;
            n.disk.saved = Some(n.state.saved());
        }
        w.winners.insert(1, 0);
        w
    }

    fn log(&mut self, line: String) {
        if self.trace.len() >= 400 {
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

    fn index(&self, id: NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    fn indices(&self, records: &[NodeRecord]) -> Vec<usize> {
        records
            .iter()
            .filter_map(|r| self.index(r.node_id))
            .collect()
    }

    /// Whether a candidate at `mine` lacks WAL of the cluster's history that a voter at
    /// `theirs` holds, beyond the lag `slack` it allowed: the voter is further on the same
    /// timeline, or on a later one that continues the candidate's. WAL on a branch the
    /// candidate's timeline left behind (an older timeline beyond where the candidate's began)
    /// is nobody's history.
    fn lacks(&self, mine: Pos, theirs: Pos, slack: u64) -> Option<String> {
        if self.contains(mine, theirs) {
            return None;
        }
        if mine.0 == theirs.0 {
            return (mine.1 + slack < theirs.1).then(|| {
                format!(
                    "{} bytes more than the allowed lag {slack}",
                    theirs.1 - mine.1
                )
            });
        }
        // On another branch: an earlier one is dead; a later one holds what the candidate
        // lacks from where it began (more if the candidate is short of that point).
        if theirs.0 < mine.0 {
            return None;
        }
        let tl = self.timelines[theirs.0];
        let shared = match tl.parent {
            Some(p) if self.contains(mine, (p, tl.start)) => tl.start,
            _ => mine.1.min(tl.start),
        };
        let extra = theirs.1.saturating_sub(shared);
        (extra > slack).then(|| {
            format!("the voter is on a later timeline, {extra} bytes past what the candidate holds (allowed lag {slack})")
        })
    }

    /// The PostgreSQL timeline number of a position and where that timeline began: timelines
    /// are created in order, each numbered above every one before it, as PostgreSQL does.
    fn timeline_of(&self, pos: Pos) -> (u32, u64) {
        (pos.0 as u32 + 1, self.timelines[pos.0].start)
    }

    /// Whether WAL position `pos` is part of the history that ends at `at`.
    fn contains(&self, at: Pos, pos: Pos) -> bool {
        let (mut t, mut limit) = at;
        loop {
            if t == pos.0 {
                return pos.1 <= limit;
            }
            let tl = self.timelines[t];
            match tl.parent {
                Some(p) => {
                    limit = limit.min(tl.start);
                    t = p;
                }
                None => return false,
            }
        }
    }

    /// The catalog a data node at `pos` has replayed.
    fn catalog_at(&self, pos: Pos) -> Option<Catalog> {
        self.writes
            .iter()
            .rev()
            .find(|w| self.contains(pos, w.at))
            .and_then(|w| w.catalog.clone())
    }

    /// The synchronous quorum published in the catalog a data node at `pos` has replayed,
    /// and where it was written (0: none).
    fn publication_at(&self, pos: Pos) -> (quorum::Config, u64) {
        self.quorum_writes
            .iter()
            .rev()
            .find(|(at, _)| self.contains(pos, *at))
            .map_or_else(|| (quorum::Config::none(), 0), |(at, q)| (q.clone(), at.1))
    }

    fn quorum_at(&self, pos: Pos) -> quorum::Config {
        self.publication_at(pos).0
    }

    /// What a standby at `pos` reports of its publication: where a synchronous one was
    /// written, else 0.
    fn sync_quorum_at(&self, pos: Pos) -> u64 {
        match self.publication_at(pos) {
            (q, at) if q.is_sync() => at,
            _ => 0,
        }
    }

    fn catalog_of(&self, i: usize) -> Option<Catalog> {
        if self.nodes[i].witness {
            self.nodes[i].copy.clone()
        } else {
            self.catalog_at(self.nodes[i].pos)
        }
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        self.send_after(from, to, msg, 0);
    }

    /// [`World::send`] with `extra` delay on top of the network's.
    fn send_after(&mut self, from: usize, to: usize, msg: Msg, extra: Us) {
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
            at: self.now + delay + extra,
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

    /// Feeds one input to node `i`'s driver and carries out what it asks.
    fn drive(&mut self, i: usize, input: Input) {
        let local = self.nodes[i].local(self.now);
        let n = &mut self.nodes[i];
        let actions = n.driver.step(local, &mut n.state, &mut n.disk, input);
        for a in actions {
            self.act(i, a);
        }
    }

    fn handle(&mut self, e: Envelope) {
        let (from, to) = (e.from, e.to);
        let local = self.nodes[to].local(self.now);
        let from_id = self.nodes[from].id;
        match e.msg {
            Msg::Poll(poll) => {
                let n = &mut self.nodes[to];
                let in_recovery = n.in_recovery || n.witness;
                let reply = n.state.answer_poll(local, in_recovery, &poll);
                self.send(to, from, Msg::PollReply(reply));
            }
            Msg::PollReply(reply) => self.drive(
                to,
                Input::PollReply {
                    from: from_id,
                    reply,
                },
            ),
            Msg::Ask { round } => {
                let n = &self.nodes[to];
                let l = Local {
                    in_recovery: n.in_recovery,
                    lsn: n.in_recovery.then_some(n.pos.1),
                    timeline: self.timeline_of(n.pos).0,
                    timeline_start: self.timeline_of(n.pos).1,
                    paused: n.paused,
                    sync_quorum: if n.witness {
                        0
                    } else {
                        self.sync_quorum_at(n.pos)
                    },
                    failover_slots: if n.in_recovery {
                        n.setup.failover_slots
                    } else {
                        0
                    },
                };
                let pre = n.state.pre_vote(local, &l);
                self.send(to, from, Msg::Answer { round, pre });
            }
            Msg::Answer { round, pre } => self.drive(
                to,
                Input::PreVote {
                    round,
                    from: from_id,
                    answer: Some(pre),
                },
            ),
            Msg::VoteReq { req, manual } => {
                let catalog = self.catalog_of(to);
                let n = &self.nodes[to];
                let record = catalog.as_ref().and_then(|c| c.node(req.candidate));
                let behind = n.state.version < req.version;
                let candidate_ineligible =
                    catalog_objection(req.candidate, record, manual || n.witness, behind);
                let may_stand =
                    n.setup.settings.automatic && n.setup.settings.priority > 0 && !n.paused;
                let slots = if n.in_recovery {
                    n.setup.failover_slots
                } else {
                    0
                };
                let quorum_member = self.quorum_at(n.pos).members.contains(&n.id);
                // The lag this voter may grant, by the simulator's own reading of the rules
                // (invariant 3): none from a quorum member; max_lag from one that may not
                // stand, or to a candidate holding more usable copies of the failover slots.
                let slack = if !quorum_member && (!may_stand || req.failover_slots > slots) {
                    n.setup.settings.max_lag
                } else {
                    0
                };
                let facts = VoterFacts {
                    is_primary: n.is_primary(),
                    received_lsn: (n.in_recovery && !n.state.diverged).then_some(n.pos.1),
                    timeline: self.timeline_of(n.pos).0,
                    timeline_start: self.timeline_of(n.pos).1,
                    may_stand,
                    max_lag: n.setup.settings.max_lag,
                    failover_slots: slots,
                    quorum_member,
                    sync_quorum: if n.in_recovery && !n.state.diverged {
                        self.sync_quorum_at(n.pos)
                    } else {
                        0
                    },
                    candidate_ineligible,
                    version: n.state.version,
                };
                let voter_pos = n.pos;
                let n = &mut self.nodes[to];
                let reply = n.state.vote(local, &req, &facts, &mut n.disk);
                if reply.granted {
                    let id = n.id;
                    self.grants
                        .entry((req.term, req.candidate))
                        .or_default()
                        .push((
                            id,
                            facts.received_lsn.is_some().then_some(voter_pos),
                            slack,
                            may_stand && slack > 0,
                        ));
                    self.log(format!(
                        "node {id} (lsn {}) votes for node {} in term {}",
                        voter_pos.1, req.candidate, req.term
                    ));
                }
                self.send(
                    to,
                    from,
                    Msg::Vote {
                        term: req.term,
                        reply,
                    },
                );
            }
            Msg::Vote { term, reply } => self.drive(
                to,
                Input::Vote {
                    term,
                    from: from_id,
                    reply: Ok(reply),
                },
            ),
            Msg::Notify => self.drive(to, Input::Notified { from: from_id }),
            Msg::Exited { term, incarnation } => {
                let n = &mut self.nodes[to];
                if n.state.primary_exited(local, from_id, term, incarnation) {
                    self.report.exits_counted += 1;
                    let id = n.id;
                    self.log(format!(
                        "node {id} stops waiting for the lease of node {from_id}, whose postmaster exited"
                    ));
                }
            }
        }
    }

    /// Carries out one action of node `i`'s driver, as the worker does.
    fn act(&mut self, i: usize, a: Action) {
        let id = self.nodes[i].id;
        match a {
            Action::Poll { target, poll } => {
                if let Some(t) = self.index(target.node_id) {
                    self.send(i, t, Msg::Poll(poll));
                }
            }
            Action::ClosePoll => {}
            Action::AskAround { round, to } => {
                for t in self.indices(&to) {
                    self.send(i, t, Msg::Ask { round });
                }
                let n = &self.nodes[i];
                // What it has received it has replayed: the quorum read is the latest.
                let (q, quorum_version) = self.publication_at(n.pos);
                let facts = LocalFacts {
                    lsn: (n.in_recovery).then_some(n.pos.1),
                    timeline: self.timeline_of(n.pos).0,
                    timeline_start: self.timeline_of(n.pos).1,
                    quorum: Some((q, true)),
                    quorum_version,
                    failover_slots: if n.in_recovery {
                        n.setup.failover_slots
                    } else {
                        0
                    },
                };
                self.drive(i, Input::Local { round, facts });
            }
            Action::Validate { round, .. } => {
                let ok = !self.rng.chance(200_000);
                self.drive(i, Input::Validated { round, ok });
            }
            Action::StopWalReceiver => {
                self.nodes[i].wal_stopped_until = self.now + WAL_RETRY;
            }
            Action::Detach { from } => {
                if self.nodes[i]
                    .source
                    .is_some_and(|s| self.nodes[s].id == from)
                {
                    self.nodes[i].source = None;
                    self.log(format!("node {id} stops streaming from node {from}"));
                }
            }
            Action::RequestVotes {
                term,
                request,
                manual,
                to,
            } => {
                self.report.elections += 1;
                let at = (request.timeline.saturating_sub(1) as usize, request.lsn);
                self.requests.insert((term, id), (at, to.len() + 1));
                self.log(format!(
                    "node {id} stands in term {term} (lsn {})",
                    request.lsn
                ));
                for t in self.indices(&to) {
                    self.send(
                        i,
                        t,
                        Msg::VoteReq {
                            req: request,
                            manual,
                        },
                    );
                }
            }
            Action::Promote { term } => self.promote(i, term),
            Action::RecordPromotion { term } => {
                let result = self.write_catalog(i, |c, me| {
                    for n in c.nodes.iter_mut() {
                        if n.node_type == NodeType::Primary && n.active && n.node_id != me {
                            n.active = false;
                        }
                        if n.node_id == me {
                            n.node_type = NodeType::Primary;
                            n.upstream_node_id = None;
                            n.active = true;
                        }
                    }
                });
                let retry = result.is_err();
                self.drive(
                    i,
                    Input::Recorded {
                        term,
                        result,
                        retry,
                    },
                );
            }
            Action::NotifyFollow { to } => {
                for t in self.indices(&to) {
                    self.send(i, t, Msg::Notify);
                }
            }
            Action::MarkReadOnly(_) => {}
            Action::Rejoin { why } => self.rejoin(i, &why),
            Action::Shutdown => {
                self.log(format!(
                    "node {id} shuts down (repmgr.fence_action = shutdown)"
                ));
                self.crash(i);
            }
            Action::Event(e) => {
                if e.name == event::REPMGRD_PRIMARY_FENCED {
                    // Reported, perhaps before the check below noticed it.
                    self.nodes[i].unreported_fence = None;
                    self.nodes[i].held_lease = false;
                }
                self.log(format!("node {id} event {}: {}", e.name, e.details));
            }
            Action::Log(_, text) => self.log(format!("node {id}: {text}")),
            Action::Answer { seq, outcome } => {
                if self.forcing.get(&i) == Some(&seq) {
                    self.forcing.remove(&i);
                }
                self.log(format!("node {id} answers request {seq}: {outcome:?}"))
            }
        }
    }

    fn promote(&mut self, i: usize, term: u64) {
        let id = self.nodes[i].id;
        let request = self.requests.get(&(term, id)).copied();
        let at = request.map(|(p, _)| p);
        let granted = self.grants.get(&(term, id)).map_or(0, Vec::len) + 1;
        // A forced promotion wins nothing: it stays fenced until a majority confirms it,
        // which the two-primaries check watches.
        let won = request.is_some_and(|(_, voters)| granted >= majority(voters));
        if won
            && let Some(prev) = self.winners.insert(term, i)
            && prev != i
        {
            self.broken = Some(format!(
                "term {term} won by nodes {} and {}",
                self.nodes[prev].id, id
            ));
        }
        let mut behind_for_slots = false;
        for (voter, theirs, slack, for_slots) in
            self.grants.get(&(term, id)).cloned().unwrap_or_default()
        {
            let (Some(mine), Some(theirs)) = (at, theirs) else {
                continue;
            };
            behind_for_slots |= for_slots && self.lacks(mine, theirs, 0).is_some();
            if let Some(why) = self.lacks(mine, theirs, slack) {
                self.broken = Some(format!(
                    "node {id} promoted in term {term} at {mine:?}, but voter {voter} had received {theirs:?}: {why}"
                ));
            }
        }
        if won && behind_for_slots {
            self.report.ranked_by_slots += 1;
        }
        let n = &self.nodes[i];
        if !n.in_recovery || n.witness {
            let result = Err("it is not a standby".to_string());
            self.drive(i, Input::Promoted { term, result });
            return;
        }
        if self.forcing.remove(&i).is_some() {
            self.forced = true;
            self.acked.clear();
            self.log(format!(
                "node {id}'s promotion is forced: acknowledged commits are no longer checked"
            ));
        }
        let n = &self.nodes[i];
        let lost = self
            .acked
            .iter()
            .find(|(tl, (at, _))| !self.contains(n.pos, (**tl, *at)));
        if let Some((tl, (at, by))) = lost {
            self.broken = Some(format!(
                "node {id} promoted in term {term} at {:?} lacks the commit node {by} acknowledged at {:?} through a synchronous quorum",
                n.pos,
                (tl, at)
            ));
        }
        // As the worker does before pg_promote(): start with the published quorum less
        // itself, so that its first commit already waits.
        let published = self.quorum_at(n.pos);
        let nodes = self.catalog_of(i).map(|c| c.nodes).unwrap_or_default();
        let mode = n.setup.synchronous_mode;
        if let Some(start) = quorum::for_promotion(&published, id, mode, &nodes) {
            self.nodes[i].sync_names = start;
        }
        let n = &self.nodes[i];
        let tl = self.timelines.len();
        let branch = n.pos;
        self.timelines.push(Timeline {
            parent: Some(branch.0),
            start: branch.1,
        });
        for m in &mut self.nodes {
            if m.pos.0 == branch.0 && m.pos.1 > branch.1 {
                m.ahead_at_branch.push(tl);
            }
        }
        let n = &mut self.nodes[i];
        n.in_recovery = false;
        n.pos = (tl, n.pos.1);
        n.source = None;
        self.report.promotions += 1;
        let lsn = n.pos.1;
        self.log(format!("node {id} promoted in term {term} at lsn {lsn}"));
        self.drive(
            i,
            Input::Promoted {
                term,
                result: Ok(None),
            },
        );
    }

    /// Writes node `i`'s catalog as a transaction on it would: only on a primary whose fence
    /// lets it commit; a change of the voters goes through the membership rule first (the
    /// catalog trigger), and is refused while an earlier change is still settling.
    fn write_catalog(
        &mut self,
        i: usize,
        change: impl FnOnce(&mut Catalog, NodeId),
    ) -> Result<(), String> {
        let now = self.now;
        let n = &self.nodes[i];
        if !n.is_primary() || !n.running(now) {
            return Err("not a running primary".into());
        }
        let local = n.local(now);
        let id = n.id;
        let mut catalog = self.catalog_at(n.pos).unwrap_or(Catalog {
            nodes: Vec::new(),
            version: 0,
            previous: Vec::new(),
            changed_by: None,
        });
        let before = catalog.membership();
        change(&mut catalog, id);
        let lsn = self.nodes[i].pos.1 + 200;
        let after = catalog.membership();
        if after.voters != before.voters {
            catalog.version = lsn.max(catalog.version + 1);
            catalog.previous = before.voters.clone();
            catalog.changed_by = Some(id);
            let view = Membership::new(catalog.version, after.voters.iter().copied());
            let n = &mut self.nodes[i];
            n.state.change_view(&view, false, &mut n.disk)?;
        }
        let n = &mut self.nodes[i];
        if !n.state.may_commit(local) {
            n.state.undo_view(catalog.version, &mut n.disk);
            return Err(format!("cannot commit: node {id} is fenced"));
        }
        n.pos.1 = lsn;
        let at = n.pos;
        self.writes.push(CatalogWrite {
            at,
            catalog: Some(catalog),
        });
        Ok(())
    }

    /// One step of one running node: its monitoring round when due, its driver's tick, and
    /// what a standby's round does about following.
    fn step_node(&mut self, i: usize) {
        let local = self.nodes[i].local(self.now);
        if local >= self.nodes[i].next_observe {
            self.nodes[i].next_observe = local + MONITOR_INTERVAL;
            self.observe(i);
        }
        if local >= self.nodes[i].next_tick {
            self.drive(i, Input::Tick);
            let n = &self.nodes[i];
            self.nodes[i].next_tick = local + n.driver.next_tick(local).min(ms(50));
        }
        let n = &self.nodes[i];
        if n.is_primary() && n.can_commit(self.now) {
            let add = self.rng.range(0, 4000);
            let n = &mut self.nodes[i];
            if n.waiting.len() < BACKENDS {
                n.pos.1 += add;
                self.report.commits += 1;
                if n.sync_names.is_sync() {
                    n.waiting.push(n.pos.1);
                }
            }
        }
    }

    /// Node `i`'s quorum keeper, at a monitoring round of a primary: what the worker reads
    /// and does, around the extension's own keeper.
    fn keep_quorum(&mut self, i: usize) {
        let local = self.nodes[i].local(self.now);
        let n = &self.nodes[i];
        let id = n.id;
        let fenced = !n.state.may_commit(local);
        let published = (n.keeper.needs_published() && !fenced).then(|| self.quorum_at(n.pos));
        let nodes = self.catalog_of(i).map(|c| c.nodes).unwrap_or_default();
        let (candidates, flushed) = if fenced {
            (Vec::new(), Vec::new())
        } else {
            // From its WAL senders, by registered name.
            let flushed: Vec<(NodeId, u64)> = (0..self.nodes.len())
                .filter(|j| self.streams_from(*j, i))
                .map(|j| (self.nodes[j].id, self.nodes[j].pos.1))
                .filter(|(m, _)| nodes.iter().any(|r| r.node_id == *m))
                .collect();
            let candidates =
                quorum::candidates(id, &nodes, |m| flushed.iter().any(|(f, _)| *f == m));
            (candidates, flushed)
        };
        let o = Observed {
            n: n.setup.synchronous_standbys,
            mode: n.setup.synchronous_mode,
            fenced,
            applied: n.sync_names.clone(),
            published,
            candidates,
            flushed,
        };
        let now = self.now;
        let n = &mut self.nodes[i];
        let (action, say) = n.keeper.round(local, &o);
        match action {
            // A write of its own (synchronous_commit = local), refused when fenced.
            Some(KeeperAction::Publish(config)) if n.can_commit(now) => {
                n.pos.1 += 100;
                let at = n.pos;
                n.keeper.wrote(config.clone(), at.1);
                self.quorum_writes.push((at, config.clone()));
                self.log(format!("node {id} publishes {}", config.describe()));
            }
            Some(KeeperAction::Publish(_)) | None => {}
            Some(KeeperAction::Apply { config, why }) => {
                n.sync_names = config.clone();
                n.keeper.set(config.clone(), local);
                self.log(format!(
                    "node {id} sets synchronous_standby_names to {}: {why}",
                    config.describe()
                ));
            }
        }
        if let Some(line) = say {
            self.log(format!("node {id}: synchronous quorum: {line}"));
        }
    }

    /// Commits whose synchronous acknowledgement arrived: `k` members of the applied quorum
    /// streaming from the primary flushed them. The fence is checked again at that moment
    /// (a commit that finishes fenced is never acknowledged: its client is disconnected).
    fn acknowledge(&mut self) {
        let now = self.now;
        for i in 0..self.nodes.len() {
            if self.nodes[i].waiting.is_empty() || !self.nodes[i].running(now) {
                continue;
            }
            let applied = self.nodes[i].sync_names.clone();
            let threshold = if applied.is_sync() {
                let mut flushed: Vec<u64> = applied
                    .members
                    .iter()
                    .filter_map(|m| self.index(*m))
                    .filter(|j| self.streams_from(*j, i))
                    .map(|j| self.nodes[j].pos.1)
                    .collect();
                flushed.sort_unstable_by(|a, b| b.cmp(a));
                match flushed.get(applied.k as usize - 1) {
                    Some(f) => *f,
                    None => continue,
                }
            } else {
                // No longer synchronous: every waiting commit returns.
                u64::MAX
            };
            let n = &mut self.nodes[i];
            let done: Vec<u64> = n
                .waiting
                .iter()
                .copied()
                .filter(|p| *p <= threshold)
                .collect();
            n.waiting.retain(|p| *p > threshold);
            if done.is_empty() || !n.can_commit(now) {
                continue;
            }
            self.report.acknowledged += done.len() as u64;
            let n = &self.nodes[i];
            let (tl, id) = (n.pos.0, n.id);
            // Returned by a quorum that went asynchronous: never protected.
            if self.forced || !applied.is_sync() {
                continue;
            }
            // Promised once a synchronous quorum was published before the commit (the keeper
            // applies the first one before publishing it).
            // The furthest such commit is all the check needs (waiting commits are in order).
            let promised = done
                .iter()
                .rev()
                .copied()
                .find(|p| self.quorum_at((tl, *p)).is_sync());
            if let Some(last) = promised {
                let e = self.acked.entry(tl).or_insert((last, id));
                if e.0 < last {
                    *e = (last, id);
                }
            }
        }
    }

    /// A monitoring round: the catalog and role reach the driver; the witness copies the node
    /// list; a standby follows whom the driver says.
    fn observe(&mut self, i: usize) {
        let local = self.nodes[i].local(self.now);
        if self.nodes[i].witness && local >= self.nodes[i].next_copy {
            self.nodes[i].next_copy = local + WITNESS_SYNC;
            // From whichever node runs as a primary and answers.
            let from = (0..self.nodes.len()).find(|j| {
                let p = &self.nodes[*j];
                *j != i
                    && p.running(self.now)
                    && p.is_primary()
                    && !self.blocked[*j][i]
                    && !self.blocked[i][*j]
            });
            if let Some(j) = from {
                self.nodes[i].copy = self.catalog_at(self.nodes[j].pos);
            }
        }
        if self.nodes[i].is_primary() {
            self.keep_quorum(i);
        }
        let catalog = self.catalog_of(i);
        let in_recovery = self.nodes[i].in_recovery;
        self.drive(
            i,
            Input::Observe {
                catalog,
                in_recovery,
            },
        );
        if !self.nodes[i].in_recovery || self.nodes[i].witness {
            return;
        }
        let silent = self.now.saturating_sub(self.nodes[i].streamed_at);
        let upstream = Upstream {
            node: self.nodes[i].source.map(|s| self.nodes[s].id),
            unreachable: silent > UPSTREAM_DOWN_AFTER / 3,
            down: silent > UPSTREAM_DOWN_AFTER,
            detached: self.nodes[i].source.is_none(),
        };
        let n = &mut self.nodes[i];
        let decision = n.driver.follow_decision(&n.state, upstream);
        for a in n.driver.take_actions() {
            self.act(i, a);
        }
        if let Some((target, event)) = decision
            && let Some(t) = self.index(target.node_id)
        {
            self.follow(i, t, event);
        }
    }

    /// Whether standby `i` counts as diverged from `src`, as the worker decides it
    /// (`diverged_from` in src/monitor/standby.rs): it holds WAL that is not in `src`'s
    /// history, on a timeline older than `src`'s. On a newer timeline than `src`'s, it is
    /// `src` that is behind (a replaced primary): the standby only fails to stream from it.
    fn diverged_from(&self, i: usize, src: usize) -> bool {
        let (n, s) = (&self.nodes[i], &self.nodes[src]);
        !self.contains(s.pos, n.pos) && n.pos.0 < s.pos.0
    }

    /// Marks standby `i` diverged from `src` (as the worker does when it finds out), counted
    /// once, and whether it was already ahead when `src`'s branch began.
    fn mark_diverged(&mut self, i: usize, src: usize, why: String) {
        if self.nodes[i].state.diverged {
            return;
        }
        self.nodes[i].state.diverged = true;
        self.report.divergences += 1;
        // The timeline of `src`'s history that branched off this standby's.
        let mine = self.nodes[i].pos.0;
        let mut t = self.nodes[src].pos.0;
        while let Some(p) = self.timelines[t].parent.filter(|p| *p != mine) {
            t = p;
        }
        let late = !self.nodes[i].ahead_at_branch.contains(&t);
        if late {
            self.report.late_divergences += 1;
        }
        let when = if late {
            "received after the promotion"
        } else {
            "held at the promotion"
        };
        self.log(format!("{why} (WAL {when})"));
    }

    /// Repoints standby `i` at `t`, unless its timeline diverged from `t`'s.
    fn follow(&mut self, i: usize, t: usize, event: &str) {
        let (id, tid) = (self.nodes[i].id, self.nodes[t].id);
        if self.nodes[t].is_primary() && self.diverged_from(i, t) {
            self.mark_diverged(
                i,
                t,
                format!("node {id} cannot follow node {tid}: diverged"),
            );
            return;
        }
        self.nodes[i].source = Some(t);
        self.nodes[i].streamed_at = self.now;
        self.log(format!("node {id} follows node {tid} ({event})"));
    }

    /// Whether standby `i` can stream from `src` now: it is its source, both run, the link
    /// is up and its WAL receiver runs (the histories may have diverged).
    fn connected(&self, i: usize, src: usize) -> bool {
        let n = &self.nodes[i];
        let s = &self.nodes[src];
        n.source == Some(src)
            && n.in_recovery
            && !n.witness
            && n.running(self.now)
            && s.running(self.now)
            && s.is_primary()
            && self.now >= n.wal_stopped_until
            && !self.blocked[src][i]
            && !self.blocked[i][src]
    }

    /// Whether standby `i` streams from `src` now: connected, on `src`'s history.
    fn streams_from(&self, i: usize, src: usize) -> bool {
        self.connected(i, src) && self.contains(self.nodes[src].pos, self.nodes[i].pos)
    }

    /// Standbys receive WAL from their source while both run, the link is up, and the
    /// standby's history is part of the source's.
    fn replicate(&mut self) {
        let now = self.now;
        for n in &mut self.nodes {
            n.written.push_back((now, n.pos));
            while n.written.len() > 1 && n.written[1].0 + SENT_WITHIN <= now {
                n.written.pop_front();
            }
        }
        for i in 0..self.nodes.len() {
            let Some(src) = self.nodes[i].source else {
                continue;
            };
            if !self.connected(i, src) {
                continue;
            }
            let (n, s) = (&self.nodes[i], &self.nodes[src]);
            if !self.contains(s.pos, n.pos) {
                if self.diverged_from(i, src) {
                    let id = n.id;
                    self.mark_diverged(i, src, format!("node {id} diverged from its upstream"));
                }
                continue;
            }
            let lag = self.rng.range(0, 20_000);
            let sent = s
                .written
                .front()
                .filter(|(t, p)| *t + SENT_WITHIN <= now && p.0 == s.pos.0)
                .map_or(0, |(_, p)| p.1);
            let target = s.pos.1.saturating_sub(lag).max(sent).max(n.pos.1);
            let tl = s.pos.0;
            let n = &mut self.nodes[i];
            n.pos = (tl, target);
            n.streamed_at = self.now;
        }
    }

    /// The nodes that can commit now.
    fn leaders(&self) -> Vec<NodeId> {
        let now = self.now;
        self.nodes
            .iter()
            .filter(|n| n.can_commit(now))
            .map(|n| n.id)
            .collect()
    }

    fn check(&mut self) -> Result<(), Violation> {
        if let Some(what) = self.broken.take() {
            return Err(self.violation(what));
        }
        let leaders = self.leaders();
        if leaders.len() > 1 {
            return Err(self.violation(format!(
                "nodes {leaders:?} can all commit at the same moment"
            )));
        }
        for i in 0..self.nodes.len() {
            let term = self.nodes[i].state.term();
            if term < self.max_terms[i] {
                return Err(self.violation(format!(
                    "node {}'s term went back from {} to {term}",
                    self.nodes[i].id, self.max_terms[i]
                )));
            }
            self.max_terms[i] = term;
            self.check_fence_reported(i)?;
        }
        Ok(())
    }

    /// Invariant 6, for node `i`.
    fn check_fence_reported(&mut self, i: usize) -> Result<(), Violation> {
        let now = self.now;
        let n = &mut self.nodes[i];
        let local = n.local(now);
        if !n.is_primary() || !n.up {
            n.held_lease = false;
            n.unreported_fence = None;
            return Ok(());
        }
        // Frozen too: a lease that ran out during a freeze is a lapse, even if the first
        // polls after the thaw renew it.
        let holds = n.state.may_commit(local) && n.driver.watches_lease();
        // A lapse while its worker sees it fenced (reported, or started so) is part of that.
        if n.held_lease && !holds && n.driver.sees_itself_leading() == Some(true) {
            n.unreported_fence.get_or_insert(local);
        }
        n.held_lease = holds;
        if !n.running(now) {
            // Its worker gets a second once it runs again.
            if n.unreported_fence.is_some() {
                n.unreported_fence = Some(local);
            }
            return Ok(());
        }
        match n.unreported_fence {
            Some(since) if local.saturating_sub(since) > ms(1000) => {
                let id = n.id;
                Err(self.violation(format!(
                    "node {id} lost its lease {} ms ago and has not reported it",
                    local.saturating_sub(since).as_millis()
                )))
            }
            _ => Ok(()),
        }
    }

    /// Once everything healed: the surviving nodes have a leader whenever they could elect
    /// one, by this rule of the simulator's own — a registered, automatic standby with a
    /// priority, not paused, on the primary's history and close enough to the best, whose
    /// node list a majority of its voters alive would accept (theirs is not newer), and that
    /// is in the registered primary's location or sees another voter alive there; with a
    /// synchronous quorum published, one that enough members alive show to be furthest, and
    /// that no standby alive shows a newer publication to.
    fn check_recovered(&mut self) -> Result<(), Violation> {
        let leaders = self.leaders();
        if leaders.len() == 1 {
            return Ok(());
        }
        let alive: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].up)
            .collect();
        let best = alive
            .iter()
            .filter(|i| self.nodes[**i].in_recovery && !self.nodes[**i].state.diverged)
            .map(|i| self.nodes[*i].pos.1)
            .max()
            .unwrap_or(0);
        let electable = alive.iter().find(|i| {
            let n = &self.nodes[**i];
            let Some(c) = self.catalog_of(**i) else {
                return false;
            };
            let view = c.membership();
            let Some(me) = c.node(n.id) else { return false };
            // Voters alive, not running as a primary (a primary never votes), whose node list
            // is not newer than the candidate's.
            let seen = view
                .voters
                .iter()
                .filter(|v| {
                    self.index(**v).is_some_and(|j| {
                        let v = &self.nodes[j];
                        v.up && !v.is_primary() && v.state.version <= n.state.version
                    })
                })
                .count();
            // Members that would report their position: registered (a candidate asks only
            // the nodes it knows), running standbys on the history.
            let (q, version) = self.publication_at(n.pos);
            // A registered standby alive whose catalog has a newer synchronous quorum has WAL
            // the candidate lacks.
            let newer = c
                .nodes
                .iter()
                .filter_map(|r| self.index(r.node_id))
                .any(|j| {
                    let m = &self.nodes[j];
                    m.up && m.in_recovery
                        && !m.witness
                        && !m.state.diverged
                        && self.sync_quorum_at(m.pos) > version
                });
            let reporting: Vec<u64> = q
                .members
                .iter()
                .filter(|m| c.node(**m).is_some())
                .filter_map(|m| self.index(*m))
                .map(|j| &self.nodes[j])
                .filter(|m| m.up && m.in_recovery && !m.witness && !m.state.diverged)
                .map(|m| m.pos.1)
                .collect();
            let holds_every_commit = !newer
                && (!q.is_sync()
                    || (reporting.len() >= q.reports_needed()
                        && reporting.iter().all(|p| *p <= n.pos.1)));
            holds_every_commit
                && n.in_recovery
                && !n.witness
                && !n.state.diverged
                && !n.paused
                && n.setup.settings.automatic
                && n.setup.settings.priority > 0
                && me.priority > 0
                && me.active
                && n.pos.1 + n.setup.settings.max_lag >= best
                && seen >= majority(view.voters.len())
                && c.primary().is_none_or(|p| {
                    n.setup.location == p.location
                        || view.voters.iter().any(|v| {
                            *v != p.node_id
                                && self.index(*v).is_some_and(|j| {
                                    self.nodes[j].up && self.nodes[j].setup.location == p.location
                                })
                        })
                })
        });
        match (leaders.len(), electable) {
            (0, Some(c)) => {
                Err(self.violation(format!(
                    "{} s after every fault healed, no node holds a lease, though node {} could be elected",
                    self.cfg.settle_for.as_secs(),
                    self.nodes[*c].id
                )))
            }
            (0, _) => Ok(()),
            _ => Err(self.violation(format!(
                "{} s after every fault healed, {} nodes hold a lease ({leaders:?})",
                self.cfg.settle_for.as_secs(),
                leaders.len()
            ))),
        }
    }

    fn inject_faults(&mut self) {
        let n = self.nodes.len();
        let victim = self.rng.range(0, n as u64 - 1) as usize;
        let now = self.now;
        let id = self.nodes[victim].id;
        if self.rng.chance(1500) && self.nodes[victim].up {
            // Half the time only the postmaster dies (kill -9, the OOM killer): its worker,
            // orphaned, tells the voters before it exits.
            if self.rng.chance(500_000) {
                self.announce_exit(victim);
            }
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
        } else if self.rng.chance(300) {
            let failing = !self.nodes[victim].disk.failing;
            self.nodes[victim].disk.failing = failing;
            self.log(format!(
                "node {id}'s disk {}",
                if failing {
                    "refuses writes"
                } else {
                    "works again"
                }
            ));
        } else if self.rng.chance(500) {
            // A reload with new timing (valid on that node, not necessarily with the others).
            let t = random_timing(&mut self.rng);
            self.nodes[victim].setup.settings.timing = Ok(t);
            let s = self.nodes[victim].setup.settings.clone();
            self.log(format!(
                "node {id} reloads: heartbeat {} ms, fence {} ms, lease {} ms",
                t.heartbeat.as_millis(),
                t.fence.as_millis(),
                t.lease.as_millis()
            ));
            if self.nodes[victim].running(now) {
                self.drive(victim, Input::Reload(s));
            }
        }
    }

    /// An operator at work: registering and unregistering, pausing, promoting by hand,
    /// repointing, and losing and restoring the catalog.
    fn operate(&mut self) {
        if !self.rng.chance(1200) {
            return;
        }
        self.report.operator_actions += 1;
        let n = self.nodes.len();
        let victim = self.rng.range(0, n as u64 - 1) as usize;
        let id = self.nodes[victim].id;
        let primary = (0..n).find(|i| self.nodes[*i].can_commit(self.now));
        match self.rng.range(0, 7) {
            0 => {
                let p = !self.nodes[victim].paused;
                self.nodes[victim].paused = p;
                self.log(format!("operator: repmgr.pause({p}) on node {id}"));
                if self.nodes[victim].running(self.now) {
                    self.drive(victim, Input::Paused(p));
                } else if let Some(until) = self.nodes[victim]
                    .frozen_until
                    .filter(|_| self.nodes[victim].up)
                {
                    // The pause is in shared memory, where the frozen worker reads it when it
                    // wakes (a stopped server reads it at its start).
                    self.pending.push((until, victim, "read pause"));
                }
            }
            1 if self.nodes[victim].running(self.now) => {
                self.manual_seq += 1;
                let seq = self.manual_seq;
                let force = self.rng.chance(300_000);
                self.log(format!(
                    "operator: repmgr.promote(force => {force}) on node {id}"
                ));
                if force {
                    self.forcing.insert(victim, seq);
                } else {
                    self.forcing.remove(&victim);
                }
                self.drive(
                    victim,
                    Input::ManualPromote {
                        seq,
                        force,
                        allow_data_loss: false,
                    },
                );
            }
            2 => {
                // repmgr.follow(): a standby repointed at another data node.
                let target = self.rng.range(0, n as u64 - 1) as usize;
                if target != victim
                    && self.nodes[victim].in_recovery
                    && !self.nodes[target].witness
                    && self.nodes[target].is_primary()
                {
                    self.log(format!(
                        "operator: repmgr.follow({}) on node {id}",
                        self.nodes[target].id
                    ));
                    self.follow(victim, target, "standby_follow");
                }
            }
            3 | 4 => {
                let Some(p) = primary else { return };
                if p == victim {
                    return;
                }
                // Unregister, or register again, a standby or the witness.
                let setup = self.nodes[victim].setup.clone();
                let kind = if self.nodes[victim].witness {
                    NodeType::Witness
                } else {
                    NodeType::Standby
                };
                let pid = self.nodes[p].id;
                let registered = self
                    .catalog_at(self.nodes[p].pos)
                    .is_some_and(|c| c.node(id).is_some());
                let r = self.write_catalog(p, |c, _| {
                    if registered {
                        c.nodes.retain(|x| x.node_id != id);
                    } else {
                        c.nodes.push(record(id, kind, &setup, Some(pid)));
                        c.nodes.sort_by_key(|x| x.node_id);
                    }
                });
                self.log(format!(
                    "operator: {} node {id} on node {pid}: {r:?}",
                    if registered { "unregister" } else { "register" }
                ));
            }
            5 => {
                // unregister_node(<primary>, force => true), later registered back.
                let Some(p) = primary else { return };
                let pid = self.nodes[p].id;
                let rec = self
                    .catalog_at(self.nodes[p].pos)
                    .and_then(|c| c.node(pid).cloned());
                let Some(rec) = rec else { return };
                let r = self.write_catalog(p, |c, _| c.nodes.retain(|x| x.node_id != pid));
                self.log(format!(
                    "operator: unregister the primary node {pid}: {r:?}"
                ));
                let back = self.now + self.rng.range(1000 * MS, 6000 * MS);
                self.pending.push((back, p, "register primary"));
                let _ = rec;
            }
            _ => {
                // The catalog lost: TRUNCATE repmgr.nodes, restored a moment later.
                let Some(p) = primary else { return };
                let pid = self.nodes[p].id;
                let r = self.write_catalog(p, |c, _| c.nodes.clear());
                self.log(format!(
                    "operator: TRUNCATE repmgr.nodes on node {pid}: {r:?}"
                ));
                if r.is_ok() {
                    let back = self.now + self.rng.range(500 * MS, 5000 * MS);
                    self.pending.push((back, p, "restore"));
                }
            }
        }
    }

    /// Writes back what the catalog should hold for a cluster with `p` as primary (the
    /// operator restoring a saved copy of `repmgr.nodes`).
    fn restore_catalog(&mut self, p: usize, i: usize, only: Option<NodeId>) {
        let pid = self.nodes[p].id;
        let records: Vec<NodeRecord> = (0..self.nodes.len())
            .map(|j| {
                let n = &self.nodes[j];
                let kind = if n.witness {
                    NodeType::Witness
                } else if j == p {
                    NodeType::Primary
                } else {
                    NodeType::Standby
                };
                record(n.id, kind, &n.setup, (j != p).then_some(pid))
            })
            .collect();
        let r = self.write_catalog(p, |c, _| {
            for rec in records {
                if only.is_none_or(|o| o == rec.node_id) && c.node(rec.node_id).is_none() {
                    c.nodes.push(rec);
                }
            }
            c.nodes.sort_by_key(|x| x.node_id);
        });
        self.log(format!(
            "operator: restores the node list on node {pid}: {r:?}"
        ));
        if r.is_err() {
            // Tried again a little later, as an operator would.
            let what = if only.is_some() {
                "register primary"
            } else {
                "restore"
            };
            self.pending.push((self.now + 500 * MS, i, what));
        }
    }

    /// What the worker's rejoin helper does: once a writable primary answers, stop this
    /// node, rewind it onto that primary's history (what only it wrote is discarded), make it
    /// a standby streaming from it, start it, and mark it an active standby in the catalog
    /// (`repmgr node rejoin`).
    fn rejoin(&mut self, i: usize, why: &str) {
        let now = self.now;
        let id = self.nodes[i].id;
        let target = (0..self.nodes.len()).find(|&j| {
            j != i && self.nodes[j].can_commit(now) && !self.blocked[i][j] && !self.blocked[j][i]
        });
        let Some(j) = target else {
            let why = "no writable primary answers".to_string();
            self.drive(i, Input::RejoinRefused { why, retry: true });
            return;
        };
        let tid = self.nodes[j].id;
        self.log(format!("node {id} rejoins node {tid} ({why})"));
        self.crash(i);
        let pos = self.nodes[j].pos;
        let n = &mut self.nodes[i];
        n.in_recovery = true;
        n.pos = pos;
        n.source = Some(j);
        self.restart(i);
        self.nodes[i].state.diverged = false;
        self.report.rejoins += 1;
        let r = self.write_catalog(j, |c, _| {
            if let Some(r) = c.nodes.iter_mut().find(|r| r.node_id == id) {
                r.node_type = NodeType::Standby;
                r.active = true;
                r.upstream_node_id = Some(tid);
            }
        });
        if let Err(e) = r {
            self.log(format!("node {id}'s record not updated on node {tid}: {e}"));
        }
    }

    /// What the worker of a primary whose postmaster died does before it exits: a worker
    /// that runs tells every other node the lease it led under, through the network as it is.
    fn announce_exit(&mut self, i: usize) {
        let n = &self.nodes[i];
        let Some(lease) = n.state.lease.filter(|_| n.state.armed) else {
            return;
        };
        if !n.running(self.now) || n.in_recovery || n.witness {
            return;
        }
        let id = n.id;
        let voters = n.driver.voters();
        self.report.exits_reported += 1;
        self.log(format!(
            "node {id}'s postmaster exits; its worker reports lease {} of term {}",
            lease.incarnation, lease.term
        ));
        let msg = Msg::Exited {
            term: lease.term,
            incarnation: lease.incarnation,
        };
        for j in self.indices(&voters) {
            // Sometimes a report is held up for seconds (retransmissions on a lossy link):
            // it may arrive after the node restarted and leads again under a new lease.
            if self.rng.chance(200_000) {
                let extra = self.rng.range(1000 * MS, 10_000 * MS);
                self.send_after(i, j, msg.clone(), extra);
            } else {
                self.send(i, j, msg.clone());
            }
        }
    }

    fn crash(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.up = false;
        n.frozen_until = None;
        n.waiting.clear();
        let id = n.id;
        self.log(format!("node {id} crashed"));
    }

    fn restart(&mut self, i: usize) {
        let now = self.now;
        let n = &mut self.nodes[i];
        if n.up || n.lost {
            return;
        }
        n.up = true;
        let local = n.local(now);
        // A new server: its shared memory from the saved file, a new worker.
        let fallback = n.driver.timing();
        let inc = n.state.incarnation + 1_000_000;
        let diverged = n.state.diverged;
        n.state = State::new(n.id, n.disk.saved.clone(), local, inc, fallback);
        n.state.diverged = diverged;
        n.driver = Driver::new(n.id, n.setup.settings.clone(), fallback, inc);
        n.keeper = Keeper::default();
        n.driver.publish(&mut n.state);
        n.driver
            .step(local, &mut n.state, &mut n.disk, Input::Paused(n.paused));
        n.next_observe = local;
        n.next_tick = local;
        n.streamed_at = now;
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
                "read pause" => {
                    if self.nodes[i].up {
                        let p = self.nodes[i].paused;
                        self.drive(i, Input::Paused(p));
                    }
                }
                "restore" | "register primary" => {
                    // On whichever node is the primary now, as the operator would.
                    let only = (what == "register primary").then(|| self.nodes[i].id);
                    match (0..self.nodes.len()).find(|j| self.nodes[*j].can_commit(now)) {
                        Some(p) => self.restore_catalog(p, i, only),
                        None => self.pending.push((now + 500 * MS, i, what)),
                    }
                }
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
        let restores: Vec<(Us, usize, &'static str)> = self
            .pending
            .iter()
            .copied()
            .filter(|(_, _, w)| *w == "restore" || *w == "register primary")
            .collect();
        self.pending = restores;
        let primary = (0..self.nodes.len()).find(|i| self.nodes[*i].can_commit(self.now));
        for i in 0..self.nodes.len() {
            self.nodes[i].frozen_until = None;
            self.nodes[i].disk.failing = false;
            if self.nodes[i].paused {
                self.nodes[i].paused = false;
                if self.nodes[i].up {
                    self.drive(i, Input::Paused(false));
                }
            }
            if self.cfg.lose_primary && Some(i) == primary {
                let id = self.nodes[i].id;
                self.log(format!("node {id}, the primary, is lost for good"));
                self.nodes[i].lost = true;
                self.crash(i);
                continue;
            }
            self.restart(i);
        }
    }
}

/// Runs `count` schedules from `first_seed`; returns the totals, or the first violation.
pub fn run_many(first_seed: u64, count: u64) -> Result<Report, Violation> {
    let mut total = Report::default();
    for seed in first_seed..first_seed + count {
        let r = run(&Config::random(seed))?;
        total.promotions += r.promotions;
        total.elections += r.elections;
        total.commits += r.commits;
        total.acknowledged += r.acknowledged;
        total.operator_actions += r.operator_actions;
        total.divergences += r.divergences;
        total.late_divergences += r.late_divergences;
        total.rejoins += r.rejoins;
        total.exits_reported += r.exits_reported;
        total.exits_counted += r.exits_counted;
        total.ranked_by_slots += r.ranked_by_slots;
    }
    Ok(total)
}
