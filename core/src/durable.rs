//! The format of what a node keeps on disk for the failover protocol: its id, its term, whom
//! it supports in it and the fence that node announced, and, on a primary, the membership
//! views whose voters' confirmations it counts.

use std::time::Duration;

use crate::lease::{MAX_FENCE, Membership, NodeId};
use crate::vote::Durable;

/// The saved state of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub node_id: NodeId,
    pub durable: Durable,
    /// Set while this node holds (or last held) a lease as primary: the views it counts,
    /// current first. A primary restarting with this set starts fenced until its voters
    /// confirm it.
    pub lease_views: Option<Vec<Membership>>,
}

fn ids(v: &[NodeId]) -> String {
    v.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_ids(s: &str) -> Option<Vec<NodeId>> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().ok())
        .collect()
}

impl Saved {
    /// One line: `node_id term supports (voter | primary VERSION:ID,ID|VERSION:...) fence_us=N`.
    pub fn encode(&self) -> String {
        let role = match &self.lease_views {
            Some(views) => {
                let v: Vec<String> = views
                    .iter()
                    .map(|m| format!("{}:{}", m.version, ids(&m.voters)))
                    .collect();
                format!("primary {}", v.join("|"))
            }
            None => "voter".to_string(),
        };
        format!(
            "{} {} {} {role} fence_us={}\n",
            self.node_id,
            self.durable.term,
            self.durable.supports.unwrap_or(0),
            self.durable.fence.as_micros()
        )
    }

    /// Reads what [`Saved::encode`] wrote, and the shorter lines of version 0.1.0 (no fence:
    /// the longest one is assumed; a primary's voter list without versions or itself).
    pub fn decode(text: &str) -> Option<Saved> {
        let mut it = text.split_whitespace().peekable();
        let node_id: NodeId = it.next()?.parse().ok()?;
        let term = it.next()?.parse().ok()?;
        let supports: NodeId = it.next()?.parse().ok()?;
        let lease_views = match it.next()? {
            "primary" => {
                let list = match it.peek() {
                    Some(w) if !w.starts_with("fence_us=") => it.next().unwrap_or(""),
                    _ => "",
                };
                let mut views = Vec::new();
                for part in list.split('|') {
                    views.push(match part.split_once(':') {
                        Some((version, voters)) => {
                            Membership::new(version.parse().ok()?, parse_ids(voters)?)
                        }
                        // 0.1.0: the other voters only.
                        None => Membership::new(0, parse_ids(part)?.into_iter().chain([node_id])),
                    });
                }
                Some(views)
            }
            "voter" => None,
            _ => return None,
        };
        let fence = match it.next() {
            Some(f) => Duration::from_micros(f.strip_prefix("fence_us=")?.parse().ok()?),
            None if supports != 0 => MAX_FENCE,
            None => Duration::ZERO,
        };
        Some(Saved {
            node_id,
            durable: Durable {
                term,
                supports: (supports != 0).then_some(supports),
                fence,
            },
            lease_views,
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
                fence: Duration::from_millis(1600),
            },
            lease_views: None,
        };
        assert_eq!(voter.encode(), "2 5 3 voter fence_us=1600000\n");
        assert_eq!(Saved::decode(&voter.encode()), Some(voter));
        let primary = Saved {
            node_id: 1,
            durable: Durable {
                term: 7,
                supports: Some(1),
                fence: Duration::from_millis(1600),
            },
            lease_views: Some(vec![
                Membership::new(20, [1, 2, 3, 4]),
                Membership::new(10, [1, 2, 3]),
            ]),
        };
        assert_eq!(
            primary.encode(),
            "1 7 1 primary 20:1,2,3,4|10:1,2,3 fence_us=1600000\n"
        );
        assert_eq!(Saved::decode(&primary.encode()), Some(primary));
        let alone = Saved {
            node_id: 1,
            durable: Durable {
                term: 1,
                supports: Some(1),
                fence: Duration::ZERO,
            },
            lease_views: Some(vec![Membership::new(0, [1])]),
        };
        assert_eq!(Saved::decode(&alone.encode()), Some(alone));
        assert_eq!(Saved::decode("1 2"), None);
        assert_eq!(Saved::decode("x 2 3 voter"), None);
    }

    #[test]
    fn files_of_version_0_1_0_still_read() {
        let v = Saved::decode("2 5 3 voter\n").unwrap();
        assert_eq!(
            v.durable.fence, MAX_FENCE,
            "the fence it confirmed is unknown"
        );
        assert_eq!(
            Saved::decode("2 5 0 voter\n").unwrap().durable.fence,
            Duration::ZERO
        );
        let p = Saved::decode("1 7 1 primary 2,3\n").unwrap();
        assert_eq!(p.lease_views, Some(vec![Membership::new(0, [1, 2, 3])]));
        let alone = Saved::decode("1 1 1 primary \n").unwrap();
        assert_eq!(alone.lease_views, Some(vec![Membership::new(0, [1])]));
    }
}
