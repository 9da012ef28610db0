//! The format of what a node keeps on disk for the failover protocol: its id, its term and
//! whom it supports in it, and, on a primary, the voters whose confirmations it counts.

use crate::lease::NodeId;
use crate::vote::Durable;

/// The saved state of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub node_id: NodeId,
    pub durable: Durable,
    /// Set while this node holds (or last held) a lease as primary: the other voters' ids.
    /// A primary restarting with this set starts fenced until its voters confirm it.
    pub lease_voters: Option<Vec<NodeId>>,
}

impl Saved {
    /// One line: `node_id term supports (voter | primary id,id,...)`.
    pub fn encode(&self) -> String {
        let role = match &self.lease_voters {
            Some(v) => format!(
                "primary {}",
                v.iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            None => "voter".to_string(),
        };
        format!("{} {} {role}\n", self.node_id, self.durable.encode().trim())
    }

    pub fn decode(text: &str) -> Option<Saved> {
        let mut it = text.split_whitespace();
        let node_id = it.next()?.parse().ok()?;
        let durable = Durable::decode(&format!("{} {}", it.next()?, it.next()?))?;
        let lease_voters = match it.next()? {
            "primary" => Some(
                it.next()
                    .unwrap_or("")
                    .split(',')
                    .filter_map(|s| s.parse().ok())
                    .collect(),
            ),
            "voter" => None,
            _ => return None,
        };
        Some(Saved {
            node_id,
            durable,
            lease_voters,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let voter = Saved {
            node_id: 2,
            durable: Durable {
                term: 5,
                supports: Some(3),
            },
            lease_voters: None,
        };
        assert_eq!(voter.encode(), "2 5 3 voter\n");
        assert_eq!(Saved::decode(&voter.encode()), Some(voter));
        let primary = Saved {
            node_id: 1,
            durable: Durable {
                term: 7,
                supports: Some(1),
            },
            lease_voters: Some(vec![2, 3]),
        };
        assert_eq!(primary.encode(), "1 7 1 primary 2,3\n");
        assert_eq!(Saved::decode(&primary.encode()), Some(primary));
        let alone = Saved {
            node_id: 1,
            durable: Durable {
                term: 1,
                supports: Some(1),
            },
            lease_voters: Some(vec![]),
        };
        assert_eq!(Saved::decode(&alone.encode()), Some(alone));
        assert_eq!(Saved::decode("1 2"), None);
        assert_eq!(Saved::decode("x 2 3 voter"), None);
    }
}
