//! Automatic failover on real clusters, under a write load that records every acknowledged
//! commit. Every wait has a deadline; every cluster is torn down, whatever happens.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use repmgr_tests::load::{Load, longest_gap, wall};
use repmgr_tests::{Cluster, NodeOptions};

const WAIT: Duration = Duration::from_secs(30);

/// Standby `behind` stops receiving WAL, the primary runs `sql`, standby `ahead` receives all
/// of it, and the primary dies.
fn crash_with_one_behind(c: &Cluster, behind: i32, ahead: i32, sql: &str) {
    c.set(behind, "primary_conninfo", "host=127.0.0.1 port=1");
    c.sql(1, sql);
    c.caught_up(1, &[ahead], WAIT);
    c.kill9(1);
}

/// Options for a cluster whose standbys never act alone (`repmgr.failover = manual`).
fn manual_standbys(id: i32) -> NodeOptions {
    if id > 1 {
        NodeOptions::default().conf("repmgr.failover = manual")
    } else {
        NodeOptions::default()
    }
}

/// A write load on nodes 1 to 3 that ran for a second, paused once standbys 2 and 3 have
/// everything primary 1 acknowledged: inject the fault, then resume it.
fn load_caught_up(c: &Cluster) -> Load {
    let load = c.write_load(&[1, 2, 3]);
    std::thread::sleep(Duration::from_secs(1));
    load.pause();
    c.caught_up(1, &[2, 3], WAIT);
    load
}

/// Every acknowledged value must be on `node`.
fn none_lost(c: &Cluster, node: i32, table: &str, acks: &[(i64, Instant)]) {
    let lost = c.missing_acks(node, table, acks);
    assert!(
        lost.is_empty(),
        "{} acknowledged commits missing on node {node}: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
}

/// Acknowledged commits that may be missing on `node` are only those the old primary
/// confirmed before `node` was promoted (asynchronous replication loses them): none after.
fn nothing_confirmed_after_promotion(
    c: &Cluster,
    node: i32,
    table: &str,
    acks: &[(i64, Instant)],
) -> usize {
    let promoted: f64 = c
        .value(node, "SELECT EXTRACT(epoch FROM event_timestamp)::text FROM repmgr.events WHERE event = 'repmgrd_failover_promote' ORDER BY event_timestamp DESC LIMIT 1")
        .expect("a promotion event")
        .parse()
        .unwrap();
    let missing: HashSet<i64> = c.missing_acks(node, table, acks).into_iter().collect();
    let late: Vec<i64> = acks
        .iter()
        .filter(|(v, t)| missing.contains(v) && wall(*t) >= promoted)
        .map(|(v, _)| *v)
        .collect();
    assert!(
        late.is_empty(),
        "commits confirmed after the promotion are missing on node {node}: {late:?}"
    );
    missing.len()
}

#[test]
fn kill_9_of_the_primary_promotes_one_standby_and_the_other_follows() {
    let c = Cluster::populated("kill9", &[2, 3], |_| NodeOptions::default());
    c.settled(1, &[2, 3], WAIT);
    // The standbys are caught up when the primary dies: nothing acknowledged may be lost.
    let load = load_caught_up(&c);
    let crash = Instant::now();
    c.kill9(1);
    load.resume();
    let new = c.one_writable(&[2, 3], WAIT);
    let promoted = crash.elapsed();
    let other = if new == 2 { 3 } else { 2 };
    c.wait_for("the other standby to stream from the new primary", WAIT, || {
        c.try_sql(new, &format!("SELECT 1 FROM pg_stat_replication WHERE application_name = 'node{other}' AND state = 'streaming'"))
            .ok()
            .filter(|r| !r.rows.is_empty())
    });
    let following = crash.elapsed();
    c.wait_for("writes on the new primary", WAIT, || {
        (load.acks().last().is_some_and(|(_, t)| *t > crash)).then_some(())
    });
    let acks = load.stop();
    let first_after = acks
        .iter()
        .find(|(_, t)| *t > crash)
        .map(|(_, t)| *t - crash)
        .unwrap();
    println!(
        "writable new primary (node {new}) after {promoted:?}, other standby streaming after {following:?}, first commit after the crash at {first_after:?}"
    );
    none_lost(&c, new, "acked", &acks);
    assert_eq!(
        c.int(
            new,
            "SELECT count(*) FROM repmgr.nodes WHERE type = 'primary' AND active"
        ),
        1
    );
    assert_eq!(
        c.value(new, "SELECT type FROM repmgr.nodes WHERE node_id = 1")
            .as_deref(),
        Some("primary")
    );
    assert_eq!(
        c.value(
            new,
            "SELECT active::text FROM repmgr.nodes WHERE node_id = 1"
        )
        .as_deref(),
        Some("false")
    );
    let events = "SELECT event FROM repmgr.events WHERE event IN ('repmgrd_failover_promote', 'repmgrd_failover_follow') ORDER BY 1";
    c.wait_for_or_explain(
        "the promote and follow events",
        WAIT,
        || (c.sql(new, events).rows.len() == 2).then_some(()),
        || {
            let all = c.sql(new, "SELECT node_id, event, successful, details FROM repmgr.events ORDER BY event_timestamp");
            format!("events on node {new}: {:?}\n{}", all.rows, c.log_tails(40))
        },
    );
    assert!(c.int(new, "SELECT term FROM repmgr.voting_term") >= 2);
}

#[test]
fn a_backend_that_outlives_its_killed_postmaster_cannot_commit() {
    let c = Cluster::populated("orphan", &[2, 3], |_| NodeOptions::default());
    c.settled(1, &[2, 3], WAIT);
    c.sql(1, "CREATE TABLE orphan (x int)");
    c.sql(1, "INSERT INTO orphan VALUES (0)");
    for id in [2, 3] {
        c.wait_for("the table on the standbys", WAIT, || {
            c.try_sql(id, "SELECT count(*) FROM orphan")
                .ok()
                .filter(|r| r.get(0, 0) == Some("1"))
        });
    }
    // The backend is busy (no wait on its latch, which would notice the postmaster's death)
    // when the postmaster is killed, and commits 0.7 s later: well within the lease, which a
    // live primary would still hold.
    let mut session = repmgr_tests::connect(&c.node(1).local_conninfo("repmgr"));
    let client = std::thread::spawn(move || {
        session.query_simple(
            "BEGIN; INSERT INTO orphan VALUES (1); \
             DO $$ BEGIN WHILE clock_timestamp() < statement_timestamp() + interval '1 s' LOOP END LOOP; END $$; \
             COMMIT",
            Instant::now() + WAIT,
            &mut repmgr_pq::PollWaiter,
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    c.kill9(1);
    let outcome = client.join().unwrap();
    let refusal = outcome.expect_err("a backend of a dead postmaster acknowledged a commit");
    assert_eq!(refusal.sqlstate.as_deref(), Some("57P02"), "{refusal:?}");
    assert!(
        refusal
            .message
            .contains("the postmaster of node 1 has exited"),
        "{refusal:?}"
    );
    let new = c.one_writable(&[2, 3], WAIT);
    assert_eq!(c.int(new, "SELECT count(*) FROM orphan"), 1);
    // The orphaned worker told both voters, which did not wait for the lease to run out.
    assert!(
        c.log(1).contains(
            "exited while it was primary in term 1; 2 of 2 voters stop waiting for its lease"
        ),
        "{}",
        c.log(1)
    );
    for id in [2, 3] {
        assert!(
            c.log(id)
                .contains("the worker of primary node 1 reports that its postmaster exited"),
            "{}",
            c.log(id)
        );
    }
}

#[test]
fn a_frozen_primary_is_replaced_and_never_confirms_another_commit() {
    let c = Cluster::populated("freeze", &[2, 3], |_| NodeOptions::default());
    c.settled(1, &[2, 3], WAIT);
    // A session on the primary with a write in progress and a local-only commit.
    let mut session = repmgr_tests::connect(&c.node(1).conninfo());
    for q in [
        "SET synchronous_commit = local",
        "CREATE TABLE pending (x int)",
        "BEGIN",
        "INSERT INTO pending VALUES (1)",
    ] {
        repmgr_tests::query(&mut session, q);
    }
    c.freeze(1);
    let new = c.one_writable(&[2, 3], WAIT);
    c.sql(new, "CREATE TABLE after_promotion AS SELECT 1 AS x");
    c.thaw(1);
    // The moment it wakes, the old primary's pending commit is refused.
    let err = session
        .query(
            "COMMIT",
            &[],
            Instant::now() + WAIT,
            &mut repmgr_pq::PollWaiter,
        )
        .expect_err("the old primary must not confirm a commit after the promotion");
    assert_eq!(err.sqlstate.as_deref(), Some("25006"), "{err}");
    assert!(err.message.contains("is fenced"), "{}", err.message);
    // New writes fail too; reads work; it reports itself fenced.
    let w = c
        .try_sql(1, "INSERT INTO pending VALUES (2)")
        .expect_err("writes on the fenced node");
    assert_eq!(w.sqlstate.as_deref(), Some("25006"));
    assert_eq!(
        c.value(1, "SELECT count(*)::text FROM pending").as_deref(),
        Some("0")
    );
    assert_eq!(
        c.value(1, "SELECT fenced::text FROM repmgr.node_status()")
            .as_deref(),
        Some("true")
    );
    // It stays fenced: its voters have moved on.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.writable(&[1, 2, 3]), [new]);
}

#[test]
fn a_primary_cut_off_by_the_network_is_replaced_and_stays_fenced() {
    let mut c = Cluster::with_network("netsplit");
    c.populate(&[2, 3], |_| NodeOptions::default());
    c.settled(1, &[2, 3], WAIT);
    // Asymmetric first: the primary loses node 2 only. Node 3 still confirms it, and node 2
    // hears from node 3 that the primary lives: no election.
    c.network().cut(1, 2);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        c.writable(&[1, 2, 3]),
        [1],
        "a primary that still has its quorum keeps it"
    );
    c.network().mend(1, 2);
    c.settled(1, &[2, 3], WAIT);
    // Now cut it off entirely.
    let load = load_caught_up(&c);
    c.network().isolate(1);
    load.resume();
    let new = c.one_writable(&[2, 3], WAIT);
    assert_eq!(
        c.value(1, "SELECT fenced::text FROM repmgr.node_status()")
            .as_deref(),
        Some("true")
    );
    c.wait_for("writes on the new primary", WAIT, || {
        (load.acks().len() > 10).then_some(())
    });
    c.network().rejoin(1);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        c.writable(&[1, 2, 3]),
        [new],
        "after the link heals the old primary stays fenced"
    );
    let acks = load.stop();
    // The isolated primary kept its lease (and confirmed commits) for at most
    // repmgr.fence_timeout after it lost its voters; asynchronous replication loses those.
    // Nothing it confirmed after the new primary's promotion can be missing.
    let lost = nothing_confirmed_after_promotion(&c, new, "acked", &acks);
    println!(
        "{lost} commits confirmed by the isolated primary within its last lease period were lost (asynchronous replication)"
    );
    // Fenced, read-only for new sessions (so read-write routing skips it), and it says why.
    let e = c.try_sql(1, "CREATE TABLE t (x int)").expect_err("fenced");
    assert_eq!(e.sqlstate.as_deref(), Some("25006"), "{e}");
    assert_eq!(
        c.value(1, "SELECT fenced::text FROM repmgr.node_status()")
            .as_deref(),
        Some("true")
    );
    c.wait_for("the old primary to report it needs rejoin", WAIT, || {
        c.log(1).contains("needs repmgr node rejoin").then_some(())
    });
}

/// The refusal a statement gets, with its SQLSTATE.
fn refused(c: &Cluster, id: i32, sql: &str) -> (String, String) {
    let e = c.try_sql(id, sql).expect_err(sql);
    assert!(
        e.hint.is_some(),
        "every refusal says what to do next: {e:?}"
    );
    (e.sqlstate.unwrap_or_default(), e.message)
}

/// `node_check()`'s status and details for one check.
fn node_check(c: &Cluster, id: i32, check: &str) -> String {
    c.value(
        id,
        &format!(
            "SELECT status || ': ' || details FROM repmgr.node_check() WHERE \"check\" = '{check}'"
        ),
    )
    .unwrap_or_default()
}

#[test]
fn two_data_nodes_and_a_witness() {
    let mut c = Cluster::populated("witness-failover", &[2], |_| NodeOptions::default());
    // Without the witness, losing either node leaves no majority: said loudly on both.
    for id in [1, 2] {
        let q = node_check(&c, id, "failover quorum");
        assert!(q.starts_with("CRITICAL: only 2 voters"), "{q}");
    }
    c.add_witness(3, NodeOptions::default());
    assert!(node_check(&c, 2, "failover quorum").starts_with("OK: 3 voters"));
    c.settled(1, &[2, 3], WAIT);
    c.kill9(1);
    assert_eq!(c.one_writable(&[2], WAIT), 2);
    drop(c);
    // With the witness gone too, a lone standby never promotes.
    let mut c = Cluster::populated("witness-down", &[2], |_| NodeOptions::default());
    c.add_witness(3, NodeOptions::default());
    c.settled(1, &[2, 3], WAIT);
    c.stop(3);
    c.kill9(1);
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        c.value(2, "SELECT pg_is_in_recovery()::text").as_deref(),
        Some("true")
    );
    assert!(
        c.log(2).contains("does not stand for election"),
        "{}",
        c.log(2)
    );
    // A manual promotion needs the majority too, unless forced; a forced one stays fenced
    // until a majority confirms it, so it cannot add a second writable primary.
    let (state, message) = refused(&c, 2, "SELECT repmgr.promote()");
    assert_eq!(state, "55000");
    assert!(
        message.contains("got 1 of 3 votes") && message.contains("a majority (2) is needed"),
        "{message}"
    );
    let done = c.value(2, "SELECT repmgr.promote(force => true)").unwrap();
    assert!(
        done.contains("promoted to primary") && done.contains("forced: 1 of 3 votes"),
        "{done}"
    );
    assert_eq!(
        c.value(2, "SELECT fenced::text FROM repmgr.node_status()")
            .as_deref(),
        Some("true")
    );
    assert!(c.writable(&[2]).is_empty());
    let e = c
        .try_sql(2, "CREATE TABLE forced (x int)")
        .expect_err("a fenced primary refuses writes");
    assert_eq!(e.sqlstate.as_deref(), Some("25006"), "{e:?}");
    c.start(3);
    assert_eq!(c.one_writable(&[2], WAIT), 2);
    c.wait_for("the promotion event", WAIT, || {
        c.try_sql(2, "SELECT 1 FROM repmgr.events WHERE node_id = 2 AND event = 'standby_promote' AND successful")
            .ok()
            .filter(|r| !r.rows.is_empty())
    });
}

#[test]
fn manual_promote_and_follow() {
    let c = Cluster::populated("manual-ops", &[2, 3], manual_standbys);
    c.settled(1, &[2, 3], WAIT);
    // Node 2 carries the read-only marking of a primary that was fenced when it was cloned:
    // its worker lifts it, so that sessions are read-write as soon as it is promoted.
    c.set(2, "default_transaction_read_only", "on");
    c.wait_for(
        "node 2's worker to lift the read-only marking",
        WAIT,
        || {
            c.log(2)
                .contains("\"default_transaction_read_only\" removed from configuration file")
                .then_some(())
        },
    );
    assert_eq!(
        c.value(2, "SHOW default_transaction_read_only").as_deref(),
        Some("off")
    );
    // Node 3 cascades from node 2; the call returns once it streams.
    let done = c.value(3, "SELECT repmgr.follow(2)").unwrap();
    assert!(done.contains("now follows node 2"), "{done}");
    assert!(
        !c.sql(
            2,
            "SELECT 1 FROM pg_stat_replication WHERE application_name = 'node3'"
        )
        .rows
        .is_empty()
    );
    c.wait_for("the follow event on the primary", WAIT, || {
        c.try_sql(1, "SELECT 1 FROM repmgr.events WHERE node_id = 3 AND event = 'standby_follow' AND successful")
            .ok()
            .filter(|r| !r.rows.is_empty())
    });
    // Refusals: not a standby, a working primary, nothing to follow.
    let (state, message) = refused(&c, 1, "SELECT repmgr.promote()");
    assert_eq!(state, "55000");
    assert!(message.contains("is not a standby"), "{message}");
    let (_, message) = refused(&c, 2, "SELECT repmgr.promote(force => true)");
    assert!(
        message.contains("node 1 (\"node1\") is a working primary"),
        "{message}"
    );
    let (_, message) = refused(&c, 3, "SELECT repmgr.follow(3)");
    assert!(message.contains("cannot be followed"), "{message}");
    // The primary dies: nobody acts alone (failover = manual); the operator promotes node 2
    // once its lease has run out.
    c.kill9(1);
    let done = c.wait_for("repmgr.promote() to succeed", WAIT, || {
        c.try_sql(2, "SELECT repmgr.promote()")
            .ok()
            .and_then(|r| r.get(0, 0).map(str::to_string))
    });
    assert!(done.contains("promoted to primary"), "{done}");
    assert_eq!(c.one_writable(&[2, 3], WAIT), 2);
    c.sql(2, "CREATE TABLE after_promote AS SELECT 1 AS x");
    c.wait_for("node 3 to keep streaming from node 2", WAIT, || {
        c.try_sql(2, "SELECT 1 FROM pg_stat_replication WHERE application_name = 'node3' AND state = 'streaming'")
            .ok()
            .filter(|r| !r.rows.is_empty())
    });
    c.wait_for("the promotion event", WAIT, || {
        c.try_sql(2, "SELECT 1 FROM repmgr.events WHERE node_id = 2 AND event = 'standby_promote' AND successful")
            .ok()
            .filter(|r| !r.rows.is_empty())
    });
    assert_eq!(
        c.int(
            2,
            "SELECT count(*) FROM repmgr.nodes WHERE type = 'primary' AND active"
        ),
        1
    );
}

#[test]
fn exclusions_priority_zero_manual_and_lag() {
    // Priority 0: never promoted, even with the most WAL.
    let c = Cluster::populated("priority0", &[2, 3], |id| {
        if id == 2 {
            NodeOptions::default().conf("repmgr.priority = 0")
        } else {
            NodeOptions::default()
        }
    });
    c.settled(1, &[2, 3], WAIT);
    c.kill9(1);
    assert_eq!(c.one_writable(&[2, 3], WAIT), 3);
    drop(c);
    // failover = manual everywhere: nobody acts alone, and says so.
    let c = Cluster::populated("manual", &[2, 3], manual_standbys);
    c.settled(1, &[2, 3], WAIT);
    c.kill9(1);
    std::thread::sleep(Duration::from_secs(6));
    for id in [2, 3] {
        assert_eq!(
            c.value(id, "SELECT pg_is_in_recovery()::text").as_deref(),
            Some("true")
        );
        assert!(
            c.log(id).contains("repmgr.failover is manual"),
            "{}",
            c.log(id)
        );
    }
    drop(c);
    // The only eligible standby lags the priority-0 one by more than max_lag_on_failover.
    let c = Cluster::populated("lagging", &[2, 3], |id| match id {
        2 => NodeOptions::default().conf("repmgr.priority = 0"),
        3 => NodeOptions::default().conf("repmgr.max_lag_on_failover = '64kB'"),
        _ => NodeOptions::default(),
    });
    c.settled(1, &[2, 3], WAIT);
    // Node 3 stops receiving WAL while the primary writes a few megabytes.
    crash_with_one_behind(
        &c,
        3,
        2,
        "CREATE TABLE bulk AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 20000) g",
    );
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        c.value(3, "SELECT pg_is_in_recovery()::text").as_deref(),
        Some("true")
    );
    assert!(
        c.log(3).contains("behind the most advanced standby"),
        "{}",
        c.log(3)
    );
}

#[test]
fn a_cascaded_standby_reattaches_to_the_primary_when_its_upstream_dies() {
    let mut c = Cluster::populated("cascade", &[2], |_| NodeOptions::default());
    c.clone_standby(3, 2, NodeOptions::default());
    c.sql(3, "SELECT repmgr.register_standby(upstream_node_id => 2)");
    c.wait_for("node 3 to stream from node 2", WAIT, || {
        c.try_sql(
            2,
            "SELECT 1 FROM pg_stat_replication WHERE application_name = 'node3'",
        )
        .ok()
        .filter(|r| !r.rows.is_empty())
    });
    c.kill9(2);
    c.wait_for("node 3 to stream from the primary", WAIT, || {
        c.try_sql(1, "SELECT 1 FROM pg_stat_replication WHERE application_name = 'node3' AND state = 'streaming'").ok().filter(|r| !r.rows.is_empty())
    });
    c.wait_for("the follow event", WAIT, || {
        c.try_sql(1, "SELECT 1 FROM repmgr.events WHERE node_id = 3 AND event = 'repmgrd_failover_follow' AND successful").ok().filter(|r| !r.rows.is_empty())
    });
    assert_eq!(
        c.int(
            1,
            "SELECT upstream_node_id FROM repmgr.nodes WHERE node_id = 3"
        ),
        1
    );
    assert_eq!(
        c.writable(&[1, 3]),
        [1],
        "no election: the primary never went away"
    );
}

#[test]
fn back_to_back_failovers_keep_slots_for_the_survivors() {
    // With a witness, the third data node still has a majority after two losses of primary.
    let mut c = Cluster::populated("twice", &[2, 3], |_| NodeOptions::default());
    c.add_witness(4, NodeOptions::default());
    c.settled(1, &[2, 3, 4], WAIT);
    c.kill9(1);
    let first = c.one_writable(&[2, 3], WAIT);
    let survivor = if first == 2 { 3 } else { 2 };
    c.wait_for("the survivor to stream from the first new primary", WAIT, || {
        c.try_sql(first, &format!("SELECT 1 FROM pg_stat_replication WHERE application_name = 'node{survivor}' AND state = 'streaming'"))
            .ok()
            .filter(|r| !r.rows.is_empty())
    });
    assert_eq!(c.value(first, &format!("SELECT count(*)::text FROM pg_replication_slots WHERE slot_name = 'repmgr_slot_{survivor}'")).as_deref(), Some("1"));
    c.wait_for("the witness to follow", WAIT, || {
        (c.int(
            4,
            &format!(
                "SELECT count(*) FROM repmgr.nodes WHERE node_id = {first} AND type = 'primary'"
            ),
        ) == 1)
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    c.kill9(first);
    assert_eq!(c.one_writable(&[survivor], WAIT), survivor);
    c.sql(survivor, "CREATE TABLE after_two AS SELECT 1 AS x");
}

#[test]
fn short_stalls_cause_no_failover_and_no_fencing() {
    // Default settings: a 1 s freeze.
    let c = Cluster::populated("stall", &[2, 3], |_| NodeOptions::default());
    c.settled(1, &[2, 3], WAIT);
    c.sql(1, "CREATE TABLE stall (x int)");
    for _ in 0..3 {
        c.freeze(1);
        std::thread::sleep(Duration::from_secs(1));
        c.thaw(1);
        // Committing right after waking must work.
        c.sql(1, "INSERT INTO stall VALUES (1)");
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(c.writable(&[1, 2, 3]), [1]);
    assert!(!c.log(1).contains("lost its lease"), "{}", c.log(1));
    for id in [2, 3] {
        assert!(!c.log(id).contains("stands for election"), "{}", c.log(id));
    }
    drop(c);
    // Other settings: a freeze of half the lease.
    let fast = || {
        NodeOptions::default()
            .conf("repmgr.heartbeat_interval = '100ms'")
            .conf("repmgr.fence_timeout = '900ms'")
            .conf("repmgr.lease_timeout = '1400ms'")
    };
    let c = Cluster::populated("stall-fast", &[2, 3], |_| fast());
    c.settled(1, &[2, 3], WAIT);
    for _ in 0..3 {
        c.freeze(1);
        std::thread::sleep(Duration::from_millis(700));
        c.thaw(1);
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(c.writable(&[1, 2, 3]), [1]);
    assert!(!c.log(1).contains("lost its lease"), "{}", c.log(1));
    let load = c.write_load(&[1]);
    std::thread::sleep(Duration::from_secs(1));
    let acks = load.stop();
    assert!(longest_gap(&acks, acks[0].1).is_none_or(|(g, _)| g < Duration::from_millis(500)));
}

#[test]
fn failover_validation_command_holds_the_election_until_it_agrees() {
    let mut c = Cluster::new("validation");
    let log = c.dir.join("validation.log");
    let go = c.dir.join("go");
    let command = format!(
        "repmgr.failover_validation_command = 'echo %n %v %u %t >> {}; test -e {}'",
        log.display(),
        go.display()
    );
    c.populate(&[2, 3], |id| {
        let o = NodeOptions::default().conf("repmgr.election_rerun_interval = '500ms'");
        if id > 1 { o.conf(command.clone()) } else { o }
    });
    c.settled(1, &[2, 3], WAIT);
    c.kill9(1);
    let first = c.wait_for("the validation command to run", WAIT, || {
        std::fs::read_to_string(&log).ok().filter(|s| !s.is_empty())
    });
    // The candidate, 2 nodes visible (itself and the other standby), both lost the primary, 3
    // registered.
    let line: Vec<&str> = first.lines().next().unwrap().split(' ').collect();
    assert!(["2", "3"].contains(&line[0]), "{first}");
    assert_eq!(line[1..], ["2", "2", "3"], "{first}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        c.writable(&[2, 3]).is_empty(),
        "no promotion while the command refuses"
    );
    assert!(
        c.log(2)
            .contains("failover_validation_command refused the election")
            || c.log(3)
                .contains("failover_validation_command refused the election")
    );
    std::fs::write(&go, "").unwrap();
    c.one_writable(&[2, 3], WAIT);
}

#[test]
fn a_standby_ahead_of_a_forced_promotion_reports_divergence_and_stays_put() {
    let c = Cluster::populated("diverged", &[2, 3], manual_standbys);
    c.settled(1, &[2, 3], WAIT);
    // Node 2 stops receiving; node 3 gets what the primary writes next.
    crash_with_one_behind(
        &c,
        2,
        3,
        "CREATE TABLE later AS SELECT g FROM generate_series(1, 1000) g",
    );
    // Refused while node 3 has more WAL, once the lease has run out.
    let message = c.wait_for("the refusal that names node 3", WAIT, || {
        let (_, m) = refused(&c, 2, "SELECT repmgr.promote()");
        m.contains("has received more WAL").then_some(m)
    });
    assert!(message.contains("node 3 (\"node3\")"), "{message}");
    let done = c.value(2, "SELECT repmgr.promote(force => true)").unwrap();
    assert!(done.contains("promoted to primary"), "{done}");
    // Node 3 cannot follow a timeline that began before what it received: it says so and
    // stays a standby of nobody, rather than corrupting itself.
    c.wait_for("node 3 to report its divergence", WAIT, || {
        (c.value(3, "SELECT diverged::text FROM repmgr.node_status()")
            .as_deref()
            == Some("true"))
        .then_some(())
    });
    assert_eq!(
        c.value(3, "SELECT pg_is_in_recovery()::text").as_deref(),
        Some("true")
    );
    assert!(!c.streams_from(2, 3));
    assert!(
        node_check(&c, 3, "timeline").starts_with("CRITICAL"),
        "{}",
        node_check(&c, 3, "timeline")
    );
    let r = c.wait_for("the failed follow event", WAIT, || {
        c.try_sql(2, "SELECT details FROM repmgr.events WHERE node_id = 3 AND NOT successful AND event IN ('standby_follow', 'repmgrd_failover_follow')")
            .ok()
            .filter(|r| !r.rows.is_empty())
    });
    assert!(
        r.get(0, 0).unwrap().contains("needs repmgr node rejoin"),
        "{:?}",
        r.get(0, 0)
    );
    // repmgr.auto_rejoin is off (the harness's default): node_status() says what to do.
    let held = c.wait_for("node 3's rejoin to show as held", WAIT, || {
        c.value(
            3,
            "SELECT rejoin_detail FROM repmgr.node_status() WHERE rejoin_state = 'held'",
        )
    });
    assert_eq!(
        held,
        "held: its timeline diverged from the primary's; repmgr.auto_rejoin is off: run repmgr node rejoin --force-rewind"
    );
}

#[test]
fn fence_action_shutdown_stops_a_primary_that_lost_its_lease() {
    let c = Cluster::populated("fence-shutdown", &[2, 3], |id| {
        let o = NodeOptions::default().conf("repmgr.fence_action = shutdown");
        if id > 1 {
            o.conf("repmgr.failover = manual")
        } else {
            o
        }
    });
    c.settled(1, &[2, 3], WAIT);
    let pid = c.node(1).pid().expect("the primary runs");
    c.stop(2);
    c.stop(3);
    c.wait_for("the primary to stop itself", WAIT, || {
        (unsafe { libc::kill(pid, 0) } != 0).then_some(())
    });
    assert!(
        c.log(1)
            .contains("repmgr.fence_action = shutdown: stopping the server"),
        "{}",
        c.log(1)
    );
}
