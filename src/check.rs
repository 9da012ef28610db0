//! `node_check()`: what could stop this node, or the cluster, from failing over safely, in
//! plain words, one line per check, each OK, WARNING or CRITICAL.

use repmgr_core::lease::{confirmations_needed, majority};
use repmgr_core::node::NodeType;

use crate::catalog::{self, NodeRecord};
use crate::config::{FAILOVER_SLOTS, Settings, server_setting};
use crate::db::{Db, Local};
use crate::error::Result;
use crate::{clock, shmem, slots};

pub struct Check {
    pub name: &'static str,
    pub status: &'static str,
    pub details: String,
}

fn check(name: &'static str, status: &'static str, details: impl Into<String>) -> Check {
    Check {
        name,
        status,
        details: details.into(),
    }
}

/// The quorum the registered voters give, the way the protocol counts it.
fn quorum(voters: &[&NodeRecord]) -> Check {
    let n = voters.len();
    let witnesses = voters
        .iter()
        .filter(|v| v.node_type == NodeType::Witness)
        .count();
    match n {
        0 | 1 => check(
            "failover quorum",
            "WARNING",
            "a single node: there is nothing to fail over to",
        ),
        2 => check(
            "failover quorum",
            "CRITICAL",
            format!(
                "only 2 voters ({} data nodes, {witnesses} witness): losing either leaves no majority, so automatic failover can never happen; register a witness on a third machine (SELECT repmgr.register_witness(...)) or add a standby",
                n - witnesses
            ),
        ),
        _ => check(
            "failover quorum",
            "OK",
            format!(
                "{n} voters ({witnesses} witness): an election needs {} votes; the primary needs fresh confirmations from {} of the others",
                majority(n),
                confirmations_needed(n)
            ),
        ),
    }
}

pub fn node_check(settings: &Settings) -> Result<Vec<Check>> {
    let mut out = Vec::new();
    let nodes = catalog::nodes(&mut Local)?;
    let me = nodes.iter().find(|n| n.node_id == settings.node_id);
    let in_recovery = unsafe { pgrx::pg_sys::RecoveryInProgress() };
    let Some(me) = me else {
        out.push(check(
            "registration",
            "CRITICAL",
            format!("{} is not registered", settings.describe()),
        ));
        return Ok(out);
    };
    let running_as = if in_recovery {
        NodeType::Standby
    } else if me.node_type == NodeType::Witness {
        NodeType::Witness
    } else {
        NodeType::Primary
    };
    out.push(if running_as == me.node_type {
        check(
            "role",
            "OK",
            format!("registered and running as {}", me.node_type),
        )
    } else {
        check(
            "role",
            "CRITICAL",
            format!("registered as {} but running as {running_as}", me.node_type),
        )
    });
    let shared = shmem::read();
    out.push(match shared {
        Some(s) if s.worker_running() => {
            check("worker", "OK", format!("running (pid {})", s.daemon_pid))
        }
        Some(_) => check(
            "worker",
            "CRITICAL",
            "the monitoring worker is not running: no monitoring, no failover",
        ),
        None => check(
            "worker",
            "CRITICAL",
            "repmgr is not in shared_preload_libraries: no worker, no failover, no fencing",
        ),
    });
    let voters: Vec<&NodeRecord> = nodes.iter().filter(|n| n.active).collect();
    out.push(quorum(&voters));
    out.push(match &settings.failover.timing {
        Ok(t) => check(
            "failover settings",
            "OK",
            format!(
                "heartbeat {} ms, fence {} ms, lease {} ms",
                t.heartbeat.as_millis(),
                t.fence.as_millis(),
                t.lease.as_millis()
            ),
        ),
        Err(rule) => check(
            "failover settings",
            "CRITICAL",
            format!("refused, the previous values stay in force: {rule}"),
        ),
    });
    out.push(timing_across_nodes(settings, me, &nodes));
    let Some(s) = shared else { return Ok(out) };
    let f = s.failover;
    let now = clock::now();
    let mut silent = false;
    match running_as {
        NodeType::Primary => out.push(match crate::fence::refusal() {
            None => check("lease", "OK", "holds its lease: commits are allowed"),
            Some(why) => check("lease", "CRITICAL", why.message),
        }),
        _ => {
            let silence = f.voter.silence(now);
            let wait = f.voter.wait_needed(&f.timing);
            silent = f.voter.last_heard.is_none() || silence >= wait;
            out.push(if f.voter.last_heard.is_some() && silence < wait {
                check(
                    "primary",
                    "OK",
                    format!(
                        "heard node {} {} ms ago",
                        f.voter.leader.unwrap_or(0),
                        silence.as_millis()
                    ),
                )
            } else {
                check(
                    "primary",
                    "CRITICAL",
                    format!("no primary heard for {} ms", silence.as_millis()),
                )
            });
        }
    }
    if f.diverged {
        out.push(check(
            "timeline",
            "CRITICAL",
            "this standby's timeline diverged from the primary's: it needs repmgr node rejoin",
        ));
    }
    if let Some(c) = synchronous_quorum(settings, running_as, me, &nodes, silent)? {
        out.push(c);
    }
    if let Some(c) = failover_slots(settings, running_as, me, &nodes)? {
        out.push(c);
    }
    if running_as == NodeType::Standby {
        out.push(if s.paused {
            check(
                "automatic failover",
                "WARNING",
                "paused: this node takes no automatic action (SELECT repmgr.pause(false))",
            )
        } else if !settings.failover.automatic {
            check(
                "automatic failover",
                "WARNING",
                "repmgr.failover = manual: this node never stands for election",
            )
        } else if me.priority <= 0 {
            check(
                "automatic failover",
                "OK",
                "priority 0: this node votes but is never promoted",
            )
        } else {
            check(
                "automatic failover",
                "OK",
                format!("may be promoted (priority {})", me.priority),
            )
        });
    }
    out.push(versions(catalog_version(&mut Local)?.as_deref()));
    Ok(out)
}

/// The catalog's version: `pg_extension.extversion`.
fn catalog_version(db: &mut dyn Db) -> Result<Option<String>> {
    let rows = db.read(
        "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'repmgr'",
        &[],
    )?;
    Ok(rows.get(0, 0).map(str::to_string))
}

/// The library this server runs against the catalog's version: they differ during a rolling
/// upgrade, which the catalog's update ends.
fn versions(catalog: Option<&str>) -> Check {
    let library = env!("CARGO_PKG_VERSION");
    let Some(catalog) = catalog else {
        return check(
            "extension version",
            "WARNING",
            format!("library {library}; the catalog's version could not be read"),
        );
    };
    let number = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    match number(library).cmp(&number(catalog)) {
        std::cmp::Ordering::Equal => check(
            "extension version",
            "OK",
            format!("library and catalog are both {library}"),
        ),
        std::cmp::Ordering::Greater => check(
            "extension version",
            "WARNING",
            format!(
                "this server runs the {library} library on a {catalog} catalog: once every node runs {library}, run ALTER EXTENSION repmgr UPDATE on the primary (standbys receive it by replication)"
            ),
        ),
        std::cmp::Ordering::Less => check(
            "extension version",
            "CRITICAL",
            format!(
                "this server runs the {library} library but the catalog is already {catalog}: install repmgr {catalog} on this node and restart it"
            ),
        ),
    }
}

/// Every voter's timing as it reports it (`repmgr.vote_info()`), this node's from its own
/// shared memory: what each waits before voting, against what its settings say, and the
/// fence of the primary that makes it wait longer. Safety does not depend on agreement (each
/// voter waits out the fence the primary announces), but failover time does.
fn timing_across_nodes(settings: &Settings, me: &NodeRecord, nodes: &[NodeRecord]) -> Check {
    let name = "timing across nodes";
    let mut seen: Vec<(String, repmgr_core::state::PreVote)> = Vec::new();
    let mut unreachable = Vec::new();
    if let Some(st) = shmem::read() {
        let local = repmgr_core::state::Local {
            in_recovery: unsafe { pgrx::pg_sys::RecoveryInProgress() },
            lsn: None,
            timeline: 0,
            timeline_start: 0,
            paused: st.paused,
            // Only the timing is read here.
            sync_quorum: 0,
            failover_slots: 0,
        };
        seen.push((me.describe(), st.failover.pre_vote(clock::now(), &local)));
    }
    let mut short = settings.clone();
    short.peer_connect_timeout = short
        .peer_connect_timeout
        .min(std::time::Duration::from_secs(2));
    short.peer_statement_timeout = short
        .peer_statement_timeout
        .min(std::time::Duration::from_secs(2));
    for n in nodes.iter().filter(|n| n.active && n.node_id != me.node_id) {
        let got = crate::peer::Peer::connect(&n.conninfo, &n.describe(), &short)
            .and_then(|mut p| p.run(&crate::protocol::vote_info_query(), &[]));
        match got.ok().and_then(|r| crate::protocol::parse_vote_info(&r)) {
            Some(p) => seen.push((n.describe(), p)),
            None => unreachable.push(n.describe()),
        }
    }
    let ms = |d: std::time::Duration| d.as_millis();
    let primary = seen
        .iter()
        .find(|(_, p)| !p.answer.in_recovery && p.primary.is_some_and(|(_, _)| p.answer.leading));
    let mut slower = Vec::new();
    for (who, p) in &seen {
        if p.wait > p.timing.lease {
            slower.push(format!(
                "{who} waits {} ms before it votes, not its repmgr.lease_timeout of {} ms, because the primary it confirmed runs with a longer repmgr.fence_timeout{}",
                ms(p.wait),
                ms(p.timing.lease),
                primary.map_or(String::new(), |(pw, pp)| format!(
                    " ({pw}: {} ms)",
                    ms(pp.timing.fence)
                ))
            ));
        }
    }
    let mut distinct: Vec<repmgr_core::lease::Timing> =
        seen.iter().map(|(_, p)| p.timing).collect();
    distinct.sort_by_key(|t| (t.heartbeat, t.fence, t.lease));
    distinct.dedup();
    let each: Vec<String> = seen
        .iter()
        .map(|(who, p)| {
            format!(
                "{who}: heartbeat {} ms, fence {} ms, lease {} ms",
                ms(p.timing.heartbeat),
                ms(p.timing.fence),
                ms(p.timing.lease)
            )
        })
        .collect();
    let missing = if unreachable.is_empty() {
        String::new()
    } else {
        format!("; could not ask {}", unreachable.join(", "))
    };
    if !slower.is_empty() {
        check(
            name,
            "WARNING",
            format!(
                "{}; failover takes longer than these nodes' settings say: give every node the same repmgr.heartbeat_interval, repmgr.fence_timeout and repmgr.lease_timeout ({}){missing}",
                slower.join("; "),
                each.join("; ")
            ),
        )
    } else if distinct.len() > 1 {
        check(
            name,
            "WARNING",
            format!(
                "the nodes' timing settings differ ({}); safety holds (every voter waits out the fence the primary announces) but a failover's time depends on which node is primary{missing}",
                each.join("; ")
            ),
        )
    } else {
        check(
            name,
            if unreachable.is_empty() {
                "OK"
            } else {
                "WARNING"
            },
            format!(
                "{} node(s) answered with the same timing{missing}",
                seen.len()
            ),
        )
    }
}

/// The synchronous quorum (repmgr.synchronous_standbys): on the primary, whether commits are
/// protected as asked; on a standby, whether it may be promoted, and once the primary is lost
/// (`silent`) whether it holds every acknowledged commit, asking the other standbys.
fn synchronous_quorum(
    settings: &Settings,
    running_as: NodeType,
    me: &NodeRecord,
    nodes: &[NodeRecord],
    silent: bool,
) -> Result<Option<Check>> {
    let n = settings.failover.synchronous_standbys;
    let published = crate::quorum::published(&mut Local)?;
    let name = "synchronous quorum";
    match running_as {
        NodeType::Witness => Ok(None),
        NodeType::Primary => {
            if n == 0 && !published.is_sync() {
                return Ok(None);
            }
            let current =
                crate::config::server_setting(c"synchronous_standby_names").unwrap_or_default();
            let streaming = Local
                .read(
                    "SELECT count(*) FROM pg_catalog.pg_stat_replication WHERE state = 'streaming' AND application_name = ANY (pg_catalog.string_to_array($1, ','))",
                    &[Some(
                        &nodes
                            .iter()
                            .filter(|x| published.members.contains(&x.node_id))
                            .map(|x| x.node_name.clone())
                            .collect::<Vec<_>>()
                            .join(","),
                    )],
                )?
                .get(0, 0)
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0);
            let details = format!(
                "synchronous_standby_names = '{current}', published {}, {streaming} member(s) streaming, {n} asked for",
                published.describe()
            );
            Ok(Some(if published.is_sync() && streaming < published.k {
                check(
                    name,
                    "CRITICAL",
                    format!("{details}: commits wait until enough members stream"),
                )
            } else if published.k < n {
                check(
                    name,
                    "WARNING",
                    format!(
                        "{details}: fewer acknowledgements than asked (repmgr.synchronous_mode = preferred)"
                    ),
                )
            } else {
                check(name, "OK", details)
            }))
        }
        NodeType::Standby => {
            if !published.is_sync() {
                return Ok(None);
            }
            if !published.members.contains(&me.node_id) {
                return Ok(Some(check(
                    name,
                    "WARNING",
                    format!(
                        "not a member of {}: never promoted while it is in force",
                        published.describe()
                    ),
                )));
            }
            if !silent {
                return Ok(Some(check(
                    name,
                    "OK",
                    format!("member of {}", published.describe()),
                )));
            }
            let mine = crate::protocol::received_position().unwrap_or_default();
            let reports: Vec<repmgr_core::quorum::Report> = nodes
                .iter()
                .filter(|x| x.node_id != me.node_id && published.members.contains(&x.node_id))
                .filter_map(|x| {
                    let mut p =
                        crate::peer::Peer::connect(&x.conninfo, &x.describe(), settings).ok()?;
                    let r = p
                        .run(
                            "SELECT in_recovery AND NOT diverged, lsn, timeline, timeline_start FROM repmgr.vote_info()",
                            &[],
                        )
                        .ok()?;
                    (r.get(0, 0) == Some("t")).then_some(())?;
                    Some(repmgr_core::quorum::Report {
                        node_id: x.node_id,
                        position: repmgr_core::lsn::Position {
                            lsn: r.get(0, 1)?.parse().ok()?,
                            timeline: r.get(0, 2)?.parse().ok()?,
                            start: r.get(0, 3)?.parse().ok()?,
                        },
                    })
                })
                .collect();
            Ok(Some(
                match repmgr_core::quorum::may_promote(&published, me.node_id, mine, &reports) {
                    Ok(()) => check(
                        name,
                        "OK",
                        format!(
                            "member of {}; holds every acknowledged commit the answering members have",
                            published.describe()
                        ),
                    ),
                    Err(why) => check(
                        name,
                        "CRITICAL",
                        format!("the primary is lost and this node may not be promoted: {why}"),
                    ),
                },
            ))
        }
    }
}

/// Logical replication slots and failover: on a primary, which slots a failover keeps and
/// which standbys logical decoding waits for (before PostgreSQL 17: which slots it loses); on
/// a standby, its copies of the failover slots and what it lacks to keep them.
fn failover_slots(
    settings: &Settings,
    running_as: NodeType,
    me: &NodeRecord,
    nodes: &[NodeRecord],
) -> Result<Option<Check>> {
    let name = "failover slots";
    match running_as {
        NodeType::Witness => Ok(None),
        NodeType::Primary if !FAILOVER_SLOTS => {
            let logical = slots::logical_slots(&mut Local)?;
            Ok((!logical.is_empty()).then(|| check(name, "WARNING", slots::lost_slots(&logical))))
        }
        NodeType::Primary => {
            let r = Local.read(
                "SELECT slot_name::text, failover::text FROM pg_catalog.pg_replication_slots WHERE slot_type = 'logical' ORDER BY 1",
                &[],
            )?;
            let pick = |failover: &str| -> Vec<String> {
                (0..r.rows.len())
                    .filter(|&i| r.get(i, 1) == Some(failover))
                    .filter_map(|i| r.get(i, 0).map(str::to_string))
                    .collect()
            };
            let (kept, lost) = (pick("true"), pick("false"));
            if kept.is_empty() && lost.is_empty() {
                return Ok(None);
            }
            let waits = server_setting(c"synchronized_standby_slots").unwrap_or_default();
            Ok(Some(if !lost.is_empty() {
                check(
                    name,
                    "WARNING",
                    format!(
                        "a failover loses the logical slots {}, which are not failover slots: create them with failover => true (pg_create_logical_replication_slot), or ALTER SUBSCRIPTION ... SET (failover = true) with the subscription disabled",
                        lost.join(", ")
                    ),
                )
            } else if !settings.manages_failover_slots() {
                check(
                    name,
                    "WARNING",
                    format!(
                        "failover slots {}; repmgr.logical_slot_failover is off: the standbys keep copies only if you configured them (sync_replication_slots, synchronized_standby_slots)",
                        kept.join(", ")
                    ),
                )
            } else if waits.is_empty() {
                check(
                    name,
                    "WARNING",
                    format!(
                        "failover slots {}, but no standby that may be promoted streams through a slot: after a failover their consumers may have received changes the new primary lacks",
                        kept.join(", ")
                    ),
                )
            } else if let Some(left) = not_waited_for(me, nodes, &waits) {
                check(
                    name,
                    "WARNING",
                    format!(
                        "failover slots {}; logical decoding waits for the standbys' slots {waits}, not for {left} (no slot, or not streaming): promoted, it may lack changes their consumers received",
                        kept.join(", ")
                    ),
                )
            } else {
                check(
                    name,
                    "OK",
                    format!(
                        "failover slots {}; logical decoding waits for the standbys' slots {waits} (synchronized_standby_slots)",
                        kept.join(", ")
                    ),
                )
            }))
        }
        NodeType::Standby => {
            if !settings.manages_failover_slots() {
                return Ok(None);
            }
            let from_primary = me
                .upstream_node_id
                .and_then(|u| nodes.iter().find(|n| n.node_id == u))
                .is_some_and(|u| u.node_type == NodeType::Primary);
            let (missing, repairable) = slots::standby_missing(me, from_primary);
            // A node registered without a slot keeps no copies: the primary's check names the
            // standbys decoding waits for, and so those a failover would leave behind.
            if !repairable {
                return Ok(None);
            }
            if !missing.is_empty() {
                return Ok(Some(check(
                    name,
                    "WARNING",
                    format!(
                        "this standby keeps no copies of the primary's failover slots yet: {} (the worker writes these settings)",
                        missing.join(", ")
                    ),
                )));
            }
            let copies = slots::copies(&mut Local)?;
            if copies.is_empty() {
                return Ok(None);
            }
            let states: Vec<String> = copies.iter().map(|c| c.state()).collect();
            Ok(Some(check(
                name,
                if copies.iter().all(|c| c.ready()) {
                    "OK"
                } else {
                    "WARNING"
                },
                format!("copies of failover slots: {}", states.join("; ")),
            )))
        }
    }
}

/// The standbys of this primary a failover may promote whose slot is not in
/// `synchronized_standby_slots` (`waits`), by name.
fn not_waited_for(me: &NodeRecord, nodes: &[NodeRecord], waits: &str) -> Option<String> {
    let left: Vec<&str> = nodes
        .iter()
        .filter(|n| slots::promotable_standby(me, n))
        .filter(|n| {
            n.slot_name
                .as_deref()
                .is_none_or(|s| !waits.split(',').any(|w| w.trim() == s))
        })
        .map(|n| n.node_name.as_str())
        .collect();
    (!left.is_empty()).then(|| left.join(", "))
}
