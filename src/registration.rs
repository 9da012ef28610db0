//! Registering and unregistering nodes.
//!
//! Every operation checks everything it can before it writes anything, and writes in one
//! transaction on the node that owns the catalog (the primary). A standby cannot write, so it
//! registers itself through a connection to the primary and then waits until its record has
//! replicated back; a witness is a separate server that keeps a copy of the primary's records.

use std::time::Duration;

use pgrx::PgSqlErrorCode;
use pgrx::prelude::*;
use repmgr_core::conninfo;
use repmgr_core::event;
use repmgr_core::node::NodeType;

use crate::catalog::{self, NodeRecord, ServerFacts};
use crate::config::{Settings, server_setting};
use crate::db::{Db, Local};
use crate::error::{Failure, Result};
use crate::events::{self, Event};
use crate::peer::Peer;

/// How long `register_standby()` waits for its record to replay on the standby.
const REGISTER_SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `register_standby()` waits for a standby that has just started to connect to
/// its upstream.
const ATTACH_WAIT: Duration = Duration::from_secs(10);

/// The longest replication user name `repmgr.nodes.repluser` holds.
const MAX_REPLUSER_LEN: usize = 63;

fn in_recovery() -> bool {
    unsafe { pg_sys::RecoveryInProgress() }
}

fn session_user() -> Result<String> {
    Ok(Local
        .read("SELECT session_user::text", &[])?
        .get(0, 0)
        .unwrap_or_default()
        .to_string())
}

/// This node's record as the settings describe it.
fn own_record(
    settings: &Settings,
    conninfo_text: &str,
    node_type: NodeType,
    upstream: Option<i32>,
) -> Result<NodeRecord> {
    let repluser = settings.replication_user(&session_user()?);
    if repluser.len() > MAX_REPLUSER_LEN {
        return Err(Failure::invalid(format!(
            "the replication user name of {} is longer than {MAX_REPLUSER_LEN} bytes",
            settings.describe()
        ))
        .hint("Set a shorter repmgr.replication_user."));
    }
    Ok(NodeRecord {
        node_id: settings.node_id,
        upstream_node_id: upstream,
        active: true,
        node_name: settings.node_name.clone(),
        node_type,
        location: settings.location.clone(),
        priority: if node_type == NodeType::Witness {
            0
        } else {
            settings.priority
        },
        conninfo: conninfo_text.to_string(),
        repluser,
        slot_name: if node_type == NodeType::Witness {
            None
        } else {
            settings.slot_name()
        },
        config_file: settings.config_file.clone(),
    })
}

/// Refuses a name already held by another node id.
fn check_name_free(nodes: &[NodeRecord], settings: &Settings) -> Result<()> {
    match nodes
        .iter()
        .find(|n| n.node_name == settings.node_name && n.node_id != settings.node_id)
    {
        Some(other) => Err(Failure::new(
            PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
            format!(
                "cannot register {}: the name \"{}\" is already used by node {}",
                settings.describe(),
                settings.node_name,
                other.node_id
            ),
        )
        .hint("Give each node a unique repmgr.node_name (or cluster_name) and restart it.")),
        None => Ok(()),
    }
}

/// Refuses to overwrite an existing record unless forced.
fn check_not_registered(
    nodes: &[NodeRecord],
    settings: &Settings,
    force: bool,
    function: &str,
) -> Result<()> {
    match nodes.iter().find(|n| n.node_id == settings.node_id) {
        Some(rec) if !force => Err(Failure::new(
            PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            format!(
                "node {} is already registered, as {} \"{}\"",
                rec.node_id, rec.node_type, rec.node_name
            ),
        )
        .hint(format!(
            "To update its record, run SELECT repmgr.{function}(force => true)."
        ))),
        _ => Ok(()),
    }
}

/// A cluster runs one PostgreSQL major: a standby of another major cannot replay the
/// primary's WAL, and a witness of another major would be the one node an upgrade or a
/// package change treats differently from the rest.
fn check_same_major(
    me: &str,
    role: &str,
    local: &ServerFacts,
    primary: &ServerFacts,
) -> Result<()> {
    if local.major() == primary.major() {
        return Ok(());
    }
    Err(Failure::state(format!(
        "cannot register {me} as a {role}: it runs PostgreSQL {}, the primary PostgreSQL {}",
        local.major(),
        primary.major()
    ))
    .detail(format!(
        "This node's server_version is {}, the primary's {}. Every node of a cluster runs the same major version.",
        local.version, primary.version
    ))
    .hint(format!(
        "Create this {role} with PostgreSQL {}'s initdb or pg_basebackup and install repmgr for that version.",
        primary.major()
    )))
}

/// What connecting to a node told us.
enum Probe {
    Reached(Box<Peer>, ServerFacts),
    Unreachable(Failure),
}

fn probe(conninfo_text: &str, label: &str, settings: &Settings) -> Probe {
    let attempt = Peer::connect(conninfo_text, label, settings).and_then(|mut p| {
        let facts = catalog::server_facts(&mut p)?;
        Ok((p, facts))
    });
    match attempt {
        Ok((p, f)) => Probe::Reached(Box::new(p), f),
        Err(f) => Probe::Unreachable(f),
    }
}

/// Checks that `repmgr.conninfo` leads back to this very server, since every other node will
/// use it. A string that reaches another server is an error; one that does not connect from
/// here only earns a warning, because the network may look different from the other nodes.
fn check_own_conninfo(settings: &Settings, conninfo_text: &str, local: &ServerFacts) -> Result<()> {
    match probe(conninfo_text, "this node's repmgr.conninfo", settings) {
        Probe::Unreachable(f) => {
            warning!(
                "repmgr: {} could not connect to itself through repmgr.conninfo: {}",
                settings.describe(),
                crate::error::mask_text(&f.message)
            );
            Ok(())
        }
        Probe::Reached(_, there) => {
            let same = there.system_identifier == local.system_identifier
                && there.in_recovery == local.in_recovery
                && there.node_id.is_none_or(|id| id == settings.node_id);
            if same {
                return Ok(());
            }
            Err(Failure::invalid(format!("repmgr.conninfo of {} leads to a different server", settings.describe()))
                .detail(format!(
                    "It reaches a {} with system identifier {} and repmgr.node_id {}; this node is a {} with system identifier {}.",
                    if there.in_recovery { "standby" } else { "primary" },
                    there.system_identifier,
                    there.node_id.map_or("unset".to_string(), |i| i.to_string()),
                    if local.in_recovery { "standby" } else { "primary" },
                    local.system_identifier,
                ))
                .hint("Fix repmgr.conninfo in postgresql.conf so that it connects to this server, then reload."))
        }
    }
}

/// Connects to the primary from a standby or witness: first through the registered primary
/// records, then through `primary_conninfo`, skipping anything still in recovery (a cascading
/// upstream). Returns the connection and the facts about the server reached.
fn find_primary(settings: &Settings, local_nodes: &[NodeRecord]) -> Result<(Peer, ServerFacts)> {
    let mut candidates: Vec<(String, String)> = local_nodes
        .iter()
        .filter(|n| n.active && n.node_type != NodeType::Witness)
        .map(|n| (n.conninfo.clone(), n.describe()))
        .collect();
    // Registered primaries first, as repmgr orders them.
    candidates.sort_by_key(|(c, _)| {
        local_nodes
            .iter()
            .find(|n| &n.conninfo == c)
            .map_or(1, |n| i32::from(n.node_type != NodeType::Primary))
    });
    if let Some(pc) = server_setting(c"primary_conninfo")
        && let Ok(c) = conninfo::without(&pc, &["replication", "application_name", "dbname"])
    {
        candidates.push((c, "the upstream in primary_conninfo".into()));
    }
    let mut tried = Vec::new();
    for (c, label) in candidates {
        match probe(&c, &label, settings) {
            Probe::Reached(p, facts) if !facts.in_recovery => return Ok((*p, facts)),
            Probe::Reached(..) => tried.push(format!("{label} is a standby")),
            Probe::Unreachable(f) => tried.push(f.message),
        }
    }
    Err(Failure::new(
        PgSqlErrorCode::ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
        format!("{} could not reach the primary", settings.describe()),
    )
    .detail(if tried.is_empty() { "No registered node and no primary_conninfo to try.".into() } else { tried.join("; ") })
    .hint("Check that the primary is running and registered (SELECT repmgr.register_primary() on it), and that its repmgr.conninfo is reachable from this node."))
}

/// How long a registration waits for a primary that does not hold its lease (a primary
/// whose worker has just started waits for its voters' first confirmations).
const FENCED_WAIT: Duration = Duration::from_secs(10);

/// Waits while `primary` is fenced, at most [`FENCED_WAIT`], then opens a transaction on it;
/// says so if it stays fenced.
///
/// The transaction is `READ WRITE` explicitly: a fenced primary makes new sessions read-only
/// by default (a hint for clients' routing), and a session opened while it was fenced takes
/// back that default only when its backend processes the reload, which can come after the
/// lease does. The fence itself is checked again at commit.
fn begin_writing(primary: &mut Peer, settings: &Settings) -> Result<()> {
    let writable = crate::latch::poll(FENCED_WAIT, Duration::from_millis(100), || {
        let r = primary.read("SELECT fenced FROM repmgr.node_status()", &[])?;
        Ok((r.get(0, 0) != Some("t")).then_some(()))
    })?;
    if writable.is_some() {
        primary.write("BEGIN READ WRITE", &[])?;
        // The node list's trigger waits up to MEMBERSHIP_WAIT for an earlier change to
        // reach the voters: the peer's usual 2 s would cut it short under load.
        return primary
            .allow_in_transaction(crate::protocol::MEMBERSHIP_WAIT + Duration::from_secs(5));
    }
    Err(Failure::state(format!(
        "{} cannot change the node list on {}: that primary is fenced (it is not confirmed by enough voters) and was still fenced after {} s",
        settings.describe(),
        primary.label(),
        FENCED_WAIT.as_secs()
    ))
    .hint("SELECT * FROM repmgr.node_check() on the primary says which voters it is missing; once it holds its lease again, try again."))
}

/// Opens the registration transaction on the primary: locks the node list and reads it,
/// finds the registered primary and checks this node's name is free. Returns the node list
/// and the primary's record.
fn begin_on_primary(
    primary: &mut Peer,
    settings: &Settings,
) -> Result<(Vec<NodeRecord>, NodeRecord)> {
    begin_writing(primary, settings)?;
    catalog::lock_nodes(primary)?;
    let nodes = catalog::nodes(primary)?;
    let primary_rec = nodes
        .iter()
        .find(|n| n.node_type == NodeType::Primary && n.active)
        .cloned()
        .ok_or_else(|| {
            Failure::state(format!(
                "cannot register {}: no active primary is registered on {}",
                settings.describe(),
                primary.label()
            ))
            .hint("Run SELECT repmgr.register_primary() on the primary first.")
        })?;
    check_name_free(&nodes, settings)?;
    Ok((nodes, primary_rec))
}

/// Commits the change of the node list made through `primary`. A primary that starts
/// watching its lease, or loses it for a moment, closes the connection of a commit that
/// finished just then instead of acknowledging it (see `fence.rs`): the outcome is then read
/// back over a new connection, which replaces `primary`, and `written` says whether the
/// node list shows the change.
fn commit_on_primary(
    primary: &mut Peer,
    settings: &Settings,
    what: &str,
    written: impl Fn(&[NodeRecord]) -> bool,
) -> Result<()> {
    let Err(lost) = primary.write("COMMIT", &[]) else {
        return Ok(());
    };
    if primary.is_usable() {
        return Err(lost);
    }
    let unknown = |why: String| {
        Failure::state(format!(
            "{} closed the connection while committing {what}; whether it was written is not known",
            primary.label()
        ))
        .detail(why)
        .hint("SELECT * FROM repmgr.nodes on the primary shows whether it was; if not, run the same call again.")
    };
    let mut again = primary
        .reconnect(settings)
        .map_err(|f| unknown(f.message))?;
    let nodes = catalog::nodes(&mut again).map_err(|f| unknown(f.message))?;
    if !written(&nodes) {
        return Err(Failure::state(format!(
            "{} closed the connection while committing {what}, which was not written",
            primary.label()
        ))
        .detail(lost.message)
        .hint("A primary refuses commits for a moment when it starts watching its lease or loses it; run the same call again."));
    }
    *primary = again;
    Ok(())
}

/// Waits until this standby has replayed `lsn`, at most `timeout`. Returns whether it did.
fn wait_for_replay(lsn: &str, timeout: Duration) -> Result<bool> {
    let replayed = crate::latch::poll(timeout, Duration::from_millis(50), || {
        let rows = Local.read(
            "SELECT pg_catalog.pg_last_wal_replay_lsn() >= $1::pg_lsn",
            &[Some(lsn)],
        )?;
        Ok((rows.get(0, 0) == Some("t")).then_some(()))
    })?;
    Ok(replayed.is_some())
}

pub fn register_primary(settings: &Settings, force: bool) -> Result<i32> {
    let conninfo_text = settings.require_identity()?;
    let me = settings.describe();
    if in_recovery() {
        return Err(Failure::state(format!("cannot register {me} as a primary: this server is a standby (in recovery)"))
            .hint("On a standby, run SELECT repmgr.register_standby(). A witness, on its own server, uses repmgr.register_witness(primary_conninfo)."));
    }
    let local = catalog::server_facts(&mut Local)?;
    let mut db = Local;
    catalog::lock_nodes(&mut db)?;
    let nodes = catalog::nodes(&mut db)?;
    check_name_free(&nodes, settings)?;
    if let Some(rec) = nodes
        .iter()
        .find(|n| n.node_id == settings.node_id && n.node_type == NodeType::Witness)
    {
        return Err(Failure::state(format!("cannot register {me} as a primary: this server is the witness {}", rec.describe()))
            .hint("A witness never becomes the primary. Unregister it with SELECT repmgr.unregister_node() first if it is being repurposed."));
    }
    check_not_registered(&nodes, settings, force, "register_primary")?;
    check_own_conninfo(settings, conninfo_text, &local)?;

    // Another registered primary that is running as one would mean two writable primaries.
    let mut demoted = Vec::new();
    for other in nodes
        .iter()
        .filter(|n| n.node_type == NodeType::Primary && n.active && n.node_id != settings.node_id)
    {
        match probe(&other.conninfo, &other.describe(), settings) {
            Probe::Reached(_, f)
                if !f.in_recovery && f.system_identifier == local.system_identifier =>
            {
                return Err(Failure::state(format!(
                    "cannot register {me} as the primary: {} is registered as the active primary and is running as a primary",
                    other.describe()
                ))
                .hint("A cluster has one primary. Stop or demote the other node first, or unregister it with SELECT repmgr.unregister_node(node_id, force => true)."));
            }
            _ => demoted.push(other.clone()),
        }
    }
    for other in &demoted {
        notice!(
            "repmgr: marking {} inactive: it is not running as this cluster's primary",
            other.describe()
        );
        catalog::set_active(&mut db, other.node_id, false)?;
    }

    let existing = nodes.iter().any(|n| n.node_id == settings.node_id);
    catalog::init_voting_term(&mut db)?;
    catalog::upsert_node(
        &mut db,
        &own_record(settings, conninfo_text, NodeType::Primary, None)?,
    )?;
    let details = if existing {
        "existing primary record updated".to_string()
    } else {
        format!("{me} registered as primary")
    };
    events::record(
        Some(&mut db),
        settings,
        Event::new(settings.node_id, event::PRIMARY_REGISTER, details),
    )?;
    Ok(settings.node_id)
}

pub fn register_standby(settings: &Settings, upstream: Option<i32>, force: bool) -> Result<i32> {
    let conninfo_text = settings.require_identity()?;
    let me = settings.describe();
    if upstream == Some(settings.node_id) {
        return Err(Failure::invalid(format!("{me} cannot be its own upstream"))
            .hint("Give the node id of the node this standby streams from, or omit upstream_node_id to use the primary."));
    }
    if !in_recovery() {
        return Err(Failure::state(format!("cannot register {me} as a standby: this server is not in recovery"))
            .hint("On the primary, run SELECT repmgr.register_primary(). A witness uses repmgr.register_witness(primary_conninfo)."));
    }
    let local = catalog::server_facts(&mut Local)?;
    let local_nodes = catalog::nodes(&mut Local)?;
    check_own_conninfo(settings, conninfo_text, &local)?;
    let (mut primary, primary_facts) = find_primary(settings, &local_nodes)?;
    if primary_facts.system_identifier != local.system_identifier {
        return Err(Failure::state(format!(
            "{me} does not belong to the cluster of the primary it reached"
        ))
        .detail(format!(
            "This standby has system identifier {}, the primary {}.",
            local.system_identifier, primary_facts.system_identifier
        ))
        .hint("A standby must be cloned from its cluster's primary (repmgr standby clone)."));
    }
    check_same_major(&me, "standby", &local, &primary_facts)?;

    let (nodes, primary_rec) = begin_on_primary(&mut primary, settings)?;
    check_not_registered(&nodes, settings, force, "register_standby")?;
    let upstream_rec = match upstream {
        None => primary_rec.clone(),
        Some(u) => {
            let rec = nodes.iter().find(|n| n.node_id == u).cloned().ok_or_else(|| {
                Failure::new(PgSqlErrorCode::ERRCODE_FOREIGN_KEY_VIOLATION, format!("cannot register {me}: upstream node {u} is not registered"))
                    .hint("Register the upstream node first, or omit upstream_node_id to stream from the primary.")
            })?;
            if rec.node_type == NodeType::Witness {
                return Err(Failure::invalid(format!(
                    "cannot register {me}: upstream {} is a witness",
                    rec.describe()
                ))
                .hint("A standby streams from the primary or from another standby."));
            }
            if !rec.active && !force {
                return Err(Failure::state(format!(
                    "cannot register {me}: upstream {} is marked inactive",
                    rec.describe()
                ))
                .hint("Bring the upstream back first, or pass force => true."));
            }
            rec
        }
    };
    if !force {
        check_attached(settings, &mut primary, &primary_rec, &upstream_rec)?;
    }
    let rec = own_record(
        settings,
        conninfo_text,
        NodeType::Standby,
        Some(upstream_rec.node_id),
    )?;
    catalog::upsert_node(&mut primary, &rec)?;
    let details = format!(
        "standby registration succeeded; upstream node ID is {}{}",
        upstream_rec.node_id,
        if force {
            " (force => true was used)"
        } else {
            ""
        }
    );
    let ev = Event::new(settings.node_id, event::STANDBY_REGISTER, details).about(
        primary_rec.node_id,
        &primary_rec.node_name,
        &primary_rec.conninfo,
    );
    events::record(Some(&mut primary), settings, ev)?;
    commit_on_primary(
        &mut primary,
        settings,
        "the registration of this standby",
        |nodes| nodes.iter().any(|n| n.same_registration(&rec)),
    )?;

    let lsn = primary
        .read("SELECT pg_catalog.pg_current_wal_lsn()::text", &[])?
        .get(0, 0)
        .unwrap_or("0/0")
        .to_string();
    if !wait_for_replay(&lsn, REGISTER_SYNC_TIMEOUT)? {
        warning!(
            "repmgr: the record of {me} was written on {} but has not replayed on this standby within {} s",
            primary_rec.describe(),
            REGISTER_SYNC_TIMEOUT.as_secs()
        );
    }
    Ok(settings.node_id)
}

/// Checks that this standby is streaming from `upstream` under its node name. A standby
/// registered right after it started may not have connected yet: while its WAL receiver is
/// not streaming, this waits for it (up to [`ATTACH_WAIT`]).
fn check_attached(
    settings: &Settings,
    primary: &mut Peer,
    primary_rec: &NodeRecord,
    upstream: &NodeRecord,
) -> Result<()> {
    let sql = "SELECT count(*) FROM pg_catalog.pg_stat_replication WHERE application_name = $1";
    let params = [Some(settings.node_name.as_str())];
    let mut other = if upstream.node_id == primary_rec.node_id {
        None
    } else {
        Some(Peer::connect(
            &upstream.conninfo,
            &upstream.describe(),
            settings,
        )?)
    };
    // The WAL receiver's status when last looked at.
    let mut receiver = None;
    // Some(true): attached; Some(false): streaming, but not to `upstream` under our name.
    let attached = crate::latch::poll(ATTACH_WAIT, Duration::from_millis(100), || {
        let mut listed = || -> Result<bool> {
            let rows = other.as_mut().unwrap_or(&mut *primary).read(sql, &params)?;
            Ok(rows.get(0, 0).is_some_and(|n| n != "0"))
        };
        if listed()? {
            return Ok(Some(true));
        }
        receiver = Local
            .read("SELECT status FROM pg_catalog.pg_stat_wal_receiver", &[])?
            .get(0, 0)
            .map(str::to_string);
        if receiver.as_deref() != Some("streaming") {
            return Ok(None);
        }
        // It may have started streaming since the upstream was asked. Its WAL sender was
        // listed there before it answered START_REPLICATION, so asking again now is enough.
        Ok(Some(listed()?))
    })?;
    if attached == Some(true) {
        return Ok(());
    }
    let waited = ATTACH_WAIT.as_secs();
    let state = match receiver.as_deref() {
        Some("streaming") => "This standby's WAL receiver is streaming, so under another application_name or from another server".to_string(),
        Some(status) => format!("This standby's WAL receiver is still {status} after {waited} s"),
        None => format!("This standby has had no WAL receiver for {waited} s"),
    };
    Err(Failure::state(format!("{} is not streaming from its upstream {}", settings.describe(), upstream.describe()))
        .detail(format!("pg_stat_replication on {} has no connection with application_name = '{}'. {state}.", upstream.describe(), settings.node_name))
        .hint(format!(
            "Set application_name={} in this standby's primary_conninfo and reload, or pass force => true to register it anyway.",
            settings.node_name
        )))
}

pub fn register_witness(settings: &Settings, primary_conninfo: &str, force: bool) -> Result<i32> {
    let conninfo_text = settings.require_identity()?;
    let me = settings.describe();
    if in_recovery() {
        return Err(Failure::state(format!("cannot register {me} as a witness: this server is a standby"))
            .hint("A witness is a separate, stand-alone PostgreSQL server created with initdb, not a replica."));
    }
    crate::config::check_conninfo(primary_conninfo, "primary_conninfo", &me)?;
    let local = catalog::server_facts(&mut Local)?;
    let local_nodes = catalog::nodes(&mut Local)?;
    check_own_conninfo(settings, conninfo_text, &local)?;
    let mut primary = Peer::connect(
        primary_conninfo,
        "the primary given in primary_conninfo",
        settings,
    )?;
    let there = catalog::server_facts(&mut primary)?;
    if there.system_identifier == local.system_identifier {
        return Err(if there.node_id == Some(settings.node_id) {
            Failure::invalid(format!(
                "primary_conninfo given to {me} leads to this witness itself"
            ))
            .hint("Pass the connection string of the cluster's primary.")
        } else {
            Failure::invalid(format!("{me} cannot be a witness: it has the same system identifier as the primary"))
                .hint("A witness must be a separate server created with initdb, never a clone of the cluster.")
        });
    }
    if there.in_recovery {
        return Err(Failure::state(format!(
            "primary_conninfo given to {me} leads to a standby, not the primary"
        ))
        .hint("Pass the connection string of the cluster's primary."));
    }
    check_same_major(&me, "witness", &local, &there)?;

    let (nodes, primary_rec) = begin_on_primary(&mut primary, settings)?;
    if let Some(rec) = nodes
        .iter()
        .find(|n| n.node_id == settings.node_id && n.node_type != NodeType::Witness)
    {
        return Err(Failure::new(
            PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            format!(
                "cannot register {me} as a witness: node id {} already belongs to {}, a {}",
                rec.node_id,
                rec.describe(),
                rec.node_type
            ),
        )
        .hint("Give the witness its own repmgr.node_id."));
    }
    check_not_registered(&nodes, settings, force, "register_witness")?;
    let foreign = local_nodes
        .iter()
        .filter(|n| n.node_id != settings.node_id)
        .count();
    if foreign > 0 && !force {
        return Err(Failure::state(format!(
            "{me} already holds {foreign} node record(s) of a cluster"
        ))
        .hint("Pass force => true to replace them with the primary's records."));
    }

    let rec = own_record(
        settings,
        conninfo_text,
        NodeType::Witness,
        Some(primary_rec.node_id),
    )?;
    let mut copy: Vec<NodeRecord> = nodes
        .iter()
        .filter(|n| n.node_id != settings.node_id)
        .cloned()
        .collect();
    copy.push(rec.clone());
    catalog::replace_nodes(&mut Local, &copy)?;
    catalog::upsert_node(&mut primary, &rec)?;
    let ev = Event::new(
        settings.node_id,
        event::WITNESS_REGISTER,
        format!(
            "witness registration succeeded; upstream node ID is {}",
            primary_rec.node_id
        ),
    )
    .about(
        primary_rec.node_id,
        &primary_rec.node_name,
        &primary_rec.conninfo,
    );
    events::record(Some(&mut primary), settings, ev)?;
    commit_on_primary(
        &mut primary,
        settings,
        "the registration of this witness",
        |nodes| nodes.iter().any(|n| n.same_registration(&rec)),
    )?;
    // The witness counts the primary's node list version, not the one its own copy made.
    catalog::copy_membership(&mut primary, &mut Local)?;
    Ok(settings.node_id)
}

/// Whether `rec` answers a connection now.
fn reachable(rec: &NodeRecord, settings: &Settings) -> bool {
    rec.node_id == settings.node_id
        || matches!(
            probe(&rec.conninfo, &rec.describe(), settings),
            Probe::Reached(..)
        )
}

pub fn unregister_node(settings: &Settings, node_id: Option<i32>, force: bool) -> Result<()> {
    let target = match node_id.or((settings.node_id > 0).then_some(settings.node_id)) {
        Some(t) => t,
        None => {
            return Err(Failure::config(
                "repmgr.node_id is not set on this node, so there is no default node to unregister",
            )
            .hint("Pass the node id to unregister: SELECT repmgr.unregister_node(node_id)."));
        }
    };
    let local_nodes = catalog::nodes(&mut Local)?;
    let on_witness = !in_recovery()
        && local_nodes
            .iter()
            .any(|n| n.node_id == settings.node_id && n.node_type == NodeType::Witness);
    // The primary owns the catalog; anywhere else, write there.
    let mut remote = if in_recovery() || on_witness {
        Some(find_primary(settings, &local_nodes)?.0)
    } else {
        None
    };
    let mut local = Local;
    let db: &mut dyn Db = match remote.as_mut() {
        Some(p) => {
            begin_writing(p, settings)?;
            p
        }
        None => &mut local,
    };
    catalog::lock_nodes(db)?;
    let nodes = catalog::nodes(db)?;
    let rec = nodes
        .iter()
        .find(|n| n.node_id == target)
        .cloned()
        .ok_or_else(|| {
            Failure::new(
                PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                format!("node {target} is not registered"),
            )
            .hint("SELECT * FROM repmgr.show_nodes lists the registered nodes.")
        })?;
    let downstream: Vec<String> = nodes
        .iter()
        .filter(|n| n.upstream_node_id == Some(target) && n.node_id != target)
        .map(NodeRecord::describe)
        .collect();
    if !downstream.is_empty() && !force {
        return Err(Failure::new(
            PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
            format!("cannot unregister {}: {} still use it as upstream", rec.describe(), downstream.join(", ")),
        )
        .hint("Repoint or unregister those nodes first, or pass force => true (their upstream is then cleared)."));
    }
    if rec.node_type == NodeType::Primary && rec.active {
        // A running primary stays in the failover protocol whatever its record says, so
        // removing the record would only confuse the cluster: never, forced or not.
        let running = if remote.is_none() && target == settings.node_id {
            Some(true)
        } else {
            match probe(&rec.conninfo, &rec.describe(), settings) {
                Probe::Reached(_, f) => Some(!f.in_recovery),
                Probe::Unreachable(_) => None,
            }
        };
        match (running, force) {
            (Some(true), _) => {
                return Err(Failure::new(
                    PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
                    format!(
                        "cannot unregister {}: it is the active primary and it is running",
                        rec.describe()
                    ),
                )
                .detail("A running primary keeps its role in the failover protocol whatever its catalog record says; force => true does not change that.")
                .hint(
                    "Switch over to another node first (repmgr standby switchover), or stop this one; then unregister it.",
                ));
            }
            (None, false) => {
                return Err(Failure::new(
                    PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
                    format!(
                        "cannot unregister {}: it is the active primary and could not be reached to check that it is stopped",
                        rec.describe()
                    ),
                )
                .hint("If you know it is stopped for good, pass force => true."));
            }
            _ => {}
        }
    }
    let db: &mut dyn Db = match remote.as_mut() {
        Some(p) => p,
        None => &mut local,
    };
    if force {
        catalog::detach_downstream(db, target)?;
    }
    // Forced removal of a node that did not answer: the operator's word that it is gone
    // for good, which a primary fenced by dead voters needs to be repaired.
    if force && !reachable(&rec, settings) {
        db.read("SELECT repmgr.vouch_removal()", &[])?;
    }
    catalog::delete_node(db, target)?;
    let event = match rec.node_type {
        NodeType::Primary => event::PRIMARY_UNREGISTER,
        NodeType::Standby => event::STANDBY_UNREGISTER,
        NodeType::Witness => event::WITNESS_UNREGISTER,
    };
    let details = format!("{} unregistered by {}", rec.describe(), settings.describe());
    events::record(Some(db), settings, Event::new(target, event, details))?;
    if let Some(p) = remote.as_mut() {
        commit_on_primary(
            p,
            settings,
            &format!("the removal of node {target}"),
            |nodes| nodes.iter().all(|n| n.node_id != target),
        )?;
    }
    if on_witness {
        catalog::detach_downstream(&mut Local, target)?;
        catalog::delete_node(&mut Local, target)?;
    }
    Ok(())
}
