//! Zero data loss on real clusters: the primary keeps `synchronous_standby_names` with the
//! standbys that stream, and no failover promotes a standby that may lack an acknowledged
//! commit. Every wait has a deadline; clusters are torn down.

use std::time::{Duration, Instant};

use repmgr_pq::{Conn, PollWaiter};
use repmgr_tests::{Cluster, NodeOptions, load};

const WAIT: Duration = Duration::from_secs(30);

fn sync_opts(mode: &str) -> impl Fn(i32) -> NodeOptions {
    let mode = mode.to_string();
    move |_| {
        NodeOptions::default()
            .conf("repmgr.synchronous_standbys = 1")
            .conf(format!("repmgr.synchronous_mode = {mode}"))
    }
}

fn names(c: &Cluster, id: i32) -> String {
    c.value(id, "SHOW synchronous_standby_names")
        .unwrap_or_default()
}

fn published(c: &Cluster, id: i32) -> String {
    c.value(
        id,
        "SELECT num_sync || ':' || array_to_string(members, ',') FROM repmgr.synchronous_quorum",
    )
    .unwrap_or_default()
}

fn wait_quorum(c: &Cluster, id: i32, want_names: &str, want_published: &str) {
    c.wait_for(
        &format!("synchronous_standby_names = {want_names:?} and published {want_published:?}"),
        WAIT,
        || (names(c, id) == want_names && published(c, id) == want_published).then_some(()),
    );
}

/// Whether an insert on node `id` is acknowledged within `within`.
fn commits_within(c: &Cluster, id: i32, within: Duration) -> bool {
    let n = c.node(id);
    let mut conn = Conn::connect(
        &n.local_conninfo("repmgr"),
        &[],
        &[],
        Instant::now() + WAIT,
        &mut PollWaiter,
    )
    .expect("connect");
    conn.query(
        "CREATE TABLE IF NOT EXISTS probe (t timestamptz)",
        &[],
        Instant::now() + WAIT,
        &mut PollWaiter,
    )
    .ok();
    conn.query(
        "INSERT INTO probe VALUES (now())",
        &[],
        Instant::now() + within,
        &mut PollWaiter,
    )
    .is_ok()
}

/// Writes to `primary` for two seconds; the acknowledged values.
fn acknowledged_writes(c: &Cluster, primary: i32) -> Vec<load::Ack> {
    let load = c.write_load(&[primary]);
    std::thread::sleep(Duration::from_secs(2));
    load.pause();
    let acks = load.stop();
    assert!(acks.len() > 20, "{} acknowledged", acks.len());
    acks
}

#[test]
fn the_primary_keeps_the_quorum_in_step_with_its_standbys() {
    let mut c = Cluster::new("quorum-step");
    c.populate(&[2, 3], sync_opts("strict"));
    // A witness keeps the primary's lease while both standbys are down, so what stops its
    // commits below is the quorum, not the fence.
    c.add_witness(4, NodeOptions::default());
    c.settled(1, &[2, 3, 4], WAIT);
    wait_quorum(&c, 1, "ANY 1 (node2, node3)", "1:2,3");
    assert!(commits_within(&c, 1, Duration::from_secs(5)));
    assert!(
        c.value(1, "SELECT details FROM repmgr.events WHERE event = 'synchronous_standbys_changed' ORDER BY event_timestamp DESC LIMIT 1")
            .is_some_and(|d| d.contains("ANY 1 (node2, node3)")),
    );

    // A standby stops: strict mode keeps one acknowledgement from the one that streams.
    c.stop(3);
    wait_quorum(&c, 1, "ANY 1 (node2)", "1:2");
    assert!(commits_within(&c, 1, Duration::from_secs(5)));
    // Both stopped: strict mode never goes below one; commits wait.
    c.stop(2);
    c.wait_for("the primary to notice", WAIT, || {
        c.value(1, "SELECT count(*)::text FROM pg_stat_replication")
            .filter(|v| v == "0")
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(names(&c, 1), "ANY 1 (node2)");
    assert!(
        !commits_within(&c, 1, Duration::from_secs(2)),
        "a commit went through with no standby"
    );
    let check = c
        .value(1, "SELECT status || ': ' || details FROM repmgr.node_check() WHERE \"check\" = 'synchronous quorum'")
        .unwrap();
    assert!(
        check.starts_with("CRITICAL") && check.contains("commits wait"),
        "{check}"
    );
    // Both back: both members again.
    c.start(2);
    c.start(3);
    wait_quorum(&c, 1, "ANY 1 (node2, node3)", "1:2,3");
    assert!(commits_within(&c, 1, Duration::from_secs(5)));

    // Preferred mode lowers the quorum to what streams, down to none.
    for id in 1..=3 {
        c.set(id, "repmgr.synchronous_mode", "preferred");
    }
    c.stop(2);
    c.stop(3);
    wait_quorum(&c, 1, "", "0:");
    assert!(commits_within(&c, 1, Duration::from_secs(5)));
    let check = c
        .value(
            1,
            "SELECT status FROM repmgr.node_check() WHERE \"check\" = 'synchronous quorum'",
        )
        .unwrap();
    assert_eq!(check, "WARNING");
    c.start(2);
    wait_quorum(&c, 1, "ANY 1 (node2)", "1:2");
    c.start(3);
    wait_quorum(&c, 1, "ANY 1 (node2, node3)", "1:2,3");

    // Off: the promise is withdrawn first, then commits stop waiting.
    for id in 1..=3 {
        c.set(id, "repmgr.synchronous_standbys", "0");
    }
    wait_quorum(&c, 1, "", "0:");
}

#[test]
fn no_failover_promotes_a_standby_that_may_lack_acknowledged_commits() {
    let mut c = Cluster::new("quorum-failover");
    c.populate(&[2, 3, 4], sync_opts("strict"));
    c.add_witness(5, NodeOptions::default());
    c.settled(1, &[2, 3, 4, 5], WAIT);
    wait_quorum(&c, 1, "ANY 1 (node2, node3, node4)", "1:2,3,4");

    // Nodes 3 and 4 stop receiving: node 2 alone acknowledges from now on. They keep the
    // quorum published when they last received, which names all three.
    for id in [3, 4] {
        c.set(id, "primary_conninfo", "host=127.0.0.1 port=1");
    }
    wait_quorum(&c, 1, "ANY 1 (node2)", "1:2");
    assert_eq!(published(&c, 3), "1:2,3,4");
    let acks = acknowledged_writes(&c, 1);

    // The primary dies and so does the only standby that has those commits. Nodes 3 and 4
    // and the witness are a majority, but without node 2's position neither node can know it
    // has every acknowledged commit.
    // Every process of the primary at once: after kill -9 of the postmaster alone, its worker
    // would tell the voters, and node 2 could be elected before it is stopped.
    c.crash(1);
    c.stop(2);
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(c.writable(&[3, 4]), Vec::<i32>::new());
    let why = "only 2 of the synchronous quorum's 3 members answered";
    for id in [3, 4] {
        let log = c.log(id);
        assert!(
            log.contains("does not stand for election") && log.contains(why),
            "node {id} does not say why it waits; what its worker said:\n{}",
            c.worker_log(id)
        );
        let check = c
            .value(id, "SELECT status || ': ' || details FROM repmgr.node_check() WHERE \"check\" = 'synchronous quorum'")
            .unwrap();
        assert!(
            check.starts_with("CRITICAL") && check.contains(why),
            "{check}"
        );
    }
    let refused = c
        .try_sql(3, "SELECT repmgr.promote(force => true)")
        .unwrap_err();
    assert!(
        refused
            .message
            .contains("cannot be promoted without risking acknowledged commits")
            && refused.message.contains(why)
            && refused
                .hint
                .as_deref()
                .is_some_and(|h| h.contains("allow_data_loss => true")),
        "{refused:?}"
    );

    // The member comes back: it is promoted, with every acknowledged commit.
    c.start(2);
    let new = c.one_writable(&[2, 3, 4], WAIT);
    assert_eq!(new, 2);
    let lost = c.missing_acks(2, "acked", &acks);
    assert!(
        lost.is_empty(),
        "{} acknowledged commits lost: {lost:?}",
        lost.len()
    );
    // It starts with a quorum of its own at once, and the others follow it.
    c.wait_for("nodes 3 and 4 to follow node 2", WAIT, || {
        (c.streams_from(2, 3) && c.streams_from(2, 4)).then_some(())
    });
    wait_quorum(&c, 2, "ANY 1 (node3, node4)", "1:3,4");
}

#[test]
fn a_standby_that_missed_the_quorums_publication_is_not_promoted_over_it() {
    // Found by the simulator (seed 839): a standby down when the quorum was first published
    // still reads "asynchronous" in its catalog, and voters outside the quorum granted it.
    let mut c = Cluster::new("quorum-missed");
    c.populate(&[2, 3, 4], |id| match id {
        4 => NodeOptions::default().conf("repmgr.priority = 0"),
        _ => NodeOptions::default(),
    });
    c.add_witness(5, NodeOptions::default());
    c.settled(1, &[2, 3, 4, 5], WAIT);
    // Node 3 stops receiving before the quorum is asked for.
    c.set(3, "primary_conninfo", "host=127.0.0.1 port=1");
    c.wait_for("node 3 to stop streaming", WAIT, || {
        (!c.streams_from(1, 3)).then_some(())
    });
    for id in 1..=4 {
        c.set(id, "repmgr.synchronous_standbys", "1");
    }
    wait_quorum(&c, 1, "ANY 1 (node2)", "1:2");
    assert_eq!(published(&c, 3), "", "node 3 received the publication");
    let acks = acknowledged_writes(&c, 1);

    // The primary and the only member die. Nodes 3 and 4 and the witness are a majority;
    // node 4 (priority 0, outside the quorum) and the witness would allow node 3 its lag,
    // but node 4's catalog publishes a quorum node 3's lacks, and node 3 lacks the commits
    // acknowledged through it.
    // Every process of the primary at once, as above.
    c.crash(1);
    c.stop(2);
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        c.writable(&[3, 4]),
        Vec::<i32>::new(),
        "a standby that lacks acknowledged commits was promoted; node 3's worker said:\n{}",
        c.worker_log(3)
    );
    let why = "catalog publishes a synchronous quorum written at";
    assert!(
        c.log(3).contains(why),
        "node 3 does not say why it waits; what its worker said:\n{}",
        c.worker_log(3)
    );

    // The member comes back: it is promoted, with every acknowledged commit.
    c.start(2);
    assert_eq!(c.one_writable(&[2, 3, 4], WAIT), 2);
    let lost = c.missing_acks(2, "acked", &acks);
    assert!(
        lost.is_empty(),
        "{} acknowledged commits lost: {lost:?}",
        lost.len()
    );
}
