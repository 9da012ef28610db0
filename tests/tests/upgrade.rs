//! Upgrading repmgr from the previous release: the catalog that `ALTER EXTENSION repmgr
//! UPDATE` leaves is the one this release creates, and a running three-node cluster is
//! upgraded one node at a time (the standbys, a switchover, the old primary, then the catalog)
//! with no failover and no acknowledged write lost.
//!
//! The previous release runs from a PostgreSQL tree of its own, which `cargo xtask test` builds
//! from that release's commit and names in `REPMGR_PREVIOUS_BINDIR`; moving a node to this
//! release's tree is what a package upgrade does to it (same data, same settings, new library).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use repmgr_tests::{Cluster, NodeOptions, bindir, switchover};

const WAIT: Duration = Duration::from_secs(30);

/// The previous release's PostgreSQL programs (its repmgr installed with them).
fn previous() -> PathBuf {
    let dir = std::env::var_os("REPMGR_PREVIOUS_BINDIR").map(PathBuf::from);
    dir.filter(|d| d.join("postgres").exists()).unwrap_or_else(|| {
        panic!("REPMGR_PREVIOUS_BINDIR does not name a PostgreSQL bindir with the previous release installed: run this through cargo xtask test, which builds it")
    })
}

const CURRENT: &str = env!("CARGO_PKG_VERSION");

/// The catalog of node `id`: its `repmgr` database, which holds only the extension, as
/// `pg_dump --binary-upgrade` writes it (the one mode that writes an extension's own objects),
/// without what differs between any two databases: object ids, transaction ids, comments and
/// the dump's random `\restrict` key.
fn catalog_dump(c: &Cluster, id: i32) -> Vec<String> {
    let n = c.node(id);
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(n.bindir.join("pg_dump"))
        .args([
            "--schema-only",
            "--binary-upgrade",
            "--no-comments",
            "-d",
            &n.local_conninfo("repmgr"),
        ])
        .output()
        .expect("run pg_dump");
    assert!(
        out.status.success(),
        "pg_dump of node {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let oids = |line: &str| -> String {
        // '{16390,16401}'::pg_catalog.oid[] and relfrozenxid = '731': numbers of this database.
        let mut s = String::new();
        let mut in_number = false;
        for ch in line.chars() {
            if ch.is_ascii_digit() {
                if !in_number {
                    s.push('#');
                }
                in_number = true;
            } else {
                in_number = false;
                s.push(ch);
            }
        }
        s
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("--") && !l.trim().is_empty())
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .filter(|l| !l.contains("binary_upgrade_set_next_"))
        .map(|l| {
            if l.contains("::pg_catalog.oid") || l.contains("relfrozenxid") {
                oids(l)
            } else {
                l.to_string()
            }
        })
        .collect()
}

#[test]
fn the_updated_catalog_is_the_one_a_fresh_install_creates() {
    let mut c = Cluster::new("upgrade-catalog");
    let catalog_only = |bindir: Option<PathBuf>| NodeOptions {
        preload: false,
        bindir,
        ..NodeOptions::default()
    };
    c.init_primary(1, catalog_only(Some(previous())));
    let old = c
        .value(
            1,
            "SELECT extversion FROM pg_extension WHERE extname = 'repmgr'",
        )
        .expect("the extension");
    assert_ne!(old, CURRENT, "the previous release is this one");
    // The package upgrade, then the catalog's.
    c.stop(1);
    c.set_bindir(1, &bindir());
    c.start(1);
    c.sql(1, "ALTER EXTENSION repmgr UPDATE");
    assert_eq!(
        c.value(
            1,
            "SELECT extversion FROM pg_extension WHERE extname = 'repmgr'"
        )
        .as_deref(),
        Some(CURRENT)
    );
    c.init_primary(2, catalog_only(None));
    let (updated, fresh) = (catalog_dump(&c, 1), catalog_dump(&c, 2));
    let only_in = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter().filter(|l| !b.contains(l)).cloned().collect()
    };
    assert!(
        updated == fresh,
        "the catalog updated from {old} differs from a fresh {CURRENT}:\nonly in the updated one:\n{}\nonly in the fresh one:\n{}",
        only_in(&updated, &fresh).join("\n"),
        only_in(&fresh, &updated).join("\n")
    );
    println!(
        "catalog {old} updated to {CURRENT}: {} lines of pg_dump --binary-upgrade, equal to a fresh install",
        fresh.len()
    );
}

/// Node `id`'s `node_check()` line about the extension's version.
fn version_check(c: &Cluster, id: i32) -> String {
    c.value(
        id,
        "SELECT status || ': ' || details FROM repmgr.node_check() WHERE \"check\" = 'extension version'",
    )
    .unwrap_or_default()
}

#[test]
fn a_rolling_upgrade_fails_nothing_over_and_loses_no_write() {
    let mut c = Cluster::new("upgrade-rolling");
    let old = previous();
    let opts = || NodeOptions {
        bindir: Some(previous()),
        ..NodeOptions::default()
    };
    let confs = c.populate_with_cli(&[2, 3], opts);
    c.settled(1, &[2, 3], WAIT);
    let load = c.write_load(&[1, 2, 3]);
    c.wait_for("writes", WAIT, || (load.acks().len() > 20).then_some(()));
    let upgrade = |c: &mut Cluster, id: i32, upstream: i32| {
        c.stop(id);
        c.set_bindir(id, &bindir());
        // The package keeps the programs' path; this test's trees differ, so does repmgr.conf.
        let n = c.node(id).clone();
        c.repmgr_conf(&n, &[]);
        c.start(id);
        c.wait_for(&format!("node {id} to stream again"), WAIT, || {
            c.streams_from(upstream, id).then_some(())
        });
    };
    // The standbys first: the new library on the old catalog says what comes next.
    for id in [2, 3] {
        upgrade(&mut c, id, 1);
        let check = version_check(&c, id);
        assert!(
            check.starts_with("WARNING: ") && check.contains("ALTER EXTENSION repmgr UPDATE"),
            "{check}"
        );
    }
    // A switchover to an upgraded standby, then the old primary.
    switchover(&confs[2]);
    assert_eq!(c.one_writable(&[1, 2, 3], WAIT), 2);
    c.wait_for("node 1 to stream from node 2", WAIT, || {
        c.streams_from(2, 1).then_some(())
    });
    upgrade(&mut c, 1, 2);
    // Then the catalog, once, on the primary; the standbys receive it.
    c.sql(2, "ALTER EXTENSION repmgr UPDATE");
    for id in [1, 2, 3] {
        c.wait_for(&format!("node {id} to have the new catalog"), WAIT, || {
            c.value(
                id,
                "SELECT extversion FROM pg_extension WHERE extname = 'repmgr'",
            )
            .filter(|v| v == CURRENT)
        });
        let check = version_check(&c, id);
        assert!(check.starts_with("OK: "), "node {id}: {check}");
        assert_eq!(
            c.value(id, "SELECT repmgr.library_version()").as_deref(),
            Some(CURRENT)
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    let acks = load.stop();
    let lost = c.missing_acks(2, "acked", &acks);
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    let events = |names: &str| {
        c.int(
            2,
            &format!("SELECT count(*) FROM repmgr.events WHERE event IN ({names})"),
        )
    };
    let history = || {
        c.sql(
            2,
            "SELECT node_id, event, details FROM repmgr.events ORDER BY event_timestamp",
        )
        .rows
    };
    // One promotion, the switchover's; no automatic one.
    assert_eq!(events("'repmgrd_failover_promote'"), 0, "{:?}", history());
    assert_eq!(events("'standby_promote'"), 1, "{:?}", history());
    assert_eq!(events("'standby_switchover'"), 1, "{:?}", history());
    println!(
        "rolling upgrade from {} to {CURRENT}: {} writes acknowledged, none lost, no failover",
        old.display(),
        acks.len()
    );
}
