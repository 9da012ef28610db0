//! Automatic failover on real clusters.

use std::time::{Duration, Instant};

use repmgr_tests::{Cluster, NodeOptions};

const WAIT: Duration = Duration::from_secs(30);

fn three_nodes(name: &str) -> Cluster {
    let mut c = Cluster::new(name);
    c.init_primary(1, NodeOptions::default());
    c.sql(1, "SELECT repmgr.register_primary()");
    for id in [2, 3] {
        c.clone_standby(id, 1, NodeOptions::default());
        c.sql(id, "SELECT repmgr.register_standby()");
    }
    c
}

#[test]
fn kill_9_of_the_primary_promotes_one_standby_and_the_other_follows() {
    let c = three_nodes("kill9");
    // Wait until the protocol runs: the primary holds its lease.
    c.wait_for("the primary's lease", WAIT, || (c.value(1, "SELECT (NOT fenced)::text FROM repmgr.node_status()").as_deref() == Some("true")).then_some(()));
    std::thread::sleep(Duration::from_secs(2));
    let crash = Instant::now();
    c.kill9(1);
    let new = c.wait_for("a new primary", WAIT, || {
        [2, 3].into_iter().find(|id| c.try_sql(*id, "SELECT pg_is_in_recovery()").ok().and_then(|r| r.get(0, 0).map(str::to_string)).as_deref() == Some("f"))
    });
    println!("promoted node {new} after {:?}", crash.elapsed());
    let other = if new == 2 { 3 } else { 2 };
    c.wait_for("the other standby to stream from the new primary", WAIT, || {
        c.try_sql(new, &format!("SELECT 1 FROM pg_stat_replication WHERE application_name = 'node{other}' AND state = 'streaming'")).ok().filter(|r| !r.rows.is_empty())
    });
    println!("follower streaming after {:?}", crash.elapsed());
    c.sql(new, "CREATE TABLE after_failover AS SELECT 1 AS x");
    println!("{}", c.log(new).lines().filter(|l| l.contains("repmgr")).collect::<Vec<_>>().join("\n"));
}
