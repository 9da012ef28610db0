//! Self-healing on real clusters: after a fault, a replaced primary comes back as a standby of
//! the current primary with no command typed (`repmgr.auto_rejoin`); a rejoin that cannot work
//! is tried once, says why in `node_status()`, the events and `cluster show`, and leaves the
//! node as it is (fenced, or stopped when pg_rewind fails); with `repmgr.auto_reclone` such a
//! node comes back as a fresh copy of the primary. Every wait has a deadline; every cluster is
//! torn down.

use std::process::Command;
use std::time::{Duration, Instant};

use repmgr_tests::{Cluster, NodeOptions, run_cli};

const WAIT: Duration = Duration::from_secs(30);

/// Options for a cluster that rejoins by itself (pg_rewind needs wal_log_hints).
fn self_healing(_: i32) -> NodeOptions {
    NodeOptions::default()
        .conf("wal_log_hints = on")
        .conf("repmgr.auto_rejoin = on")
}

/// Waits until `old` streams from `primary` as a standby, with no command run, and prints how
/// long that took from `since` (the end of the fault `what`). Returns the rejoin's event.
fn rejoined(c: &Cluster, old: i32, primary: i32, since: Instant, what: &str) -> String {
    c.wait_for_or_explain(
        &format!("node {old} to rejoin node {primary} by itself"),
        Duration::from_secs(30),
        || c.streams_from(primary, old).then_some(()),
        || c.log_tails(40),
    );
    let took = since.elapsed();
    assert_eq!(
        c.value(old, "SELECT pg_is_in_recovery()::text").as_deref(),
        Some("true")
    );
    // This rejoin's event, not an earlier one's (the servers share this machine's clock).
    let within = since.elapsed().as_secs() + 2;
    let details = c.wait_for("the rejoin's event on the primary", WAIT, || {
        c.value(
            primary,
            &format!("SELECT details FROM repmgr.events WHERE node_id = {old} AND event = 'node_rejoin' AND successful AND event_timestamp > now() - interval '{within} seconds' ORDER BY event_timestamp DESC LIMIT 1"),
        )
    });
    println!("node_rejoin: {details}");
    // A rewind says what it threw away.
    assert!(
        !details.contains("pg_rewind") || details.contains("discarded this node's WAL"),
        "{details}"
    );
    assert_eq!(c.writable(&[1, 2, 3]), [primary]);
    println!(
        "{what}: node {old} streams from node {primary} {:.1} s after the fault ended",
        took.as_secs_f64()
    );
    details
}

/// The data nodes other than `id`.
fn others(id: i32) -> Vec<i32> {
    [1, 2, 3].into_iter().filter(|n| *n != id).collect()
}

#[test]
fn a_replaced_primary_rejoins_by_itself_after_a_crash_a_freeze_and_a_long_stop() {
    let c = Cluster::populated("selfheal", &[2, 3], self_healing);
    c.settled(1, &[2, 3], WAIT);

    // kill -9 of the whole node, then a start as a reboot would.
    c.crash(1);
    let second = c.one_writable(&others(1), WAIT);
    let started = Instant::now();
    c.start(1);
    rejoined(&c, 1, second, started, "after kill -9 and a start");
    let third_one = others(1).into_iter().find(|n| *n != second).unwrap();
    c.wait_for("both standbys to stream", WAIT, || {
        c.streams_from(second, third_one).then_some(())
    });

    // A freeze longer than the lease: replaced while frozen, it rejoins once thawed.
    c.settled(second, &others(second), WAIT);
    c.freeze(second);
    let third = c.one_writable(&others(second), WAIT);
    let thawed = Instant::now();
    c.thaw(second);
    rejoined(&c, second, third, thawed, "after a freeze and the thaw");

    // Stopped for longer than the lease (a package upgrade): replaced, then back as a standby.
    c.settled(third, &others(third), WAIT);
    c.stop(third);
    let fourth = c.one_writable(&others(third), WAIT);
    std::thread::sleep(Duration::from_secs(5));
    let back = Instant::now();
    c.start(third);
    rejoined(&c, third, fourth, back, "after a 5 s stop and a start");
    cluster_show_is_clean(&c, fourth);
}

/// `repmgr cluster show` through node `id`: exit code, standard output and error.
fn cluster_show(c: &Cluster, id: i32) -> (i32, String, String) {
    run_cli(&["-d", &c.node(id).conninfo(), "cluster", "show"])
}

/// Waits until `cluster show` finds nothing wrong, and checks every data node runs with
/// `primary` as the only primary.
fn cluster_show_is_clean(c: &Cluster, primary: i32) {
    let out = c.wait_for_or_explain(
        "cluster show to find nothing wrong",
        WAIT,
        || {
            let (code, out, _) = cluster_show(c, primary);
            (code == 0).then_some(out)
        },
        || {
            let (code, out, err) = cluster_show(c, primary);
            format!("exit {code}\n{out}{err}")
        },
    );
    let name = format!("node{primary}");
    for id in [1, 2, 3] {
        let row = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no row for node {id} in\n{out}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        if id == primary {
            assert_eq!(&cells[2..4], ["primary", "* running"], "{out}");
        } else {
            assert_eq!(&cells[2..5], ["standby", "running", &name], "{out}");
        }
    }
}

#[test]
fn a_primary_cut_off_by_a_partition_rejoins_once_it_heals_and_keeps_what_it_discards() {
    let mut c = Cluster::with_network("heal-partition");
    let keep = c.dir.join("kept-wal");
    let setting = format!("repmgr.rejoin_keep_wal_directory = '{}'", keep.display());
    c.populate(&[2, 3], |id| self_healing(id).conf(&setting));
    c.settled(1, &[2, 3], WAIT);
    c.network().isolate(1);
    let new = c.one_writable(&[2, 3], WAIT);
    // Cut off, it learns nothing: it stays fenced until the link is back.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        c.value(1, "SELECT pg_is_in_recovery()::text").as_deref(),
        Some("false")
    );
    let healed = Instant::now();
    c.network().rejoin(1);
    let details = rejoined(&c, 1, new, healed, "after a partition and its healing");
    // The WAL it discarded is kept, and pg_waldump reads the range the event names.
    let records = kept_wal(&details, &keep);
    assert!(!records.is_empty(), "{details}");
    let other = others(1).into_iter().find(|n| *n != new).unwrap();
    c.wait_for(
        "the other standby to stream from the new primary",
        WAIT,
        || c.streams_from(new, other).then_some(()),
    );
}

#[test]
fn a_rejoin_that_cannot_work_is_tried_once_says_why_and_a_reclone_brings_it_back() {
    // No wal_log_hints and no data checksums: pg_rewind cannot run on these nodes.
    let c = Cluster::populated("rejoin-fails", &[2, 3], |_| {
        NodeOptions::default()
            .without_checksums()
            .conf("repmgr.auto_rejoin = on")
    });
    c.settled(1, &[2, 3], WAIT);
    c.crash(1);
    let new = c.one_writable(&[2, 3], WAIT);
    c.start(1);
    let detail = c.wait_for_or_explain(
        "node 1 to give up on its rejoin",
        Duration::from_secs(45),
        || {
            c.value(
                1,
                "SELECT rejoin_detail FROM repmgr.node_status() WHERE rejoin_state = 'failed'",
            )
        },
        || c.log_tails(40),
    );
    assert!(
        detail.starts_with("failed: it was replaced as primary")
            && detail.contains("wal_log_hints = on"),
        "{detail}"
    );
    // The fenced node's event reaches the primary that replaced it.
    let failed_events = || {
        c.int(
            new,
            "SELECT count(*) FROM repmgr.events WHERE node_id = 1 AND event = 'node_rejoin' AND NOT successful",
        )
    };
    c.wait_for("the failed rejoin's event on the new primary", WAIT, || {
        (failed_events() > 0).then_some(())
    });
    // No loop: well past the longest back-off of a retry, one event, one warning, the same
    // server, still fenced.
    let pid = c.node(1).pid();
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(failed_events(), 1);
    assert_eq!(
        c.log(1).matches("does not rejoin automatically").count(),
        1,
        "{}",
        c.log(1)
    );
    assert_eq!(c.node(1).pid(), pid);
    assert_eq!(c.writable(&[1, 2, 3]), [new]);
    // cluster show says so, and what to do.
    let (code, out, err) = cluster_show(&c, new);
    assert_eq!(code, 25, "{out}{err}");
    let row = out
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains("rejoin failed"), "{out}");
    assert!(
        err.contains("node \"node1\" (ID: 1) needs a rejoin (failed: it was replaced as primary"),
        "{err}"
    );

    // The operator lets it be re-cloned: the reload lets it try again, and it comes back as a
    // fresh copy of the new primary's data directory, with its own identity and settings.
    let allowed = Instant::now();
    c.set(1, "repmgr.auto_reclone", "on");
    let details = rejoined(
        &c,
        1,
        new,
        allowed,
        "re-cloned after repmgr.auto_reclone = on",
    );
    assert!(
        details.contains("re-cloned with pg_basebackup") && details.contains("wal_log_hints"),
        "{details}"
    );
    is_itself_again(&c, 1, new);
}

/// Node `id` runs with its own identity and settings after a re-clone from `primary`, and
/// holds the primary's data.
fn is_itself_again(c: &Cluster, id: i32, primary: i32) {
    assert_eq!(
        c.value(id, "SELECT current_setting('repmgr.node_id')")
            .as_deref(),
        Some(id.to_string().as_str())
    );
    assert_eq!(
        c.value(id, "SELECT current_setting('port')").as_deref(),
        Some(c.node(id).port.to_string().as_str())
    );
    let copied = format!("repmgr_failover.state names node {primary}");
    assert!(!c.log(id).contains(&copied), "{}", c.worker_log(id));
    c.sql(primary, "CREATE TABLE after_reclone AS SELECT 1 AS one");
    c.wait_for(
        "the re-cloned node to replay the primary's table",
        WAIT,
        || {
            let r = c
                .try_sql(id, "SELECT count(*)::text FROM after_reclone")
                .ok()?;
            (r.get(0, 0) == Some("1")).then_some(())
        },
    );
}

#[test]
fn a_rewind_that_lacks_wal_leaves_the_node_stopped_and_a_reclone_brings_it_back() {
    let c = Cluster::populated("rejoin-no-wal", &[2, 3], |_| {
        NodeOptions::default().conf("wal_log_hints = on")
    });
    c.settled(1, &[2, 3], WAIT);
    c.crash(1);
    let new = c.one_writable(&[2, 3], WAIT);
    // Back, replaced and held (auto_rejoin is off): it writes past the fork into a later
    // segment and checkpoints there, then loses the segments before that checkpoint, as its
    // own checkpoints would recycle them in time. pg_rewind needs them: they hold where the
    // new primary's timeline left this one, and the checkpoint before it.
    c.start(1);
    for sql in ["CHECKPOINT", "SELECT pg_switch_wal()", "CHECKPOINT"] {
        c.sql(1, sql);
    }
    c.stop(1);
    let redo = c.control_data(1, "Latest checkpoint's REDO WAL file");
    let wal = c.node(1).data.join("pg_wal");
    let mut removed = Vec::new();
    for e in std::fs::read_dir(&wal).expect("pg_wal") {
        let name = e
            .expect("pg_wal entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.len() == 24 && name.chars().all(|ch| ch.is_ascii_hexdigit()) && name < redo {
            std::fs::remove_file(wal.join(&name)).expect("remove a segment");
            removed.push(name);
        }
    }
    assert!(!removed.is_empty(), "no segment before {redo} to remove");
    println!("removed {removed:?}, kept from {redo}");

    // Started with repmgr.auto_rejoin on, it stops for its rewind, which cannot work: one
    // failed event on the new primary that says why and what to do, and the server stays
    // stopped, with no second attempt.
    c.conf(1, "repmgr.auto_rejoin = on");
    c.start(1);
    let failed = || {
        c.value(
            new,
            "SELECT string_agg(details, ' | ') FROM repmgr.events WHERE node_id = 1 AND event = 'node_rejoin' AND NOT successful",
        )
    };
    let details = c.wait_for_or_explain(
        "the failed rewind's event on the new primary",
        Duration::from_secs(45),
        failed,
        || c.log_tails(40),
    );
    assert!(
        details.contains("node 1 (\"node1\") could not be rewound onto node ")
            && details.contains("pg_rewind failed: ")
            && details.contains("the server stays stopped")
            && details.contains("--reclone"),
        "{details}"
    );
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(c.node(1).pid(), None, "{}", c.log(1));
    assert_eq!(failed().as_deref(), Some(details.as_str()));
    let helper_log =
        std::fs::read_to_string(c.dir.join("repmgr-rejoin-node1.log")).unwrap_or_default();
    assert_eq!(helper_log.matches("(attempt ").count(), 1, "{helper_log}");
    assert_eq!(c.writable(&[1, 2, 3]), [new]);

    // With repmgr.auto_reclone on and a start, the next attempt re-clones it.
    c.conf(1, "repmgr.auto_reclone = on");
    let started = Instant::now();
    c.start(1);
    let details = rejoined(
        &c,
        1,
        new,
        started,
        "re-cloned after a rewind that lacked WAL",
    );
    assert!(
        details.contains("re-cloned with pg_basebackup") && details.contains("pg_rewind failed"),
        "{details}"
    );
    is_itself_again(&c, 1, new);
}

/// The WAL records a rewinding rejoin kept under `keep`, as pg_waldump prints them with the
/// command the copy's README gives, checked against the range the event's `details` name.
fn kept_wal(details: &str, keep: &std::path::Path) -> Vec<String> {
    let kept = details
        .split("its WAL files are kept in ")
        .nth(1)
        .and_then(|r| r.split(" (").next())
        .unwrap_or_else(|| panic!("the event names no kept files: {details}"));
    assert!(
        kept.starts_with(&format!("{}/node", keep.display())),
        "{details}"
    );
    let readme = std::fs::read_to_string(format!("{kept}/README")).expect("README");
    let command = readme
        .lines()
        .find_map(|l| l.strip_prefix("Read it with: pg_waldump "))
        .unwrap_or_else(|| panic!("{readme}"));
    let from = details
        .split(" from ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap();
    assert!(command.ends_with(&format!("--start {from}")), "{readme}");
    let out = Command::new(repmgr_tests::bindir().join("pg_waldump"))
        .args(command.split(' '))
        .output()
        .expect("run pg_waldump");
    let records: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("lsn: "))
        .map(str::to_string)
        .collect();
    println!(
        "kept {kept}: pg_waldump reads {} records from {from}",
        records.len()
    );
    records
}

/// The transaction ids of the commit records among pg_waldump's `records`.
fn commits(records: &[String]) -> Vec<u32> {
    records
        .iter()
        .filter(|l| l.contains("desc: COMMIT"))
        .filter_map(|l| {
            l.split("tx:")
                .nth(1)?
                .split(',')
                .next()?
                .trim()
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn with_zero_data_loss_what_a_rejoin_discards_holds_no_acknowledged_commit() {
    let mut c = Cluster::with_network("heal-zero-loss");
    let keep = c.dir.join("kept-wal");
    let setting = format!("repmgr.rejoin_keep_wal_directory = '{}'", keep.display());
    c.populate(&[2, 3], |id| {
        self_healing(id)
            .conf(&setting)
            .conf("repmgr.synchronous_standbys = 1")
    });
    c.settled(1, &[2, 3], WAIT);
    c.wait_for("the primary's synchronous quorum", WAIT, || {
        c.value(1, "SHOW synchronous_standby_names")
            .filter(|v| !v.is_empty())
    });
    let load = c.write_load(&[1, 2, 3]);
    c.wait_for("writes on the primary", WAIT, || {
        (load.acks().len() > 50).then_some(())
    });
    // Cut off, the primary goes on writing commit records its standbys never acknowledge,
    // until its fence stops it.
    c.network().isolate(1);
    let new = c.one_writable(&[2, 3], WAIT);
    let before = load.acks().len();
    c.wait_for("writes on the new primary", WAIT, || {
        (load.acks().len() > before + 50).then_some(())
    });
    let healed = Instant::now();
    c.network().rejoin(1);
    let details = rejoined(&c, 1, new, healed, "after a partition, with zero data loss");
    let origins = load.origins();
    let acks = load.stop();
    let lost = c.missing_acks(new, "acked", &acks);
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
    let discarded = commits(&kept_wal(&details, &keep));
    assert!(
        details.contains(&format!("{} of them commits", discarded.len())),
        "the event counts {details}, pg_waldump {discarded:?}"
    );
    assert!(
        !discarded.is_empty(),
        "the cut-off primary wrote no commit record, so this tests nothing: {details}"
    );
    let acknowledged: Vec<&(i64, Option<i32>, u32)> = origins
        .iter()
        .filter(|(_, node, xid)| *node == Some(1) && discarded.contains(xid))
        .collect();
    assert!(
        acknowledged.is_empty(),
        "acknowledged commits of node 1 in the WAL its rejoin discarded: {acknowledged:?}"
    );
    println!(
        "{} acknowledged writes, {} by node 1; the rejoin discarded {} commits, none acknowledged",
        acks.len(),
        origins.iter().filter(|o| o.1 == Some(1)).count(),
        discarded.len()
    );
}
