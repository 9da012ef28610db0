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

use crate::lease::{NodeId, Timing, majority};
use crate::quorum::{self, Config, Report};

/// How a registered node takes part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Primary,
    Standby,
    Witness,
}

/// A voter's answer to the pre-vote question "how does it look from there?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub term: u64,
    /// Running as a primary that holds its lease: the primary is not gone.
    pub leading: bool,
    /// Running as a standby.
    pub in_recovery: bool,
    /// How long it has heard nothing from the primary.
    pub silence: Duration,
    /// Received WAL position (standbys).
    pub lsn: Option<u64>,
    /// Paused, or unable to follow the cluster: never a candidate.
    pub unavailable: bool,
    /// Its WAL is on a timeline nobody continues: its position says nothing.
    pub diverged: bool,
}

/// Another registered, active node, as the candidate sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node_id: NodeId,
    pub kind: Kind,
    pub location: String,
    pub priority: i32,
    /// `repmgr.failover = automatic` on that node, as registered.
    pub automatic: bool,
    /// `None`: it did not answer.
    pub answer: Option<Answer>,
}

/// The would-be candidate itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me {
    pub node_id: NodeId,
    pub term: u64,
    pub lsn: u64,
    pub silence: Duration,
    pub location: String,
    pub priority: i32,
    pub automatic: bool,
    pub paused: bool,
    /// It has replayed all the WAL it received, so its catalog (the published synchronous
    /// quorum) is as new as its position.
    pub replayed_all: bool,
}

/// Cluster-wide rules for the election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub timing: Timing,
    /// A candidate may be at most this many bytes behind the most advanced standby it sees.
    pub max_lag: u64,
    /// Cancel when any voter still hears the primary.
    pub visibility_consensus: bool,
    /// The failed primary's location, when known.
    pub primary_location: Option<String>,
    /// The synchronous quorum published in the candidate's catalog (asynchronous: none).
    pub quorum: Config,
}

/// What the standby should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Ask for votes in this term.
    Stand { term: u64 },
    /// Another standby is the better candidate.
    Defer { to: NodeId },
    /// Do nothing now, for this reason.
    Wait { reason: String },
}

fn wait(reason: String) -> Plan {
    Plan::Wait { reason }
}

/// Why `node` may not be promoted, if it may not.
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
/// `peers` (every active registered node but this one, the failed primary included).
pub fn plan(me: &Me, peers: &[Peer], rules: &Rules) -> Plan {
    if let Some(why) = ineligible(me.priority, me.automatic) {
        return wait(format!("this node cannot be promoted: {why}"));
    }
    if me.paused {
        return wait("this node is paused".into());
    }
    let lease = rules.timing.lease;
    if me.silence < lease {
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
        if let Some((p, a)) = voting
            .iter()
            .find(|(_, a)| a.term == current && a.silence < lease)
        {
            return wait(format!(
                "node {} heard the primary {} ms ago",
                p.node_id,
                a.silence.as_millis()
            ));
        }
    }
    let voters = peers.len() + 1;
    let willing = 1 + voting.iter().filter(|(_, a)| a.silence >= lease).count();
    if willing < majority(voters) {
        return wait(format!(
            "only {willing} of {voters} voters have lost the primary; {} are needed",
            majority(voters)
        ));
    }
    if let Some(loc) = &rules.primary_location {
        let seen = me.location == *loc
            || answered
                .iter()
                .any(|(p, _)| p.location == *loc && p.kind != Kind::Primary);
        if !seen {
            return wait(format!(
                "no node in the primary's location \"{loc}\" is visible; this may be a network split"
            ));
        }
    }
    // Standbys that answered, with what they received.
    let standbys: Vec<(&Peer, u64)> = answered
        .iter()
        .filter(|(p, a)| p.kind == Kind::Standby && a.in_recovery && !a.diverged)
        .filter_map(|(p, a)| a.lsn.map(|l| (*p, l)))
        .collect();
    let most_advanced = standbys
        .iter()
        .map(|(_, l)| *l)
        .max()
        .unwrap_or(0)
        .max(me.lsn);
    let sync = rules.quorum.is_sync();
    if sync {
        if !me.replayed_all {
            return wait(
                "it is still replaying the WAL it received (the synchronous quorum is read after)"
                    .into(),
            );
        }
        let reports: Vec<Report> = standbys
            .iter()
            .map(|(p, l)| Report {
                node_id: p.node_id,
                lsn: *l,
            })
            .collect();
        if let Err(why) = quorum::may_promote(&rules.quorum, me.node_id, me.lsn, &reports) {
            return wait(why);
        }
    } else if me.lsn.saturating_add(rules.max_lag) < most_advanced {
        return wait(format!(
            "this node is {} bytes behind the most advanced standby (limit {})",
            most_advanced - me.lsn,
            rules.max_lag
        ));
    }
    let best = standbys
        .iter()
        .filter(|(p, _)| ineligible(p.priority, p.automatic).is_none())
        .filter(|(p, _)| !p.answer.as_ref().is_some_and(|a| a.unavailable))
        // With a synchronous quorum only its members may hold every acknowledged commit.
        .filter(|(p, _)| !sync || rules.quorum.members.contains(&p.node_id))
        .map(|(p, l)| (*l, p.priority, Reverse(p.node_id)))
        .chain(std::iter::once((me.lsn, me.priority, Reverse(me.node_id))))
        .max()
        .expect("me is a candidate");
    if best.2.0 != me.node_id {
        return Plan::Defer { to: best.2.0 };
    }
    Plan::Stand { term: current + 1 }
}

impl Answer {
    /// A witness always counts as a voter that can grant; a data node only while a standby.
    fn in_recovery_or_witness(&self, p: &Peer) -> bool {
        self.in_recovery || p.kind == Kind::Witness
    }
}

/// Whether `granted` votes (the candidate's own included) win among `voters`.
pub fn won(granted: usize, voters: usize) -> bool {
    granted >= majority(voters)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn rules() -> Rules {
        Rules {
            timing: Timing {
                heartbeat: ms(250),
                fence: ms(1500),
                lease: ms(2500),
            },
            max_lag: 16 << 20,
            visibility_consensus: true,
            primary_location: Some("dc1".into()),
            quorum: Config::none(),
        }
    }

    fn me(lsn: u64) -> Me {
        Me {
            node_id: 2,
            term: 4,
            lsn,
            silence: ms(3000),
            location: "dc1".into(),
            priority: 100,
            automatic: true,
            paused: false,
            replayed_all: true,
        }
    }

    fn standby(id: NodeId, lsn: u64, silence: u64) -> Peer {
        Peer {
            node_id: id,
            kind: Kind::Standby,
            location: "dc1".into(),
            priority: 100,
            automatic: true,
            answer: Some(Answer {
                term: 4,
                leading: false,
                in_recovery: true,
                silence: ms(silence),
                lsn: Some(lsn),
                unavailable: false,
                diverged: false,
            }),
        }
    }

    fn dead_primary() -> Peer {
        Peer {
            node_id: 1,
            kind: Kind::Primary,
            location: "dc1".into(),
            priority: 100,
            automatic: true,
            answer: None,
        }
    }

    #[test]
    fn the_most_advanced_standby_stands_the_others_defer() {
        let peers = [dead_primary(), standby(3, 900, 3000)];
        assert_eq!(plan(&me(1000), &peers, &rules()), Plan::Stand { term: 5 });
        assert_eq!(plan(&me(800), &peers, &rules()), Plan::Defer { to: 3 });
        // Equal LSN: higher priority, then lower id.
        let mut p3 = standby(3, 1000, 3000);
        p3.priority = 150;
        assert_eq!(
            plan(&me(1000), &[dead_primary(), p3.clone()], &rules()),
            Plan::Defer { to: 3 }
        );
        p3.priority = 100;
        assert_eq!(
            plan(&me(1000), &[dead_primary(), p3], &rules()),
            Plan::Stand { term: 5 }
        );
    }

    #[test]
    fn no_majority_no_election() {
        // Two data nodes, no witness: the survivor alone is not a majority.
        let r = plan(&me(1000), &[dead_primary()], &rules());
        assert_eq!(
            r,
            Plan::Wait {
                reason: "only 1 of 2 voters have lost the primary; 2 are needed".into()
            }
        );
        // With a witness that lost the primary too, it is.
        let w = Peer {
            kind: Kind::Witness,
            priority: 0,
            answer: Some(Answer {
                lsn: None,
                in_recovery: false,
                ..standby(3, 0, 3000).answer.unwrap()
            }),
            ..standby(3, 0, 0)
        };
        assert_eq!(
            plan(&me(1000), &[dead_primary(), w.clone()], &rules()),
            Plan::Stand { term: 5 }
        );
        // Witness down as well: nothing.
        let w_down = Peer { answer: None, ..w };
        assert!(matches!(
            plan(&me(1000), &[dead_primary(), w_down], &rules()),
            Plan::Wait { .. }
        ));
    }

    #[test]
    fn anyone_still_hearing_the_primary_cancels() {
        let peers = [dead_primary(), standby(3, 900, 400)];
        assert_eq!(
            plan(&me(1000), &peers, &rules()),
            Plan::Wait {
                reason: "node 3 heard the primary 400 ms ago".into()
            }
        );
        let r = Rules {
            visibility_consensus: false,
            ..rules()
        };
        assert!(
            matches!(plan(&me(1000), &peers, &r), Plan::Wait { .. }),
            "and without consensus, there is no majority"
        );
    }

    #[test]
    fn exclusions() {
        let peers = [dead_primary(), standby(3, 900, 3000)];
        let zero = Me {
            priority: 0,
            ..me(1000)
        };
        assert!(
            matches!(plan(&zero, &peers, &rules()), Plan::Wait { reason } if reason.contains("priority is 0"))
        );
        let manual = Me {
            automatic: false,
            ..me(1000)
        };
        assert!(
            matches!(plan(&manual, &peers, &rules()), Plan::Wait { reason } if reason.contains("manual"))
        );
        // A priority-0 standby ahead does not make us defer, but we may not lag it too much.
        let mut p3 = standby(3, 1100, 3000);
        p3.priority = 0;
        assert_eq!(
            plan(&me(1000), &[dead_primary(), p3.clone()], &rules()),
            Plan::Stand { term: 5 }
        );
        p3.answer.as_mut().unwrap().lsn = Some(1000 + (16 << 20) + 1);
        assert!(
            matches!(plan(&me(1000), &[dead_primary(), p3], &rules()), Plan::Wait { reason } if reason.contains("behind the most advanced"))
        );
        let r = Rules {
            primary_location: Some("dc2".into()),
            ..rules()
        };
        assert!(
            matches!(plan(&me(1000), &peers, &r), Plan::Wait { reason } if reason.contains("location \"dc2\""))
        );
    }

    #[test]
    fn a_live_primary_or_a_recent_heartbeat_stops_everything() {
        let alive = Peer {
            answer: Some(Answer {
                term: 4,
                leading: true,
                in_recovery: false,
                silence: ms(0),
                lsn: None,
                unavailable: false,
                diverged: false,
            }),
            ..dead_primary()
        };
        assert!(
            matches!(plan(&me(1000), &[alive.clone(), standby(3, 900, 3000)], &rules()), Plan::Wait { reason } if reason.contains("answers as a working primary"))
        );
        // A fenced old primary does not hold anything up.
        let fenced = Peer {
            answer: Some(Answer {
                leading: false,
                silence: ms(9000),
                ..alive.answer.clone().unwrap()
            }),
            ..alive
        };
        assert_eq!(
            plan(&me(1000), &[fenced, standby(3, 900, 3000)], &rules()),
            Plan::Stand { term: 5 }
        );
        let recent = Me {
            silence: ms(1000),
            ..me(1000)
        };
        assert!(matches!(
            plan(&recent, &[dead_primary(), standby(3, 900, 3000)], &rules()),
            Plan::Wait { .. }
        ));
        assert!(won(2, 3) && !won(1, 3) && won(3, 5) && !won(2, 4));
    }

    #[test]
    fn a_synchronous_quorum_limits_candidates_to_members_holding_every_commit() {
        let r = Rules {
            quorum: Config::new(1, [2, 3]),
            ..rules()
        };
        let outsider = standby(4, 5000, 3000);
        // Node 4 has more WAL but is outside the quorum: node 2 (a member, level with 3) stands.
        let peers = [dead_primary(), standby(3, 1000, 3000), outsider.clone()];
        assert_eq!(plan(&me(1000), &peers, &r), Plan::Stand { term: 5 });
        // A member ahead of it: it waits (and never defers to a non-member).
        let ahead = [dead_primary(), standby(3, 1200, 3000), outsider];
        assert!(
            matches!(plan(&me(1000), &ahead, &r), Plan::Wait { reason } if reason.contains("node 3 has received more WAL"))
        );
        // k = 1 of 2: the other member must answer.
        let mut silent = standby(3, 1000, 3000);
        silent.answer = None;
        assert!(
            matches!(plan(&me(1000), &[dead_primary(), silent, standby(5, 1000, 3000), standby(6, 1000, 3000)], &r), Plan::Wait { reason } if reason.contains("only 1 of the synchronous quorum's 2 members answered"))
        );
        // Not a member: never stands, whatever its position.
        let not_member = Rules {
            quorum: Config::new(1, [3, 4]),
            ..rules()
        };
        assert!(
            matches!(plan(&me(9000), &peers_of(&[3, 4]), &not_member), Plan::Wait { reason } if reason.contains("not in the synchronous quorum"))
        );
        // Still replaying: the catalog it read may be older than its position.
        let mut replaying = me(1000);
        replaying.replayed_all = false;
        assert!(
            matches!(plan(&replaying, &peers_of(&[3]), &r), Plan::Wait { reason } if reason.contains("still replaying"))
        );
    }

    fn peers_of(ids: &[NodeId]) -> Vec<Peer> {
        std::iter::once(dead_primary())
            .chain(ids.iter().map(|id| standby(*id, 1000, 3000)))
            .collect()
    }
}
