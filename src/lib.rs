//! repmgr as a PostgreSQL extension.
//!
//! The catalog (`sql/`), the SQL API, the settings and the shared state of a node live here.
//! Pure logic shared with the command line is in the `repmgr-core` crate, and the client used
//! to reach other nodes in `repmgr-pq`.

use pgrx::prelude::*;

mod api;
mod catalog;
mod check;
mod clock;
mod command;
mod compat;
mod config;
mod db;
mod drop_guard;
mod durable;
mod error;
mod events;
mod failover;
mod fence;
mod follow;
mod http;
mod latch;
mod manual;
mod monitor;
mod peer;
mod pglsn;
mod protocol;
mod quorum;
mod raise;
mod registration;
mod rejoin;
mod shmem;
mod slots;
mod status;
mod worker;

#[cfg(any(test, feature = "pg_test"))]
mod tests;

::pgrx::pg_module_magic!();

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // A Rust backtrace, with its build paths, never reaches a client or the log: an error
    // says what went wrong in its message, detail and hint. (Set before any thread exists:
    // the postmaster, or a backend loading the library, runs this single-threaded.)
    unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    config::define(preloading);
    if preloading {
        shmem::init();
        fence::install();
        drop_guard::install();
        worker::register();
    }
}

/// Required by `cargo pgrx test` at the crate root.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'repmgr'",
            "repmgr.node_id = 1",
            "repmgr.node_name = 'alpha'",
            // The worker connects here; the test framework must be free to drop pgrx_tests.
            "repmgr.database = 'postgres'",
            // Port 1 refuses at once: registration warns that it cannot reach itself and goes on.
            "repmgr.conninfo = 'host=127.0.0.1 port=1 dbname=pgrx_tests user=postgres password=s3cr3t-pw'",
            "repmgr.location = 'dc1'",
            "repmgr.priority = 70",
        ]
    }
}
