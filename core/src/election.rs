//! Whether a standby should stand for election, and whether it won.
//!
//! A standby whose lease has expired first asks every other voter how things look from there
//! (a pre-vote that changes nothing anywhere). Only when a majority would grant, no node of
//! the primary's location is missing, nobody still hears the primary (with
//! `primary_visibility_consensus`), and it is the best candidate it can see, does it start a
//! new term and ask for votes. Every standby evaluates the same rule on what it sees, so in a
//! healthy network exactly one stands; if views differ and two stand in one term, at most one
//! can gather a majority.

use std::cmp::Reverse;
use std::time::Duration;

use crate::lease::{NodeId, majority};
use crate::lsn::{Lsn, Position};
use crate::quorum::{self, Config, Report};

/// How a registered node takes part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Primary,
    Standby,
    Witness,
}

/// A voter's answer to the pre-vote question "how does it look from there?".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    pub term: u64,
    /// Running as a primary that holds its lease: the primary is not gone.
    pub leading: bool,
    /// Running as a standby.
    pub in_recovery: bool,
    /// How long it has heard nothing from the primary.
    pub silence: Duration,
    /// It has heard nothing for as long as it must before it votes (its own rule: its lease,
    /// or what the fence of the primary it confirmed needs).
    pub lost: bool,
    /// Received WAL position (standbys), its timeline (0: unknown) and where that began.
    pub lsn: Option<u64>,
    pub timeline: u32,
    pub timeline_start: u64,
    /// Never a candidate now: paused, diverged, `repmgr.failover = manual`, priority 0, or
    /// not registered in its own catalog.
    pub unavailable: bool,
    /// Its WAL is on a timeline nobody continues: its position says nothing.
    pub diverged: bool,
    /// Its `repmgr.priority`: between standbys with the same WAL, the higher stands.
    pub priority: i32,
    /// Its copies of the primary's failover slots that a consumer could go on from after a
    /// promotion (PostgreSQL 17+): between standbys with the same WAL, the one with more
    /// stands, before priority.
    pub failover_slots: u32,
    /// The membership version of its node list: it refuses candidates with an older one.
    pub version: u64,
    /// Where the synchronous quorum its catalog publishes was written (a WAL position); 0
    /// when it publishes none or an asynchronous one. It refuses candidates whose catalog
    /// lacks that publication.
    pub sync_quorum: u64,
}

/// Another registered, active node, as the candidate sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node_id: NodeId,
    pub kind: Kind,
    pub location: String,
    /// `None`: it did not answer.
    pub answer: Option<Answer>,
}

/// The would-be candidate itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me {
    pub node_id: NodeId,
    pub term: u64,
    pub lsn: u64,
    /// The timeline of its WAL (0: unknown), and where that began.
    pub timeline: u32,
    pub timeline_start: u64,
    pub silence: Duration,
    /// Its own wait before voting has passed.
    pub lost: bool,
    pub location: String,
    pub priority: i32,
    /// Its usable copies of failover slots (see [`Answer::failover_slots`]).
    pub failover_slots: u32,
    pub automatic: bool,
    pub paused: bool,
    /// Its WAL is on a timeline nobody continues.
    pub diverged: bool,
    /// It has replayed all the WAL it received, so its catalog (the published synchronous
    /// quorum) is as new as its position.
    pub replayed_all: bool,
    /// The membership version of its node list.
    pub version: u64,
    /// Where the quorum its catalog publishes was written (0: none).
    pub quorum_version: u64,
}

/// Cluster-wide rules for the election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// A candidate may be at most this many bytes behind the most advanced standby it sees.
    pub max_lag: u64,
    /// Cancel when any voter still hears the primary.
    pub visibility_consensus: bool,
    /// The failed primary's location, when known.
    pub primary_location: Option<String>,
    /// The synchronous quorum published in the candidate's catalog (asynchronous: none).
    pub quorum: Config,
    /// Standbys this node deferred to that did not win in time: never deferred to again in
    /// this outage (one can look better and yet be unable to win for reasons this node
    /// cannot see, such as the size of its own, older node list).
    pub passed_over: Vec<NodeId>,
}

/// What the standby should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Ask for votes in this term.
    Stand { term: u64 },
    /// Another standby is the better candidate.
    Defer { to: NodeId },
    /// Do nothing now, for this reason. `lasting`: not because the primary may still be
    /// alive (it is heard, or too few voters have lost it), but for something waiting will
    /// not change soon (its location unseen, its lag, the synchronous quorum): others should
    /// not defer to this node meanwhile.
    Wait { reason: String, lasting: bool },
}

fn wait(reason: String) -> Plan {
    Plan::Wait {
        reason,
        lasting: false,
    }
}

fn declined(reason: String) -> Plan {
    Plan::Wait {
        reason,
        lasting: true,
    }
}

/// Why a node with these settings may not be promoted, if it may not.
pub fn ineligible(priority: i32, automatic: bool) -> Option<String> {
    if priority <= 0 {
        Some("its priority is 0 (never promoted)".into())
    } else if !automatic {
        Some("its repmgr.failover is manual".into())
    } else {
        None
    }
}

/// Decides whether `me` should stand, from the pre-vote answers of the other voters in
/// `peers` (every voter of its node list but itself, the failed primary included).
pub fn plan(me: &Me, peers: &[Peer], rules: &Rules) -> Plan {
    if let Some(why) = ineligible(me.priority, me.automatic) {
        return wait(format!("this node cannot be promoted: {why}"));
    }
    if me.diverged {
        return wait("this node's timeline diverged from the cluster's".into());
    }
    if me.paused {
        return wait("this node is paused".into());
    }
    if !me.lost {
        return wait(format!(
            "the primary was heard {} ms ago",
            me.silence.as_millis()
        ));
    }
    let answered: Vec<(&Peer, &Answer)> = peers
        .iter()
        .filter_map(|p| p.answer.as_ref().map(|a| (p, a)))
        .collect();
    if let Some((p, _)) = answered.iter().find(|(_, a)| a.leading) {
        return wait(format!("node {} answers as a working primary", p.node_id));
    }
    let current = answered
        .iter()
        .map(|(_, a)| a.term)
        .chain(std::iter::once(me.term))
        .max()
        .unwrap_or(0);
    let voting: Vec<&(&Peer, &Answer)> = answered
        .iter()
        .filter(|(p, a)| p.kind != Kind::Primary && a.in_recovery_or_witness(p))
        .collect();
    if rules.visibility_consensus {
        // A voter still in an older term hears a primary the others have already left behind.
        if let Some((p, a)) = voting.iter().find(|(_, a)| a.term == current && !a.lost) {
            return wait(format!(
                "node {} heard the primary {} ms ago",
                p.node_id,
                a.silence.as_millis()
            ));
        }
    }
    let voters = peers.len() + 1;
    // A voter whose node list is newer than this node's refuses its vote.
    let newer: Vec<NodeId> = voting
        .iter()
        .filter(|(_, a)| a.version > me.version)
        .map(|(p, _)| p.node_id)
        .collect();
    let willing = 1 + voting
        .iter()
        .filter(|(_, a)| a.lost && a.version <= me.version)
        .count();
    if willing < majority(voters) {
        let why = if newer.is_empty() {
            String::new()
        } else {
            format!(
                " (node {} would refuse: its node list is newer than this node's, version {})",
                newer
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", node "),
                me.version
            )
        };
        return wait(format!(
            "only {willing} of {voters} voters have lost the primary and would vote for this node; {} are needed{why}",
            majority(voters)
        ));
    }
    if let Some(loc) = &rules.primary_location {
        let seen = me.location == *loc
            || answered
                .iter()
                .any(|(p, _)| p.location == *loc && p.kind != Kind::Primary);
        if !seen {
            return declined(format!(
                "no node in the primary's location \"{loc}\" is visible; this may be a network split"
            ));
        }
    }
    if let Some(why) = newer_quorum(
        me.quorum_version,
        voting.iter().map(|(p, a)| (p.node_id, *a)),
    ) {
        return declined(why);
    }
    // Standbys that answered, with what they received (see Position::lacks).
    let standbys: Vec<(&Peer, &Answer, Position)> = answered
        .iter()
        .filter(|(p, a)| p.kind == Kind::Standby && a.in_recovery && !a.diverged)
        .filter_map(|(p, a)| a.position().map(|pos| (*p, *a, pos)))
        .collect();
    let mine = Position {
        timeline: me.timeline,
        start: me.timeline_start,
        lsn: me.lsn,
    };
    let short = standbys
        .iter()
        .map(|(_, _, pos)| mine.lacks(*pos))
        .max()
        .unwrap_or(0);
    let sync = rules.quorum.is_sync();
    if sync {
        if !me.replayed_all {
            return declined(
                "it is still replaying the WAL it received (the synchronous quorum is read after)"
                    .into(),
            );
        }
        let reports: Vec<Report> = standbys
            .iter()
            .map(|(p, _, pos)| Report {
                node_id: p.node_id,
                position: *pos,
            })
            .collect();
        if let Err(why) = quorum::may_promote(&rules.quorum, me.node_id, mine, &reports) {
            return declined(why);
        }
    } else if short > rules.max_lag {
        return declined(format!(
            "this node is {short} bytes behind the most advanced standby (limit {})",
            rules.max_lag
        ));
    }
    // A standby whose node list is older than a majority's gets too few votes: deferring to
    // it would leave nobody standing (one that streamed a replaced primary's last WAL can be
    // ahead by its position and yet behind by its node list).
    let could_win = |p: &Peer, a: &Answer| {
        let grant = voting
            .iter()
            .filter(|(q, b)| q.node_id != p.node_id && b.lost && b.version <= a.version)
            .count();
        1 + grant + usize::from(me.version <= a.version) >= majority(voters)
    };
    // Without a synchronous quorum, usable copies of the failover slots rank before WAL among
    // the standbys within max_lag of every other: the WAL a less advanced one lacks is bounded
    // by what the operator accepts to lose, while a promoted standby without the copies
    // leaves every logical consumer to start over. A voter that may stand grants such a
    // candidate the same lag (VoterFacts::tolerance). With a quorum, WAL first: a quorum
    // member ahead of a candidate may hold acknowledged commits, and refuses it.
    let within_lag = |pos: Position| {
        standbys
            .iter()
            .map(|(_, _, other)| *other)
            .chain(std::iter::once(mine))
            .all(|other| pos.lacks(other) <= rules.max_lag)
    };
    let key = |pos: Position, slots: u32, priority: i32, id: NodeId| {
        let slots_first = if sync { 0 } else { slots };
        (slots_first, pos.rank(), slots, priority, Reverse(id))
    };
    // Only standbys that may stand can be deferred to: each says so in its own answer
    // (failover mode, priority, pause), so one set to manual never holds the others back.
    let best = standbys
        .iter()
        .filter(|(_, a, _)| !a.unavailable)
        .filter(|(p, _, _)| !rules.passed_over.contains(&p.node_id))
        .filter(|(p, a, _)| could_win(p, a))
        .filter(|(_, _, pos)| sync || within_lag(*pos))
        .map(|(p, a, pos)| key(*pos, a.failover_slots, a.priority, p.node_id))
        .chain(std::iter::once(key(
            mine,
            me.failover_slots,
            me.priority,
            me.node_id,
        )))
        .max()
        .expect("me is a candidate");
    if best.4.0 != me.node_id {
        return Plan::Defer { to: best.4.0 };
    }
    Plan::Stand { term: current + 1 }
}

/// Why a candidate whose catalog's quorum was published at `mine` may lack acknowledged
/// commits, if an answer (by node id) shows a synchronous quorum published after it: that
/// node has WAL the candidate lacks. A diverged node's catalog is on a dead branch and does
/// not count.
pub fn newer_quorum<'a>(
    mine: u64,
    answers: impl IntoIterator<Item = (NodeId, &'a Answer)>,
) -> Option<String> {
    let (id, a) = answers
        .into_iter()
        .filter(|(_, a)| !a.diverged && a.sync_quorum > mine)
        .max_by_key(|(_, a)| a.sync_quorum)?;
    Some(format!(
        "node {id}'s catalog publishes a synchronous quorum written at {}, after this node's (at {}): this node lacks WAL that may hold acknowledged commits",
        Lsn(a.sync_quorum),
        Lsn(mine)
    ))
}

impl Answer {
    /// A witness always counts as a voter that can grant; a data node only while a standby.
    fn in_recovery_or_witness(&self, p: &Peer) -> bool {
        self.in_recovery || p.kind == Kind::Witness
    }

    /// How far its WAL reaches, when it said.
    pub fn position(&self) -> Option<Position> {
        self.lsn.map(|lsn| Position {
            timeline: self.timeline,
            start: self.timeline_start,
            lsn,
        })
    }
}

/// Whether `granted` votes (the candidate's own included) win among `voters`.
pub fn won(granted: usize, voters: usize) -> bool {
    granted >= majority(voters)
}
