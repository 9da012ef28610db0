//! The `repmgr.*` settings: their definitions, and a validated snapshot for one operation.
//!
//! Settings are read once per operation into [`Settings`], so that a reload in the middle of a
//! registration cannot mix old and new values, and so that tests can hand the operations any
//! combination of values without restarting a server.

use std::ffi::{CStr, CString};
use std::time::Duration;

use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};
use repmgr_core::children::DisconnectPolicy;
use repmgr_core::lease::Timing;
use repmgr_core::node;
use repmgr_core::upstream::RetryPolicy;

use crate::error::{Failure, Result};

#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum FailoverMode {
    #[name = c"automatic"]
    Automatic,
    #[name = c"manual"]
    Manual,
}

static NODE_ID: GucSetting<i32> = GucSetting::<i32>::new(0);
static NODE_NAME: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"repmgr"));
static CONNINFO: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static REPLICATION_USER: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
// repmgr_core::node::DEFAULT_LOCATION, as the C string a GUC default needs.
static LOCATION: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"default"));
static PRIORITY: GucSetting<i32> = GucSetting::<i32>::new(repmgr_core::node::DEFAULT_PRIORITY);
static FAILOVER: GucSetting<FailoverMode> =
    GucSetting::<FailoverMode>::new(FailoverMode::Automatic);
static USE_REPLICATION_SLOTS: GucSetting<bool> = GucSetting::<bool>::new(true);
static EVENT_NOTIFICATION_COMMAND: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
static EVENT_NOTIFICATIONS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static PEER_CONNECT_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(2000);
static PEER_STATEMENT_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(2000);
static MONITOR_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(1000);
static RECONNECT_ATTEMPTS: GucSetting<i32> = GucSetting::<i32>::new(3);
static RECONNECT_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(1000);
static CONNECTION_CHECK_TYPE: GucSetting<CheckType> = GucSetting::<CheckType>::new(CheckType::Ping);
static MONITORING_HISTORY: GucSetting<bool> = GucSetting::<bool>::new(true);
static MONITORING_HISTORY_KEEP: GucSetting<i32> = GucSetting::<i32>::new(7 * 24 * 3600);
static DEGRADED_MONITORING_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(-1);
static WITNESS_SYNC_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(15_000);
static LOG_STATUS_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(300);
static CHILD_NODES_CHECK_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(5000);
static CHILD_NODES_CONNECTED_MIN_COUNT: GucSetting<i32> = GucSetting::<i32>::new(-1);
static CHILD_NODES_DISCONNECT_MIN_COUNT: GucSetting<i32> = GucSetting::<i32>::new(-1);
static CHILD_NODES_CONNECTED_INCLUDE_WITNESS: GucSetting<bool> = GucSetting::<bool>::new(false);
static CHILD_NODES_DISCONNECT_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(30);
static CHILD_NODES_DISCONNECT_COMMAND: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
static HEARTBEAT_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(200);
static FENCE_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(1600);
static LEASE_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(2100);
static MAX_LAG_ON_FAILOVER: GucSetting<i32> = GucSetting::<i32>::new(16 << 20);
static PRIMARY_VISIBILITY_CONSENSUS: GucSetting<bool> = GucSetting::<bool>::new(true);
static FAILOVER_VALIDATION_COMMAND: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
static ELECTION_RERUN_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(15_000);
static STANDBY_DISCONNECT_ON_FAILOVER: GucSetting<bool> = GucSetting::<bool>::new(false);
static FENCE_ACTION: GucSetting<FenceAction> = GucSetting::<FenceAction>::new(FenceAction::Fence);
static HTTP_LISTEN_ADDRESS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static HTTP_PORT: GucSetting<i32> = GucSetting::<i32>::new(8008);
static SYNCHRONOUS_STANDBYS: GucSetting<i32> = GucSetting::<i32>::new(0);
static SYNCHRONOUS_MODE: GucSetting<SyncMode> = GucSetting::<SyncMode>::new(SyncMode::Strict);
static ALLOW_DROP_EXTENSION: GucSetting<bool> = GucSetting::<bool>::new(false);
static AUTO_REJOIN: GucSetting<AutoRejoinMode> =
    GucSetting::<AutoRejoinMode>::new(AutoRejoinMode::On);
static AUTO_RECLONE: GucSetting<bool> = GucSetting::<bool>::new(false);
static LOGICAL_SLOT_FAILOVER: GucSetting<bool> = GucSetting::<bool>::new(true);
static CLI_PATH: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static REJOIN_KEEP_WAL_DIRECTORY: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
static REJOIN_KEEP_WAL_MAX_SIZE: GucSetting<i32> = GucSetting::<i32>::new(1024);

/// `repmgr.auto_rejoin`.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum AutoRejoinMode {
    #[name = c"on"]
    On,
    #[name = c"off"]
    Off,
    /// Held (maintenance): the node says it needs a rejoin and waits.
    #[name = c"pause"]
    Pause,
}

/// `repmgr.synchronous_mode`: what the primary does when fewer standbys stream than
/// `repmgr.synchronous_standbys` asks for.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum SyncMode {
    /// Keep waiting for that many: writes block rather than go unprotected.
    #[name = c"strict"]
    Strict,
    /// Wait for those that stream, back to the full number when they return.
    #[name = c"preferred"]
    Preferred,
}

/// What a primary does when it loses its lease.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum FenceAction {
    /// Refuse every commit that wrote something; reads go on.
    #[name = c"fence"]
    Fence,
    /// Stop the server (fast shutdown).
    #[name = c"shutdown"]
    Shutdown,
}

/// How a node checks that its upstream is alive.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum CheckType {
    /// Open and close a connection, as libpq's PQping does.
    #[name = c"ping"]
    Ping,
    /// Open a full new connection each time.
    #[name = c"connection"]
    Connection,
    /// Run a query on the connection kept open across rounds.
    #[name = c"query"]
    Query,
}

/// Tells PostgreSQL why a value a check hook refused is wrong (its DETAIL line).
fn refuse_value(why: &str) -> bool {
    let c = CString::new(why.replace('\0', " ")).unwrap_or_default();
    unsafe { pg_sys::GUC_check_errdetail_string = pg_sys::pstrdup(c.as_ptr()) };
    false
}

/// The value a string check hook is given, `None` when empty or unset.
unsafe fn hook_value(newval: *mut *mut std::ffi::c_char) -> Option<String> {
    let v = unsafe { *newval };
    if v.is_null() {
        return None;
    }
    let s = unsafe { CStr::from_ptr(v) }.to_string_lossy().into_owned();
    (!s.trim().is_empty()).then_some(s)
}

#[pg_guard]
unsafe extern "C-unwind" fn check_node_name(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    match unsafe { hook_value(newval) }.map(|n| node::validate_name(&n)) {
        Some(Err(why)) => refuse_value(&format!("{why}.")),
        _ => true,
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn check_conninfo_setting(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    let Some(c) = (unsafe { hook_value(newval) }) else {
        return true;
    };
    match repmgr_pq::check_conninfo(&c).and_then(|()| repmgr_core::conninfo::check_values(&c)) {
        Ok(()) => true,
        Err(why) => refuse_value(&format!("It is not a valid connection string: {why}.")),
    }
}

/// Defines a reloadable integer setting.
fn int_setting(
    name: &'static CStr,
    short: &'static CStr,
    setting: &'static GucSetting<i32>,
    min: i32,
    max: i32,
    flags: GucFlags,
) {
    GucRegistry::define_int_guc(
        name,
        short,
        c"",
        setting,
        min,
        max,
        GucContext::Sighup,
        flags,
    );
}

/// Defines every setting. `preloading` is true when loaded through `shared_preload_libraries`.
pub fn define(preloading: bool) {
    // Identity settings can only change with a restart, which PostgreSQL allows us to declare
    // only while preloading; a library loaded later would be refused (FATAL). Loaded later, the
    // same settings are still read from postgresql.conf, just with reload semantics.
    let identity = || {
        if preloading {
            GucContext::Postmaster
        } else {
            GucContext::Sighup
        }
    };
    let secret = GucFlags::SUPERUSER_ONLY;
    let ms = GucFlags::UNIT_MS;

    GucRegistry::define_int_guc(
        c"repmgr.node_id",
        c"Identifier of this node in the cluster (1 or more; 0 means not set).",
        c"Must be unique across the cluster. Required before registering the node.",
        &NODE_ID,
        0,
        i32::MAX,
        identity(),
        GucFlags::default(),
    );
    // Checked when set, so that a name that could never equal a standby's application_name
    // (or a connection string libpq would refuse) never takes effect.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"repmgr.node_name",
            c"Name of this node; standbys must use it as application_name in primary_conninfo.",
            c"Defaults to cluster_name, or node<id> when cluster_name is empty; at most 63 bytes of printable ASCII.",
            &NODE_NAME,
            identity(),
            GucFlags::default(),
            Some(check_node_name),
            None,
            None,
        )
    };
    GucRegistry::define_string_guc(
        c"repmgr.database",
        c"Database where the repmgr extension lives on every node.",
        c"",
        &DATABASE,
        identity(),
        GucFlags::default(),
    );
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"repmgr.conninfo",
            c"Connection string other nodes use to reach this node.",
            c"Stored in repmgr.nodes at registration. Prefer a password file over a password here.",
            &CONNINFO,
            GucContext::Sighup,
            secret,
            Some(check_conninfo_setting),
            None,
            None,
        )
    };
    GucRegistry::define_string_guc(
        c"repmgr.replication_user",
        c"User standbys replicate as; defaults to the user in repmgr.conninfo.",
        c"",
        &REPLICATION_USER,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"repmgr.location",
        c"Location (data centre) of this node, used to avoid promotions across a network split.",
        c"",
        &LOCATION,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"repmgr.priority",
        c"Promotion priority of this node; 0 means it is never promoted automatically.",
        c"",
        &PRIORITY,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"repmgr.failover",
        c"Whether this node takes part in automatic failover (automatic) or only monitors (manual).",
        c"",
        &FAILOVER,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"repmgr.use_replication_slots",
        c"Whether standbys stream through a replication slot named repmgr_slot_<node_id>.",
        c"",
        &USE_REPLICATION_SLOTS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"repmgr.event_notification_command",
        c"Shell command run after each event, with %n %e %s %t %d %p %c %a placeholders.",
        c"Placeholder values are shell-quoted for the context they appear in.",
        &EVENT_NOTIFICATION_COMMAND,
        GucContext::Sighup,
        secret,
    );
    GucRegistry::define_string_guc(
        c"repmgr.event_notifications",
        c"Comma-separated events that run the notification command; empty means all.",
        c"",
        &EVENT_NOTIFICATIONS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"repmgr.peer_connect_timeout",
        c"Longest wait to connect to another node.",
        c"",
        &PEER_CONNECT_TIMEOUT,
        100,
        3_600_000,
        GucContext::Sighup,
        ms,
    );
    GucRegistry::define_int_guc(
        c"repmgr.peer_statement_timeout",
        c"Longest wait for another node to answer one statement.",
        c"",
        &PEER_STATEMENT_TIMEOUT,
        100,
        3_600_000,
        GucContext::Sighup,
        ms,
    );
    GucRegistry::define_bool_guc(
        c"repmgr.allow_drop_extension",
        c"Let DROP EXTENSION repmgr through while nodes are registered (to rebuild the catalog).",
        c"Set it for one session, by a superuser; see the README's recovery of a lost catalog.",
        &ALLOW_DROP_EXTENSION,
        GucContext::Suset,
        GucFlags::default(),
    );
    define_monitoring();
    define_failover();
    // Typos such as repmgr.nodeid are refused instead of silently ignored.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"repmgr".as_ptr()) };
}

/// The failover protocol's settings, all reloadable (see docs/failover.md for the trade-offs).
fn define_failover() {
    let ms = GucFlags::UNIT_MS;
    int_setting(
        c"repmgr.heartbeat_interval",
        c"How often every voter confirms the primary.",
        &HEARTBEAT_INTERVAL,
        10,
        60_000,
        ms,
    );
    int_setting(
        c"repmgr.fence_timeout",
        c"A primary without enough fresh confirmations for this long refuses commits.",
        &FENCE_TIMEOUT,
        100,
        600_000,
        ms,
    );
    int_setting(
        c"repmgr.lease_timeout",
        c"A voter that heard nothing from the primary for this long may vote for a successor.",
        &LEASE_TIMEOUT,
        100,
        600_000,
        ms,
    );
    int_setting(
        c"repmgr.max_lag_on_failover",
        c"A standby this far behind the most advanced one is never promoted.",
        &MAX_LAG_ON_FAILOVER,
        0,
        i32::MAX,
        GucFlags::UNIT_BYTE,
    );
    GucRegistry::define_bool_guc(
        c"repmgr.primary_visibility_consensus",
        c"Cancel an election while any voter still hears the primary.",
        c"",
        &PRIMARY_VISIBILITY_CONSENSUS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"repmgr.failover_validation_command",
        c"Shell command that must succeed before a standby stands for election (%n %a %v %u %t).",
        c"",
        &FAILOVER_VALIDATION_COMMAND,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    int_setting(
        c"repmgr.election_rerun_interval",
        c"Wait after failover_validation_command refused an election.",
        &ELECTION_RERUN_INTERVAL,
        0,
        3_600_000,
        ms,
    );
    GucRegistry::define_bool_guc(
        c"repmgr.standby_disconnect_on_failover",
        c"Stop this standby's WAL receiver before an election, so positions compare still.",
        c"",
        &STANDBY_DISCONNECT_ON_FAILOVER,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"repmgr.fence_action",
        c"What a primary that lost its lease does: fence (refuse writes) or shutdown.",
        c"",
        &FENCE_ACTION,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"repmgr.auto_rejoin",
        c"Whether a replaced primary or a diverged standby rejoins the current primary by itself (pg_rewind, run outside the server): on, off, or pause.",
        c"",
        &AUTO_REJOIN,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"repmgr.auto_reclone",
        c"Whether the automatic rejoin replaces this node's data directory with a fresh copy of the primary's (pg_basebackup) when pg_rewind cannot bring it back.",
        c"The node keeps its configuration files; everything else in its data directory is discarded.",
        &AUTO_RECLONE,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_bool_guc(
        c"repmgr.logical_slot_failover",
        c"From PostgreSQL 17, on nodes with wal_level = logical: standbys keep copies of the primary's failover slots (sync_replication_slots), and logical decoding waits for the standbys a failover may promote (synchronized_standby_slots).",
        c"Off, repmgr leaves those settings alone.",
        &LOGICAL_SLOT_FAILOVER,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"repmgr.cli_path",
        c"The repmgr command line the automatic rejoin runs (empty: repmgr in the server's bindir, /usr/bin or /usr/local/bin).",
        c"",
        &CLI_PATH,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"repmgr.rejoin_keep_wal_directory",
        c"Where a rewinding rejoin keeps copies of the WAL files it discards, for pg_waldump (empty: not kept).",
        c"",
        &REJOIN_KEEP_WAL_DIRECTORY,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    int_setting(
        c"repmgr.rejoin_keep_wal_max_size",
        c"The most repmgr.rejoin_keep_wal_directory holds: the oldest copies go first.",
        &REJOIN_KEEP_WAL_MAX_SIZE,
        16,
        i32::MAX,
        GucFlags::UNIT_MB,
    );
    int_setting(
        c"repmgr.synchronous_standbys",
        c"Standbys that must flush each commit before it is acknowledged (0: asynchronous); the primary manages synchronous_standby_names.",
        &SYNCHRONOUS_STANDBYS,
        0,
        64,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"repmgr.synchronous_mode",
        c"strict: writes wait while fewer standbys stream; preferred: fewer acknowledgements until they return.",
        c"",
        &SYNCHRONOUS_MODE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"repmgr.http_listen_address",
        c"Addresses the health endpoints and metrics listen on (comma-separated, * for all; empty: off).",
        c"",
        &HTTP_LISTEN_ADDRESS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    int_setting(
        c"repmgr.http_port",
        c"TCP port of the health endpoints and metrics.",
        &HTTP_PORT,
        1,
        65535,
        GucFlags::default(),
    );
}

/// The monitoring worker's settings, all reloadable.
fn define_monitoring() {
    let ms = GucFlags::UNIT_MS;
    let s = GucFlags::UNIT_S;
    let none = GucFlags::default();
    int_setting(
        c"repmgr.monitor_interval",
        c"Time between two monitoring rounds.",
        &MONITOR_INTERVAL,
        100,
        3_600_000,
        ms,
    );
    int_setting(
        c"repmgr.reconnect_attempts",
        c"Checks of a failed upstream before it is declared down.",
        &RECONNECT_ATTEMPTS,
        0,
        1000,
        none,
    );
    int_setting(
        c"repmgr.reconnect_interval",
        c"Time between checks of a failed upstream.",
        &RECONNECT_INTERVAL,
        0,
        3_600_000,
        ms,
    );
    GucRegistry::define_enum_guc(
        c"repmgr.connection_check_type",
        c"How the upstream is checked: ping, connection or query.",
        c"",
        &CONNECTION_CHECK_TYPE,
        GucContext::Sighup,
        none,
    );
    GucRegistry::define_bool_guc(
        c"repmgr.monitoring_history",
        c"Whether standbys write a repmgr.monitoring_history row every monitoring round.",
        c"",
        &MONITORING_HISTORY,
        GucContext::Sighup,
        none,
    );
    int_setting(
        c"repmgr.monitoring_history_keep",
        c"Age after which the primary deletes monitoring history (0: keep all).",
        &MONITORING_HISTORY_KEEP,
        0,
        i32::MAX,
        s,
    );
    int_setting(
        c"repmgr.degraded_monitoring_timeout",
        c"Stop the worker after monitoring in degraded state this long (-1: never).",
        &DEGRADED_MONITORING_TIMEOUT,
        -1,
        i32::MAX,
        s,
    );
    int_setting(
        c"repmgr.witness_sync_interval",
        c"Time between two copies of the node list to a witness.",
        &WITNESS_SYNC_INTERVAL,
        1000,
        3_600_000,
        ms,
    );
    int_setting(
        c"repmgr.log_status_interval",
        c"Time between two status lines in the log (0: none).",
        &LOG_STATUS_INTERVAL,
        0,
        i32::MAX,
        s,
    );
    int_setting(
        c"repmgr.child_nodes_check_interval",
        c"Time between two checks of the primary's children.",
        &CHILD_NODES_CHECK_INTERVAL,
        1000,
        3_600_000,
        ms,
    );
    int_setting(
        c"repmgr.child_nodes_connected_min_count",
        c"Run child_nodes_disconnect_command when fewer children are attached (-1: off).",
        &CHILD_NODES_CONNECTED_MIN_COUNT,
        -1,
        i32::MAX,
        none,
    );
    int_setting(
        c"repmgr.child_nodes_disconnect_min_count",
        c"Run child_nodes_disconnect_command when this many children are detached (-1: off).",
        &CHILD_NODES_DISCONNECT_MIN_COUNT,
        -1,
        i32::MAX,
        none,
    );
    GucRegistry::define_bool_guc(
        c"repmgr.child_nodes_connected_include_witness",
        c"Count an attached witness among the connected children.",
        c"",
        &CHILD_NODES_CONNECTED_INCLUDE_WITNESS,
        GucContext::Sighup,
        none,
    );
    int_setting(
        c"repmgr.child_nodes_disconnect_timeout",
        c"How long children must have been detached before the command runs.",
        &CHILD_NODES_DISCONNECT_TIMEOUT,
        0,
        i32::MAX,
        s,
    );
    GucRegistry::define_string_guc(
        c"repmgr.child_nodes_disconnect_command",
        c"Shell command the primary runs when too few children are attached; %p is its node id.",
        c"",
        &CHILD_NODES_DISCONNECT_COMMAND,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
}

/// Checks a connection string with libpq's parser; `what` names where it came from.
pub fn check_conninfo(conninfo: &str, what: &str, node: &str) -> Result<()> {
    repmgr_pq::check_conninfo(conninfo)
        .and_then(|()| repmgr_core::conninfo::check_values(conninfo))
        .map_err(|why| {
        Failure::invalid(format!("{what} on {node} is not a valid connection string: {why}"))
            .detail(format!("The value is: {}", repmgr_core::conninfo::mask(conninfo)))
            .hint("Use the libpq key=value form, e.g. 'host=10.0.0.5 port=5432 dbname=repmgr user=repmgr'.")
    })
}

/// `repmgr.allow_drop_extension`, as the session set it.
pub fn allow_drop_extension() -> bool {
    ALLOW_DROP_EXTENSION.get()
}

/// `repmgr.node_id`, for code that runs before settings are snapshotted (shared memory setup).
pub fn node_id() -> i32 {
    NODE_ID.get()
}

fn string(setting: &GucSetting<Option<CString>>) -> Option<String> {
    setting
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .filter(|s| !s.trim().is_empty())
}

/// The current value of any server setting, without privilege checks (settings such as
/// `primary_conninfo` are readable only by superusers through SQL).
pub fn server_setting(name: &CStr) -> Option<String> {
    let p = unsafe { pg_sys::GetConfigOption(name.as_ptr(), true, false) };
    if p.is_null() {
        return None;
    }
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    if s.is_empty() { None } else { Some(s) }
}

/// This server has failover slots (PostgreSQL 17).
pub const FAILOVER_SLOTS: bool = pg_sys::PG_VERSION_NUM >= 170000;

/// One consistent reading of the settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_id: i32,
    pub node_name: String,
    pub database: String,
    pub conninfo: Option<String>,
    pub replication_user: Option<String>,
    pub location: String,
    pub priority: i32,
    pub use_replication_slots: bool,
    pub event_notification_command: Option<String>,
    pub event_notifications: Vec<String>,
    pub peer_connect_timeout: Duration,
    pub peer_statement_timeout: Duration,
    /// Where the health endpoints listen (`None`: off), and their port.
    pub http_listen_address: Option<String>,
    pub http_port: u16,
    /// The PostgreSQL configuration file holding these settings, for `nodes.config_file`.
    pub config_file: String,
    pub monitor: MonitorSettings,
    pub failover: FailoverSettings,
}

/// What the failover protocol reads.
#[derive(Debug, Clone, PartialEq)]
pub struct FailoverSettings {
    /// The timing, or why the configured combination is refused.
    pub timing: std::result::Result<Timing, String>,
    /// `repmgr.failover = automatic`.
    pub automatic: bool,
    pub max_lag: u64,
    pub visibility_consensus: bool,
    pub validation_command: Option<String>,
    pub election_rerun_interval: Duration,
    pub disconnect_on_failover: bool,
    pub fence_action: FenceAction,
    pub auto_rejoin: AutoRejoinMode,
    /// `repmgr.auto_reclone`.
    pub auto_reclone: bool,
    /// `repmgr.logical_slot_failover`.
    pub logical_slot_failover: bool,
    /// `repmgr.cli_path`, when set.
    pub cli_path: Option<String>,
    /// `repmgr.rejoin_keep_wal_directory`, when set, and `repmgr.rejoin_keep_wal_max_size`
    /// (MB).
    pub keep_wal_directory: Option<String>,
    pub keep_wal_max_mb: u32,
    /// `repmgr.synchronous_standbys` and `repmgr.synchronous_mode`.
    pub synchronous_standbys: u32,
    pub synchronous_mode: repmgr_core::quorum::Mode,
}

impl FailoverSettings {
    /// What the failover state machine reads, with this node's `repmgr.priority`.
    pub fn driver(&self, priority: i32) -> repmgr_core::driver::Settings {
        repmgr_core::driver::Settings {
            timing: self.timing.clone(),
            automatic: self.automatic,
            priority,
            max_lag: self.max_lag,
            visibility_consensus: self.visibility_consensus,
            validation_command: self.validation_command.is_some(),
            election_rerun_interval: self.election_rerun_interval,
            disconnect_on_failover: self.disconnect_on_failover,
            fence_shutdown: self.fence_action == FenceAction::Shutdown,
            auto_rejoin: match self.auto_rejoin {
                AutoRejoinMode::On => repmgr_core::rejoin::AutoRejoin::On,
                AutoRejoinMode::Off => repmgr_core::rejoin::AutoRejoin::Off,
                AutoRejoinMode::Pause => repmgr_core::rejoin::AutoRejoin::Pause,
            },
        }
    }

    fn current() -> FailoverSettings {
        let timing = Timing {
            heartbeat: millis(HEARTBEAT_INTERVAL.get()),
            fence: millis(FENCE_TIMEOUT.get()),
            lease: millis(LEASE_TIMEOUT.get()),
        };
        FailoverSettings {
            timing: timing.validate().map(|()| timing),
            automatic: FAILOVER.get() == FailoverMode::Automatic,
            max_lag: MAX_LAG_ON_FAILOVER.get().max(0) as u64,
            visibility_consensus: PRIMARY_VISIBILITY_CONSENSUS.get(),
            validation_command: string(&FAILOVER_VALIDATION_COMMAND),
            election_rerun_interval: millis(ELECTION_RERUN_INTERVAL.get()),
            disconnect_on_failover: STANDBY_DISCONNECT_ON_FAILOVER.get(),
            fence_action: FENCE_ACTION.get(),
            auto_rejoin: AUTO_REJOIN.get(),
            auto_reclone: AUTO_RECLONE.get(),
            logical_slot_failover: LOGICAL_SLOT_FAILOVER.get(),
            cli_path: string(&CLI_PATH),
            keep_wal_directory: string(&REJOIN_KEEP_WAL_DIRECTORY),
            keep_wal_max_mb: REJOIN_KEEP_WAL_MAX_SIZE.get().max(16) as u32,
            synchronous_standbys: SYNCHRONOUS_STANDBYS.get().max(0) as u32,
            synchronous_mode: match SYNCHRONOUS_MODE.get() {
                SyncMode::Strict => repmgr_core::quorum::Mode::Strict,
                SyncMode::Preferred => repmgr_core::quorum::Mode::Preferred,
            },
        }
    }
}

/// What the monitoring worker reads.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorSettings {
    pub retry: RetryPolicy,
    pub check_type: CheckType,
    pub history: bool,
    /// None: keep history forever.
    pub history_keep: Option<Duration>,
    pub degraded_timeout: Option<Duration>,
    pub witness_sync_interval: Duration,
    pub log_status_interval: Option<Duration>,
    pub child_check_interval: Duration,
    pub disconnect: DisconnectPolicy,
    pub disconnect_command: Option<String>,
}

fn seconds(v: i32) -> Option<Duration> {
    (v > 0).then(|| Duration::from_secs(v as u64))
}

fn millis(v: i32) -> Duration {
    Duration::from_millis(v.max(0) as u64)
}

impl MonitorSettings {
    fn current() -> MonitorSettings {
        MonitorSettings {
            retry: RetryPolicy {
                monitor_interval: millis(MONITOR_INTERVAL.get()),
                attempts: RECONNECT_ATTEMPTS.get().max(0) as u32,
                retry_interval: millis(RECONNECT_INTERVAL.get()),
            },
            check_type: CONNECTION_CHECK_TYPE.get(),
            history: MONITORING_HISTORY.get(),
            history_keep: seconds(MONITORING_HISTORY_KEEP.get()),
            degraded_timeout: (DEGRADED_MONITORING_TIMEOUT.get() >= 0)
                .then(|| Duration::from_secs(DEGRADED_MONITORING_TIMEOUT.get() as u64)),
            witness_sync_interval: millis(WITNESS_SYNC_INTERVAL.get()),
            log_status_interval: seconds(LOG_STATUS_INTERVAL.get()),
            child_check_interval: millis(CHILD_NODES_CHECK_INTERVAL.get()),
            disconnect: DisconnectPolicy {
                connected_min_count: CHILD_NODES_CONNECTED_MIN_COUNT.get(),
                disconnect_min_count: CHILD_NODES_DISCONNECT_MIN_COUNT.get(),
                include_witness: CHILD_NODES_CONNECTED_INCLUDE_WITNESS.get(),
                timeout: Duration::from_secs(CHILD_NODES_DISCONNECT_TIMEOUT.get().max(0) as u64),
            },
            disconnect_command: string(&CHILD_NODES_DISCONNECT_COMMAND),
        }
    }
}

impl Settings {
    pub fn current() -> Settings {
        let node_id = NODE_ID.get();
        let node_name = string(&NODE_NAME)
            .or_else(|| server_setting(c"cluster_name"))
            .unwrap_or_else(|| node::default_name(node_id));
        Settings {
            node_id,
            node_name,
            database: string(&DATABASE).unwrap_or_else(|| "repmgr".into()),
            conninfo: string(&CONNINFO),
            replication_user: string(&REPLICATION_USER),
            location: string(&LOCATION)
                .unwrap_or_else(|| repmgr_core::node::DEFAULT_LOCATION.into()),
            priority: PRIORITY.get(),
            use_replication_slots: USE_REPLICATION_SLOTS.get(),
            event_notification_command: string(&EVENT_NOTIFICATION_COMMAND),
            event_notifications: string(&EVENT_NOTIFICATIONS)
                .map(|s| {
                    s.split(',')
                        .map(|e| e.trim().to_string())
                        .filter(|e| !e.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            peer_connect_timeout: Duration::from_millis(PEER_CONNECT_TIMEOUT.get() as u64),
            peer_statement_timeout: Duration::from_millis(PEER_STATEMENT_TIMEOUT.get() as u64),
            http_listen_address: string(&HTTP_LISTEN_ADDRESS),
            http_port: HTTP_PORT.get().clamp(1, 65535) as u16,
            config_file: server_setting(c"config_file").unwrap_or_default(),
            monitor: MonitorSettings::current(),
            failover: FailoverSettings::current(),
        }
    }

    /// "node 3 (db3)", the way every message names this node.
    pub fn describe(&self) -> String {
        if self.node_id > 0 {
            format!("node {} (\"{}\")", self.node_id, self.node_name)
        } else {
            "this node".into()
        }
    }

    /// Checks what every registration needs: an id, a usable name and a valid conninfo.
    /// Returns the conninfo.
    pub fn require_identity(&self) -> Result<&str> {
        if self.node_id <= 0 {
            return Err(Failure::config("repmgr.node_id is not set on this node")
                .hint("Set repmgr.node_id to a number unique in the cluster (1 or more) in postgresql.conf, then restart PostgreSQL."));
        }
        if let Err(why) = node::validate_name(&self.node_name) {
            return Err(Failure::invalid(format!(
                "invalid node name for node {}: {why}",
                self.node_id
            ))
            .hint("Set repmgr.node_name (or cluster_name) in postgresql.conf."));
        }
        let conninfo = self.conninfo.as_deref().ok_or_else(|| {
            Failure::config(format!("repmgr.conninfo is not set on {}", self.describe())).hint(
                "Set repmgr.conninfo in postgresql.conf to the connection string other nodes use to reach this one, e.g. 'host=10.0.0.5 port=5432 dbname=repmgr user=repmgr', then reload.",
            )
        })?;
        check_conninfo(conninfo, "repmgr.conninfo", &self.describe())?;
        Ok(conninfo)
    }

    /// The user standbys replicate as: `repmgr.replication_user`, else the conninfo's user, else
    /// the user running the registration.
    pub fn replication_user(&self, session_user: &str) -> String {
        self.replication_user
            .clone()
            .or_else(|| {
                self.conninfo
                    .as_deref()
                    .and_then(|c| repmgr_core::conninfo::get(c, "user"))
            })
            .unwrap_or_else(|| session_user.to_string())
    }

    /// Whether this node keeps failover slots across a failover (`repmgr.logical_slot_failover`
    /// on a server that has them).
    /// Whether this node keeps failover slots in step: PostgreSQL 17 or later, the setting
    /// on, and `wal_level = logical` (below it a node has no logical slots, and a standby's
    /// slot synchronization only logs, at every restart of its WAL receiver, that it cannot run).
    pub fn manages_failover_slots(&self) -> bool {
        FAILOVER_SLOTS
            && self.failover.logical_slot_failover
            && server_setting(c"wal_level").as_deref() == Some("logical")
    }

    /// The slot this node streams through, when slots are in use.
    pub fn slot_name(&self) -> Option<String> {
        self.use_replication_slots
            .then(|| node::slot_name(self.node_id))
    }

    /// Whether `event` should run the notification command.
    pub fn notifies(&self, event: &str) -> bool {
        self.event_notifications.is_empty() || self.event_notifications.iter().any(|e| e == event)
    }
}
