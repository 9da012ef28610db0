//! Zero data loss: the synchronous quorum the primary keeps, and the rule that a failover
//! loses no acknowledged commit.
//!
//! With `repmgr.synchronous_standbys = n`, the primary's worker keeps
//! `synchronous_standby_names = 'ANY k (members)'`, so a commit is acknowledged only once `k`
//! members have flushed it. It also *publishes* a quorum in the catalog, which reaches every
//! standby through replication. A candidate may be promoted only if at least
//! `|members| - k + 1` members of the published quorum answered (itself included, when it is
//! one) and none has received more WAL than it: any `k` members and that many always share
//! one, so it holds every acknowledged commit. A standby outside the quorum qualifies too
//! once enough members show it is ahead of them.
//!
//! The published quorum must always *cover* the applied one ([`Config::covers`]: every set of
//! nodes that can acknowledge under the applied quorum meets every report set of the
//! published one), or the rule above would count the wrong nodes. So a change that widens what may acknowledge (a new member, a smaller `k`) is
//! published first and applied once the publication is on the applied quorum; a change that
//! narrows it is applied first and published once every WAL sender uses it. [`step`] says which
//! comes next. A standby that lacks the latest publication lacks WAL that the answering
//! members have, so the same rule keeps it from standing; that is why the candidate must have
//! replayed all it received before it reads the published quorum.

use std::time::Duration;

use crate::lease::NodeId;
use crate::lsn::Position;
use crate::node::{NodeRecord, NodeType};

/// A quorum: `k` of `members` acknowledge each commit; `k = 0` is asynchronous replication.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    pub k: u32,
    /// Sorted, without duplicates.
    pub members: Vec<NodeId>,
}

impl Config {
    pub fn new(k: u32, members: impl IntoIterator<Item = NodeId>) -> Config {
        let mut members: Vec<NodeId> = members.into_iter().collect();
        members.sort_unstable();
        members.dedup();
        if k == 0 {
            members.clear();
        }
        Config { k, members }
    }

    /// Asynchronous replication: nothing waits, nothing is guarded.
    pub fn none() -> Config {
        Config::default()
    }

    pub fn is_sync(&self) -> bool {
        self.k > 0
    }

    /// Whether guarding failover with `self` protects every commit acknowledged under
    /// `applied`: every acknowledging set of `applied` meets every report set of `self`.
    pub fn covers(&self, applied: &Config) -> bool {
        // Nothing acknowledges under asynchronous replication, so any publication covers it.
        if !applied.is_sync() {
            return true;
        }
        // The fewest published members an acknowledging set can contain must be at least k:
        // then a report set (all but k - 1 published members) always includes one of them.
        let outside = applied
            .members
            .iter()
            .filter(|m| !self.members.contains(m))
            .count() as u32;
        !self.is_sync() || applied.k.saturating_sub(outside) >= self.k
    }

    /// The smallest quorum that covers both.
    pub fn join(&self, other: &Config) -> Config {
        if !self.is_sync() || !other.is_sync() {
            return Config::none();
        }
        Config::new(
            self.k.min(other.k),
            self.members.iter().chain(other.members.iter()).copied(),
        )
    }

    /// How many members must report their position before a candidate can be sure.
    pub fn reports_needed(&self) -> usize {
        (self.members.len() + 1).saturating_sub(self.k as usize)
    }

    /// `synchronous_standby_names` for this quorum, given each member's name. A strict
    /// quorum without members waits for [`NO_STANDBY`], a name no standby uses.
    pub fn standby_names(&self, name_of: impl Fn(NodeId) -> String) -> String {
        if !self.is_sync() {
            return String::new();
        }
        let mut names: Vec<String> = self
            .members
            .iter()
            .map(|m| quote_name(&name_of(*m)))
            .collect();
        if names.is_empty() {
            names.push(NO_STANDBY.to_string());
        }
        format!("ANY {} ({})", self.k, names.join(", "))
    }

    pub fn describe(&self) -> String {
        if !self.is_sync() {
            return "asynchronous".into();
        }
        let ids: Vec<String> = self.members.iter().map(|m| m.to_string()).collect();
        format!("ANY {} of nodes [{}]", self.k, ids.join(", "))
    }
}

/// The member a strict quorum with no standby waits for: commits block until one joins.
pub const NO_STANDBY: &str = "repmgr_no_standby";

/// A standby name as `synchronous_standby_names` needs it: bare when it is a plain
/// lower-case identifier, double-quoted otherwise.
fn quote_name(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// `repmgr.synchronous_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Never fewer than `n` acknowledgements: writes wait rather than go unprotected.
    Strict,
    /// Fewer when fewer standbys stream, back up to `n` when they return.
    Preferred,
}

/// A registered standby that may be in the quorum (priority above 0, attached to the
/// primary), and whether it streams now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub node_id: NodeId,
    pub streaming: bool,
}

/// The quorum the primary should run with: the streaming candidates, `k = n`. In strict mode
/// never fewer than `n` members (the missing ones are taken from those not streaming, lowest
/// ids first); in preferred mode `k` drops to the number streaming.
pub fn target(n: u32, mode: Mode, candidates: &[Candidate]) -> Config {
    if n == 0 {
        return Config::none();
    }
    let mut streaming: Vec<NodeId> = candidates
        .iter()
        .filter(|c| c.streaming)
        .map(|c| c.node_id)
        .collect();
    streaming.sort_unstable();
    match mode {
        Mode::Preferred => {
            let k = n.min(streaming.len() as u32);
            Config::new(k, streaming)
        }
        Mode::Strict => {
            let mut idle: Vec<NodeId> = candidates
                .iter()
                .filter(|c| !c.streaming)
                .map(|c| c.node_id)
                .collect();
            idle.sort_unstable();
            let missing = (n as usize).saturating_sub(streaming.len());
            streaming.extend(idle.into_iter().take(missing));
            Config::new(n, streaming)
        }
    }
}

/// The next move from (`applied`, `published`) towards `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write this quorum to the catalog; apply nothing until the applied quorum has it.
    Publish(Config),
    /// Set `synchronous_standby_names` to this quorum.
    Apply(Config),
    Done,
}

pub fn step(target: &Config, applied: &Config, published: &Config) -> Step {
    if !published.covers(target) {
        // Widen the publication first, keeping it over what is applied now.
        return Step::Publish(applied.join(target));
    }
    if applied != target {
        return Step::Apply(target.clone());
    }
    if published != target {
        return Step::Publish(target.clone());
    }
    Step::Done
}

/// What the failover rule needs from an answering standby.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub node_id: NodeId,
    pub position: Position,
}

/// Whether candidate `me` at `lsn` may be promoted under the published quorum without losing
/// an acknowledged commit, given the positions other standbys reported. `Err` says why not.
pub fn may_promote(
    quorum: &Config,
    me: NodeId,
    mine: Position,
    reports: &[Report],
) -> Result<(), String> {
    if !quorum.is_sync() {
        return Ok(());
    }
    // Too few members answering stops every candidate, the one furthest ahead too: that is
    // the reason to give first.
    let mut reported: Vec<NodeId> = reports
        .iter()
        .map(|r| r.node_id)
        .chain(std::iter::once(me))
        .filter(|id| quorum.members.contains(id))
        .collect();
    reported.sort_unstable();
    reported.dedup();
    let needed = quorum.reports_needed();
    if reported.len() < needed {
        let missing: Vec<String> = quorum
            .members
            .iter()
            .filter(|m| !reported.contains(m))
            .map(|m| m.to_string())
            .collect();
        return Err(format!(
            "only {} of the synchronous quorum's {} members answered ({}); {needed} are needed to be sure no acknowledged commit is lost (no answer from node(s) {})",
            reported.len(),
            quorum.members.len(),
            quorum.describe(),
            missing.join(", ")
        ));
    }
    // Acknowledged commits are on members only: a standby outside the quorum may be further
    // ahead with WAL nobody acknowledged, and must not stop a failover.
    let short = |r: &Report| mine.lacks(r.position);
    if let Some(ahead) = reports
        .iter()
        .filter(|r| short(r) > 0 && quorum.members.contains(&r.node_id))
        .max_by_key(|r| short(r))
    {
        return Err(
            if ahead.position.timeline > mine.timeline && mine.timeline > 0 {
                format!(
                    "node {} is on timeline {}, newer than this node's timeline {}, {} bytes of which this node lacks, and may hold acknowledged commits there",
                    ahead.node_id,
                    ahead.position.timeline,
                    mine.timeline,
                    short(ahead)
                )
            } else {
                format!(
                    "node {} has received more WAL ({} bytes more) and may hold acknowledged commits this node lacks",
                    ahead.node_id,
                    short(ahead)
                )
            },
        );
    }
    Ok(())
}

/// Whether a registered node may be a member of a quorum: an active standby with a priority.
pub fn may_join(n: &NodeRecord) -> bool {
    n.node_type == NodeType::Standby && n.active && n.priority > 0
}

/// The standbys of `nodes` that may be in primary `me`'s quorum, and whether each streams
/// from it now (`streams`). One that streams from `me` counts whatever its record says of its
/// upstream: the record can lag a failover. One registered under another active standby
/// cascades, and never acknowledges for the primary.
pub fn candidates(
    me: NodeId,
    nodes: &[NodeRecord],
    streams: impl Fn(NodeId) -> bool,
) -> Vec<Candidate> {
    let cascades_from = |u: NodeId| {
        nodes
            .iter()
            .any(|x| x.node_id == u && x.node_type == NodeType::Standby && x.active)
    };
    nodes
        .iter()
        .filter(|n| n.node_id != me && may_join(n))
        .map(|n| Candidate {
            node_id: n.node_id,
            streaming: streams(n.node_id),
        })
        .filter(|c| {
            let upstream = nodes
                .iter()
                .find(|n| n.node_id == c.node_id)
                .and_then(|n| n.upstream_node_id);
            c.streaming || upstream.is_none_or(|u| u == me || !cascades_from(u))
        })
        .collect()
}
/// How long after a reload a new `synchronous_standby_names` is taken to be in force in every
/// WAL sender (they reload within milliseconds of the postmaster's signal).
pub const SETTLE: Duration = Duration::from_secs(2);

/// What the primary's worker reads for one round of the quorum keeper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// `repmgr.synchronous_standbys` and `repmgr.synchronous_mode`.
    pub n: u32,
    pub mode: Mode,
    /// The primary does not hold its lease: it can publish nothing, and commits nothing.
    pub fenced: bool,
    /// The quorum `synchronous_standby_names` describes now (none for a value the keeper did
    /// not write).
    pub applied: Config,
    /// The quorum published in the catalog, when the keeper asked for it
    /// ([`Keeper::needs_published`]).
    pub published: Option<Config>,
    /// The standbys that may be members, and whether each streams from this primary now.
    pub candidates: Vec<Candidate>,
    /// How far each standby streaming from this primary has flushed, by node id: from the
    /// primary's own WAL senders, whatever the catalog says of them.
    pub flushed: Vec<(NodeId, u64)>,
}

/// What the keeper wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeeperAction {
    /// Write this quorum to the catalog, then tell [`Keeper::wrote`] at which WAL position.
    Publish(Config),
    /// Set `synchronous_standby_names` to this quorum and reload (an event says `why`), then
    /// tell [`Keeper::set`].
    Apply { config: Config, why: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    /// Written at `lsn`; confirmed once enough of the applied quorum flushed it.
    Publish { config: Config, lsn: u64 },
    /// Set at `since`.
    Apply { config: Config, since: Duration },
}

/// The primary's quorum keeper: one safe move at a time towards the quorum asked for, each
/// confirmed before the next (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct Keeper {
    /// The published quorum, read once: on a primary only its keeper writes it.
    published: Option<Config>,
    pending: Option<Pending>,
    /// The last thing it waited for, said once.
    waiting: Option<String>,
}

impl Keeper {
    /// Whether the next round needs the published quorum read from the catalog.
    pub fn needs_published(&self) -> bool {
        self.published.is_none()
    }

    /// A publication of `config` was written at WAL position `lsn`.
    pub fn wrote(&mut self, config: Config, lsn: u64) {
        self.published = Some(config.clone());
        self.pending = Some(Pending::Publish { config, lsn });
    }

    /// `config` was set in `synchronous_standby_names` at `now`.
    pub fn set(&mut self, config: Config, now: Duration) {
        self.pending = Some(Pending::Apply { config, since: now });
    }

    /// Says `why` the keeper waits, once per reason.
    fn wait(&mut self, why: String) -> Option<String> {
        if self.waiting.as_ref() == Some(&why) {
            return None;
        }
        self.waiting = Some(why.clone());
        Some(why)
    }

    /// One round at `now`: the next move, if any, and a line to log, if any.
    pub fn round(&mut self, now: Duration, o: &Observed) -> (Option<KeeperAction>, Option<String>) {
        if o.fenced {
            // It cannot publish, and its commits are refused anyway.
            let why = "this primary is fenced; the quorum is managed again once it holds its lease";
            return (None, self.wait(why.into()));
        }
        if let (None, Some(p)) = (&self.published, &o.published) {
            self.published = Some(p.clone());
        }
        let Some(published) = self.published.clone() else {
            return (None, None);
        };
        if o.n == 0 && !published.is_sync() && self.pending.is_none() {
            // Off, and nothing promised: synchronous_standby_names is the DBA's.
            return (None, None);
        }
        let applied = &o.applied;
        match self.pending.take() {
            Some(Pending::Publish { config, lsn }) => {
                let flushed =
                    |id: NodeId| o.flushed.iter().find(|(n, _)| *n == id).map(|(_, f)| *f);
                let streaming = applied
                    .members
                    .iter()
                    .filter(|m| flushed(**m).is_some())
                    .count();
                let needed = match o.mode {
                    Mode::Strict => applied.k as usize,
                    Mode::Preferred => (applied.k as usize).min(streaming),
                };
                let have = applied
                    .members
                    .iter()
                    .filter(|m| flushed(**m).is_some_and(|f| f >= lsn))
                    .count();
                if have < needed {
                    let why = format!(
                        "waiting for {needed} of the applied quorum ({}) to receive the published {} ({have} have it)",
                        applied.describe(),
                        config.describe()
                    );
                    self.pending = Some(Pending::Publish { config, lsn });
                    return (None, self.wait(why));
                }
            }
            Some(Pending::Apply { config, since })
                if *applied != config || now < since + SETTLE =>
            {
                self.pending = Some(Pending::Apply { config, since });
                return (None, None);
            }
            Some(Pending::Apply { .. }) | None => {}
        }
        let target = target(o.n, o.mode, &o.candidates);
        match step(&target, applied, &published) {
            Step::Done => {
                self.waiting = None;
                (None, None)
            }
            Step::Publish(config) => (Some(KeeperAction::Publish(config)), None),
            Step::Apply(config) => {
                let n = o.n;
                let streaming = o.candidates.iter().filter(|c| c.streaming).count();
                let why = if n == 0 {
                    "repmgr.synchronous_standbys is 0: commits no longer wait for standbys"
                        .to_string()
                } else if (streaming as u32) < n && o.mode == Mode::Preferred {
                    format!(
                        "{streaming} of the {n} standbys asked for stream: commits wait for {} until more return (repmgr.synchronous_mode = preferred)",
                        config.k
                    )
                } else if (streaming as u32) < n {
                    format!(
                        "only {streaming} of the {n} standbys asked for stream: commits wait until {n} acknowledge (repmgr.synchronous_mode = strict)"
                    )
                } else {
                    format!(
                        "{n} of {} streaming standbys acknowledge each commit",
                        config.members.len()
                    )
                };
                (Some(KeeperAction::Apply { config, why }), None)
            }
        }
    }
}

/// The quorum a standby about to promote itself starts with as a primary, so that not one
/// commit of the new primary is acknowledged before its keeper runs: the published quorum
/// without this node (in preferred mode with `k` lowered to what is left), which the
/// publication covers. When it was the only member, every standby of `nodes` that may join.
pub fn for_promotion(
    published: &Config,
    me: NodeId,
    mode: Mode,
    nodes: &[NodeRecord],
) -> Option<Config> {
    if !published.is_sync() {
        return None;
    }
    let mut rest: Vec<NodeId> = published
        .members
        .iter()
        .copied()
        .filter(|m| *m != me)
        .collect();
    if rest.is_empty() {
        // Nobody can be promoted under the publication, which names only this node, before
        // this node's keeper publishes the next one.
        rest = nodes
            .iter()
            .filter(|n| n.node_id != me && may_join(n))
            .map(|n| n.node_id)
            .collect();
    }
    let k = match mode {
        Mode::Strict => published.k,
        Mode::Preferred => published.k.min(rest.len() as u32),
    };
    Some(Config::new(k, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: NodeId, streaming: bool) -> Candidate {
        Candidate {
            node_id: id,
            streaming,
        }
    }

    #[test]
    fn targets_follow_the_mode() {
        let all = [c(2, true), c(3, false), c(4, true)];
        assert_eq!(target(0, Mode::Strict, &all), Config::none());
        assert_eq!(target(1, Mode::Strict, &all), Config::new(1, [2, 4]));
        assert_eq!(target(2, Mode::Preferred, &all), Config::new(2, [2, 4]));
        // Strict never lists fewer than n: it adds idle standbys, and waits for them.
        assert_eq!(target(3, Mode::Strict, &all), Config::new(3, [2, 3, 4]));
        assert_eq!(
            target(2, Mode::Strict, &[c(3, false), c(2, false)]),
            Config::new(2, [2, 3])
        );
        assert_eq!(target(2, Mode::Strict, &[]), Config::new(2, []));
        // Preferred lowers k to what streams, down to asynchronous.
        assert_eq!(target(3, Mode::Preferred, &all), Config::new(2, [2, 4]));
        assert_eq!(target(1, Mode::Preferred, &[c(3, false)]), Config::none());
    }

    #[test]
    fn covering_means_every_acknowledging_set_meets_every_report_set() {
        // Brute force over small quorums: covers() must be exactly that property.
        let sets: Vec<Vec<NodeId>> = (0u32..16)
            .map(|bits| {
                (0..4)
                    .filter(|i| bits & (1 << i) != 0)
                    .map(|i| i + 2)
                    .collect()
            })
            .collect();
        let subsets = |m: &[NodeId]| -> Vec<Vec<NodeId>> {
            (0u32..(1 << m.len()))
                .map(|bits| {
                    m.iter()
                        .enumerate()
                        .filter(|(i, _)| bits & (1 << i) != 0)
                        .map(|(_, v)| *v)
                        .collect()
                })
                .collect()
        };
        for pm in &sets {
            for pk in 1..=pm.len() as u32 {
                let published = Config::new(pk, pm.clone());
                for am in &sets {
                    for ak in 1..=am.len() as u32 {
                        let applied = Config::new(ak, am.clone());
                        let acks = subsets(am);
                        let reports = subsets(pm);
                        let safe = acks.iter().filter(|a| a.len() >= ak as usize).all(|a| {
                            reports
                                .iter()
                                .filter(|r| r.len() >= published.reports_needed())
                                .all(|r| r.iter().any(|x| a.contains(x)))
                        });
                        assert_eq!(
                            published.covers(&applied),
                            safe,
                            "{published:?} over {applied:?}"
                        );
                    }
                }
            }
        }
        assert!(Config::none().covers(&Config::none()));
        assert!(Config::new(1, [2]).covers(&Config::none()));
        assert!(Config::none().covers(&Config::new(1, [2])));
    }

    /// Walks from `applied`/`published` to `target`, checking the publication covers what
    /// is applied after every step.
    fn walk(target: &Config, mut applied: Config, mut published: Config) -> Vec<Step> {
        let mut steps = Vec::new();
        for _ in 0..6 {
            let s = step(target, &applied, &published);
            match &s {
                Step::Publish(c) => published = c.clone(),
                Step::Apply(c) => applied = c.clone(),
                Step::Done => return steps,
            }
            assert!(published.covers(&applied), "{published:?} over {applied:?}");
            steps.push(s);
        }
        panic!("no convergence: {steps:?}");
    }

    #[test]
    fn changes_keep_the_publication_over_what_is_applied() {
        let a = Config::new(1, [2, 3]);
        // A new member: published first, then applied.
        assert_eq!(
            walk(&Config::new(1, [2, 3, 4]), a.clone(), a.clone()),
            vec![
                Step::Publish(Config::new(1, [2, 3, 4])),
                Step::Apply(Config::new(1, [2, 3, 4]))
            ]
        );
        // A member leaves: applied first, published after.
        assert_eq!(
            walk(&Config::new(1, [2]), a.clone(), a.clone()),
            vec![
                Step::Apply(Config::new(1, [2])),
                Step::Publish(Config::new(1, [2]))
            ]
        );
        // One member replaced by another: widen, apply, then narrow the publication.
        assert_eq!(
            walk(&Config::new(1, [2, 4]), a.clone(), a.clone()),
            vec![
                Step::Publish(Config::new(1, [2, 3, 4])),
                Step::Apply(Config::new(1, [2, 4])),
                Step::Publish(Config::new(1, [2, 4]))
            ]
        );
        // Turning it on: the quorum is applied before anything is promised.
        assert_eq!(
            walk(&a, Config::none(), Config::none()),
            vec![Step::Apply(a.clone()), Step::Publish(a.clone())]
        );
        // Turning it off narrows like any other change: the waits stop, then the promise is
        // withdrawn. The other way round, a commit that waited through the withdrawal could
        // be acknowledged by a quorum applied later (in preferred mode, when a standby
        // returns) that no publication covers: seed 71446 lost one so.
        assert_eq!(
            walk(&Config::none(), a.clone(), a.clone()),
            vec![Step::Apply(Config::none()), Step::Publish(Config::none())]
        );
        // k raised and lowered.
        assert_eq!(
            walk(&Config::new(2, [2, 3]), a.clone(), a.clone()),
            vec![
                Step::Apply(Config::new(2, [2, 3])),
                Step::Publish(Config::new(2, [2, 3]))
            ]
        );
        assert_eq!(
            walk(&a, Config::new(2, [2, 3]), Config::new(2, [2, 3])),
            vec![Step::Publish(a.clone()), Step::Apply(a.clone())]
        );
    }

    #[test]
    fn positions_on_an_older_timeline_hold_no_acknowledged_commit_of_a_newer_one() {
        let q = Config::new(1, [2, 3]);
        let at = |timeline, start, lsn| Position {
            timeline,
            start,
            lsn,
        };
        let r = |id, position| Report {
            node_id: id,
            position,
        };
        // Node 3 streamed a replaced primary's last WAL on timeline 1 past where timeline 2
        // began (at 80): further, but on a dead branch.
        assert_eq!(
            may_promote(&q, 2, at(2, 80, 100), &[r(3, at(1, 0, 900))]),
            Ok(())
        );
        let e = may_promote(&q, 3, at(1, 0, 900), &[r(2, at(2, 80, 100))]).unwrap_err();
        assert!(
            e.contains("node 2 is on timeline 2, newer than this node's timeline 1, 20 bytes of which this node lacks"),
            "{e}"
        );
    }

    #[test]
    fn only_a_standby_holding_every_acknowledged_commit_may_be_promoted() {
        let q = Config::new(1, [2, 3, 4]);
        let p1 = |lsn| Position {
            timeline: 1,
            start: 0,
            lsn,
        };
        let r = |id, lsn| Report {
            node_id: id,
            position: Position {
                timeline: 1,
                start: 0,
                lsn,
            },
        };
        assert_eq!(may_promote(&Config::none(), 9, p1(0), &[]), Ok(()));
        assert_eq!(may_promote(&q, 2, p1(100), &[r(3, 100), r(4, 90)]), Ok(()));
        assert!(
            may_promote(&q, 2, p1(100), &[r(3, 120), r(4, 90)])
                .unwrap_err()
                .contains("node 3 has received more WAL (20 bytes more)")
        );
        // k = 1 of 3: all three must report.
        let e = may_promote(&q, 2, p1(100), &[r(3, 100)]).unwrap_err();
        assert!(
            e.contains("only 2 of the synchronous quorum's 3 members answered")
                && e.contains("node(s) 4"),
            "{e}"
        );
        // ... and that comes first: a member further ahead could not be promoted either.
        let e = may_promote(&q, 3, p1(90), &[r(4, 100)]).unwrap_err();
        assert!(
            e.contains("only 2 of the synchronous quorum's 3 members answered")
                && e.contains("node(s) 2"),
            "{e}"
        );
        // A standby outside the quorum needs as many members' reports, all behind it.
        let e = may_promote(&q, 5, p1(100), &[r(3, 90), r(4, 90)]).unwrap_err();
        assert!(
            e.contains("only 2 of the synchronous quorum's 3 members answered"),
            "{e}"
        );
        assert_eq!(
            may_promote(&q, 5, p1(100), &[r(2, 100), r(3, 90), r(4, 90)]),
            Ok(())
        );
        // k = 2 of 3: two reports (its own included) suffice.
        assert_eq!(
            may_promote(&Config::new(2, [2, 3, 4]), 2, p1(100), &[r(3, 100)]),
            Ok(())
        );
        // Reports from outside the quorum count for nothing, however far ahead.
        assert!(may_promote(&Config::new(2, [2, 3, 4]), 2, p1(100), &[r(7, 100)]).is_err());
        assert_eq!(
            may_promote(
                &Config::new(2, [2, 3, 4]),
                2,
                p1(100),
                &[r(3, 100), r(7, 900)]
            ),
            Ok(())
        );
    }

    #[test]
    fn standby_names_are_quoted() {
        let q = Config::new(2, [3, 2]);
        assert_eq!(
            q.standby_names(|id| format!("node{id}")),
            "ANY 2 (node2, node3)"
        );
        assert_eq!(
            Config::new(1, [2]).standby_names(|_| "a\"b".into()),
            "ANY 1 (\"a\"\"b\")"
        );
        assert_eq!(
            Config::new(1, [2]).standby_names(|_| "Db-2".into()),
            "ANY 1 (\"Db-2\")"
        );
        assert_eq!(
            Config::new(1, []).standby_names(|_| unreachable!()),
            "ANY 1 (repmgr_no_standby)"
        );
        assert_eq!(Config::none().standby_names(|_| unreachable!()), "");
        assert_eq!(Config::new(0, [2]), Config::none());
    }

    fn observed(n: u32, applied: &Config, streaming: &[(NodeId, u64)]) -> Observed {
        Observed {
            n,
            mode: Mode::Strict,
            fenced: false,
            applied: applied.clone(),
            published: Some(Config::none()),
            candidates: [2, 3]
                .iter()
                .map(|id| c(*id, streaming.iter().any(|(s, _)| s == id)))
                .collect(),
            flushed: streaming.to_vec(),
        }
    }

    #[test]
    fn the_keeper_confirms_each_move_before_the_next() {
        let secs = Duration::from_secs;
        let mut k = Keeper::default();
        assert!(k.needs_published());
        // From asynchronous: what waits is applied first (nothing was promised before).
        let none = Config::none();
        let (a, _) = k.round(secs(0), &observed(1, &none, &[(2, 0)]));
        let one = Config::new(1, [2]);
        assert!(matches!(&a, Some(KeeperAction::Apply { config, .. }) if *config == one));
        k.set(one.clone(), secs(0));
        assert!(!k.needs_published());
        // Nothing more until every WAL sender has taken it.
        assert_eq!(k.round(secs(1), &observed(1, &one, &[(2, 0)])).0, None);
        let (a, _) = k.round(SETTLE, &observed(1, &one, &[(2, 0)]));
        assert_eq!(a, Some(KeeperAction::Publish(one.clone())));
        k.wrote(one.clone(), 500);
        // Node 3 starts streaming: widening waits until the applied quorum has the
        // publication of the wider one...
        let both = [(2, 400), (3, 400)];
        let (a, say) = k.round(secs(3), &observed(1, &one, &both));
        assert_eq!(a, None);
        assert!(say.is_some_and(|s| s.contains("waiting for 1 of the applied quorum")));
        // ...and a line is said once.
        assert_eq!(k.round(secs(4), &observed(1, &one, &both)), (None, None));
        let both = [(2, 500), (3, 400)];
        let wide = Config::new(1, [2, 3]);
        let (a, _) = k.round(secs(5), &observed(1, &one, &both));
        assert_eq!(a, Some(KeeperAction::Publish(wide.clone())));
        k.wrote(wide.clone(), 600);
        assert_eq!(k.round(secs(6), &observed(1, &one, &both)).0, None);
        let (a, _) = k.round(secs(7), &observed(1, &one, &[(2, 600), (3, 600)]));
        assert!(matches!(&a, Some(KeeperAction::Apply { config, .. }) if *config == wide));
        // A fenced primary touches nothing.
        let mut fenced = observed(1, &wide, &[]);
        fenced.fenced = true;
        let (a, say) = k.round(secs(8), &fenced);
        assert_eq!(a, None);
        assert!(say.is_some_and(|s| s.contains("fenced")));
    }
}
