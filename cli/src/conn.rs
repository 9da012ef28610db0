//! Connections from the command line: options to conninfo, sessions with hard timeouts, and
//! errors that name the node.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use repmgr_core::conninfo;
use repmgr_pq::{Conn, ErrorKind, PollWaiter, Rows};

use crate::exit::{ERR_BAD_CONFIG, ERR_DB_CONN, ERR_DB_QUERY, Failure, Result};

/// How long to wait for a node to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one statement may take, unless the caller says otherwise.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

static VERBOSE: AtomicBool = AtomicBool::new(false);

/// `-v`: log which node and which SQL.
pub fn set_verbose(on: bool) {
    VERBOSE.store(on, Ordering::Relaxed);
}

pub fn verbose() -> bool {
    VERBOSE.load(Ordering::Relaxed)
}

/// A line on stderr under `-v`.
pub fn debug(line: impl AsRef<str>) {
    if verbose() {
        eprintln!("DEBUG: {}", conninfo::mask_in_text(line.as_ref()));
    }
}

/// Where to connect, from `-d` or `-h/-p/-U`.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub dbname: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
}

impl Target {
    pub fn is_given(&self) -> bool {
        self.dbname.is_some() || self.host.is_some() || self.port.is_some() || self.user.is_some()
    }

    /// The connection string: `-d` may itself be a connection string or just a database
    /// name; `-h/-p/-U` override its parts, and the database defaults to `repmgr`.
    pub fn conninfo(&self) -> Result<String> {
        let mut pairs: Vec<(String, String)> = match &self.dbname {
            Some(d) if d.contains('=') || d.contains("://") => conninfo::parse(d).map_err(|e| {
                Failure::new(
                    crate::exit::ERR_BAD_ARGUMENT,
                    format!("invalid -d/--dbname: {e}"),
                )
            })?,
            Some(d) => vec![("dbname".into(), d.clone())],
            None => Vec::new(),
        };
        let mut set = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                pairs.retain(|(key, _)| key != k);
                pairs.push((k.to_string(), v));
            }
        };
        set("host", self.host.clone());
        set("port", self.port.map(|p| p.to_string()));
        set("user", self.user.clone());
        if !pairs.iter().any(|(k, _)| k == "dbname") {
            pairs.push(("dbname".into(), "repmgr".into()));
        }
        Ok(conninfo::render(&pairs))
    }
}

/// A connection to one node, labelled for messages.
pub struct Session {
    conn: Conn,
    pub label: String,
    pub conninfo: String,
}

/// Whether an error from a node is the node refusing the request (its SQLSTATE says the
/// request or the node's state is wrong) rather than a failure to run it.
fn is_refusal(sqlstate: Option<&str>) -> bool {
    sqlstate.is_some_and(|s| {
        s.starts_with("55")
            || s.starts_with("22")
            || s.starts_with("F0")
            || s.starts_with("25")
            || s == "42501"
    })
}

impl Session {
    /// Connects with the command line's defaults: `application_name=repmgr`, empty
    /// search_path. `label` names the node in messages ("the local node", "node 2 (\"b\")").
    pub fn connect(conninfo_text: &str, label: &str) -> Result<Session> {
        debug(format!("connecting to {label}: {conninfo_text}"));
        let conn = Conn::connect(
            conninfo_text,
            &[("connect_timeout", "5")],
            &[
                ("application_name", "repmgr"),
                // Catalog writes must not wait for synchronous standbys that may be the very
                // nodes being repaired.
                ("options", "-c search_path= -c synchronous_commit=local"),
            ],
            Instant::now() + CONNECT_TIMEOUT,
            &mut PollWaiter,
        )
        .map_err(|e| {
            let code = if e.kind == ErrorKind::Conninfo { ERR_BAD_CONFIG } else { ERR_DB_CONN };
            Failure::new(
                code,
                format!("could not connect to {label} ({}): {}", conninfo::mask(conninfo_text), e.message.trim()),
            )
            .hint("Check that the server runs and accepts connections from here (listen_addresses, pg_hba.conf), and the connection string.")
        })?;
        Ok(Session {
            conn,
            label: label.to_string(),
            conninfo: conninfo_text.to_string(),
        })
    }

    /// Runs one statement with text parameters.
    pub fn query(&mut self, sql: &str, params: &[Option<&str>]) -> Result<Rows> {
        self.query_for(sql, params, STATEMENT_TIMEOUT)
    }

    /// Runs one statement, waiting at most `timeout` for its answer.
    pub fn query_for(
        &mut self,
        sql: &str,
        params: &[Option<&str>],
        timeout: Duration,
    ) -> Result<Rows> {
        debug(format!(
            "on {}: {}",
            self.label,
            sql.split_whitespace().collect::<Vec<_>>().join(" ")
        ));
        self.conn
            .query(sql, params, Instant::now() + timeout, &mut PollWaiter)
            .map_err(|e| {
                let code = if is_refusal(e.sqlstate.as_deref()) {
                    ERR_BAD_CONFIG
                } else if matches!(e.kind, ErrorKind::Connect | ErrorKind::Timeout) {
                    ERR_DB_CONN
                } else {
                    ERR_DB_QUERY
                };
                let mut f = Failure::new(code, format!("on {}: {}", self.label, e.message.trim()));
                if let Some(d) = e.detail.as_deref() {
                    f.message.push_str(&format!(" ({d})"));
                }
                f.hint = e.hint.clone();
                f
            })
    }

    /// `IDENTIFY_SYSTEM` on a replication connection: proves the server streams to us.
    pub fn identify_system(&mut self) -> Result<Rows> {
        self.conn
            .query_simple(
                "IDENTIFY_SYSTEM",
                Instant::now() + STATEMENT_TIMEOUT,
                &mut PollWaiter,
            )
            .map_err(|e| {
                Failure::new(
                    ERR_DB_CONN,
                    format!("on {}: {}", self.label, e.message.trim()),
                )
            })
    }

    /// The first value of the first row.
    pub fn value(&mut self, sql: &str, params: &[Option<&str>]) -> Result<Option<String>> {
        Ok(self.query(sql, params)?.get(0, 0).map(str::to_string))
    }

    /// Whether the node runs in recovery.
    pub fn in_recovery(&mut self) -> Result<bool> {
        Ok(self
            .value("SELECT pg_catalog.pg_is_in_recovery()", &[])?
            .as_deref()
            == Some("t"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_conninfo_from_options() {
        let t = Target {
            host: Some("db1".into()),
            port: Some(5433),
            ..Default::default()
        };
        assert_eq!(t.conninfo().unwrap(), "host=db1 port=5433 dbname=repmgr");
        let t = Target {
            dbname: Some("host=a dbname=x user=u".into()),
            user: Some("v".into()),
            ..Default::default()
        };
        assert_eq!(t.conninfo().unwrap(), "host=a dbname=x user=v");
        let t = Target {
            dbname: Some("postgresql://u@h:5/db?connect_timeout=3".into()),
            ..Default::default()
        };
        assert_eq!(
            t.conninfo().unwrap(),
            "user=u host=h port=5 dbname=db connect_timeout=3"
        );
        let t = Target {
            dbname: Some("mydb".into()),
            ..Default::default()
        };
        assert_eq!(t.conninfo().unwrap(), "dbname=mydb");
        let t = Target {
            dbname: Some(r"host='a b' password='it\'s'".into()),
            ..Default::default()
        };
        assert_eq!(
            t.conninfo().unwrap(),
            "host='a b' password='it\\'s' dbname=repmgr"
        );
        let bad = Target {
            dbname: Some("host='x".into()),
            ..Default::default()
        }
        .conninfo()
        .unwrap_err();
        assert_eq!(bad.code, crate::exit::ERR_BAD_ARGUMENT);
    }

    #[test]
    fn refusals_are_told_from_failures() {
        assert!(is_refusal(Some("55000")));
        assert!(is_refusal(Some("22023")));
        assert!(is_refusal(Some("42501")));
        assert!(!is_refusal(Some("57014")));
        assert!(!is_refusal(None));
    }
}
