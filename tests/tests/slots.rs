//! Logical replication across a failover. From PostgreSQL 17 a subscriber (a separate
//! PostgreSQL instance, `failover = true`) and `pg_recvlogical` on a failover slot read a steady
//! write load through a `kill -9` of the primary and a switchover: afterwards each has every
//! row the last primary holds, and no row it lacks. Before 17, `node_check()` and an event name
//! the logical slots a failover would lose.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use repmgr_tests::load::Load;
use repmgr_tests::{Cluster, NodeOptions, bindir, connect, pg_major, query, switchover};

const WAIT: Duration = Duration::from_secs(30);
const SUBSCRIBER: i32 = 9;

fn options() -> NodeOptions {
    NodeOptions::default()
        .conf("wal_level = logical")
        .conf("wal_log_hints = on")
        .conf("repmgr.use_replication_slots = on")
        .conf("repmgr.auto_rejoin = on")
}

/// The ids in `table` on node `id` (its `repmgr` database, or `postgres` on the subscriber).
fn ids(c: &Cluster, id: i32, table: &str) -> BTreeSet<i64> {
    let db = if id == SUBSCRIBER {
        "postgres"
    } else {
        "repmgr"
    };
    let mut conn = connect(&c.node(id).local_conninfo(db));
    let r = query(&mut conn, &format!("SELECT id FROM {table}"));
    (0..r.rows.len())
        .filter_map(|i| r.get(i, 0)?.parse().ok())
        .collect()
}

/// The ids of the inserts `pg_recvlogical` wrote to `file` (test_decoding's format), each
/// as often as it was received.
fn received(file: &Path) -> Vec<i64> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("table public.cdc: INSERT:"))
        .filter_map(|l| {
            l.split("id[bigint]:")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

fn node_check(c: &Cluster, id: i32) -> String {
    c.value(
        id,
        "SELECT status || ': ' || details FROM repmgr.node_check() WHERE \"check\" = 'failover slots'",
    )
    .unwrap_or_default()
}

/// Waits until every standby of `standbys` holds a usable copy of each failover slot of
/// `slots`. `cdc_late` has no consumer: it is advanced on `primary` meanwhile, as a consumer
/// would (PostgreSQL does not copy a slot whose catalog xmin is older than what the standby
/// can still hold, and an idle slot's never moves).
fn synced(c: &Cluster, primary: i32, standbys: &[i32], slots: &[&str]) {
    let list = slots
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ");
    for id in standbys {
        c.wait_for_or_explain(
            "copies of the failover slots",
            Duration::from_secs(60),
            || {
                if slots.contains(&"cdc_late") {
                    c.sql(
                        primary,
                        "SELECT pg_replication_slot_advance('cdc_late', pg_current_wal_lsn())",
                    );
                }
                let n = c.int(
                    *id,
                    &format!("SELECT count(*) FROM pg_replication_slots WHERE synced AND NOT temporary AND invalidation_reason IS NULL AND slot_name IN ({list})"),
                );
                (n == slots.len() as i64).then_some(())
            },
            || {
                let lines: Vec<String> = c
                    .log(*id)
                    .lines()
                    .filter(|l| {
                        (l.contains("slot") || l.contains("ERROR") || l.contains("exited"))
                            && !l.contains("STATEMENT")
                            && !l.contains("starting logical")
                    })
                    .map(str::to_string)
                    .collect();
                format!(
                    "node {id}: {}\nits log on slots and errors:\n{}\n{}",
                    node_check(c, *id),
                    lines[lines.len().saturating_sub(30)..].join("\n"),
                    c.log_tails(10)
                )
            },
        );
    }
}

struct Recv(Child);

impl Drop for Recv {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn logical_consumers_go_on_across_a_failover_and_a_switchover() {
    let mut c = Cluster::new("slots");
    let confs = c.populate_with_cli_conf(&[2, 3], options, &["use_replication_slots = yes"]);
    c.settled(1, &[2, 3], WAIT);
    let major = pg_major(&bindir());
    c.sql(1, "CREATE TABLE cdc (id bigint PRIMARY KEY)");
    if major < 17 {
        c.sql(
            1,
            "SELECT pg_create_logical_replication_slot('cdc_recv', 'test_decoding')",
        );
        let check = c.wait_for("the warning", WAIT, || {
            Some(node_check(&c, 1)).filter(|d| !d.is_empty())
        });
        assert!(
            check.starts_with("WARNING: a failover loses the logical replication slots cdc_recv"),
            "{check}"
        );
        let event = c.wait_for("the event", WAIT, || {
            c.value(
                1,
                "SELECT details FROM repmgr.events WHERE event = 'logical_slots_at_risk' AND NOT successful",
            )
        });
        assert!(event.contains("cdc_recv"), "{event}");
        return;
    }

    // A publication, a subscriber on an instance of its own, and pg_recvlogical, both on
    // failover slots and both reaching whichever node is the primary.
    c.sql(1, "CREATE PUBLICATION cdc_pub FOR TABLE cdc");
    c.sql(
        1,
        "SELECT pg_create_logical_replication_slot('cdc_recv', 'test_decoding', false, false, true)",
    );
    c.init_primary(
        SUBSCRIBER,
        NodeOptions {
            preload: false,
            identity: false,
            create_extension: false,
            ..NodeOptions::default()
        },
    );
    let source = format!(
        "{} target_session_attrs=read-write",
        c.multi_host(&[1, 2, 3])
    );
    let mut sub = connect(&c.node(SUBSCRIBER).local_conninfo("postgres"));
    query(&mut sub, "CREATE TABLE cdc (id bigint PRIMARY KEY)");
    query(
        &mut sub,
        &format!(
            "CREATE SUBSCRIPTION cdc_sub CONNECTION '{source}' PUBLICATION cdc_pub WITH (failover = true)"
        ),
    );
    let out = c.dir.join("recvlogical.out");
    let recv = Recv(
        Command::new(bindir().join("pg_recvlogical"))
            .args([
                "-d", &source, "--slot", "cdc_recv", "--start", "-F", "1", "-s", "1", "-f",
            ])
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pg_recvlogical"),
    );

    // The standbys keep copies; decoding waits for them.
    synced(&c, 1, &[2, 3], &["cdc_sub", "cdc_recv"]);
    c.wait_for("synchronized_standby_slots", WAIT, || {
        (c.value(1, "SHOW synchronized_standby_slots").as_deref()
            == Some("repmgr_slot_2,repmgr_slot_3"))
        .then_some(())
    });
    let check = node_check(&c, 1);
    assert!(
        check.starts_with("OK: failover slots cdc_recv, cdc_sub;"),
        "{check}"
    );
    let check = node_check(&c, 2);
    assert_eq!(
        check,
        "OK: copies of failover slots: cdc_recv ready; cdc_sub ready"
    );

    let load = Load::start(&c.multi_host(&[1, 2, 3]), "cdc", Duration::from_millis(10));
    c.wait_for("writes", WAIT, || (load.acks().len() > 100).then_some(()));
    c.wait_for("the subscriber to receive", WAIT, || {
        (ids(&c, SUBSCRIBER, "cdc").len() > 50).then_some(())
    });

    // kill -9 of the primary.
    let crash = Instant::now();
    c.kill9(1);
    let new = c.one_writable(&[2, 3], WAIT);
    c.wait_for("writes on the new primary", WAIT, || {
        load.acks()
            .last()
            .is_some_and(|(_, t)| *t > crash + Duration::from_secs(1))
            .then_some(())
    });
    // The old primary rejoins by itself; its own copies of the slots, left from when it was
    // the primary, are dropped and it syncs the new primary's.
    c.restart_rejoined(1, new, &[1, 5 - new]);
    synced(&c, new, &[1, 5 - new], &["cdc_sub", "cdc_recv"]);
    // A failover slot made on this primary is its own (synced = false): after the switchover
    // demotes it, that copy would stop PostgreSQL's syncing of the slot, and is dropped.
    c.sql(
        new,
        "SELECT pg_create_logical_replication_slot('cdc_late', 'test_decoding', false, false, true)",
    );
    synced(&c, new, &[1, 5 - new], &["cdc_sub", "cdc_recv", "cdc_late"]);

    // A switchover back to node 1.
    let before = load.acks().len();
    switchover(&confs[1]);
    c.wait_for("writes on node 1", WAIT, || {
        (load.acks().len() > before + 100 && c.writable(&[1, 2, 3]) == [1]).then_some(())
    });
    load.stop();
    synced(&c, 1, &[new, 5 - new], &["cdc_sub", "cdc_recv", "cdc_late"]);
    assert!(
        c.log(new)
            .contains("dropped its own logical slot cdc_late, left from when it was a primary"),
        "node {new} kept its own cdc_late"
    );

    // Every row the last primary holds reaches both consumers, and neither has one it lacks.
    let rows = ids(&c, 1, "cdc");
    let (sub_rows, recv_rows) = c.wait_for_or_explain(
        "the consumers to catch up",
        Duration::from_secs(60),
        || {
            let s = ids(&c, SUBSCRIBER, "cdc");
            let r: BTreeSet<i64> = received(&out).into_iter().collect();
            (rows.is_subset(&s) && rows.is_subset(&r)).then_some((s, r))
        },
        || {
            let s = ids(&c, SUBSCRIBER, "cdc");
            let r: BTreeSet<i64> = received(&out).into_iter().collect();
            format!(
                "missing at the subscriber: {:?}\nmissing in pg_recvlogical's output: {:?}\n{}",
                rows.difference(&s).take(20).collect::<Vec<_>>(),
                rows.difference(&r).take(20).collect::<Vec<_>>(),
                c.log_tails(20)
            )
        },
    );
    let extra: Vec<&i64> = sub_rows.difference(&rows).collect();
    assert!(
        extra.is_empty(),
        "the subscriber has rows the primary lacks: {extra:?}"
    );
    let extra: Vec<&i64> = recv_rows.difference(&rows).collect();
    assert!(
        extra.is_empty(),
        "pg_recvlogical received rows the primary lacks: {extra:?}"
    );
    let all = received(&out);
    println!(
        "{} rows on the last primary (node {new} in between): all at the subscriber; pg_recvlogical received {} inserts, {} of them again (at least once)",
        rows.len(),
        all.len(),
        all.len() - recv_rows.len()
    );
    drop(recv);
}
