//! Logical replication slots across a failover (PostgreSQL 17's failover slots).
//!
//! A logical slot created with `failover = true` is copied to every standby that runs
//! `sync_replication_slots = on` with `hot_standby_feedback = on`, a `primary_slot_name`, and a
//! `dbname` in `primary_conninfo`; PostgreSQL copies only from a primary, never from a
//! cascading standby. The primary holds logical decoding back until the physical slots named
//! in `synchronized_standby_slots` have flushed the WAL, so that no consumer receives a change
//! a promoted standby lacks. This module decides both settings; the extension applies them.

/// The database slot synchronization connects to when the upstream's conninfo names none
/// (PostgreSQL requires one in `primary_conninfo`; any database of the primary does).
pub const DEFAULT_DBNAME: &str = "postgres";

/// A standby's settings as in force, and where it streams from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbySettings<'a> {
    /// `None`: it streams from nobody (detached): following writes the settings.
    pub primary_conninfo: Option<&'a str>,
    pub primary_slot_name: Option<&'a str>,
    pub sync_replication_slots: bool,
    pub hot_standby_feedback: bool,
    /// It streams from the primary itself.
    pub from_primary: bool,
    /// Its physical slot on the upstream, from its catalog record.
    pub slot_name: Option<&'a str>,
}

/// What keeps a standby's copies of the failover slots, as `(setting, value)` pairs for the
/// reload that follows an upstream. A cascading standby cannot sync (PostgreSQL refuses to
/// copy from a standby): it only turns syncing off.
pub fn standby_settings(from_primary: bool) -> Vec<(&'static str, &'static str)> {
    if from_primary {
        vec![
            ("sync_replication_slots", "on"),
            ("hot_standby_feedback", "on"),
        ]
    } else {
        vec![("sync_replication_slots", "off")]
    }
}

/// `conninfo` with the database slot synchronization needs: the one `upstream` names, else
/// [`DEFAULT_DBNAME`]. Unchanged when it already names one.
pub fn with_dbname(conninfo: &str, upstream: &str) -> Result<String, crate::conninfo::ParseError> {
    if crate::conninfo::get(conninfo, "dbname").is_some() {
        return Ok(conninfo.to_string());
    }
    let db = crate::conninfo::get(upstream, "dbname").unwrap_or_else(|| DEFAULT_DBNAME.into());
    crate::conninfo::with(conninfo, "dbname", &db)
}

/// What is missing for this standby's copies to be kept, in words; empty when nothing is. A
/// detached standby lacks nothing yet: following writes its settings.
pub fn standby_missing(s: &StandbySettings) -> Vec<String> {
    let Some(conninfo) = s.primary_conninfo else {
        return Vec::new();
    };
    if !s.from_primary {
        return if s.sync_replication_slots {
            vec!["sync_replication_slots is on, but this standby streams from another standby (PostgreSQL copies slots only from the primary)".into()]
        } else {
            Vec::new()
        };
    }
    let mut missing = Vec::new();
    if !s.sync_replication_slots {
        missing.push("sync_replication_slots is off".into());
    }
    if !s.hot_standby_feedback {
        missing.push("hot_standby_feedback is off".into());
    }
    if crate::conninfo::get(conninfo, "dbname").is_none() {
        missing.push("primary_conninfo names no dbname".into());
    }
    match (s.slot_name, s.primary_slot_name) {
        (None, _) => missing.push(
            "this node has no replication slot (repmgr.use_replication_slots is off when it was registered)".into(),
        ),
        (Some(want), have) if have != Some(want) => {
            missing.push(format!("primary_slot_name is not {want}"))
        }
        _ => {}
    }
    missing
}

/// Whether following again would put right what [`standby_missing`] reports: a node registered
/// without a slot keeps no copies, and its settings are left as they are.
pub fn repairable(s: &StandbySettings) -> bool {
    s.slot_name.is_some()
}

/// The settings that put right what [`standby_missing`] reports for a standby of the primary,
/// on the connection in force: `primary_conninfo` keeps pointing where following or an
/// operator pointed it (a standby cut off on purpose stays cut off); only the database, the
/// slot and the two switches are added. `upstream` gives the database name when the
/// connection names none.
pub fn standby_repair(
    s: &StandbySettings,
    upstream: &str,
) -> Result<Vec<(&'static str, String)>, crate::conninfo::ParseError> {
    let Some(conninfo) = s.primary_conninfo.filter(|_| s.from_primary) else {
        return Ok(Vec::new());
    };
    let mut out: Vec<(&'static str, String)> = standby_settings(true)
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect();
    out.push(("primary_conninfo", with_dbname(conninfo, upstream)?));
    if let Some(slot) = s.slot_name {
        out.push(("primary_slot_name", slot.to_string()));
    }
    Ok(out)
}

/// One standby of the primary, as the primary sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standby<'a> {
    /// Its physical slot on the primary, when it has one that exists there.
    pub slot: Option<&'a str>,
    /// It streams from the primary now.
    pub streaming: bool,
    /// A failover may promote it (registered, active, priority above 0).
    pub promotable: bool,
}

/// `synchronized_standby_slots` for these standbys: the slots of those a failover may promote
/// and that stream now, sorted. A standby that stops streaming leaves the list at the
/// primary's next round, so logical decoding never waits for one that is gone longer than
/// that (it then trails the consumers, and says so when asked to promote).
pub fn synchronized_standby_slots(standbys: &[Standby]) -> String {
    let mut slots: Vec<&str> = standbys
        .iter()
        .filter(|s| s.streaming && s.promotable)
        .filter_map(|s| s.slot)
        .collect();
    slots.sort_unstable();
    slots.dedup();
    slots.join(",")
}

/// A standby's copy of a failover slot, from its `pg_replication_slots`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotCopy {
    pub name: String,
    /// Kept only until the standby catches up with the primary's slot: dropped at promotion.
    pub temporary: bool,
    /// Why PostgreSQL invalidated it, if it did.
    pub invalidated: Option<String>,
}

impl SlotCopy {
    /// Whether a consumer can go on from this copy after a promotion.
    pub fn ready(&self) -> bool {
        !self.temporary && self.invalidated.is_none()
    }

    /// How this copy stands, in one word (the metrics' and `/status`'s).
    pub fn state_word(&self) -> &'static str {
        match (&self.invalidated, self.temporary) {
            (Some(_), _) => "invalidated",
            (None, true) => "not_yet_usable",
            (None, false) => "ready",
        }
    }

    /// How this copy stands, in words.
    pub fn state(&self) -> String {
        match (&self.invalidated, self.temporary) {
            (Some(why), _) => format!("{} invalidated ({why})", self.name),
            (None, true) => format!(
                "{} not yet usable (this standby has not caught up with the primary's slot)",
                self.name
            ),
            (None, false) => format!("{} ready", self.name),
        }
    }
}

/// The failover slots of `wanted` that `copies` lacks or holds unusable, by name.
pub fn not_ready<'a>(wanted: &'a [String], copies: &[SlotCopy]) -> Vec<&'a str> {
    wanted
        .iter()
        .filter(|w| !copies.iter().any(|c| &c.name == *w && c.ready()))
        .map(String::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready_standby<'a>() -> StandbySettings<'a> {
        StandbySettings {
            primary_conninfo: Some("host=a port=5432 dbname=repmgr application_name=node2"),
            primary_slot_name: Some("repmgr_slot_2"),
            sync_replication_slots: true,
            hot_standby_feedback: true,
            from_primary: true,
            slot_name: Some("repmgr_slot_2"),
        }
    }

    #[test]
    fn a_standby_of_the_primary_needs_every_setting() {
        assert!(standby_missing(&ready_standby()).is_empty());
        let s = StandbySettings {
            primary_conninfo: Some("host=a application_name=node2"),
            primary_slot_name: None,
            sync_replication_slots: false,
            hot_standby_feedback: false,
            ..ready_standby()
        };
        assert_eq!(
            standby_missing(&s),
            [
                "sync_replication_slots is off",
                "hot_standby_feedback is off",
                "primary_conninfo names no dbname",
                "primary_slot_name is not repmgr_slot_2"
            ]
        );
        assert!(repairable(&s));
        let unslotted = StandbySettings {
            slot_name: None,
            ..ready_standby()
        };
        assert_eq!(standby_missing(&unslotted).len(), 1);
        assert!(!repairable(&unslotted));
    }

    #[test]
    fn the_repair_keeps_the_connection_in_force() {
        // An operator pointed it at port 1: it stays there, with a database added.
        let s = StandbySettings {
            primary_conninfo: Some("host=127.0.0.1 port=1"),
            sync_replication_slots: false,
            ..ready_standby()
        };
        let w = standby_repair(&s, "host=b port=5433 dbname=ops").unwrap();
        assert_eq!(
            w,
            [
                ("sync_replication_slots", "on".to_string()),
                ("hot_standby_feedback", "on".to_string()),
                (
                    "primary_conninfo",
                    "host=127.0.0.1 port=1 dbname=ops".to_string()
                ),
                ("primary_slot_name", "repmgr_slot_2".to_string()),
            ]
        );
        let cascading = StandbySettings {
            from_primary: false,
            ..s
        };
        assert!(standby_repair(&cascading, "").unwrap().is_empty());
    }

    #[test]
    fn a_cascading_or_detached_standby_does_not_sync() {
        let cascading = StandbySettings {
            from_primary: false,
            ..ready_standby()
        };
        assert_eq!(standby_missing(&cascading).len(), 1);
        assert_eq!(standby_settings(false), [("sync_replication_slots", "off")]);
        let off = StandbySettings {
            sync_replication_slots: false,
            ..cascading
        };
        assert!(standby_missing(&off).is_empty());
        let detached = StandbySettings {
            primary_conninfo: None,
            sync_replication_slots: false,
            ..ready_standby()
        };
        assert!(standby_missing(&detached).is_empty());
    }

    #[test]
    fn the_dbname_comes_from_the_upstream_or_defaults() {
        assert_eq!(
            with_dbname("host=a application_name=n2", "host=a dbname=repmgr").unwrap(),
            "host=a application_name=n2 dbname=repmgr"
        );
        assert_eq!(
            with_dbname("host=a", "host=a").unwrap(),
            "host=a dbname=postgres"
        );
        assert_eq!(
            with_dbname("host=a dbname=x", "host=a dbname=repmgr").unwrap(),
            "host=a dbname=x"
        );
    }

    #[test]
    fn decoding_waits_only_for_promotable_standbys_that_stream() {
        let s = |slot, streaming, promotable| Standby {
            slot,
            streaming,
            promotable,
        };
        assert_eq!(
            synchronized_standby_slots(&[
                s(Some("repmgr_slot_3"), true, true),
                s(Some("repmgr_slot_2"), true, true),
                s(Some("repmgr_slot_4"), false, true),
                s(Some("repmgr_slot_5"), true, false),
                s(None, true, true),
            ]),
            "repmgr_slot_2,repmgr_slot_3"
        );
        assert_eq!(synchronized_standby_slots(&[]), "");
    }

    #[test]
    fn only_persistent_valid_copies_are_ready() {
        let c = |name: &str, temporary, invalidated: Option<&str>| SlotCopy {
            name: name.into(),
            temporary,
            invalidated: invalidated.map(str::to_string),
        };
        let copies = [
            c("a", false, None),
            c("b", true, None),
            c("c", false, Some("wal_removed")),
        ];
        let wanted: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        assert_eq!(not_ready(&wanted, &copies), ["b", "c", "d"]);
        assert_eq!(
            copies[1].state(),
            "b not yet usable (this standby has not caught up with the primary's slot)"
        );
        assert_eq!(copies[2].state(), "c invalidated (wal_removed)");
        let words: Vec<&str> = copies.iter().map(SlotCopy::state_word).collect();
        assert_eq!(words, ["ready", "not_yet_usable", "invalidated"]);
    }
}
