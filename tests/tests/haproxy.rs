//! Debian's HAProxy with the README's configuration in front of a real cluster (zero data
//! loss): writes go through its write listener across a `kill -9` failover and a switchover,
//! every one to the primary of the moment and none lost, with the write gap the client sees
//! through HAProxy; reads go to standbys.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use repmgr_tests::haproxy::Haproxy;
use repmgr_tests::http::status;
use repmgr_tests::load::{Load, longest_gap};
use repmgr_tests::{Cluster, NodeOptions, free_port, switchover};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn writes_through_haproxy_follow_a_failover_and_a_switchover_and_reads_reach_standbys() {
    let http: HashMap<i32, u16> = (1..=3).map(|id| (id, free_port())).collect();
    let mut c = Cluster::new("haproxy");
    // pg_rewind needs wal_log_hints: the old primary comes back by itself. With zero data
    // loss, no write acknowledged through HAProxy may be missing afterwards, even across a
    // kill -9 (asynchronously, the crash may take its last milliseconds of commits).
    let confs = c.populate_with_cli(&[2, 3], || {
        NodeOptions::default()
            .conf("wal_log_hints = on")
            .conf("repmgr.auto_rejoin = on")
            .conf("repmgr.synchronous_standbys = 1")
    });
    for id in 1..=3 {
        c.set(id, "repmgr.http_listen_address", "127.0.0.1");
        c.set(id, "repmgr.http_port", &http[&id].to_string());
    }
    c.settled(1, &[2, 3], WAIT);
    for id in 1..=3 {
        c.wait_for("the endpoints", WAIT, || {
            (status(http[&id], "/health") == 200).then_some(())
        });
    }
    let h = Haproxy::start(&c, &http);
    let load = Load::through_proxy(
        &h.write_conninfo(),
        "through_haproxy",
        Duration::from_millis(10),
    );
    c.wait_for("writes through HAProxy", WAIT, || {
        (load.acks().len() > 50).then_some(())
    });

    // Reads: the read listener reaches a standby.
    let reader = c.wait_for("a read through HAProxy", WAIT, || {
        let mut conn = repmgr_tests::try_connect(&h.read_conninfo())?;
        let r = conn
            .query(
                "SELECT pg_is_in_recovery()::text, current_setting('repmgr.node_id')",
                &[],
                Instant::now() + Duration::from_secs(5),
                &mut repmgr_pq::PollWaiter,
            )
            .ok()?;
        (r.get(0, 0) == Some("true")).then(|| r.get(0, 1).unwrap_or_default().to_string())
    });
    assert!(reader == "2" || reader == "3", "read from node {reader}");

    // kill -9 of the primary.
    let crash = Instant::now();
    c.kill9(1);
    let new = c.one_writable(&[2, 3], WAIT);
    c.wait_for("writes through HAProxy on the new primary", WAIT, || {
        load.acks()
            .last()
            .is_some_and(|(_, t)| *t > crash + Duration::from_millis(100))
            .then_some(())
    });
    let failover_gap = longest_gap(&load.acks(), crash).map_or(Duration::ZERO, |(g, _)| g);
    // The old primary comes back as a standby by itself.
    c.restart_rejoined(1, new, &[1, 5 - new]);

    // A switchover back to node 1.
    let before = load.acks().len();
    let t = Instant::now();
    switchover(&confs[1]);
    c.wait_for("writes through HAProxy on node 1", WAIT, || {
        (load.acks().len() > before + 50 && c.writable(&[1, 2, 3]) == [1]).then_some(())
    });
    let switchover_gap = longest_gap(&load.acks(), t).map_or(Duration::ZERO, |(g, _)| g);
    let origins = load.origins();
    let acks = load.stop();

    // Every acknowledged write is on the last primary: none was acknowledged by a node that
    // was fenced or replaced and then rewound.
    let lost = c.missing_acks(1, "through_haproxy", &acks);
    assert!(
        lost.is_empty(),
        "acknowledged through HAProxy, then lost: {lost:?}"
    );
    // And they went to one primary at a time: node 1, its successor, node 1 again.
    let mut seq: Vec<i32> = Vec::new();
    for (_, node, _) in &origins {
        let n = node.expect("each write names its node");
        if seq.last() != Some(&n) {
            seq.push(n);
        }
    }
    assert_eq!(
        seq,
        [1, new, 1],
        "the nodes that acknowledged writes, in order"
    );
    println!(
        "through HAProxy ({} writes): write gap {:.2} s after kill -9, {:.2} s in the switchover\n{}",
        acks.len(),
        failover_gap.as_secs_f64(),
        switchover_gap.as_secs_f64(),
        h.config()
    );
}
