//! The simulation in `cargo test`: at least 10 000 seeded schedules, every invariant checked
//! after every step. More on demand: `REPMGR_SIM_SCHEDULES=100000 cargo test -p repmgr-sim`;
//! one failing seed: `REPMGR_SIM_SEED=<seed> REPMGR_SIM_SCHEDULES=1 cargo test -p repmgr-sim`.

use std::time::Instant;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn seeded_schedules_keep_every_invariant() {
    let first = env("REPMGR_SIM_SEED", 1);
    let count = env("REPMGR_SIM_SCHEDULES", 10_000);
    let started = Instant::now();
    match repmgr_sim::run_many(first, count) {
        Ok(r) => println!(
            "simulation: {count} schedules (seeds {first}..{}) in {:.1} s: {} elections, {} promotions, {} commit steps ({} acknowledged by a synchronous quorum), {} standbys diverged ({} with WAL received after the promotion), {} automatic rejoins, {} exited postmasters reported ({} reports counted by a voter), {} promotions of a candidate behind a voter that could stand, for its copies of failover slots, no invariant broken",
            first + count - 1,
            started.elapsed().as_secs_f64(),
            r.elections,
            r.promotions,
            r.commits,
            r.acknowledged,
            r.divergences,
            r.late_divergences,
            r.rejoins,
            r.exits_reported,
            r.exits_counted,
            r.ranked_by_slots
        ),
        Err(v) => panic!(
            "{v}\nreplay: REPMGR_SIM_SEED={} REPMGR_SIM_SCHEDULES=1 cargo test -p repmgr-sim -- --nocapture",
            v.seed
        ),
    }
}
