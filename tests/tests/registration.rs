//! Registration and lag reporting on real servers: a primary, a streaming standby cloned with
//! pg_basebackup, a witness, and a server without the library preloaded.

use std::fs;
use std::time::Duration;

use repmgr_tests::{Cluster, NodeOptions};

const WAIT: Duration = Duration::from_secs(30);

fn count(c: &Cluster, id: i32, sql: &str) -> i64 {
    c.value(id, sql).unwrap().parse().unwrap()
}

/// A primary and a standby, both registered.
fn primary_and_standby(name: &str) -> Cluster {
    let mut c = Cluster::new(name);
    c.init_primary(1, NodeOptions::default());
    assert_eq!(
        c.value(1, "SELECT repmgr.register_primary()").as_deref(),
        Some("1")
    );
    c.clone_standby(2, 1, NodeOptions::default());
    c
}

#[test]
fn primary_and_standby_register_and_report_lag() {
    let c = primary_and_standby("lag");
    assert_eq!(
        c.value(2, "SELECT repmgr.register_standby()").as_deref(),
        Some("2")
    );

    // The record was written on the primary and has replayed on the standby by the time
    // register_standby() returns.
    let on_standby = c.sql(2, "SELECT node_id, upstream_node_id, type, node_name, slot_name FROM repmgr.nodes ORDER BY node_id");
    let expect = |v: [&str; 5]| v.map(|s| (s != "NULL").then(|| s.to_string())).to_vec();
    assert_eq!(
        on_standby.rows,
        [
            expect(["1", "NULL", "primary", "node1", "repmgr_slot_1"]),
            expect(["2", "1", "standby", "node2", "repmgr_slot_2"])
        ]
    );
    assert_eq!(
        c.value(
            1,
            "SELECT details FROM repmgr.events WHERE event = 'standby_register'"
        )
        .as_deref(),
        Some("standby registration succeeded; upstream node ID is 1")
    );
    assert_eq!(
        c.sql(2, "SELECT role, registered_type, upstream_node_id, upstream_node_name, receive_lsn IS NOT NULL FROM repmgr.node_status()").rows[0],
        ["standby", "standby", "1", "node1", "t"].map(|s| Some(s.to_string())).to_vec()
    );

    // After writes, the primary sees the standby catch up: lag in bytes reaches zero. The
    // primary's worker restarts once the repmgr database exists (a second after it was
    // created) and, registered by then, fences the primary until its voters confirm it: a
    // write in that moment is refused, rightly.
    c.settled(1, &[2], Duration::from_secs(30));
    c.sql(1, "CREATE TABLE t AS SELECT g AS id, repeat('x', 100) AS pad FROM generate_series(1, 20000) g");
    let written: i64 = count(&c, 1, "SELECT pg_current_wal_lsn() - '0/0'");
    let lag = c.wait_for("the standby to replay everything", WAIT, || {
        let r = c.sql(
            1,
            "SELECT node_id, node_name, state, replication_lag_bytes, apply_lag_bytes, replay_lsn - '0/0', replay_lag_seconds >= 0 OR replay_lag_seconds IS NULL
               FROM repmgr.replication_lag()",
        );
        (r.rows.len() == 1 && r.get(0, 3) == Some("0") && r.get(0, 4) == Some("0")).then_some(r)
    });
    assert_eq!(lag.get(0, 0), Some("2"));
    assert_eq!(lag.get(0, 1), Some("node2"));
    assert_eq!(lag.get(0, 2), Some("streaming"));
    assert!(
        lag.get(0, 5).unwrap().parse::<i64>().unwrap() >= written,
        "replayed everything written before"
    );
    assert_eq!(lag.get(0, 6), Some("t"));

    // The standby's own view agrees once it has replayed.
    let own = c.wait_for("the standby's own lag to reach zero", WAIT, || {
        let r = c.sql(2, "SELECT node_id, state, replication_lag_bytes, apply_lag_bytes, replay_lag_seconds FROM repmgr.replication_lag()");
        (r.get(0, 3) == Some("0") && r.get(0, 2) == Some("0")).then_some(r)
    });
    assert_eq!(own.get(0, 0), Some("2"));
    assert_eq!(own.get(0, 1), Some("streaming"));
    assert_eq!(own.get(0, 4), Some("0"));
    assert_eq!(count(&c, 2, "SELECT count(*) FROM t"), 20000);
}

/// Runs `sql` on `node`, expecting an error with `sqlstate` whose message contains `text`.
fn refused(c: &Cluster, node: i32, sql: &str, sqlstate: &str, text: &str) -> repmgr_pq::Error {
    let e = c.try_sql(node, sql).expect_err(sql);
    assert_eq!(
        e.sqlstate.as_deref(),
        Some(sqlstate),
        "{sql}: {e} / {:?}",
        e.detail
    );
    assert!(
        e.message.contains(text),
        "{sql}: expected {text:?} in {:?}",
        e.message
    );
    assert!(e.hint.is_some(), "{sql}: no hint in {e:?}");
    e
}

#[test]
fn bad_registrations_are_refused_and_change_nothing() {
    let c = primary_and_standby("refusals");
    let catalog = |c: &Cluster| c.sql(1, "SELECT * FROM repmgr.nodes ORDER BY node_id").rows;
    let before = catalog(&c);

    refused(
        &c,
        2,
        "SELECT repmgr.register_primary()",
        "55000",
        "this server is a standby (in recovery)",
    );
    refused(
        &c,
        1,
        "SELECT repmgr.register_standby()",
        "55000",
        "this server is not in recovery",
    );
    refused(
        &c,
        2,
        "SELECT repmgr.register_standby(upstream_node_id => 9)",
        "23503",
        "upstream node 9 is not registered",
    );
    refused(
        &c,
        2,
        "SELECT repmgr.register_standby(upstream_node_id => 2)",
        "22023",
        "cannot be its own upstream",
    );
    assert_eq!(catalog(&c), before);
    assert_eq!(
        count(
            &c,
            1,
            "SELECT count(*) FROM repmgr.events WHERE event = 'standby_register'"
        ),
        0
    );

    // A standby that streams under another application_name cannot be matched by monitoring.
    c.stop(2);
    let port = c.node(1).port;
    let auto = c.node(2).data.join("postgresql.auto.conf");
    fs::write(
        &auto,
        format!(
            "primary_conninfo = 'host=127.0.0.1 port={port} user=postgres application_name=other'\n"
        ),
    )
    .unwrap();
    c.start(2);
    c.wait_for("the standby to stream as 'other'", WAIT, || {
        (count(
            &c,
            1,
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'other'",
        ) == 1)
            .then_some(())
    });
    let e = refused(
        &c,
        2,
        "SELECT repmgr.register_standby()",
        "55000",
        "is not streaming from its upstream node 1 (\"node1\")",
    );
    assert!(e.hint.unwrap().contains("application_name=node2"));
    assert_eq!(catalog(&c), before);

    // force => true registers it anyway.
    assert_eq!(
        c.value(2, "SELECT repmgr.register_standby(force => true)")
            .as_deref(),
        Some("2")
    );
    let registered = catalog(&c);
    refused(
        &c,
        2,
        "SELECT repmgr.register_standby()",
        "42710",
        "node 2 is already registered",
    );

    // A standby whose repmgr.conninfo leads to the primary would mislead every other node.
    c.stop(2);
    let conf = c.node(2).data.join("postgresql.conf");
    let mut text = fs::read_to_string(&conf).unwrap();
    text.push_str(&format!("repmgr.conninfo = '{}'\n", c.node(1).conninfo()));
    fs::write(&conf, text).unwrap();
    c.start(2);
    let e = refused(
        &c,
        2,
        "SELECT repmgr.register_standby(force => true)",
        "22023",
        "leads to a different server",
    );
    assert!(e.detail.unwrap().contains("It reaches a primary"));

    // The primary is down: the standby says it cannot reach it, and nothing changes.
    c.stop(1);
    let e = refused(
        &c,
        2,
        "SELECT repmgr.unregister_node(2)",
        "08001",
        "could not reach the primary",
    );
    assert!(
        e.detail
            .unwrap()
            .contains("could not connect to node 1 (\"node1\")")
    );
    c.start(1);
    assert_eq!(catalog(&c), registered);
}

/// Registering right after starting a standby, as the tutorial does, must not race the WAL
/// receiver's first connection; a standby that never connects is refused with the reason.
#[test]
fn a_standby_that_has_just_started_gets_time_to_connect() {
    let mut c = Cluster::new("attach");
    c.init_primary(1, NodeOptions::default());
    c.sql(1, "SELECT repmgr.register_primary()");
    c.clone_standby(
        2,
        1,
        NodeOptions::default().conf("wal_retrieve_retry_interval = '200ms'"),
    );
    c.stop(2);
    // Nothing listens on port 1: the WAL receiver fails at once, again and again.
    fs::write(
        c.node(2).data.join("postgresql.auto.conf"),
        "primary_conninfo = 'host=127.0.0.1 port=1 user=postgres application_name=node2'\n",
    )
    .unwrap();
    c.start(2);
    let started = std::time::Instant::now();
    let e = refused(
        &c,
        2,
        "SELECT repmgr.register_standby()",
        "55000",
        "is not streaming from its upstream node 1 (\"node1\")",
    );
    assert!(started.elapsed() >= Duration::from_secs(10), "{e:?}");
    assert!(
        e.detail.as_deref().unwrap().contains("after 10 s")
            || e.detail.as_deref().unwrap().contains("for 10 s"),
        "{e:?}"
    );
    assert_eq!(count(&c, 1, "SELECT count(*) FROM repmgr.nodes"), 1);

    // The registration starts while the standby cannot connect; the connection is mended
    // a second later, and the registration waits for it instead of refusing.
    std::thread::scope(|s| {
        let register = s.spawn(|| c.value(2, "SELECT repmgr.register_standby()"));
        std::thread::sleep(Duration::from_secs(1));
        c.sql(2, "ALTER SYSTEM RESET primary_conninfo");
        c.sql(2, "SELECT pg_reload_conf()");
        assert_eq!(register.join().unwrap().as_deref(), Some("2"));
    });
    assert_eq!(count(&c, 1, "SELECT count(*) FROM repmgr.nodes"), 2);
}

#[test]
fn duplicate_names_and_ids_are_refused() {
    let mut c = Cluster::new("duplicates");
    c.init_primary(1, NodeOptions::default());
    c.sql(1, "SELECT repmgr.register_primary()");
    // A standby configured with the primary's name.
    c.clone_standby(
        2,
        1,
        NodeOptions::default().conf("repmgr.node_name = 'node1'"),
    );
    refused(
        &c,
        2,
        "SELECT repmgr.register_standby(force => true)",
        "23505",
        "the name \"node1\" is already used by node 1",
    );
    assert_eq!(count(&c, 1, "SELECT count(*) FROM repmgr.nodes"), 1);
}

#[test]
fn witness_copies_the_node_list() {
    let mut c = primary_and_standby("witness");
    c.sql(2, "SELECT repmgr.register_standby()");
    c.init_witness(3, NodeOptions::default());
    let primary = c.node(1).conninfo();
    refused(
        &c,
        3,
        &format!("SELECT repmgr.register_witness('{}')", c.node(2).conninfo()),
        "55000",
        "leads to a standby",
    );
    assert_eq!(
        c.value(3, &format!("SELECT repmgr.register_witness('{primary}')"))
            .as_deref(),
        Some("3")
    );
    let list =
        "SELECT node_id, type, upstream_node_id, priority FROM repmgr.nodes ORDER BY node_id";
    assert_eq!(
        c.sql(3, list).rows,
        c.sql(1, list).rows,
        "the witness holds the primary's node list"
    );
    assert_eq!(c.sql(3, list).rows.len(), 3);
    assert_eq!(c.value(1, "SELECT type || ' ' || upstream_node_id || ' ' || priority FROM repmgr.nodes WHERE node_id = 3").as_deref(), Some("witness 1 0"));
    assert_eq!(
        count(
            &c,
            1,
            "SELECT count(*) FROM repmgr.events WHERE event = 'witness_register'"
        ),
        1
    );
    assert_eq!(
        c.value(3, "SELECT role FROM repmgr.node_status()")
            .as_deref(),
        Some("witness")
    );
    refused(
        &c,
        3,
        &format!("SELECT repmgr.register_witness('{primary}')"),
        "42710",
        "already registered",
    );

    // Unregistering the witness from itself removes it on the primary and in its own copy.
    c.sql(3, "SELECT repmgr.unregister_node()");
    assert_eq!(
        count(&c, 1, "SELECT count(*) FROM repmgr.nodes WHERE node_id = 3"),
        0
    );
    assert_eq!(
        count(&c, 3, "SELECT count(*) FROM repmgr.nodes WHERE node_id = 3"),
        0
    );
    assert_eq!(
        count(
            &c,
            1,
            "SELECT count(*) FROM repmgr.events WHERE event = 'witness_unregister'"
        ),
        1
    );
}

#[test]
fn a_witness_of_another_major_version_is_refused() {
    let mut c = Cluster::new("majors");
    c.init_primary(1, NodeOptions::default());
    c.sql(1, "SELECT repmgr.register_primary()");
    let other = repmgr_tests::other_major_bindir();
    let (mine, theirs) = (
        repmgr_tests::pg_major(&repmgr_tests::bindir()),
        repmgr_tests::pg_major(&other),
    );
    c.init_witness(
        2,
        NodeOptions {
            bindir: Some(other),
            ..NodeOptions::default()
        },
    );
    let e = refused(
        &c,
        2,
        &format!("SELECT repmgr.register_witness('{}')", c.node(1).conninfo()),
        "55000",
        &format!("it runs PostgreSQL {theirs}, the primary PostgreSQL {mine}"),
    );
    let detail = e.detail.unwrap_or_default();
    for version in [
        c.value(1, "SHOW server_version"),
        c.value(2, "SHOW server_version"),
    ] {
        let version = version.expect("server_version");
        assert!(detail.contains(&version), "{version:?} not in {detail:?}");
    }
    assert_eq!(count(&c, 1, "SELECT count(*) FROM repmgr.nodes"), 1);
    assert_eq!(count(&c, 2, "SELECT count(*) FROM repmgr.nodes"), 0);
}

#[test]
fn without_preload_the_catalog_and_compatible_functions_still_work() {
    let mut c = Cluster::new("nopreload");
    c.init_primary(
        1,
        NodeOptions {
            preload: false,
            ..Default::default()
        },
    );
    // repmgr's documented results without shared memory.
    let r = c.sql(
        1,
        "SELECT repmgr.get_new_primary(), repmgr.get_upstream_last_seen(), repmgr.get_local_node_id(),
                repmgr.get_repmgrd_pid(), repmgr.repmgrd_is_running(), repmgr.repmgrd_is_paused(),
                repmgr.standby_get_last_updated(), repmgr.standby_set_last_updated(), repmgr.get_upstream_node_id(),
                repmgr.get_wal_receiver_pid()",
    );
    let expected: Vec<Option<String>> = ["-1", "-1"]
        .iter()
        .map(|s| Some(s.to_string()))
        .chain(std::iter::repeat_n(None, 8))
        .collect();
    assert_eq!(r.rows[0], expected);
    // Told to follow itself: refused (a standby follows another node), and named.
    let e = c
        .try_sql(1, "SELECT repmgr.notify_follow_primary(1)")
        .unwrap_err();
    assert_eq!(e.sqlstate.as_deref(), Some("22023"), "{e:?}");
    assert!(e.message.contains("node 1 is this node itself"), "{e:?}");
    for f in [
        // A node this catalog does not know yet is taken (it may lag a new primary's).
        "notify_follow_primary(2)",
        "reset_voting_status()",
        "set_local_node_id(1)",
        "repmgrd_pause(true)",
        "set_upstream_node_id(2)",
    ] {
        assert_eq!(c.sql(1, &format!("SELECT repmgr.{f}")).rows.len(), 1, "{f}");
    }
    // Our own functions that need the worker say what is missing.
    refused(
        &c,
        1,
        "SELECT repmgr.pause(true)",
        "55000",
        "needs the repmgr library in shared_preload_libraries",
    );
    // Registration needs no shared memory: node settings are still read from postgresql.conf.
    assert_eq!(
        c.value(1, "SELECT repmgr.register_primary()").as_deref(),
        Some("1")
    );
    assert_eq!(
        c.value(1, "SELECT node_name FROM repmgr.show_nodes")
            .as_deref(),
        Some("node1")
    );
}

#[test]
fn missing_node_id_is_explained() {
    let mut c = Cluster::new("noid");
    c.init_primary(
        1,
        NodeOptions {
            identity: false,
            ..Default::default()
        },
    );
    let e = refused(
        &c,
        1,
        "SELECT repmgr.register_primary()",
        "F0000",
        "repmgr.node_id is not set",
    );
    assert!(e.hint.unwrap().contains("postgresql.conf"));
    assert_eq!(count(&c, 1, "SELECT count(*) FROM repmgr.nodes"), 0);
}

#[test]
fn event_notification_runs_after_commit_with_quoted_values() {
    let mut c = Cluster::new("notify");
    let out = c.dir.join("events.txt");
    c.init_primary(
        1,
        NodeOptions::default()
            .conf(format!("repmgr.event_notification_command = 'printf \"%%s|\" %n %e %s \"%d\" >> {}; echo >> {}'", out.display(), out.display()))
            // The worker's own events (repmgrd_start) would notify too: filter.
            .conf("repmgr.event_notifications = 'primary_register, standby_register'"),
    );
    // Rolled back: no notification.
    let mut session = repmgr_tests::connect(&c.node(1).conninfo());
    for q in ["BEGIN", "SELECT repmgr.register_primary()", "ROLLBACK"] {
        repmgr_tests::query(&mut session, q);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(!out.exists(), "a rolled-back registration must not notify");
    c.sql(1, "SELECT repmgr.register_primary()");
    let line = c.wait_for("the notification", WAIT, || {
        fs::read_to_string(&out).ok().filter(|s| s.ends_with('\n'))
    });
    assert_eq!(
        line,
        "1|primary_register|1|node 1 (\"node1\") registered as primary|\n"
    );
}
