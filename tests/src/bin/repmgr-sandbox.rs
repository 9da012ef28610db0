//! The demo sandbox behind `cargo xtask demo`: a cluster on fixed loopback ports that stays up
//! until `cargo xtask demo --stop`.

use std::path::Path;
use std::process::ExitCode;

use repmgr_tests::{Cluster, NodeOptions, destroy};

const DIR: &str = "/var/tmp/repmgr-demo";
const FIRST_PORT: u16 = 55431;

fn start() {
    // Running it again starts over from a clean sandbox.
    let mut c = Cluster::at(Path::new(DIR), Some(FIRST_PORT));
    let primary = c.init_primary(1, NodeOptions::default());
    println!(
        "          node1: primary on 127.0.0.1:{} (data in {})",
        primary.port,
        primary.data.display()
    );
    let id = c
        .value(1, "SELECT repmgr.register_primary()")
        .unwrap_or_default();
    println!("          SELECT repmgr.register_primary() returned {id}");
    c.keep();
}

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("start") => start(),
        Some("stop") => destroy(Path::new(DIR)),
        _ => {
            eprintln!("usage: repmgr-sandbox start|stop");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
