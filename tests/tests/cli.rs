//! The `repmgr` command line against real servers.

use std::time::Duration;

use repmgr_tests::load::longest_gap;
use repmgr_tests::{Cluster, NodeOptions};

const WAIT: Duration = Duration::from_secs(30);

fn repmgr(args: &[&str]) -> (i32, String, String) {
    repmgr_tests::run_cli(args)
}

#[test]
fn cluster_show_reports_live_status() {
    let mut c = Cluster::new("cli-show");
    c.init_primary(
        1,
        NodeOptions {
            conninfo_extra: "password=hunter2".into(),
            ..Default::default()
        },
    );
    let port = c.node(1).port.to_string();
    c.sql(1, "SELECT repmgr.register_primary()");
    c.clone_standby(2, 1, NodeOptions::default());
    c.sql(2, "SELECT repmgr.register_standby()");

    let (code, out, err) = repmgr(&[
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-U",
        "postgres",
        "cluster",
        "show",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with(" ID | Name  | Role    | Status    | Upstream | Location | Priority | Timeline | Connection string"), "{out}");
    assert!(
        lines[2].starts_with(
            " 1  | node1 | primary | * running |          | default  | 100      | 1        |"
        ),
        "{out}"
    );
    assert!(
        lines[3].starts_with(
            " 2  | node2 | standby |   running | node1    | default  | 100      | 1        |"
        ),
        "{out}"
    );
    assert!(
        out.contains("password=********") && !out.contains("hunter2"),
        "{out}"
    );

    let (code, out, _) = repmgr(&["-d", &c.node(1).conninfo(), "--csv", "cluster", "show"]);
    assert_eq!((code, out.as_str()), (0, "1,0,0\n2,0,1\n"));

    c.stop(2);
    let (code, out, err) = repmgr(&["-d", &c.node(1).conninfo(), "cluster", "show"]);
    assert_eq!(code, 25, "{out}{err}");
    assert!(out.contains("? unreachable"), "{out}");
    assert!(
        err.contains(
            "node \"node2\" (ID: 2) is registered as an active standby but is unreachable"
        ),
        "{err}"
    );

    let (code, _, err) = repmgr(&["-h", "127.0.0.1", "-p", "1", "cluster", "show"]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("could not connect"), "{err}");
}

/// Runs `repmgr -f <conf> <args…>`; asserts the exit code, and returns stdout and stderr.
fn run_ok(code: i32, args: &[&str]) -> (String, String) {
    let (got, out, err) = repmgr(args);
    assert_eq!(
        got,
        code,
        "repmgr {}\nstdout:\n{out}\nstderr:\n{err}",
        args.join(" ")
    );
    (out, err)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn cli_cluster(c: &mut Cluster, ids: &[i32], opts: impl Fn() -> NodeOptions) -> Vec<String> {
    c.populate_with_cli(ids, opts)
        .iter()
        .map(|p| p.display().to_string())
        .collect()
}

#[test]
fn clone_register_and_check_standbys() {
    let mut c = Cluster::new("cli-clone");
    c.init_primary(1, NodeOptions::default());
    let p = c.node(1).clone();
    let p_conf = c.repmgr_conf(&p, &[]).display().to_string();
    run_ok(0, &["-f", &p_conf, "primary", "register"]);
    let n2 = c.reserve(2, &NodeOptions::default());
    let conf2 = c.repmgr_conf(&n2, &[]).display().to_string();
    let clone_args = c.clone_args(1);
    let clone = |conf: &str, extra: &[&str]| {
        let mut a = vec!["-f", conf];
        a.extend(clone_args.iter().map(String::as_str));
        a.extend_from_slice(extra);
        repmgr(&a)
    };
    // --dry-run checks everything and changes nothing, on disk or on the upstream.
    let (code, _, err) = clone(&conf2, &["--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("would clone") && err.contains("pg_basebackup"),
        "{err}"
    );
    assert!(!n2.data.exists(), "dry run created {}", n2.data.display());
    assert_eq!(
        c.value(1, "SELECT count(*)::text FROM pg_replication_slots")
            .as_deref(),
        Some("0")
    );
    // A directory with something in it is refused.
    std::fs::create_dir_all(&n2.data).unwrap();
    std::fs::write(n2.data.join("keep.txt"), "mine").unwrap();
    let (code, _, err) = clone(&conf2, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("is not empty") && err.contains("HINT:"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(n2.data.join("keep.txt")).unwrap(),
        "mine"
    );
    std::fs::remove_dir_all(&n2.data).unwrap();
    // Two real clones, started and registered; the first checked in detail.
    let (code, _, err) = clone(&conf2, &["--fast-checkpoint"]);
    assert_eq!(code, 0, "{err}");
    assert!(n2.data.join("standby.signal").exists());
    let auto = std::fs::read_to_string(n2.data.join("postgresql.auto.conf")).unwrap();
    assert!(
        auto.contains("application_name=node2")
            && auto.contains("repmgr.node_id = '2'")
            && auto.contains("primary_slot_name = 'repmgr_slot_2'"),
        "{auto}"
    );
    c.adopt(n2, &NodeOptions::default());
    c.start(2);
    run_ok(0, &["-f", &conf2, "standby", "register"]);
    let n3 = c.reserve(3, &NodeOptions::default());
    let conf3 = c.repmgr_conf(&n3, &[]).display().to_string();
    let (code, _, err) = clone(&conf3, &[]);
    assert_eq!(code, 0, "{err}");
    c.adopt(n3, &NodeOptions::default());
    c.start(3);
    run_ok(0, &["-f", &conf3, "standby", "register"]);
    assert_eq!(c.value(1, "SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots WHERE active").as_deref(), Some("repmgr_slot_2,repmgr_slot_3"));
    assert_eq!(
        c.value(
            1,
            "SELECT count(*)::text FROM repmgr.events WHERE event = 'standby_clone' AND successful"
        )
        .as_deref(),
        Some("2")
    );
    // Cloning as a node that already exists is refused, naming it.
    let dup = c.dir.join("dup");
    let (code, _, err) = clone(&conf3, &["-D", &dup.display().to_string()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("node 3 (\"node3\") is already registered and active"),
        "{err}"
    );

    // node check: every check OK on a healthy standby, in text, JSON and Nagios form.
    let (out, _) = run_ok(0, &["-f", &conf2, "node", "check"]);
    assert!(
        out.starts_with("Node \"node2\":\n\tServer role: OK (node is standby)"),
        "{out}"
    );
    assert_eq!(out.lines().count(), 9, "{out}");
    let (out, _) = run_ok(0, &["-f", &conf2, "--format", "json", "node", "check"]);
    let v = json(&out);
    assert_eq!(v["node_id"], 2);
    assert!(
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] == "OK"),
        "{v}"
    );
    for (opt, name) in [
        ("--role", "REPMGR_SERVER_ROLE OK: node is standby"),
        (
            "--replication-lag",
            "REPMGR_REPLICATION_LAG OK: 0 seconds | lag=0;300;600",
        ),
        (
            "--archive-ready",
            "REPMGR_ARCHIVE_READY OK: 0 pending archive ready files | files=0;16;128",
        ),
        (
            "--upstream",
            "REPMGR_UPSTREAM_SERVER OK: node is attached to its upstream node 1 (\"node1\")",
        ),
        (
            "--downstream",
            "REPMGR_DOWNSTREAM_SERVERS OK: this node has no downstream nodes | attached=0, missing=0",
        ),
        ("--slots", "REPMGR_INACTIVE_SLOTS OK"),
        ("--missing-slots", "REPMGR_MISSING_SLOTS OK"),
        ("--data-directory-config", "REPMGR_DATA_DIRECTORY OK"),
        ("--repmgrd", "REPMGRD OK: repmgrd running"),
    ] {
        let (out, _) = run_ok(0, &["-f", &conf2, "node", "check", opt, "--nagios"]);
        assert!(out.starts_with(name), "{opt}: {out}");
    }
    run_ok(1, &["-f", &conf2, "node", "check", "--nagios"]);
    // node status, in text and JSON; the service command it would run.
    let (out, _) = run_ok(0, &["-f", &conf2, "node", "status"]);
    let major = repmgr_tests::pg_major(&repmgr_tests::bindir());
    assert!(
        out.starts_with(&format!("Node \"node2\":\n\tPostgreSQL version: {major}.")),
        "{out}"
    );
    assert!(
        out.contains("\tRole: standby\n") && out.contains("\tUpstream node: node1\n"),
        "{out}"
    );
    let (out, _) = run_ok(0, &["-f", &conf2, "--format", "json", "node", "status"]);
    let v = json(&out);
    assert_eq!(
        (
            v["role"].as_str(),
            v["upstream_node"].as_str(),
            v["fenced"].as_bool()
        ),
        (Some("standby"), Some("node1"), Some(false)),
        "{v}"
    );
    let (out, _) = run_ok(
        0,
        &[
            "-f",
            &conf2,
            "node",
            "service",
            "--action",
            "stop",
            "--list-actions",
        ],
    );
    assert!(
        out.contains("pg_ctl' -D '") && out.trim_end().ends_with("-W -m fast stop"),
        "{out}"
    );
    // On the primary with node 3 stopped: downstream and slots are CRITICAL (exit 2).
    c.stop(3);
    let (out, _) = run_ok(
        2,
        &["-f", &p_conf, "node", "check", "--downstream", "--nagios"],
    );
    assert_eq!(
        out.trim(),
        "REPMGR_DOWNSTREAM_SERVERS CRITICAL: 1 of 2 downstream nodes not attached: node 3 (\"node3\") | attached=1, missing=1"
    );
    let (out, _) = run_ok(2, &["-f", &p_conf, "node", "check", "--slots", "--nagios"]);
    assert!(out.starts_with("REPMGR_INACTIVE_SLOTS CRITICAL: 1 of 2 physical replication slots are inactive: repmgr_slot_3"), "{out}");
    let (out, _) = run_ok(25, &["-f", &p_conf, "node", "check"]);
    assert!(out.contains("\tDownstream servers: CRITICAL"), "{out}");
    // A wrong repmgr.conf for the server it reaches is an error naming both values.
    let (code, _, err) = repmgr(&["-f", &conf2, "-d", &p.conninfo(), "node", "check"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("says node_id = 2 but the server at")
            && err.contains("has repmgr.node_id = 1"),
        "{err}"
    );

    // cluster show in JSON matches the cluster, with node 3 unreachable (exit 25).
    let (out, err) = run_ok(25, &["-f", &p_conf, "--format", "json", "cluster", "show"]);
    let v = json(&out);
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{v}");
    assert_eq!(
        (
            nodes[0]["role"].as_str(),
            nodes[0]["status"].as_str(),
            nodes[0]["reachable"].as_bool()
        ),
        (Some("primary"), Some("* running"), Some(true))
    );
    assert_eq!(
        (
            nodes[1]["status"].as_str(),
            nodes[1]["upstream_name"].as_str(),
            nodes[1]["in_recovery"].as_bool()
        ),
        (Some("running"), Some("node1"), Some(true))
    );
    assert_eq!(
        (nodes[2]["status"].as_str(), nodes[2]["reachable"].as_bool()),
        (Some("? unreachable"), Some(false))
    );
    assert_eq!(
        v["warnings"][0],
        "node \"node3\" (ID: 3) is registered as an active standby but is unreachable",
        "{err}"
    );
    // Events, newest first, as JSON.
    let (out, _) = run_ok(
        0,
        &[
            "-f",
            &p_conf,
            "--format",
            "json",
            "cluster",
            "event",
            "--event",
            "standby_register",
        ],
    );
    let v = json(&out);
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v[0]["node_id"], 3);
    assert_eq!(v[0]["successful"], true);
    // The matrix, from the primary's server: node 3 is down for everyone.
    let (out, _) = run_ok(25, &["-f", &p_conf, "cluster", "matrix"]);
    assert!(out.contains(" node1 | 1  | * | * | x"), "{out}");
    assert!(out.contains(" node2 | 2  | * | * | x"), "{out}");
    assert!(out.contains(" node3 | 3  | ? | ? | ?"), "{out}");
}

#[test]
fn switchover_swaps_roles_under_load() {
    let mut c = Cluster::new("cli-switchover");
    let confs = cli_cluster(&mut c, &[2, 3], NodeOptions::default);
    c.settled(1, &[2, 3], WAIT);
    // Refusals change nothing: not on a standby, and a dry run.
    let (code, _, err) = repmgr(&["-f", &confs[1], "standby", "switchover"]);
    assert_eq!(code, 18, "{err}");
    assert!(err.contains("is not a standby"), "{err}");
    let (out, err) = run_ok(
        0,
        &[
            "-f",
            &confs[2],
            "standby",
            "switchover",
            "--siblings-follow",
            "--dry-run",
        ],
    );
    assert!(
        err.contains("would pause every node, stop node 1 (\"node1\")"),
        "{out}{err}"
    );
    assert_eq!(c.writable(&[1, 2, 3]), [1]);
    let load = c.write_load(&[1, 2, 3]);
    std::thread::sleep(Duration::from_secs(1));
    let (_, err) = run_ok(
        0,
        &[
            "-f",
            &confs[2],
            "standby",
            "switchover",
            "--siblings-follow",
        ],
    );
    assert!(err.contains("switchover complete"), "{err}");
    c.wait_for("writes on the new primary", WAIT, || {
        (load.acks().len() > 10 && c.writable(&[1, 2, 3]) == [2]).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let acks = load.stop();
    let gap = longest_gap(&acks, acks[0].1)
        .map(|(g, _)| g)
        .unwrap_or_default();
    println!(
        "switchover write gap: {gap:?} over {} acknowledged commits",
        acks.len()
    );
    assert_eq!(c.writable(&[1, 2, 3]), [2]);
    for id in [1, 3] {
        c.wait_for("the others to stream from node 2", WAIT, || {
            c.streams_from(2, id).then_some(())
        });
    }
    let lost = c.missing_acks(2, "acked", &acks);
    assert!(
        lost.is_empty(),
        "acknowledged commits missing on node 2: {lost:?}"
    );
    let roles = c.sql(
        2,
        "SELECT node_id, type, upstream_node_id, active FROM repmgr.nodes ORDER BY 1",
    );
    let got: Vec<Vec<&str>> = roles
        .rows
        .iter()
        .map(|r| r.iter().map(|v| v.as_deref().unwrap_or("")).collect())
        .collect();
    assert_eq!(
        got,
        [
            vec!["1", "standby", "2", "t"],
            vec!["2", "primary", "", "t"],
            vec!["3", "standby", "2", "t"]
        ]
    );
    for id in [1, 2, 3] {
        assert_eq!(
            c.value(id, "SELECT repmgr.repmgrd_is_paused()::text")
                .as_deref(),
            Some("false"),
            "node {id} left paused"
        );
    }
    assert_eq!(c.value(2, "SELECT count(*)::text FROM repmgr.events WHERE event = 'standby_switchover' AND successful").as_deref(), Some("1"));
    assert_eq!(c.value(2, "SELECT count(*)::text FROM repmgr.events WHERE event = 'node_rejoin' AND successful AND node_id = 1").as_deref(), Some("1"));
}

/// `repmgr -f <conf> -d <target> node rejoin <extra…>`.
fn node_rejoin(conf: &str, target: &str, extra: &[&str]) -> (i32, String, String) {
    let mut a = vec!["-f", conf, "-d", target, "node", "rejoin"];
    a.extend_from_slice(extra);
    repmgr(&a)
}

#[test]
fn rejoin_brings_back_a_crashed_primary_with_pg_rewind() {
    let mut c = Cluster::new("cli-rejoin");
    let confs = cli_cluster(&mut c, &[2, 3], || {
        NodeOptions::default().conf("wal_log_hints = on")
    });
    c.settled(1, &[2, 3], WAIT);
    c.kill9(1);
    let new = c.one_writable(&[2, 3], WAIT);
    // The new primary writes things the old one never had.
    c.sql(
        new,
        "CREATE TABLE after_failover AS SELECT g FROM generate_series(1, 1000) g",
    );
    let target = c.node(new).conninfo();
    // Crashed: a plain rejoin is refused and says what to do.
    let rejoin = |extra: &[&str]| node_rejoin(&confs[1], &target, extra);
    let (code, _, err) = rejoin(&[]);
    assert_eq!(code, 24, "{err}");
    assert!(
        err.contains("was not shut down cleanly") && err.contains("--force-rewind"),
        "{err}"
    );
    let (code, _, err) = rejoin(&["--force-rewind", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("--dry-run") && err.contains("pg_rewind would run first"),
        "{err}"
    );
    assert!(c.node(1).pid().is_none(), "a dry run started the server");
    let (code, _, err) = rejoin(&["--force-rewind"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("rewound with pg_rewind"), "{err}");
    assert!(c.streams_from(new, 1));
    assert_eq!(
        c.value(1, "SELECT pg_is_in_recovery()::text").as_deref(),
        Some("true")
    );
    c.wait_for("node 1 to replay the new primary's table", WAIT, || {
        (c.value(1, "SELECT count(*)::text FROM after_failover")
            .as_deref()
            == Some("1000"))
        .then_some(())
    });
    // It kept its own identity and settings through pg_rewind, and its own failover state
    // (the source's copy names the source).
    assert_eq!(
        c.value(1, "SELECT current_setting('repmgr.node_id')")
            .as_deref(),
        Some("1")
    );
    let copied = format!("repmgr_failover.state names node {new}");
    assert!(!c.log(1).contains(&copied), "{}", c.worker_log(1));
    let rec = c.sql(
        new,
        "SELECT type, active::text, upstream_node_id::text FROM repmgr.nodes WHERE node_id = 1",
    );
    assert_eq!(
        rec.rows[0],
        [
            Some("standby".to_string()),
            Some("true".to_string()),
            Some(new.to_string())
        ]
    );
    assert_eq!(c.writable(&[1, 2, 3]), [new]);
}

#[test]
fn rejoin_reclones_a_node_pg_rewind_cannot_repair_and_resumes_a_failed_reclone() {
    // No wal_log_hints, no checksums: pg_rewind cannot run on node 1.
    let mut c = Cluster::new("cli-reclone");
    let confs = cli_cluster(&mut c, &[2, 3], || {
        NodeOptions::default().without_checksums()
    });
    c.settled(1, &[2, 3], WAIT);
    c.kill9(1);
    let new = c.one_writable(&[2, 3], WAIT);
    c.sql(new, "CREATE TABLE after_failover AS SELECT 1 AS one");
    let target = c.node(new).conninfo();
    let rejoin = |extra: &[&str]| node_rejoin(&confs[1], &target, extra);
    let failed_events = || {
        c.int(
            new,
            "SELECT count(*) FROM repmgr.events WHERE node_id = 1 AND event = 'node_rejoin' AND NOT successful",
        )
    };
    // Without --reclone: refused, recorded, and it says how to go on.
    let (code, _, err) = rejoin(&["--force-rewind"]);
    assert_eq!(code, 24, "{err}");
    assert!(
        err.contains("pg_rewind cannot run on") && err.contains("--reclone"),
        "{err}"
    );
    assert_eq!(failed_events(), 1);
    let (code, _, err) = rejoin(&["--force-rewind", "--reclone", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("and a re-clone if pg_rewind cannot"), "{err}");
    // A re-clone whose pg_basebackup fails leaves the node's own files only, and says so.
    let node1 = c.node(1).clone();
    c.repmgr_conf(&node1, &["pg_basebackup_options = '--no-such-option'"]);
    let (code, _, err) = rejoin(&["--force-rewind", "--reclone"]);
    assert_eq!(code, 14, "{err}");
    assert!(err.contains("holds no copy now"), "{err}");
    assert_eq!(failed_events(), 2);
    assert!(!node1.data.join("PG_VERSION").exists());
    assert!(node1.data.join("postgresql.conf").exists());
    // Run again once the cause is gone, it re-clones from there.
    c.repmgr_conf(&node1, &[]);
    let (code, _, err) = rejoin(&["--force-rewind", "--reclone"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("re-cloned with pg_basebackup"), "{err}");
    assert!(c.streams_from(new, 1));
    assert_eq!(
        c.value(1, "SELECT current_setting('repmgr.node_id')")
            .as_deref(),
        Some("1")
    );
    assert_eq!(
        c.value(1, "SELECT count(*)::text FROM after_failover")
            .as_deref(),
        Some("1")
    );
    assert_eq!(c.writable(&[1, 2, 3]), [new]);
}

#[test]
fn service_pause_holds_automatic_failover() {
    let mut c = Cluster::new("cli-pause");
    let confs = cli_cluster(&mut c, &[2, 3], NodeOptions::default);
    c.settled(1, &[2, 3], WAIT);
    let (_, err) = run_ok(0, &["-f", &confs[2], "service", "pause"]);
    assert_eq!(err.matches(" paused").count(), 3, "{err}");
    let (out, _) = run_ok(
        0,
        &["-f", &confs[2], "--format", "json", "service", "status"],
    );
    let v = json(&out);
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .all(|n| n["paused"] == true && n["worker"] == true),
        "{v}"
    );
    c.kill9(1);
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        c.writable(&[2, 3]).is_empty(),
        "a paused cluster promoted a standby"
    );
    for id in [2, 3] {
        assert_eq!(
            c.value(id, "SELECT pg_is_in_recovery()::text").as_deref(),
            Some("true")
        );
    }
    // Unpausing reaches the two live nodes (exit 26 for the dead one) and failover proceeds.
    let (code, _, err) = repmgr(&["-f", &confs[2], "service", "unpause"]);
    assert_eq!(code, 26, "{err}");
    assert!(
        err.contains("node 1 (\"node1\") could not be unpaused"),
        "{err}"
    );
    c.one_writable(&[2, 3], WAIT);
}
