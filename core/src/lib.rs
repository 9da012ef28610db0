//! Logic shared by the `repmgr` extension and its command line, free of PostgreSQL and I/O.
//!
//! Everything here is a pure function of its inputs so it can be tested with plain `cargo test`
//! and reused unchanged on both sides of the client/server boundary.

pub mod children;
pub mod conninfo;
pub mod driver;
pub mod durable;
pub mod election;
pub mod event;
pub mod health;
pub mod lease;
pub mod lsn;
pub mod node;
pub mod quorum;
pub mod rejoin;
pub mod slots;
pub mod state;
pub mod template;
pub mod upstream;
pub mod vote;
