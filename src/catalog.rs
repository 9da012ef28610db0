//! Reading and writing the `repmgr` catalog tables, on any node, through [`Db`].

use crate::db::{Db, Rows};
use crate::error::{Failure, Result};

use repmgr_core::node::NODE_COLUMNS;
pub use repmgr_core::node::NodeRecord;

fn parse_nodes(rows: &Rows) -> Vec<NodeRecord> {
    rows.rows
        .iter()
        .filter_map(|r| NodeRecord::from_text(|i| r.get(i).cloned().flatten()))
        .collect()
}

/// Every registered node, by id. A node without the extension gets a message saying so.
pub fn nodes(db: &mut dyn Db) -> Result<Vec<NodeRecord>> {
    ensure_extension(db)?;
    let rows = db.read(
        &format!("SELECT {NODE_COLUMNS} FROM repmgr.nodes ORDER BY node_id"),
        &[],
    )?;
    Ok(parse_nodes(&rows))
}

/// Fails clearly when the repmgr catalog is missing on the node behind `db`.
pub fn ensure_extension(db: &mut dyn Db) -> Result<()> {
    let rows = db.read("SELECT pg_catalog.current_database(), EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'repmgr')", &[])?;
    if rows.get(0, 1) == Some("t") {
        return Ok(());
    }
    let database = rows.get(0, 0).unwrap_or("?").to_string();
    Err(Failure::state(format!(
        "the repmgr extension is not installed in database \"{database}\" on {}",
        db.label()
    ))
    .hint(format!(
        "Run CREATE EXTENSION repmgr in database \"{database}\" on that node first."
    )))
}

/// The catalog as the failover state machine reads it: the nodes and the membership row
/// (its version, the voters before its last change, and who made it).
pub fn failover_catalog(db: &mut dyn Db) -> Result<repmgr_core::driver::Catalog> {
    let nodes = nodes(db)?;
    let r = db.read(
        "SELECT version, pg_catalog.array_to_string(previous, ','), changed_by FROM repmgr.membership",
        &[],
    )?;
    Ok(repmgr_core::driver::Catalog {
        nodes,
        version: r.get(0, 0).and_then(|v| v.parse().ok()).unwrap_or(0),
        previous: r
            .get(0, 1)
            .unwrap_or_default()
            .split(',')
            .filter_map(|v| v.parse().ok())
            .collect(),
        changed_by: r.get(0, 2).and_then(|v| v.parse().ok()),
    })
}

/// Copies the membership row of `from` (the primary) into `to` (a witness's own catalog),
/// after its node list: the witness then counts the primary's version, not its own.
pub fn copy_membership(from: &mut dyn Db, to: &mut dyn Db) -> Result<()> {
    let r = from.read(
        "SELECT version::text, voters::text, previous::text, changed_by::text FROM repmgr.membership",
        &[],
    )?;
    if r.rows.is_empty() {
        return Ok(());
    }
    to.write(
        "UPDATE repmgr.membership SET version = $1::bigint, voters = $2::int[], previous = $3::int[], changed_by = $4::int",
        &[r.get(0, 0), r.get(0, 1), r.get(0, 2), r.get(0, 3)],
    )
    .map(drop)
}

/// Serialises registrations: two nodes registering at once must not both pass the checks.
pub fn lock_nodes(db: &mut dyn Db) -> Result<()> {
    db.write("LOCK TABLE repmgr.nodes IN SHARE ROW EXCLUSIVE MODE", &[])
        .map(drop)
}

/// Inserts `rec`, or replaces the row with the same id.
pub fn upsert_node(db: &mut dyn Db, rec: &NodeRecord) -> Result<()> {
    let id = rec.node_id.to_string();
    let upstream = rec.upstream_node_id.map(|u| u.to_string());
    let priority = rec.priority.to_string();
    let active = rec.active.to_string();
    db.write(
        &format!(
            "INSERT INTO repmgr.nodes ({NODE_COLUMNS})
             VALUES ($1::int, $2::int, $3::boolean, $4, $5, $6, $7::int, $8, $9, $10, $11)
             ON CONFLICT (node_id) DO UPDATE SET
               upstream_node_id = EXCLUDED.upstream_node_id, active = EXCLUDED.active,
               node_name = EXCLUDED.node_name, type = EXCLUDED.type, location = EXCLUDED.location,
               priority = EXCLUDED.priority, conninfo = EXCLUDED.conninfo, repluser = EXCLUDED.repluser,
               slot_name = EXCLUDED.slot_name, config_file = EXCLUDED.config_file"
        ),
        &[
            Some(&id),
            upstream.as_deref(),
            Some(&active),
            Some(&rec.node_name),
            Some(rec.node_type.as_str()),
            Some(&rec.location),
            Some(&priority),
            Some(&rec.conninfo),
            Some(&rec.repluser),
            rec.slot_name.as_deref(),
            Some(&rec.config_file),
        ],
    )
    .map(drop)
}

pub fn set_active(db: &mut dyn Db, node_id: i32, active: bool) -> Result<()> {
    db.write(
        "UPDATE repmgr.nodes SET active = $2::boolean WHERE node_id = $1::int",
        &[Some(&node_id.to_string()), Some(&active.to_string())],
    )
    .map(drop)
}

/// Clears `upstream_node_id` on every node that points at `node_id`.
pub fn detach_downstream(db: &mut dyn Db, node_id: i32) -> Result<()> {
    db.write(
        "UPDATE repmgr.nodes SET upstream_node_id = NULL WHERE upstream_node_id = $1::int AND node_id <> $1::int",
        &[Some(&node_id.to_string())],
    )
    .map(drop)
}

pub fn delete_node(db: &mut dyn Db, node_id: i32) -> Result<()> {
    db.write(
        "DELETE FROM repmgr.nodes WHERE node_id = $1::int",
        &[Some(&node_id.to_string())],
    )
    .map(drop)
}

/// Replaces the whole node list (a witness's copy of the primary's). Upstream references are
/// checked at commit, so the order of rows does not matter.
pub fn replace_nodes(db: &mut dyn Db, nodes: &[NodeRecord]) -> Result<()> {
    db.write("SET CONSTRAINTS ALL DEFERRED", &[])?;
    db.write("DELETE FROM repmgr.nodes", &[])?;
    nodes.iter().try_for_each(|n| upsert_node(db, n))
}

/// Makes sure `voting_term` has its single row; an existing term is kept.
pub fn init_voting_term(db: &mut dyn Db) -> Result<()> {
    db.write("INSERT INTO repmgr.voting_term (term) SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM repmgr.voting_term)", &[])
        .map(drop)
}

/// Inserts an event row and returns its timestamp as text. `at` (microseconds since
/// 2000-01-01 UTC, PostgreSQL's `TimestampTz`) records when an event that could not be written
/// at once happened; without it the row gets the transaction's time.
pub fn insert_event(
    db: &mut dyn Db,
    node_id: i32,
    event: &str,
    successful: bool,
    details: &str,
    at: Option<i64>,
) -> Result<String> {
    let at = at.map(|t| t.to_string());
    let rows = db.write(
        "INSERT INTO repmgr.events (node_id, event, successful, details, event_timestamp)
         VALUES ($1::int, $2, $3::boolean, $4,
                 COALESCE('2000-01-01 00:00:00+00'::timestamptz + $5::bigint * interval '1 microsecond', CURRENT_TIMESTAMP))
         RETURNING event_timestamp::text",
        &[Some(&node_id.to_string()), Some(event), Some(&successful.to_string()), Some(details), at.as_deref()],
    )?;
    Ok(rows.get(0, 0).unwrap_or_default().to_string())
}

/// Facts about the server behind `db` that registration checks.
pub struct ServerFacts {
    pub in_recovery: bool,
    pub system_identifier: String,
    /// `repmgr.node_id` as that server sees it (None when unset).
    pub node_id: Option<i32>,
    /// `server_version_num`, 150008 for 15.8.
    pub version_num: i32,
    /// `server_version`, as the server names itself ("15.8 (Debian 15.8-0+deb12u1)").
    pub version: String,
}

impl ServerFacts {
    pub fn major(&self) -> i32 {
        self.version_num / 10000
    }
}

pub fn server_facts(db: &mut dyn Db) -> Result<ServerFacts> {
    let rows = db.read(
        "SELECT pg_catalog.pg_is_in_recovery(), (SELECT system_identifier FROM pg_catalog.pg_control_system())::text,
                NULLIF(pg_catalog.current_setting('repmgr.node_id', true), ''),
                pg_catalog.current_setting('server_version_num'), pg_catalog.current_setting('server_version')",
        &[],
    )?;
    Ok(ServerFacts {
        in_recovery: rows.get(0, 0) == Some("t"),
        system_identifier: rows.get(0, 1).unwrap_or_default().to_string(),
        node_id: rows
            .get(0, 2)
            .and_then(|v| v.parse().ok())
            .filter(|id: &i32| *id > 0),
        version_num: rows.get(0, 3).and_then(|v| v.parse().ok()).unwrap_or(0),
        version: rows.get(0, 4).unwrap_or_default().to_string(),
    })
}
