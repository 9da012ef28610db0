//! Connections from this server to other nodes.
//!
//! Every connection to another node goes through here so that the same rules hold
//! everywhere: a hard deadline on connecting and on every statement (enforced on this side, so
//! a frozen peer cannot hold us), waits that watch the process latch so a cancel request or
//! shutdown is served at once, `application_name=repmgr`, an empty `search_path` (all SQL is
//! schema-qualified), `synchronous_commit=local` so catalog writes never wait for a missing
//! synchronous standby, and error messages that never show a password.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use pgrx::PgSqlErrorCode;
use pgrx::prelude::*;
use repmgr_core::conninfo;
use repmgr_core::node::NodeType;
use repmgr_pq::{Conn, ErrorKind, Interest, Interrupted, Waiter};

use std::collections::HashMap;

use crate::catalog::NodeRecord;
use crate::config::Settings;
use crate::db::{Db, Rows};
use crate::error::{Failure, Result};

/// Waits on the socket and the process latch together.
struct LatchWaiter;

impl Waiter for LatchWaiter {
    fn wait(
        &mut self,
        fd: RawFd,
        interest: Interest,
        timeout: Duration,
    ) -> std::result::Result<(), Interrupted> {
        let socket = match interest {
            Interest::Read => pg_sys::WL_SOCKET_READABLE,
            Interest::Write => pg_sys::WL_SOCKET_WRITEABLE,
        };
        if crate::latch::latch_wait(socket, fd, timeout) {
            Ok(())
        } else {
            Err(Interrupted)
        }
    }
}

/// An open connection to another node.
pub struct Peer {
    conn: Conn,
    conninfo: String,
    label: String,
    statement_timeout: Duration,
}

fn options_with(conninfo_text: &str, settings: &Settings) -> String {
    let ours = format!(
        "-c search_path= -c statement_timeout={} -c synchronous_commit=local",
        settings.peer_statement_timeout.as_millis()
    );
    match conninfo::get(conninfo_text, "options") {
        Some(theirs) if !theirs.trim().is_empty() => format!("{theirs} {ours}"),
        _ => ours,
    }
}

/// libpq keyword/value pairs.
type Params = Vec<(&'static str, String)>;

/// Connection parameters every peer connection gets: `(defaults, forced)`, see
/// [`repmgr_pq::Conn::connect`].
pub fn parameters(conninfo_text: &str, settings: &Settings) -> (Params, Params) {
    // libpq's own timeout is in whole seconds and only a backstop for our deadline.
    let defaults = vec![
        (
            "connect_timeout",
            settings.peer_connect_timeout.as_secs().max(1).to_string(),
        ),
        ("keepalives", "1".into()),
        ("keepalives_idle", "5".into()),
        ("keepalives_interval", "1".into()),
        ("keepalives_count", "3".into()),
        (
            "tcp_user_timeout",
            settings.peer_statement_timeout.as_millis().to_string(),
        ),
    ];
    let mut forced = vec![
        ("application_name", "repmgr".to_string()),
        ("options", options_with(conninfo_text, settings)),
    ];
    if conninfo::get(conninfo_text, "dbname").is_none() {
        forced.push(("dbname", settings.database.clone()));
    }
    (defaults, forced)
}

pub fn borrowed<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Whether a node answers at all (libpq's PQping sense: a refusal is an answer).
pub fn ping(conninfo_text: &str, settings: &Settings) -> bool {
    let (defaults, forced) = parameters(conninfo_text, settings);
    let deadline = Instant::now() + settings.peer_connect_timeout;
    matches!(
        repmgr_pq::ping(
            conninfo_text,
            &borrowed(&defaults),
            &borrowed(&forced),
            deadline,
            &mut LatchWaiter
        ),
        Ok(repmgr_pq::Ping::Up | repmgr_pq::Ping::Rejected(_))
    )
}

impl Peer {
    /// Connects to `conninfo_text`; `label` names the node in messages. Without a `dbname` in
    /// the string, `repmgr.database` is used.
    pub fn connect(conninfo_text: &str, label: &str, settings: &Settings) -> Result<Peer> {
        let timeout = settings.peer_connect_timeout;
        let (defaults, forced) = parameters(conninfo_text, settings);
        let deadline = Instant::now() + timeout;
        let conn = Conn::connect(
            conninfo_text,
            &borrowed(&defaults),
            &borrowed(&forced),
            deadline,
            &mut LatchWaiter,
        )
        .map_err(|e| peer_failure(e, label, timeout))?;
        Ok(Peer {
            conn,
            conninfo: conninfo_text.to_string(),
            label: label.to_string(),
            statement_timeout: settings.peer_statement_timeout,
        })
    }

    /// False once the connection failed or was abandoned; connect again.
    pub fn is_usable(&self) -> bool {
        self.conn.is_usable()
    }

    /// Lets each statement of the open transaction run for up to `limit`, on the server
    /// (`statement_timeout`) and here: for a write whose trigger may wait that long.
    pub fn allow_in_transaction(&mut self, limit: Duration) -> Result<()> {
        self.run(
            &format!("SET LOCAL statement_timeout = {}", limit.as_millis()),
            &[],
        )?;
        self.statement_timeout = limit;
        Ok(())
    }

    /// A new connection to the same node.
    pub fn reconnect(&self, settings: &Settings) -> Result<Peer> {
        Peer::connect(&self.conninfo, &self.label, settings)
    }

    pub fn run(&mut self, sql: &str, params: &[Option<&str>]) -> Result<Rows> {
        let deadline = Instant::now() + self.statement_timeout;
        self.conn
            .query(sql, params, deadline, &mut LatchWaiter)
            .map_err(|e| peer_failure(e, &self.label, self.statement_timeout))
    }
}

impl Db for Peer {
    fn read(&mut self, sql: &str, params: &[Option<&str>]) -> Result<Rows> {
        self.run(sql, params)
    }

    fn write(&mut self, sql: &str, params: &[Option<&str>]) -> Result<Rows> {
        self.run(sql, params)
    }

    fn label(&self) -> String {
        self.label.clone()
    }
}

/// Encodes a five-character SQLSTATE the way PostgreSQL does (MAKE_SQLSTATE).
fn sqlstate_code(state: &str) -> Option<PgSqlErrorCode> {
    let b = state.as_bytes();
    if b.len() != 5 {
        return None;
    }
    let code = b.iter().enumerate().fold(0i32, |acc, (i, c)| {
        acc | (((i32::from(*c) - i32::from(b'0')) & 0x3F) << (6 * i))
    });
    Some(PgSqlErrorCode::from(code))
}

fn peer_failure(e: repmgr_pq::Error, label: &str, timeout: Duration) -> Failure {
    match e.kind {
        ErrorKind::Conninfo => Failure::invalid(format!("the connection string for {label} is not valid: {}", e.message)),
        ErrorKind::Connect | ErrorKind::Interrupted => Failure::new(
            PgSqlErrorCode::ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
            format!("could not connect to {label}: {}", e.message),
        )
        .hint(format!("Check that {label} is running and that its conninfo is reachable from this node.")),
        ErrorKind::Timeout => Failure::new(
            PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
            format!("{label} did not answer within {} ms ({})", timeout.as_millis(), e.message),
        )
        .hint(format!(
            "Check whether {label} is overloaded, frozen or cut off; repmgr.peer_connect_timeout and repmgr.peer_statement_timeout set the limits."
        )),
        ErrorKind::Query => {
            let code = e.sqlstate.as_deref().and_then(sqlstate_code).unwrap_or(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR);
            let mut f = Failure::new(code, format!("on {label}: {}", e.message));
            f.detail = e.detail;
            f.hint = e.hint;
            f
        }
    }
}

/// Connections to other nodes, kept across rounds and reopened when they break or the
/// node's conninfo changes.
#[derive(Default)]
pub struct PeerCache {
    open: HashMap<i32, (String, Peer)>,
}

impl PeerCache {
    /// A usable connection to `node`, reusing the last one when it is still good.
    pub fn get(&mut self, node: &NodeRecord, settings: &Settings) -> Result<&mut Peer> {
        let stale = match self.open.get(&node.node_id) {
            Some((conninfo, p)) => conninfo != &node.conninfo || !p.is_usable(),
            None => true,
        };
        if stale {
            self.open.remove(&node.node_id);
            let p = Peer::connect(&node.conninfo, &node.describe(), settings)?;
            self.open.insert(node.node_id, (node.conninfo.clone(), p));
        }
        Ok(&mut self.open.get_mut(&node.node_id).expect("just inserted").1)
    }

    pub fn forget(&mut self, node_id: i32) {
        self.open.remove(&node_id);
    }

    /// The first data node of `nodes` other than this one that answers as a writable,
    /// unfenced primary: where a replaced primary rejoins, and sends the events it cannot
    /// write itself. Asks them one at a time, each within the peer timeouts.
    pub fn writable_primary<'a>(
        &mut self,
        settings: &Settings,
        nodes: &'a [NodeRecord],
    ) -> Option<&'a NodeRecord> {
        nodes
            .iter()
            .filter(|n| n.node_id != settings.node_id && n.node_type != NodeType::Witness)
            .find(|n| {
                let answer = self.get(n, settings).and_then(|p| {
                    p.run(
                        "SELECT NOT pg_catalog.pg_is_in_recovery() AND NOT fenced FROM repmgr.node_status()",
                        &[],
                    )
                });
                if answer.is_err() {
                    self.forget(n.node_id);
                }
                answer.is_ok_and(|r| r.get(0, 0) == Some("t"))
            })
    }
}
