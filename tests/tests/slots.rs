//! Logical replication across a failover. From PostgreSQL 17 a subscriber (a separate
//! PostgreSQL instance, `failover = true`) and `pg_recvlogical` on a failover slot read a steady
//! write load through a `kill -9` of the primary and a switchover: afterwards each has every
//! row the last primary holds, and no row it lacks. Before 17, `node_check()` and an event name
//! the logical slots a failover would lose.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use repmgr_tests::http::get;
use repmgr_tests::load::Load;
use repmgr_tests::{Cluster, NodeOptions, bindir, connect, free_port, pg_major, query, switchover};

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
/// `slots`. Those of `advance` have no consumer: they are advanced on `primary` meanwhile, as
/// a consumer would (PostgreSQL does not copy a slot whose catalog xmin is older than what
/// the standby can still hold, and an idle slot's never moves).
fn synced(c: &Cluster, primary: i32, standbys: &[i32], slots: &[&str], advance: &[&str]) {
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
                for slot in advance {
                    c.sql(
                        primary,
                        &format!(
                            "SELECT pg_replication_slot_advance('{slot}', pg_current_wal_lsn())"
                        ),
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

/// Waits until node `port`'s `/metrics` has the line `line`.
fn scraped(c: &Cluster, port: u16, line: &str) {
    c.wait_for_or_explain(
        line,
        WAIT,
        || {
            get(port, "/metrics")
                .filter(|a| a.body.lines().any(|l| l == line))
                .map(|_| ())
        },
        || get(port, "/metrics").map_or("no answer".into(), |a| a.body),
    );
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
    let http: Vec<u16> = (0..=3).map(|_| free_port()).collect();
    for id in 1..=3 {
        c.set(id, "repmgr.http_listen_address", "127.0.0.1");
        c.set(id, "repmgr.http_port", &http[id as usize].to_string());
    }
    c.settled(1, &[2, 3], WAIT);
    let major = pg_major(&bindir());
    c.sql(1, "CREATE TABLE cdc (id bigint PRIMARY KEY)");
    if major < 17 {
        c.sql(
            1,
            // pgoutput: built into every server (16's wheel has no test_decoding).
            "SELECT pg_create_logical_replication_slot('cdc_recv', 'pgoutput')",
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
        scraped(
            &c,
            http[1],
            "repmgr_logical_slot{slot=\"cdc_recv\",state=\"lost\"} 1",
        );
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
    synced(&c, 1, &[2, 3], &["cdc_sub", "cdc_recv"], &[]);
    // A failover slot nobody reads after a first advance (a new slot's catalog xmin is older
    // than any standby can hold: it is copied only once moved): its catalog xmin then stays.
    c.sql(
        1,
        "SELECT pg_create_logical_replication_slot('cdc_idle', 'test_decoding', false, false, true)",
    );
    synced(&c, 1, &[2, 3], &["cdc_idle"], &["cdc_idle"]);
    c.wait_for("synchronized_standby_slots", WAIT, || {
        (c.value(1, "SHOW synchronized_standby_slots").as_deref()
            == Some("repmgr_slot_2,repmgr_slot_3"))
        .then_some(())
    });
    let check = node_check(&c, 1);
    assert!(
        check.starts_with("OK: failover slots cdc_idle, cdc_recv, cdc_sub;"),
        "{check}"
    );
    let check = node_check(&c, 2);
    assert_eq!(
        check,
        "OK: copies of failover slots: cdc_idle ready; cdc_recv ready; cdc_sub ready"
    );
    scraped(
        &c,
        http[1],
        "repmgr_logical_slot{slot=\"cdc_sub\",state=\"failover\"} 1",
    );
    scraped(
        &c,
        http[2],
        "repmgr_logical_slot{slot=\"cdc_sub\",state=\"ready\"} 1",
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
    synced(&c, new, &[1, 5 - new], &["cdc_sub", "cdc_recv"], &[]);
    // Node 1 came back after cdc_idle began, so it cannot copy it until its consumer moves:
    // promoting node 1, or a switchover to it, is refused, naming the slot.
    c.wait_for("node 1's unusable copy of cdc_idle", WAIT, || {
        (c.int(
            1,
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'cdc_idle' AND synced AND temporary",
        ) == 1)
            .then_some(())
    });
    scraped(
        &c,
        http[1],
        "repmgr_logical_slot{slot=\"cdc_idle\",state=\"not_yet_usable\"} 1",
    );
    let refused = c
        .try_sql(1, "SELECT repmgr.promote()")
        .expect_err("promoting node 1 is refused");
    assert!(
        refused.to_string().contains("cdc_idle not yet usable"),
        "{refused}"
    );
    let conf1 = confs[1].to_string_lossy().into_owned();
    let (code, _, err) = repmgr_tests::run_cli(&["-f", &conf1, "standby", "promote"]);
    assert!(
        code != 0 && err.contains("cdc_idle not yet usable"),
        "standby promote: exit {code}: {err}"
    );
    // --allow-slot-loss passes the slots' check; the promotion is still refused, for the
    // primary that runs.
    let (code, _, err) =
        repmgr_tests::run_cli(&["-f", &conf1, "standby", "promote", "--allow-slot-loss"]);
    assert!(
        code != 0 && !err.contains("cdc_idle") && err.contains("primary"),
        "standby promote --allow-slot-loss: exit {code}: {err}"
    );
    let (code, _, err) =
        repmgr_tests::run_cli(&["-f", &conf1, "standby", "switchover", "--siblings-follow"]);
    assert!(
        code != 0 && err.contains("cdc_idle not yet usable"),
        "switchover: exit {code}: {err}"
    );
    // A failover slot made on this primary is its own (synced = false): after the switchover
    // demotes it, that copy would stop PostgreSQL's syncing of the slot, and is dropped.
    c.sql(
        new,
        "SELECT pg_create_logical_replication_slot('cdc_late', 'test_decoding', false, false, true)",
    );
    synced(
        &c,
        new,
        &[1, 5 - new],
        &["cdc_sub", "cdc_recv", "cdc_late", "cdc_idle"],
        &["cdc_late", "cdc_idle"],
    );

    // A switchover back to node 1.
    let before = load.acks().len();
    switchover(&confs[1]);
    c.wait_for("writes on node 1", WAIT, || {
        (load.acks().len() > before + 100 && c.writable(&[1, 2, 3]) == [1]).then_some(())
    });
    load.stop();
    synced(
        &c,
        1,
        &[new, 5 - new],
        &["cdc_sub", "cdc_recv", "cdc_late", "cdc_idle"],
        &["cdc_late", "cdc_idle"],
    );
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
