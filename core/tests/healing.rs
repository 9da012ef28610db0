//! Self-healing decisions of the driver: a standby stops streaming from a primary it has moved
//! past (it voted for another node, or learnt of a newer term) and streams again only from a
//! primary it supports; a diverged standby asks for a rejoin, with back-off, within limits;
//! told the primary exited, a standby asks the voters again as soon as they can have heard it.

use std::time::Duration;

use repmgr_core::driver::{Action, Catalog, Driver, Input, LocalFacts, Settings, Upstream};
use repmgr_core::durable::Saved;
use repmgr_core::election::Answer;
use repmgr_core::event;
use repmgr_core::lease::Timing;
use repmgr_core::node::{NodeRecord, NodeType};
use repmgr_core::rejoin::{AutoRejoin, Status};
use repmgr_core::state::{Disk, PreVote, State};
use repmgr_core::vote::Durable;

const TIMING: Timing = Timing {
    heartbeat: Duration::from_millis(250),
    fence: Duration::from_millis(1500),
    lease: Duration::from_millis(2500),
};

struct NoDisk;

impl Disk for NoDisk {
    fn save(&mut self, _: &Saved) -> bool {
        true
    }
}

fn node(id: i32, node_type: NodeType) -> NodeRecord {
    NodeRecord {
        node_id: id,
        upstream_node_id: None,
        active: true,
        node_name: format!("node{id}"),
        node_type,
        location: "default".into(),
        priority: 100,
        conninfo: format!("host=node{id}"),
        repluser: "repmgr".into(),
        slot_name: None,
        config_file: String::new(),
    }
}

/// Node 2, a standby streaming from primary 1, with node 3 another standby.
fn standby() -> (Driver, State) {
    standby_with(AutoRejoin::On)
}

fn standby_with(auto_rejoin: AutoRejoin) -> (Driver, State) {
    let settings = Settings {
        timing: Ok(TIMING),
        automatic: true,
        priority: 100,
        max_lag: 0,
        visibility_consensus: false,
        validation_command: false,
        election_rerun_interval: Duration::from_secs(15),
        disconnect_on_failover: false,
        fence_shutdown: false,
        auto_rejoin,
    };
    let mut d = Driver::new(2, settings, TIMING, 7);
    let mut s = State::new(2, None, Duration::ZERO, 1, TIMING);
    let catalog = Catalog {
        nodes: vec![
            node(1, NodeType::Primary),
            node(2, NodeType::Standby),
            node(3, NodeType::Standby),
        ],
        version: 1,
        previous: Vec::new(),
        changed_by: None,
    };
    d.step(
        Duration::ZERO,
        &mut s,
        &mut NoDisk,
        Input::Observe {
            catalog: Some(catalog),
            in_recovery: true,
        },
    );
    (d, s)
}

fn streaming_from(id: i32) -> Upstream {
    Upstream {
        node: Some(id),
        unreachable: false,
        down: false,
        detached: false,
    }
}

fn detached_from(id: i32) -> Upstream {
    Upstream {
        detached: true,
        ..streaming_from(id)
    }
}

fn support(s: &mut State, term: u64, node: Option<i32>) {
    s.voter.durable = Durable {
        term,
        supports: node,
        fence: TIMING.fence,
    };
    s.voter.leader = node;
}

/// The detach actions and their events one tick produces.
fn tick(d: &mut Driver, s: &mut State, ms: u64) -> (Vec<i32>, usize) {
    let actions = d.step(Duration::from_millis(ms), s, &mut NoDisk, Input::Tick);
    let from = actions
        .iter()
        .filter_map(|a| match a {
            Action::Detach { from } => Some(*from),
            _ => None,
        })
        .collect();
    let events = actions
        .iter()
        .filter(|a| matches!(a, Action::Event(e) if e.name == event::REPMGRD_UPSTREAM_DISCONNECT))
        .count();
    (from, events)
}

#[test]
fn a_vote_for_another_node_detaches_from_the_old_primary_once() {
    let (mut d, mut s) = standby();
    support(&mut s, 1, Some(1));
    assert_eq!(d.follow_decision(&s, streaming_from(1)), None);
    assert_eq!(
        tick(&mut d, &mut s, 10),
        (vec![], 0),
        "it supports its upstream"
    );

    // It grants node 3 its vote in term 2.
    support(&mut s, 2, Some(3));
    assert_eq!(tick(&mut d, &mut s, 20), (vec![1], 1));
    assert_eq!(tick(&mut d, &mut s, 30), (vec![], 0), "once per term");
    // Until a monitoring round sees the emptied primary_conninfo, nothing more happens.
    let _ = d.follow_decision(&s, streaming_from(1));
    assert_eq!(tick(&mut d, &mut s, 40), (vec![], 0));

    // Detached, it follows the node it voted for.
    let (target, _) = d
        .follow_decision(&s, detached_from(1))
        .expect("a detached standby follows the primary it supports");
    assert_eq!(target.node_id, 3);
}

#[test]
fn a_standby_its_vote_detached_does_not_detach_again_once_it_follows_the_winner() {
    let (mut d, mut s) = standby();
    support(&mut s, 1, Some(1));
    let _ = d.follow_decision(&s, streaming_from(1));
    assert_eq!(tick(&mut d, &mut s, 10), (vec![], 0));
    // The backend that granted node 3 its vote emptied primary_conninfo before the worker
    // looked: the worker sees it detached and follows node 3 at once, recording the detach
    // (its event, once) with no action, which would undo the follow.
    support(&mut s, 2, Some(3));
    let (target, _) = d
        .follow_decision(&s, detached_from(1))
        .expect("a detached standby follows the node it voted for");
    assert_eq!(target.node_id, 3);
    let events = d
        .take_actions()
        .iter()
        .filter(|a| matches!(a, Action::Event(e) if e.name == event::REPMGRD_UPSTREAM_DISCONNECT))
        .count();
    assert_eq!(events, 1);
    assert_eq!(tick(&mut d, &mut s, 20), (vec![], 0));
    // Its catalog names node 1 as its upstream until the follow's change replicates, and it
    // streams again: still no detach, which would leave the new primary waiting for this
    // standby for ever with a synchronous quorum (seen in CI).
    let _ = d.follow_decision(&s, streaming_from(1));
    assert_eq!(tick(&mut d, &mut s, 30), (vec![], 0));
    let _ = d.follow_decision(&s, streaming_from(1));
    assert_eq!(tick(&mut d, &mut s, 40), (vec![], 0));
}

#[test]
fn a_newer_term_detaches_and_the_old_primary_is_followed_again_once_it_leads_in_one() {
    let (mut d, mut s) = standby();
    support(&mut s, 1, Some(1));
    assert_eq!(d.follow_decision(&s, streaming_from(1)), None);
    assert_eq!(tick(&mut d, &mut s, 10), (vec![], 0));
    // Another voter told it of term 2 (an election it took no part in): it supports nobody.
    support(&mut s, 2, None);
    assert_eq!(tick(&mut d, &mut s, 20), (vec![1], 1));
    // The catalog still names node 1 the primary: it does not stream from it in term 2.
    assert_eq!(d.follow_decision(&s, detached_from(1)), None);
    // The election failed and node 1 leads again, in term 3.
    support(&mut s, 3, Some(1));
    let (target, _) = d
        .follow_decision(&s, detached_from(1))
        .expect("it streams again from the primary it supports");
    assert_eq!(target.node_id, 1);
    assert_eq!(tick(&mut d, &mut s, 30), (vec![], 0));
}

#[test]
fn no_detach_without_knowing_whom_it_supported() {
    // A standby started with no saved support that hears of a newer term knows nothing
    // about its upstream's term: it keeps streaming (its next look around tells it more).
    let (mut d, mut s) = standby();
    support(&mut s, 5, None);
    let _ = d.follow_decision(&s, streaming_from(1));
    assert_eq!(tick(&mut d, &mut s, 10), (vec![], 0));
}

#[test]
fn a_former_primary_streaming_again_does_not_detach_from_its_successor() {
    // Node 2 was the primary in term 4 (it supports itself there), then was rejoined or
    // demoted and streams from node 1, which leads in a later term it has not heard yet.
    let (mut d, mut s) = standby();
    support(&mut s, 4, Some(2));
    s.voter.leader = None;
    assert_eq!(d.follow_decision(&s, streaming_from(1)), None);
    assert_eq!(tick(&mut d, &mut s, 10), (vec![], 0));
}

/// The times, in ms from `from` to `to` every 100 ms, at which a tick asked for a rejoin; a
/// refusal `refuse(at)` is fed back right after each.
fn rejoins(
    d: &mut Driver,
    s: &mut State,
    from: u64,
    to: u64,
    refuse: impl Fn(u64) -> Option<(String, bool)>,
) -> Vec<u64> {
    let mut asked = Vec::new();
    for at in (from..=to).step_by(100) {
        let now = Duration::from_millis(at);
        let actions = d.step(now, s, &mut NoDisk, Input::Tick);
        if actions.iter().any(|a| matches!(a, Action::Rejoin { .. })) {
            asked.push(at);
            if let Some((why, retry)) = refuse(at) {
                d.step(now, s, &mut NoDisk, Input::RejoinRefused { why, retry });
            }
        }
    }
    asked
}

#[test]
fn a_diverged_standby_asks_for_a_rejoin_after_a_grace_with_back_off() {
    let (mut d, mut s) = standby();
    support(&mut s, 1, Some(1));
    let _ = d.follow_decision(&s, streaming_from(1));
    assert!(rejoins(&mut d, &mut s, 0, 3000, |_| None).is_empty());
    s.diverged = true;
    // 5 s of grace from when it first saw the divergence (at 3.1 s); then, refused for want
    // of a writable primary, 5 s, 10 s, 20 s apart.
    let asked = rejoins(&mut d, &mut s, 3100, 45_000, |_| {
        Some((
            "no other node answers as a writable primary yet".into(),
            true,
        ))
    });
    assert_eq!(asked, [8100, 13_100, 23_100, 43_100]);
}

#[test]
fn a_rejoin_that_cannot_work_is_asked_once() {
    let (mut d, mut s) = standby();
    s.diverged = true;
    let asked = rejoins(&mut d, &mut s, 0, 120_000, |_| {
        Some((
            "pg_rewind needs wal_log_hints = on or data checksums".into(),
            false,
        ))
    });
    assert_eq!(asked, [5000]);
}

#[test]
fn no_rejoin_when_off_paused_or_held() {
    for mode in [AutoRejoin::Off, AutoRejoin::Pause] {
        let (mut d, mut s) = standby_with(mode);
        s.diverged = true;
        assert!(
            rejoins(&mut d, &mut s, 0, 30_000, |_| None).is_empty(),
            "{mode:?}"
        );
    }
    let (mut d, mut s) = standby();
    d.step(Duration::ZERO, &mut s, &mut NoDisk, Input::Paused(true));
    s.diverged = true;
    assert!(
        rejoins(&mut d, &mut s, 0, 30_000, |_| None).is_empty(),
        "paused"
    );
}

#[test]
fn the_rejoin_status_says_what_happens_next() {
    let at = Duration::from_millis;
    let (mut d, mut s) = standby();
    assert_eq!(d.rejoin_status(at(0)), None);
    s.diverged = true;
    rejoins(&mut d, &mut s, 1000, 1000, |_| None);
    let why = "its timeline diverged from the primary's".to_string();
    assert_eq!(
        d.rejoin_status(at(2500)),
        Some(Status::Waiting {
            why: why.clone(),
            after: at(3500),
            not_yet: None
        })
    );
    assert_eq!(
        d.rejoin_status(at(2500)).unwrap().describe(),
        "waiting: its timeline diverged from the primary's; it rejoins the current primary in 4 s"
    );
    // The attempt starts at 6 s; the worker could not start it (no writable primary).
    let asked = rejoins(&mut d, &mut s, 1100, 6000, |_| None);
    assert_eq!(asked, [6000]);
    assert_eq!(
        d.rejoin_status(at(6000)).map(|s| s.state()),
        Some("rejoining")
    );
    d.step(
        at(6000),
        &mut s,
        &mut NoDisk,
        Input::RejoinRefused {
            why: "no other node answers as a writable primary yet".into(),
            retry: true,
        },
    );
    let st = d.rejoin_status(at(7000)).unwrap();
    assert_eq!(st.state(), "waiting");
    assert_eq!(
        st.describe(),
        "waiting: its timeline diverged from the primary's; it could not rejoin yet (no other node answers as a writable primary yet) and tries again in 4 s"
    );
    // A refusal for good: failed, with what to do, until a reload.
    let asked = rejoins(&mut d, &mut s, 7100, 12_000, |_| {
        Some(("pg_rewind needs wal_log_hints = on".into(), false))
    });
    assert_eq!(asked, [11_000]);
    let st = d.rejoin_status(at(12_000)).unwrap();
    assert_eq!(
        st,
        Status::Failed {
            why: why.clone(),
            failure: "pg_rewind needs wal_log_hints = on".into()
        }
    );
    assert!(st.describe().starts_with("failed: its timeline diverged from the primary's, but it does not rejoin automatically: pg_rewind needs wal_log_hints = on; then reload"));
    // Paused: held, whatever else.
    d.step(at(12_000), &mut s, &mut NoDisk, Input::Paused(true));
    rejoins(&mut d, &mut s, 12_100, 12_100, |_| None);
    assert_eq!(
        d.rejoin_status(at(12_100)).map(|s| s.state()),
        Some("failed"),
        "a failure stays until a reload"
    );
    // Mended: the standby no longer diverges, and nothing is said.
    d.step(at(12_200), &mut s, &mut NoDisk, Input::Paused(false));
    s.diverged = false;
    rejoins(&mut d, &mut s, 12_300, 12_300, |_| None);
    assert_eq!(d.rejoin_status(at(12_300)), None);
}

#[test]
fn a_held_rejoin_says_who_holds_it() {
    for (mode, says) in [
        (
            AutoRejoin::Off,
            "repmgr.auto_rejoin is off: run repmgr node rejoin --force-rewind",
        ),
        (AutoRejoin::Pause, "repmgr.auto_rejoin is pause"),
    ] {
        let (mut d, mut s) = standby_with(mode);
        s.diverged = true;
        rejoins(&mut d, &mut s, 0, 10_000, |_| None);
        let st = d.rejoin_status(Duration::from_secs(10)).unwrap();
        assert_eq!(st.state(), "held");
        assert!(st.describe().contains(says), "{}", st.describe());
    }
    let (mut d, mut s) = standby();
    d.step(Duration::ZERO, &mut s, &mut NoDisk, Input::Paused(true));
    s.diverged = true;
    rejoins(&mut d, &mut s, 0, 10_000, |_| None);
    assert!(
        d.rejoin_status(Duration::from_secs(10))
            .unwrap()
            .describe()
            .ends_with("repmgr is paused on this node (repmgr service unpause)")
    );
}

#[test]
fn a_standby_whose_upstream_died_does_not_move_to_a_primary_it_moved_past() {
    // Node 2 voted node 3 in, streamed from it, and node 3 died before its promotion reached
    // node 2's catalog copy, which still names node 1 (replaced) the primary.
    let (mut d, mut s) = standby();
    support(&mut s, 2, Some(3));
    let _ = d.follow_decision(&s, streaming_from(3));
    tick(&mut d, &mut s, 10);
    // An election it refused since: term 3, supporting nobody.
    support(&mut s, 3, None);
    let down = Upstream {
        down: true,
        ..streaming_from(3)
    };
    assert_eq!(d.follow_decision(&s, down), None);
    // Once it hears node 1 lead in a newer term, it follows it.
    support(&mut s, 4, Some(1));
    let (target, _) = d
        .follow_decision(&s, down)
        .expect("it follows the primary it supports");
    assert_eq!(target.node_id, 1);
}

/// What the driver asks for at `ms`.
fn step(d: &mut Driver, s: &mut State, ms: u64, input: Input) -> Vec<Action> {
    d.step(Duration::from_millis(ms), s, &mut NoDisk, input)
}

/// The look-around round `actions` starts, if any.
fn asks_around(actions: &[Action]) -> Option<u64> {
    actions.iter().find_map(|a| match a {
        Action::AskAround { round, .. } => Some(*round),
        _ => None,
    })
}

#[test]
fn told_the_primary_exited_a_standby_asks_again_soon_a_voter_that_had_not_heard_yet() {
    let (mut d, mut s) = standby();
    support(&mut s, 1, Some(1));
    s.voter.confirmed = Some((1, 9));
    s.voter.last_heard = Some(Duration::from_millis(9_900));
    // The worker of node 1 reports its postmaster exited, to every voter at once; this one
    // has it first.
    assert!(s.primary_exited(Duration::from_millis(10_000), 1, 1, 9));
    let round = asks_around(&step(&mut d, &mut s, 10_000, Input::Tick))
        .expect("told, it looks around at once");
    let facts = LocalFacts {
        lsn: Some(100),
        timeline: 1,
        timeline_start: 0,
        quorum: Some((Default::default(), true)),
        quorum_version: 0,
        failover_slots: 0,
    };
    step(&mut d, &mut s, 10_001, Input::Local { round, facts });
    step(
        &mut d,
        &mut s,
        10_002,
        Input::PreVote {
            round,
            from: 1,
            answer: None,
        },
    );
    // Node 3 answered before the report reached it: it heard the primary 100 ms ago.
    let heard_recently = PreVote {
        answer: Answer {
            term: 1,
            in_recovery: true,
            silence: Duration::from_millis(100),
            lsn: Some(100),
            timeline: 1,
            priority: 100,
            version: 1,
            ..Answer::default()
        },
        primary: Some((1, 1)),
        switch_lsn: 0,
        timing: TIMING,
        wait: TIMING.lease,
    };
    let closed = step(
        &mut d,
        &mut s,
        10_003,
        Input::PreVote {
            round,
            from: 3,
            answer: Some(heard_recently),
        },
    );
    assert_eq!(
        asks_around(&closed),
        None,
        "node 3 still supports the primary: no election yet"
    );
    // It asks again within 30 to 60 ms, not at the jittered retry up to a second later.
    let again = (10_004..=10_063)
        .find(|ms| asks_around(&step(&mut d, &mut s, *ms, Input::Tick)).is_some())
        .expect("a second look within 60 ms");
    assert!(again >= 10_033, "asked again after {} ms", again - 10_003);
}
