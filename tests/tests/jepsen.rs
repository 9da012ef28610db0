//! Jepsen-style check of zero data loss and self-healing: clients insert unique integers on
//! whichever node is the writable primary and record every acknowledged one, while the test
//! kills (the whole server, or the primary's postmaster alone while its backends commit),
//! freezes and cuts off the primary and the standbys in a seeded random sequence. After
//! each fault the cluster must be back to full redundancy (every data node streaming from the
//! primary) with no command run: replaced primaries and diverged standbys rejoin by themselves
//! (`repmgr.auto_rejoin`). At the end every acknowledged integer must be on the final primary.
//!
//! The short form (6 faults, about a minute) runs with the test suite. The long form runs on
//! demand: `REPMGR_JEPSEN_ROUNDS=100 cargo test -p repmgr-tests --test jepsen -- --nocapture`
//! (`REPMGR_JEPSEN_SEED` replays a sequence).

use std::cell::Cell;
use std::time::{Duration, Instant};

use repmgr_tests::load::longest_gap;
use repmgr_tests::{Cluster, NodeOptions};

const WAIT: Duration = Duration::from_secs(60);
const DATA: [i32; 3] = [1, 2, 3];
const WITNESS: i32 = 4;

/// xorshift64*: enough randomness for a fault schedule, and replayable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[(self.next() % from.len() as u64) as usize]
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// Every process of the primary at once, as a host crash would.
    KillPrimary,
    /// Its postmaster alone (`kill -9`): the backends committing for the clients outlive it
    /// for a moment, and its worker tells the voters.
    KillPostmaster,
    FreezePrimary,
    IsolatePrimary,
    KillStandby,
    FreezeStandby,
    IsolateStandby,
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

struct Jepsen {
    c: Cluster,
    /// Standbys found diverged (each rejoined by itself).
    diverged: Cell<u32>,
}

impl Jepsen {
    fn primary(&self) -> i32 {
        self.c.one_writable(&DATA, WAIT)
    }

    /// Every data node up: one writable primary, the other two streaming from it, and the
    /// primary's quorum naming both, with no command run.
    fn healthy(&self) -> i32 {
        let p = self.primary();
        let others: Vec<i32> = DATA.iter().copied().filter(|id| *id != p).collect();
        // A standby that received WAL the new primary never had (sent by the old one before
        // it was fenced, never acknowledged) cannot follow: it rejoins by itself. The losing
        // of unacknowledged WAL is allowed; the check is on acknowledged writes.
        for s in &others {
            let diverged = self
                .c
                .try_sql(*s, "SELECT diverged::text FROM repmgr.node_status()")
                .ok()
                .and_then(|r| r.get(0, 0).map(str::to_string))
                .as_deref()
                == Some("true");
            if diverged {
                println!("jepsen: node {s} diverged; it rejoins by itself");
                self.diverged.set(self.diverged.get() + 1);
            }
        }
        self.c.wait_for_or_explain(
            "both standbys to stream from the primary, with no command run",
            WAIT,
            || {
                others
                    .iter()
                    .all(|s| self.c.streams_from(p, *s))
                    .then_some(())
            },
            || self.c.log_tails(30),
        );
        let want = format!("ANY 1 (node{}, node{})", others[0], others[1]);
        self.c.wait_for_or_explain(
            "the quorum to name both standbys",
            WAIT,
            || {
                (self.c.value(p, "SHOW synchronous_standby_names").as_deref() == Some(&want))
                    .then_some(())
            },
            || {
                format!(
                    "on node {p}: synchronous_standby_names {:?}, catalog {:?}\nits worker said:\n{}",
                    self.c.value(p, "SHOW synchronous_standby_names"),
                    self.c
                        .sql(p, "SELECT node_id, type, active, upstream_node_id, priority FROM repmgr.nodes ORDER BY 1")
                        .rows,
                    self.c.worker_log(p)
                )
            },
        );
        p
    }

    /// Starts a crashed node again, as a reboot would (after a crash, leftover processes may
    /// hold the old shared memory for a moment).
    fn restart(&self, id: i32) {
        let started = (0..20).any(|_| {
            self.c.try_start(id) || {
                std::thread::sleep(Duration::from_millis(500));
                false
            }
        });
        assert!(started, "node {id} did not start again");
    }

    /// The primary was killed, frozen or cut off: once the others have a new primary, the
    /// fault ends (a start, the thaw, the link back); the old primary stays fenced and then
    /// rejoins by itself (checked by [`Jepsen::healthy`]).
    fn replace_primary(&self, old: i32, fault: Fault) {
        let others: Vec<i32> = DATA.iter().copied().filter(|id| *id != old).collect();
        self.c.one_writable(&others, WAIT);
        match fault {
            Fault::FreezePrimary => self.c.thaw(old),
            Fault::IsolatePrimary => self.c.network().rejoin(old),
            _ => self.restart(old),
        }
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            !self.c.writable(&[old]).contains(&old),
            "node {old} is writable after its replacement"
        );
    }

    fn inject(&self, fault: Fault, rng: &mut Rng) {
        let p = self.primary();
        let standbys: Vec<i32> = DATA.iter().copied().filter(|id| *id != p).collect();
        let s = rng.pick(&standbys);
        match fault {
            Fault::KillPrimary => {
                self.c.crash(p);
                self.replace_primary(p, fault);
            }
            Fault::KillPostmaster => {
                self.c.kill9(p);
                self.replace_primary(p, fault);
            }
            Fault::FreezePrimary => {
                self.c.freeze(p);
                self.replace_primary(p, fault);
            }
            Fault::IsolatePrimary => {
                self.c.network().isolate(p);
                self.replace_primary(p, fault);
            }
            Fault::KillStandby => {
                self.c.crash(s);
                std::thread::sleep(Duration::from_secs(2));
                self.restart(s);
            }
            Fault::FreezeStandby => {
                self.c.freeze(s);
                std::thread::sleep(Duration::from_millis(1500));
                self.c.thaw(s);
            }
            Fault::IsolateStandby => {
                self.c.network().isolate(s);
                std::thread::sleep(Duration::from_secs(3));
                self.c.network().rejoin(s);
            }
        }
    }
}

#[test]
fn no_acknowledged_write_is_lost_through_random_faults() {
    let rounds = env_u64("REPMGR_JEPSEN_ROUNDS").unwrap_or(6);
    let seed = env_u64("REPMGR_JEPSEN_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1
    });
    println!("jepsen: seed {seed}, {rounds} faults (REPMGR_JEPSEN_SEED={seed} replays it)");
    let mut c = Cluster::with_network("jepsen");
    let opts = || {
        NodeOptions::default()
            .conf("repmgr.synchronous_standbys = 1")
            .conf("wal_log_hints = on")
            .conf("repmgr.auto_rejoin = on")
    };
    c.populate(&[2, 3], |_| opts());
    c.add_witness(WITNESS, NodeOptions::default());
    let j = Jepsen {
        c,
        diverged: Cell::new(0),
    };
    j.c.settled(1, &[2, 3, WITNESS], WAIT);
    j.healthy();

    let load = j.c.write_load(&DATA);
    let began = Instant::now();
    let mut rng = Rng(seed);
    let faults = [
        Fault::KillPrimary,
        Fault::KillPostmaster,
        Fault::FreezePrimary,
        Fault::IsolatePrimary,
        Fault::KillStandby,
        Fault::FreezeStandby,
        Fault::IsolateStandby,
    ];
    let mut healing = Vec::new();
    for round in 1..=rounds {
        let fault = rng.pick(&faults);
        let t = Instant::now();
        j.inject(fault, &mut rng);
        let p = j.healthy();
        healing.push(t.elapsed());
        println!(
            "jepsen: fault {round}/{rounds}: {fault:?}, fully redundant again {:.1} s after it began, primary node {p}, {} acknowledged so far",
            t.elapsed().as_secs_f64(),
            load.acks().len()
        );
    }
    healing.sort();
    if let (Some(median), Some(worst)) = (healing.get(healing.len() / 2), healing.last()) {
        println!(
            "jepsen: back to full redundancy after each fault: median {:.1} s, worst {:.1} s (from the fault's start); {} standbys diverged, 0 commands run",
            median.as_secs_f64(),
            worst.as_secs_f64(),
            j.diverged.get()
        );
    }
    // Let the last primary take writes for a moment, then stop and count.
    std::thread::sleep(Duration::from_secs(1));
    let acks = load.stop();
    let ended = Instant::now();
    let p = j.healthy();
    let lost = j.c.missing_acks(p, "acked", &acks);
    // The outage counts from the start and to the end too.
    let mut timeline = vec![(0, began)];
    timeline.extend(acks.iter().copied());
    timeline.push((0, ended));
    let outage = longest_gap(&timeline, began).map_or(Duration::ZERO, |(g, _)| g);
    println!(
        "jepsen: {rounds} faults in {:.0} s, {} writes acknowledged, {} lost, longest write outage {:.2} s",
        began.elapsed().as_secs_f64(),
        acks.len(),
        lost.len(),
        outage.as_secs_f64()
    );
    // Writes must have gone on through the faults, not stopped at the first.
    let seconds = ended.duration_since(began).as_secs_f64();
    assert!(
        acks.len() as f64 > seconds * 10.0,
        "{} writes acknowledged in {seconds:.0} s: the clients stopped getting through",
        acks.len()
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost (seed {seed}): {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
}
