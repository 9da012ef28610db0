//! Safety in real clusters whose nodes are configured differently, and under operator actions:
//! one test per hole the simulation and a new user found (a standby set to manual, a primary
//! with a longer fence than its voters' leases, removing the primary's record, dropping or
//! emptying the catalog, telling a standby to follow the witness, settings libpq or
//! PostgreSQL would refuse later). Every wait has a deadline; every cluster is torn down.

use std::process::Command;
use std::time::{Duration, Instant};

use repmgr_tests::{Cluster, NodeOptions};

const WAIT: Duration = Duration::from_secs(30);

/// A registered cluster: primary 1, standbys 2 and 3, and optionally witness 4.
fn cluster(name: &str, witness: bool) -> Cluster {
    let mut c = Cluster::new(name);
    c.populate(&[2, 3], |_| NodeOptions::default());
    if witness {
        c.add_witness(4, NodeOptions::default());
    }
    c
}

/// The SQLSTATE and message of a statement that must fail.
fn refused(c: &Cluster, id: i32, sql: &str) -> (String, String) {
    let e = c.try_sql(id, sql).expect_err(sql);
    assert!(e.hint.is_some(), "a refusal says what to do next: {e:?}");
    (e.sqlstate.unwrap_or_default(), e.message)
}

fn term(c: &Cluster, id: i32) -> i64 {
    c.int(id, "SELECT term FROM repmgr.vote_info()")
}

/// Runs `psql -c` with each of `commands`, in one session, against node `id` as the postgres
/// user (for `\copy`, as an operator would).
fn psql(c: &Cluster, id: i32, commands: &[&str]) -> String {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"])
        .arg(repmgr_tests::bindir().join("psql"))
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &c.node(id).local_conninfo("repmgr"),
        ]);
    for command in commands {
        cmd.args(["-c", command]);
    }
    let out = repmgr_tests::run_checked(&mut cmd, &format!("psql {commands:?}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_standby_set_to_manual_does_not_hold_back_failover() {
    let c = cluster("manual-peer", false);
    c.settled(1, &[2, 3], WAIT);
    // Node 2 has the lowest id and everything node 3 has: the better candidate, but manual.
    c.set(2, "repmgr.failover", "manual");
    c.wait_for("node 2 to reload", WAIT, || {
        (c.value(2, "SHOW repmgr.failover").as_deref() == Some("manual")).then_some(())
    });
    // Its worker reloads within a heartbeat or two of the signal.
    std::thread::sleep(Duration::from_secs(1));
    c.caught_up(1, &[2, 3], WAIT);
    c.kill9(1);
    assert_eq!(c.one_writable(&[2, 3], WAIT), 3, "node 3 is promoted");
    c.wait_for("node 2 to follow node 3", WAIT, || {
        c.streams_from(3, 2).then_some(())
    });
}

#[test]
fn a_primary_with_a_longer_fence_than_its_voters_leases_is_never_replaced_while_it_can_commit() {
    let mut c = Cluster::with_network("long-fence");
    // The standbys are cloned with the primary's postgresql.conf: their own lines put the
    // defaults back.
    c.populate(&[2, 3], |id| {
        let (fence, lease) = if id == 1 {
            ("5s", "5500ms")
        } else {
            ("1600ms", "2100ms")
        };
        NodeOptions::default()
            .conf(format!("repmgr.fence_timeout = '{fence}'"))
            .conf(format!("repmgr.lease_timeout = '{lease}'"))
    });
    c.settled(1, &[2, 3], WAIT);
    c.sql(1, "CREATE TABLE t (x int)");
    c.caught_up(1, &[2, 3], WAIT);
    // Cut off, the old primary can commit until its own fence runs out; writes reach every
    // node through its Unix socket, which no network cut affects.
    let cut = Instant::now();
    c.network().isolate(1);
    let mut last_old = None;
    let mut first_new = None;
    // Until a successor is writable, and for three seconds more.
    while cut.elapsed() < Duration::from_secs(20)
        && first_new.is_none_or(|(_, at)| cut.elapsed() < at + Duration::from_secs(3))
    {
        if c.try_sql(1, "INSERT INTO t VALUES (1)").is_ok() {
            last_old = Some(cut.elapsed());
        }
        if first_new.is_none()
            && let Some(n) = [2, 3].into_iter().find(|n| c.writable(&[*n]) == [*n])
        {
            first_new = Some((n, cut.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (new, at) = first_new.expect("a new primary within 20 s");
    let last_old = last_old.expect("the old primary committed after the cut");
    println!(
        "old primary's last commit {last_old:?} after the cut, node {new} writable after {at:?}"
    );
    assert!(
        last_old < at,
        "node 1 committed {last_old:?} after the cut, and node {new} was writable after {at:?}: two primaries"
    );
    assert!(
        at > Duration::from_secs(5),
        "the successor waited out the 5 s fence"
    );
    c.network().rejoin(1);
    // The new primary takes the long fence by a reload: the standby left waits it out, and
    // node_check() there says so.
    c.set(new, "repmgr.lease_timeout", "5500ms");
    c.set(new, "repmgr.fence_timeout", "5s");
    let other = if new == 2 { 3 } else { 2 };
    let timing = || {
        c.value(
            other,
            "SELECT status || ': ' || details FROM repmgr.node_check() WHERE \"check\" = 'timing across nodes'",
        )
    };
    c.wait_for_or_explain(
        "node_check to report the timing",
        WAIT,
        || timing().filter(|d| d.starts_with("WARNING") && d.contains("waits 5353 ms")),
        || format!("it says {:?}", timing()),
    );
}

#[test]
fn removing_the_primarys_record_causes_no_election_and_no_event_storm() {
    let c = cluster("unregister-primary", true);
    c.settled(1, &[2, 3, 4], WAIT);
    let before = term(&c, 2);
    // Refused while it runs, forced or not.
    let (state, message) = refused(&c, 2, "SELECT repmgr.unregister_node(1, force => true)");
    assert_eq!(state, "55006", "{message}");
    assert!(
        message.contains("it is the active primary and it is running"),
        "{message}"
    );
    // An operator deletes the record by hand anyway, on the primary.
    c.sql(1, "DELETE FROM repmgr.events");
    c.sql(
        1,
        "UPDATE repmgr.nodes SET upstream_node_id = NULL WHERE upstream_node_id = 1",
    );
    c.sql(1, "DELETE FROM repmgr.nodes WHERE node_id = 1");
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(c.writable(&[1, 2, 3]), [1], "node 1 stays the only primary");
    assert_eq!(term(&c, 2), before, "no election");
    assert_eq!(term(&c, 3), before, "no election");
    for id in [2, 3] {
        assert_eq!(
            c.value(id, "SELECT pg_is_in_recovery()::text").as_deref(),
            Some("true")
        );
    }
    let reloads = c.int(
        1,
        "SELECT count(*) FROM repmgr.events WHERE event IN ('repmgrd_reload', 'repmgrd_start')",
    );
    assert!(reloads <= 10, "{reloads} reload events in 8 s");
    // Registered again, everything carries on.
    c.sql(1, "SELECT repmgr.register_primary(force => true)");
    c.settled(1, &[2, 3, 4], WAIT);
}

#[test]
fn drop_extension_is_refused_and_a_lost_catalog_is_rebuilt_as_documented() {
    let mut c = Cluster::new("lost-catalog");
    c.populate(&[2, 3], |_| NodeOptions::default());
    c.add_witness(
        4,
        NodeOptions::default().conf("repmgr.witness_sync_interval = '2s'"),
    );
    c.settled(1, &[2, 3, 4], WAIT);
    let (state, message) = refused(&c, 1, "DROP EXTENSION repmgr");
    assert_eq!(state, "55006", "{message}");
    assert!(message.contains("4 registered node(s)"), "{message}");
    let dir = c
        .node(1)
        .data
        .parent()
        .expect("the cluster's directory")
        .to_path_buf();
    let saved = dir.join("nodes.csv");
    let save = format!("\\copy repmgr.nodes TO '{}' CSV", saved.display());
    let restore = format!("\\copy repmgr.nodes FROM '{}' CSV", saved.display());
    psql(&c, 1, &[&save]);
    // Emptied and restored: the witness gets its copy back, nobody is fenced or replaced.
    let t = term(&c, 2);
    psql(&c, 1, &["TRUNCATE repmgr.nodes"]);
    c.wait_for("the witness's copy to empty", WAIT, || {
        (c.int(4, "SELECT count(*) FROM repmgr.nodes") == 0).then_some(())
    });
    psql(&c, 1, &[&restore]);
    c.wait_for("the witness's copy of the restored list", WAIT, || {
        (c.int(4, "SELECT count(*) FROM repmgr.nodes") == 4).then_some(())
    });
    assert_eq!(c.writable(&[1, 2, 3]), [1]);
    assert_eq!(term(&c, 2), t);
    // Dropped and created again in one session, as the README's procedure does.
    psql(
        &c,
        1,
        &[
            "SET repmgr.allow_drop_extension = on",
            "DROP EXTENSION repmgr",
            "CREATE EXTENSION repmgr",
            &restore,
        ],
    );
    for id in [2, 3] {
        c.wait_for("the standby's catalog to come back", WAIT, || {
            c.try_sql(id, "SELECT registered_type FROM repmgr.node_status()")
                .ok()
                .filter(|r| r.get(0, 0) == Some("standby"))
        });
    }
    c.settled(1, &[2, 3, 4], WAIT);
    assert_eq!(c.writable(&[1, 2, 3]), [1]);
    assert_eq!(term(&c, 2), t, "no election through all of it");
}

#[test]
fn a_standby_is_never_repointed_at_the_witness() {
    let c = cluster("follow-witness", true);
    c.settled(1, &[2, 3, 4], WAIT);
    let e = c
        .try_sql(2, "SELECT repmgr.notify_follow_primary(4)")
        .expect_err("following the witness");
    assert_eq!(e.sqlstate.as_deref(), Some("22023"), "{e}");
    assert!(e.message.contains("is the witness"), "{}", e.message);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        c.streams_from(1, 2),
        "node 2 still streams from the primary"
    );
    assert_eq!(
        c.int(4, "SELECT count(*) FROM pg_replication_slots"),
        0,
        "no slot on the witness"
    );
    assert_eq!(
        c.value(
            1,
            "SELECT upstream_node_id::text FROM repmgr.nodes WHERE node_id = 2"
        )
        .as_deref(),
        Some("1")
    );
}

#[test]
fn settings_libpq_or_postgresql_would_refuse_later_are_refused_when_set() {
    let c = cluster("bad-settings", false);
    let e = c
        .try_sql(
            2,
            "ALTER SYSTEM SET repmgr.conninfo = 'host=127.0.0.1 connect_timeout=x'",
        )
        .expect_err("a conninfo libpq cannot use");
    assert_eq!(e.sqlstate.as_deref(), Some("22023"), "{e}");
    assert!(
        e.detail
            .as_deref()
            .is_some_and(|d| d.contains("connect_timeout")),
        "{e:?}"
    );
    let e = c
        .try_sql(2, "ALTER SYSTEM SET repmgr.node_name = 'bad name ü'")
        .expect_err("a name no application_name can equal");
    assert_eq!(e.sqlstate.as_deref(), Some("22023"), "{e}");
    assert!(
        e.detail
            .as_deref()
            .is_some_and(|d| d.contains("printable ASCII")),
        "{e:?}"
    );
    // The catalog keeps what it had.
    assert_eq!(c.int(1, "SELECT count(*) FROM repmgr.nodes"), 3);
}
