//! Node identity rules: types, names and replication slot names.

use std::fmt;

/// A node's registered role, as stored in `repmgr.nodes.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeType {
    Primary,
    Standby,
    Witness,
}

impl NodeType {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeType::Primary => "primary",
            NodeType::Standby => "standby",
            NodeType::Witness => "witness",
        }
    }

    pub fn parse(s: &str) -> Option<NodeType> {
        match s {
            "primary" => Some(NodeType::Primary),
            "standby" => Some(NodeType::Standby),
            "witness" => Some(NodeType::Witness),
            _ => None,
        }
    }
}

impl fmt::Display for NodeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of `repmgr.nodes`: the one node record of the extension, the command line, the
/// failover driver and the simulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub node_id: i32,
    pub upstream_node_id: Option<i32>,
    pub active: bool,
    pub node_name: String,
    pub node_type: NodeType,
    pub location: String,
    pub priority: i32,
    pub conninfo: String,
    pub repluser: String,
    pub slot_name: Option<String>,
    pub config_file: String,
}

/// The catalog's defaults for a column left empty (`sql/schema.sql`).
pub const DEFAULT_LOCATION: &str = "default";
pub const DEFAULT_PRIORITY: i32 = 100;

/// The columns [`NodeRecord::from_text`] reads, in its order.
pub const NODE_COLUMNS: &str = "node_id, upstream_node_id, active, node_name, type, location, priority, conninfo, repluser, slot_name, config_file";

impl NodeRecord {
    /// Whether `other` registers the same node in the same role at the same address (what
    /// reading a registration back checks; the catalog may fill columns left empty).
    pub fn same_registration(&self, other: &NodeRecord) -> bool {
        (self.node_id, self.node_type, &self.conninfo)
            == (other.node_id, other.node_type, &other.conninfo)
    }

    /// "node 3 (\"db3\")", the way every message names a node.
    pub fn describe(&self) -> String {
        format!("node {} (\"{}\")", self.node_id, self.node_name)
    }

    /// A record from the text of [`NODE_COLUMNS`], as both SPI and libpq return them;
    /// `None` for a row without id, name or a known type.
    pub fn from_text(col: impl Fn(usize) -> Option<String>) -> Option<NodeRecord> {
        let int = |i: usize| col(i).and_then(|v| v.parse::<i32>().ok());
        Some(NodeRecord {
            node_id: int(0)?,
            upstream_node_id: int(1),
            active: col(2).as_deref() == Some("t"),
            node_name: col(3)?,
            node_type: NodeType::parse(&col(4)?)?,
            location: col(5).unwrap_or_else(|| DEFAULT_LOCATION.to_string()),
            priority: int(6).unwrap_or(DEFAULT_PRIORITY),
            conninfo: col(7).unwrap_or_default(),
            repluser: col(8).unwrap_or_default(),
            slot_name: col(9),
            config_file: col(10).unwrap_or_default(),
        })
    }

    /// Whether it votes in the failover protocol: every active node.
    pub fn votes(&self) -> bool {
        self.active
    }
}

/// Longest node name: it doubles as `application_name`, which PostgreSQL truncates at 63 bytes.
pub const MAX_NAME_LEN: usize = 63;

/// Checks a node name. Standbys are matched to `pg_stat_replication` by
/// `application_name = node_name`, and PostgreSQL truncates application names at 63 bytes and
/// replaces non-ASCII characters, so a name outside printable ASCII could never match.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the node name is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "the node name is {} bytes long; the limit is {MAX_NAME_LEN}",
            name.len()
        ));
    }
    if let Some(c) = name.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(format!(
            "the node name contains {c:?}; only printable ASCII is allowed because it must equal the standby's application_name"
        ));
    }
    Ok(())
}

/// The name of the replication slot a node streams from, as repmgr names it.
pub fn slot_name(node_id: i32) -> String {
    format!("repmgr_slot_{node_id}")
}

/// The name a node gets when `repmgr.node_name` and `cluster_name` are both unset.
pub fn default_name(node_id: i32) -> String {
    format!("node{node_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("node1").is_ok());
        assert!(validate_name("db east 1").is_ok());
        assert!(validate_name("").is_err());
        assert!(
            validate_name(&"x".repeat(64))
                .unwrap_err()
                .contains("64 bytes")
        );
        assert!(
            validate_name("nœud")
                .unwrap_err()
                .contains("printable ASCII")
        );
        assert!(validate_name("a\tb").is_err());
        assert_eq!(slot_name(3), "repmgr_slot_3");
        assert_eq!(default_name(3), "node3");
        for t in [NodeType::Primary, NodeType::Standby, NodeType::Witness] {
            assert_eq!(NodeType::parse(t.as_str()), Some(t));
        }
        assert_eq!(NodeType::parse("bdr"), None);
    }
}
