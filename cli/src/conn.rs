//! Connections from the command line: options to conninfo, with hard timeouts.

use std::time::{Duration, Instant};

use repmgr_core::conninfo;
use repmgr_pq::{Conn, PollWaiter, Rows};

/// How long to wait for a node to accept a connection or answer one statement.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Where to connect, from `-d` or `-h/-p/-U`.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub dbname: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
}

impl Target {
    /// The connection string: `-d` may itself be a connection string or just a database
    /// name; `-h/-p/-U` override its parts, and the database defaults to `repmgr`.
    pub fn conninfo(&self) -> Result<String, String> {
        let mut pairs: Vec<(String, String)> = match &self.dbname {
            Some(d) if d.contains('=') || d.contains("://") => {
                conninfo::parse(d).map_err(|e| format!("invalid -d/--dbname: {e}"))?
            }
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

/// Connects with the command line's defaults: `application_name=repmgr`, empty search_path.
pub fn connect(conninfo_text: &str) -> Result<Conn, repmgr_pq::Error> {
    Conn::connect(
        conninfo_text,
        &[("connect_timeout", "5")],
        &[
            ("application_name", "repmgr"),
            ("options", "-c search_path="),
        ],
        Instant::now() + TIMEOUT,
        &mut PollWaiter,
    )
}

pub fn query(c: &mut Conn, sql: &str) -> Result<Rows, repmgr_pq::Error> {
    c.query(sql, &[], Instant::now() + TIMEOUT, &mut PollWaiter)
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
            dbname: Some("mydb".into()),
            ..Default::default()
        };
        assert_eq!(t.conninfo().unwrap(), "dbname=mydb");
        assert!(
            Target {
                dbname: Some("host='x".into()),
                ..Default::default()
            }
            .conninfo()
            .is_err()
        );
    }
}
