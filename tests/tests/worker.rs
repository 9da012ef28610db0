//! The monitoring worker on real clusters: history, events, reload, shutdown, restart,
//! witness sync, follow, and a frozen primary that must not stall anyone.

use std::time::{Duration, Instant};

use repmgr_tests::{Cluster, NodeOptions};

const WAIT: Duration = Duration::from_secs(30);

fn opts() -> NodeOptions {
    NodeOptions::default().conf("repmgr.child_nodes_check_interval = '1s'")
}

/// A registered primary (1) and two registered standbys (2, 3), once the primary holds its
/// lease: its worker can find the repmgr database only after the standbys registered, and a
/// primary taking up the protocol with voters is fenced until they confirm it (new sessions
/// read-only meanwhile). Seen in CI: a CREATE TABLE refused 90 ms before the confirmation.
fn three_nodes(name: &str) -> Cluster {
    let mut c = Cluster::new(name);
    c.init_primary(1, opts());
    c.sql(1, "SELECT repmgr.register_primary()");
    for id in [2, 3] {
        c.clone_standby(id, 1, opts());
        c.sql(id, "SELECT repmgr.register_standby()");
    }
    c.settled(1, &[2, 3], WAIT);
    c
}

/// Waits until `sql` on `id` returns a row.
fn wait_row(c: &Cluster, id: i32, what: &str, sql: &str) -> repmgr_pq::Rows {
    c.wait_for(what, WAIT, || {
        c.try_sql(id, sql).ok().filter(|r| !r.rows.is_empty())
    })
}

#[test]
fn history_fills_and_replication_status_is_live() {
    let c = three_nodes("history");
    c.wait_for("history rows from both standbys", WAIT, || {
        (c.int(
            1,
            "SELECT count(DISTINCT standby_node_id) FROM repmgr.monitoring_history",
        ) == 2)
            .then_some(())
    });
    // At rest, both standbys report no lag, on the primary and (replicated) on a standby.
    for node in [1, 2] {
        c.wait_for("zero lag in replication_status", WAIT, || {
            let r = c.sql(node, "SELECT standby_node_id, replication_lag, apply_lag FROM repmgr.replication_status ORDER BY 1");
            let zero = |v: Option<&str>| v == Some("0 bytes");
            (r.rows.len() == 2 && (0..2).all(|i| zero(r.get(i, 1)) && zero(r.get(i, 2)))).then_some(())
        });
    }
    // Replay paused on node 3: under writes, its apply lag grows while node 2 keeps up.
    c.sql(3, "SELECT pg_wal_replay_pause()");
    c.sql(1, "CREATE TABLE load (id int, pad text)");
    let lag = |c: &Cluster| {
        c.int(1,
            "SELECT apply_lag FROM repmgr.monitoring_history WHERE standby_node_id = 3 ORDER BY last_monitor_time DESC LIMIT 1",
        )
    };
    c.sql(
        1,
        "INSERT INTO load SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g",
    );
    let first = c.wait_for("apply lag on the paused standby", WAIT, || {
        Some(lag(&c)).filter(|l| *l > 0)
    });
    c.sql(
        1,
        "INSERT INTO load SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g",
    );
    c.wait_for("apply lag to grow", WAIT, || {
        (lag(&c) > first).then_some(())
    });
    let status = c.sql(
        1,
        "SELECT apply_lag <> '0 bytes' FROM repmgr.replication_status WHERE standby_node_id = 3",
    );
    assert_eq!(status.get(0, 0), Some("t"));
    c.wait_for("node 2 to report no lag", WAIT, || {
        let r = c.sql(1, "SELECT replication_lag, apply_lag FROM repmgr.replication_status WHERE standby_node_id = 2");
        (r.get(0, 0) == Some("0 bytes") && r.get(0, 1) == Some("0 bytes")).then_some(())
    });
    c.sql(3, "SELECT pg_wal_replay_resume()");
    c.wait_for("node 3 to catch up", WAIT, || (lag(&c) == 0).then_some(()));
}

#[test]
fn a_killed_standby_is_reported_disconnected_then_reconnected() {
    let mut c = Cluster::new("children");
    let marker = c.dir.join("fence-ran");
    let primary = opts()
        .conf("repmgr.child_nodes_connected_min_count = 2")
        .conf("repmgr.child_nodes_disconnect_timeout = '1s'")
        .conf(format!(
            "repmgr.child_nodes_disconnect_command = 'echo %p >> {}'",
            marker.display()
        ));
    c.init_primary(1, primary);
    c.sql(1, "SELECT repmgr.register_primary()");
    for id in [2, 3] {
        c.clone_standby(id, 1, opts());
        c.sql(id, "SELECT repmgr.register_standby()");
    }
    wait_row(
        &c,
        1,
        "the primary's worker to start",
        "SELECT 1 FROM repmgr.events WHERE event = 'repmgrd_start' AND node_id = 1",
    );
    // Let the primary see both standbys attached before the crash.
    std::thread::sleep(Duration::from_secs(2));
    c.kill9(2);
    let details = wait_row(
        &c,
        1,
        "child_node_disconnect",
        "SELECT details FROM repmgr.events WHERE event = 'child_node_disconnect'",
    );
    assert_eq!(
        details.get(0, 0),
        Some("standby node \"node2\" (ID: 2) has disconnected")
    );
    // Two children required, one left: after the timeout the command runs, once.
    let ev = wait_row(
        &c,
        1,
        "child_nodes_disconnect_command",
        "SELECT successful::text, details FROM repmgr.events WHERE event = 'child_nodes_disconnect_command'",
    );
    assert_eq!(ev.get(0, 0), Some("true"), "{ev:?}");
    assert!(
        ev.get(0, 1)
            .unwrap()
            .starts_with("1 of 2 child nodes attached (required: 2)"),
        "{ev:?}"
    );
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "1\n");
    c.wait_for("node 2's processes to go", WAIT, || {
        c.node(2).pid().is_none().then_some(())
    });
    // The orphaned backends of a killed postmaster leave on their own; retry the start.
    c.wait_for("node 2 to start again", WAIT, || {
        c.try_start(2).then_some(())
    });
    let details = wait_row(
        &c,
        1,
        "child_node_reconnect",
        "SELECT details FROM repmgr.events WHERE event = 'child_node_reconnect'",
    );
    assert!(
        details
            .get(0, 0)
            .unwrap()
            .starts_with("standby node \"node2\" (ID: 2) has reconnected after "),
        "{details:?}"
    );
    assert_eq!(
        c.int(1,
            "SELECT count(*) FROM repmgr.events WHERE event = 'child_node_disconnect' AND details LIKE '%node3%'"
        ),
        0
    );
    assert_eq!(
        c.int(
            1,
            "SELECT count(*) FROM repmgr.events WHERE event = 'child_nodes_disconnect_command'"
        ),
        1
    );
}

#[test]
fn the_primary_trims_old_monitoring_history() {
    let mut c = Cluster::new("trim");
    c.init_primary(1, opts().conf("repmgr.monitoring_history_keep = '1d'"));
    c.sql(
        1,
        "INSERT INTO repmgr.monitoring_history
         SELECT 1, 2, now() - interval '2 days' - g * interval '1 s', NULL::timestamptz, '0/0'::pg_lsn, '0/0'::pg_lsn, 0, 0 FROM generate_series(1, 2500) g
         UNION ALL SELECT 1, 2, now() - interval '1 hour', NULL, '0/0', '0/0', 0, 0",
    );
    c.sql(1, "SELECT repmgr.register_primary()");
    c.wait_for("old history to go", WAIT, || {
        (c.int(1, "SELECT count(*) FROM repmgr.monitoring_history") == 1).then_some(())
    });
    assert_eq!(
        c.int(1,
            "SELECT count(*) FROM repmgr.monitoring_history WHERE last_monitor_time > now() - interval '1 day'"
        ),
        1
    );
}

#[test]
fn a_frozen_primary_stalls_no_standby_and_promotes_nobody() {
    // Monitoring only: with repmgr.failover = manual the standbys watch and report but never
    // stand for election (automatic failover has its own tests).
    let mut c = Cluster::new("frozen");
    c.init_primary(1, opts());
    c.sql(1, "SELECT repmgr.register_primary()");
    for id in [2, 3] {
        let mut o = opts().conf("repmgr.failover = manual");
        if id == 2 {
            o = o.conf("repmgr.standby_disconnect_on_failover = on");
        }
        c.clone_standby(id, 1, o);
        c.sql(id, "SELECT repmgr.register_standby()");
    }
    for id in [2, 3] {
        wait_row(
            &c,
            1,
            "both standby workers to start",
            &format!(
                "SELECT 1 FROM repmgr.events WHERE event = 'repmgrd_start' AND node_id = {id}"
            ),
        );
    }
    // The primary's worker restarts once the repmgr database exists: the outage told below
    // is one of a primary that held its lease, with standbys that knew it.
    wait_row(
        &c,
        1,
        "the primary to hold its lease",
        "SELECT 1 FROM repmgr.vote_info() WHERE holds_lease",
    );
    for id in [2, 3] {
        wait_row(
            &c,
            id,
            "the standbys to know the primary",
            "SELECT 1 FROM repmgr.vote_info() WHERE primary_id = 1",
        );
    }
    let freeze_at = c.value(1, "SELECT now()::text").unwrap();
    c.freeze(1);
    let frozen = Instant::now();
    // While the primary is frozen (it accepts TCP and never answers), each standby's worker
    // keeps finishing rounds: no gap longer than a peer timeout (2 s) plus an interval (1 s).
    let mut last: [Option<String>; 2] = [None, None];
    let mut since = [Instant::now(), Instant::now()];
    let mut longest = Duration::ZERO;
    while frozen.elapsed() < Duration::from_secs(7) {
        for (i, id) in [2, 3].into_iter().enumerate() {
            let round = c.value(
                id,
                "SELECT worker_last_round::text FROM repmgr.node_status()",
            );
            if round != last[i] {
                longest = longest.max(since[i].elapsed());
                last[i] = round;
                since[i] = Instant::now();
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for s in since {
        longest = longest.max(s.elapsed());
    }
    assert!(
        longest < Duration::from_secs(4),
        "a standby worker went {longest:?} without finishing a round"
    );
    for id in [2, 3] {
        assert_eq!(
            c.value(id, "SELECT pg_is_in_recovery()::text").as_deref(),
            Some("true"),
            "no promotion"
        );
    }
    c.thaw(1);
    // The standbys recorded the disconnect when it happened and write it once the primary is
    // back: within reconnect_attempts × reconnect_interval plus one interval (3 × 1 s + 1 s).
    for id in [2, 3] {
        let r = wait_row(
            &c,
            1,
            "the disconnect and reconnect events",
            &format!(
                "SELECT EXTRACT(epoch FROM d.event_timestamp - '{freeze_at}'::timestamptz), r.details
                   FROM repmgr.events d, repmgr.events r
                  WHERE d.node_id = {id} AND d.event = 'repmgrd_upstream_disconnect'
                    AND r.node_id = {id} AND r.event = 'repmgrd_upstream_reconnect'"
            ),
        );
        let after: f64 = r.get(0, 0).unwrap().parse().unwrap();
        assert!(
            (0.0..=4.0).contains(&after),
            "node {id} recorded the disconnect {after} s after the freeze"
        );
        assert!(
            r.get(0, 1)
                .unwrap()
                .starts_with("reconnected to upstream node \"node1\" (ID: 1) after ")
        );
        assert_eq!(
            c.value(id, "SELECT pg_is_in_recovery()::text").as_deref(),
            Some("true")
        );
    }
    assert_eq!(
        c.int(
            1,
            "SELECT count(*) FROM repmgr.nodes WHERE type = 'primary'"
        ),
        1
    );
    assert!(
        c.log(2)
            .contains("repmgr: unable to connect to upstream node \"node1\" (ID: 1)")
    );
    // Node 2 stopped its WAL receiver when the lease ran out (it was still connected to the
    // frozen primary); node 3 did not.
    assert!(
        c.log(2).contains("stopped its WAL receiver (pid "),
        "{}",
        c.log(2)
    );
    assert!(!c.log(3).contains("stopped its WAL receiver"));
    // The failover side tells the same story: the standbys lost the primary (their failover
    // is manual) and heard it again with no failover; the primary was fenced, then was not.
    for (id, event, says) in [
        (2, "standby_disconnect_manual", "repmgr.failover is manual"),
        (3, "standby_disconnect_manual", "repmgr.failover is manual"),
        (2, "repmgrd_failover_abort", "no failover took place"),
        (3, "repmgrd_failover_abort", "no failover took place"),
        (
            1,
            "repmgrd_primary_fenced",
            "not confirmed by enough voters",
        ),
        (1, "repmgrd_primary_unfenced", "holds its lease again"),
    ] {
        let r = wait_row(
            &c,
            1,
            event,
            &format!(
                "SELECT details FROM repmgr.events WHERE node_id = {id} AND event = '{event}'"
            ),
        );
        assert!(
            r.get(0, 0).unwrap().contains(says),
            "{event}: {:?}",
            r.get(0, 0)
        );
    }

    // A second outage is told like the first, in the log and in the events.
    c.freeze(1);
    std::thread::sleep(Duration::from_secs(4));
    c.thaw(1);
    for id in [2, 3] {
        wait_row(
            &c,
            1,
            "a second standby_disconnect_manual",
            &format!(
                "SELECT 1 FROM repmgr.events WHERE node_id = {id} AND event = 'standby_disconnect_manual' HAVING count(*) = 2"
            ),
        );
        let said = c
            .log(id)
            .matches("lost the primary but does not stand for election")
            .count();
        assert!(said >= 2, "node {id} said it {said} times:\n{}", c.log(id));
    }

    // Every freeze past the fence is a fencing, reported as one, even when the first polls
    // after the thaw renew the lease before the worker looks again.
    let fenced = |c: &Cluster| {
        c.int(
            1,
            "SELECT count(*) FROM repmgr.events WHERE node_id = 1 AND event = 'repmgrd_primary_fenced'",
        )
    };
    wait_row(
        &c,
        1,
        "the second outage's fencing",
        "SELECT 1 FROM repmgr.events WHERE node_id = 1 AND event = 'repmgrd_primary_fenced' HAVING count(*) >= 2",
    );
    let before = fenced(&c);
    for _ in 0..3 {
        c.one_writable(&[1], WAIT);
        c.freeze(1);
        std::thread::sleep(Duration::from_millis(2500));
        c.thaw(1);
        std::thread::sleep(Duration::from_millis(1500));
    }
    let after = wait_row(
        &c,
        1,
        "a fencing for each short freeze",
        &format!(
            "SELECT count(*) FROM repmgr.events WHERE node_id = 1 AND event = 'repmgrd_primary_fenced' HAVING count(*) >= {}",
            before + 3
        ),
    );
    assert_eq!(
        after.get(0, 0).unwrap().parse::<i64>().unwrap(),
        before + 3,
        "{}",
        c.log(1)
    );
}

#[test]
fn sighup_applies_a_new_monitor_interval_without_restart() {
    let c = three_nodes("reload");
    let pid = c.int(2, "SELECT repmgr.get_repmgrd_pid()");
    let rows_in = |c: &Cluster, secs: u64| {
        let before = c.int(
            1,
            "SELECT count(*) FROM repmgr.monitoring_history WHERE standby_node_id = 2",
        );
        std::thread::sleep(Duration::from_secs(secs));
        c.int(
            1,
            "SELECT count(*) FROM repmgr.monitoring_history WHERE standby_node_id = 2",
        ) - before
    };
    wait_row(
        &c,
        1,
        "history from node 2",
        "SELECT 1 FROM repmgr.monitoring_history WHERE standby_node_id = 2",
    );
    let slow = rows_in(&c, 3);
    c.set(2, "repmgr.monitor_interval", "200ms");
    wait_row(
        &c,
        1,
        "the repmgrd_reload event",
        "SELECT 1 FROM repmgr.events WHERE node_id = 2 AND event = 'repmgrd_reload' AND details LIKE '%monitor_interval 200 ms%'",
    );
    let fast = rows_in(&c, 3);
    assert!((2..=4).contains(&slow), "{slow} rows in 3 s at 1 s");
    assert!(fast >= 10, "{fast} rows in 3 s at 200 ms");
    assert_eq!(
        c.int(2, "SELECT repmgr.get_repmgrd_pid()"),
        pid,
        "the worker was not restarted"
    );
}

#[test]
fn sigterm_stops_the_worker_promptly_and_the_postmaster_restarts_it() {
    let c = three_nodes("sigterm");
    wait_row(
        &c,
        1,
        "node 2's worker to start",
        "SELECT 1 FROM repmgr.events WHERE event = 'repmgrd_start' AND node_id = 2",
    );
    let sent = Instant::now();
    let pid = c.signal_worker(2, libc::SIGTERM);
    c.wait_for("the worker to exit", WAIT, || {
        (unsafe { libc::kill(pid, 0) } != 0).then_some(())
    });
    let stopped = sent.elapsed();
    assert!(
        stopped < Duration::from_secs(1),
        "the worker took {stopped:?} to stop"
    );
    let new_pid = c.wait_for("a new worker", WAIT, || {
        let p = c.int(2, "SELECT repmgr.get_repmgrd_pid()");
        (p > 0
            && p != i64::from(pid)
            && c.value(2, "SELECT repmgr.repmgrd_is_running()::text")
                .as_deref()
                == Some("true"))
        .then_some(p)
    });
    assert_ne!(new_pid, i64::from(pid));
    wait_row(
        &c,
        1,
        "repmgrd_shutdown",
        "SELECT 1 FROM repmgr.events WHERE node_id = 2 AND event = 'repmgrd_shutdown' AND details = 'TERM signal received'",
    );
    wait_row(
        &c,
        1,
        "repmgrd_start again",
        "SELECT 1 FROM repmgr.events WHERE node_id = 2 AND event = 'repmgrd_start' HAVING count(*) = 2",
    );
}

#[test]
fn the_witness_keeps_its_node_list_in_sync() {
    let mut c = Cluster::new("witness-sync");
    c.init_primary(1, opts());
    c.sql(1, "SELECT repmgr.register_primary()");
    c.add_witness(3, opts().conf("repmgr.witness_sync_interval = '1s'"));
    c.clone_standby(2, 1, opts());
    c.sql(2, "SELECT repmgr.register_standby()");
    let list = "SELECT node_id, type, upstream_node_id FROM repmgr.nodes ORDER BY node_id";
    c.wait_for("the witness to copy the new standby", WAIT, || {
        (c.sql(3, list).rows == c.sql(1, list).rows).then_some(())
    });
    assert_eq!(c.sql(3, list).rows.len(), 3);
    c.sql(1, "UPDATE repmgr.nodes SET priority = 7 WHERE node_id = 2");
    c.wait_for("the witness to copy the change", WAIT, || {
        (c.int(3, "SELECT priority FROM repmgr.nodes WHERE node_id = 2") == 7).then_some(())
    });
    // It tracks the primary's reachability, and the primary sees it attached.
    let seen = c.int(3, "SELECT repmgr.get_upstream_last_seen()");
    assert!(
        (0..=2).contains(&seen),
        "witness last saw the primary {seen} s ago"
    );
    assert_eq!(c.int(3, "SELECT repmgr.get_upstream_node_id()"), 1);
    let status = c.sql(1, "SELECT node_id, role, reachable, worker_running, paused FROM repmgr.daemon_status() ORDER BY node_id");
    let expected = |v: [&str; 5]| v.map(|s| Some(s.to_string())).to_vec();
    assert_eq!(
        status.rows,
        [
            expected(["1", "primary", "t", "t", "f"]),
            expected(["2", "standby", "t", "t", "f"]),
            expected(["3", "witness", "t", "t", "f"])
        ]
    );
}

#[test]
fn a_notification_makes_a_standby_follow_another_upstream() {
    let c = three_nodes("follow");
    wait_row(
        &c,
        3,
        "node 3's worker",
        "SELECT 1 FROM repmgr.node_status() WHERE worker_last_round IS NOT NULL",
    );
    c.sql(3, "SELECT repmgr.notify_follow_primary(2)");
    wait_row(
        &c,
        2,
        "node 3 to stream from node 2",
        "SELECT 1 FROM pg_stat_replication WHERE application_name = 'node3' AND state = 'streaming'",
    );
    assert_eq!(
        c.int(
            1,
            "SELECT upstream_node_id FROM repmgr.nodes WHERE node_id = 3"
        ),
        2,
        "node 3's worker said:\n{}",
        c.worker_log(3)
    );
    assert_eq!(
        c.value(
            2,
            "SELECT active::text FROM pg_replication_slots WHERE slot_name = 'repmgr_slot_3'"
        )
        .as_deref(),
        Some("true")
    );
    let ev = wait_row(
        &c,
        1,
        "standby_follow",
        "SELECT successful::text, details FROM repmgr.events WHERE event = 'standby_follow'",
    );
    assert_eq!(ev.get(0, 0), Some("true"));
    assert_eq!(
        ev.get(0, 1),
        Some("node 3 (\"node3\") now follows node 2 (\"node2\")")
    );
    // Data written on the primary reaches node 3 through node 2.
    c.sql(1, "CREATE TABLE cascade AS SELECT 42 AS answer");
    c.wait_for("the row on node 3", WAIT, || {
        c.try_sql(3, "SELECT answer FROM cascade")
            .ok()
            .filter(|r| r.get(0, 0) == Some("42"))
    });
}

#[test]
fn the_worker_waits_quietly_for_its_database_extension_and_registration() {
    let mut c = Cluster::new("quiet");
    c.init_primary(
        1,
        NodeOptions {
            create_extension: false,
            ..Default::default()
        },
    );
    std::thread::sleep(Duration::from_secs(4));
    let missing = c
        .log(1)
        .matches("database \"repmgr\" does not exist")
        .count();
    assert!(
        missing <= 2,
        "{missing} lines about the missing database in 4 s:\n{}",
        c.log(1)
    );
    let node = c.node(1).clone();
    c.create_extension(&node);
    c.wait_for("the worker to wait for registration", WAIT, || {
        c.log(1)
            .contains("waiting for node 1 (\"node1\") to be registered")
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        c.log(1).matches("to be registered").count(),
        1,
        "logged once:\n{}",
        c.log(1)
    );
    c.sql(1, "SELECT repmgr.register_primary()");
    let ev = wait_row(
        &c,
        1,
        "repmgrd_start",
        "SELECT details FROM repmgr.events WHERE event = 'repmgrd_start'",
    );
    assert_eq!(
        ev.get(0, 0),
        Some("monitoring cluster primary \"node1\" (ID: 1)")
    );
    assert!(!c.log(1).contains("ERROR"), "{}", c.log(1));
}

#[test]
fn a_partitioned_standby_reports_the_cut_and_the_repair() {
    let mut c = Cluster::with_network("partition");
    // A short sender timeout lets the primary notice a silent standby quickly.
    let o = || {
        opts()
            .conf("wal_sender_timeout = '2s'")
            .conf("wal_receiver_timeout = '2s'")
    };
    c.init_primary(1, o());
    c.sql(1, "SELECT repmgr.register_primary()");
    c.clone_standby(2, 1, o());
    c.sql(2, "SELECT repmgr.register_standby()");
    wait_row(
        &c,
        1,
        "node 2's worker to start",
        "SELECT 1 FROM repmgr.events WHERE event = 'repmgrd_start' AND node_id = 2",
    );
    std::thread::sleep(Duration::from_secs(2));

    let cut_at = c.value(1, "SELECT now()::text").unwrap();
    c.network().isolate(2);
    // The primary sees its child go; the standby, cut off, keeps its events until it can
    // write them.
    wait_row(
        &c,
        1,
        "child_node_disconnect",
        "SELECT 1 FROM repmgr.events WHERE event = 'child_node_disconnect'",
    );
    c.wait_for("node 2 to see its upstream fail", WAIT, || {
        (c.int(2, "SELECT repmgr.get_upstream_last_seen()") >= 3).then_some(())
    });
    assert_eq!(
        c.int(1,
            "SELECT count(*) FROM repmgr.events WHERE node_id = 2 AND event = 'repmgrd_upstream_disconnect'"
        ),
        0
    );
    c.network().rejoin(2);
    let r = wait_row(
        &c,
        1,
        "node 2's events after the repair",
        &format!(
            "SELECT EXTRACT(epoch FROM d.event_timestamp - '{cut_at}'::timestamptz)
               FROM repmgr.events d JOIN repmgr.events r ON r.node_id = d.node_id AND r.event = 'repmgrd_upstream_reconnect'
              WHERE d.node_id = 2 AND d.event = 'repmgrd_upstream_disconnect'"
        ),
    );
    let after: f64 = r.get(0, 0).unwrap().parse().unwrap();
    assert!(
        (0.0..=4.0).contains(&after),
        "the disconnect was recorded {after} s after the cut"
    );
    wait_row(
        &c,
        1,
        "child_node_reconnect",
        "SELECT 1 FROM repmgr.events WHERE event = 'child_node_reconnect'",
    );

    // A pairwise cut (standby to primary only) behaves the same from the standby's side.
    c.network().cut(1, 2);
    c.wait_for("node 2 to lose the primary again", WAIT, || {
        (c.int(2, "SELECT repmgr.get_upstream_last_seen()") >= 3).then_some(())
    });
    c.network().mend(1, 2);
    c.wait_for("node 2 to reach the primary again", WAIT, || {
        (c.int(2, "SELECT repmgr.get_upstream_last_seen()") <= 1).then_some(())
    });
}
