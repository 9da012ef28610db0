//! In-server tests (`cargo pgrx test`): the catalog's shape, every SQL function's happy path,
//! refusals of bad input, privileges and password masking, on one preloaded server.
//!
//! Each test runs in a transaction that is rolled back, so tests see an empty catalog. Tests
//! run concurrently; registrations serialise on the nodes table lock, and everything that
//! touches shared memory lives in a single test.

#[pgrx::pg_schema]
mod tests {
    use std::panic::UnwindSafe;

    use pgrx::prelude::*;
    use pgrx::{PgSqlErrorCode, PgTryBuilder};

    use crate::config::Settings;
    use crate::db::{Db, Local, Rows};
    use crate::error::Failure;
    use crate::registration;

    const PASSWORD: &str = "s3cr3t-pw";

    /// An error caught from SQL, with what a client would see.
    #[derive(Debug)]
    struct Caught {
        code: PgSqlErrorCode,
        message: String,
        detail: Option<String>,
        hint: Option<String>,
    }

    /// Runs `f` in a subtransaction, as a PL/pgSQL EXCEPTION block does, so a test can look
    /// at an error and carry on.
    fn attempt<R>(f: impl FnOnce() -> R + UnwindSafe) -> Result<R, Caught> {
        unsafe {
            let cxt = pg_sys::CurrentMemoryContext;
            let owner = pg_sys::CurrentResourceOwner;
            pg_sys::BeginInternalSubTransaction(std::ptr::null());
            pg_sys::MemoryContextSwitchTo(cxt);
            let result = PgTryBuilder::new(move || Ok(f()))
                .catch_others(|e| {
                    let report = match e {
                        pg_sys::panic::CaughtError::PostgresError(r)
                        | pg_sys::panic::CaughtError::ErrorReport(r)
                        | pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => r,
                    };
                    Err(Caught {
                        code: report.sql_error_code(),
                        message: report.message().to_string(),
                        detail: report.detail().map(str::to_string),
                        hint: report.hint().map(str::to_string),
                    })
                })
                .execute();
            pg_sys::MemoryContextSwitchTo(cxt);
            if result.is_ok() {
                pg_sys::ReleaseCurrentSubTransaction();
            } else {
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
            }
            pg_sys::MemoryContextSwitchTo(cxt);
            pg_sys::CurrentResourceOwner = owner;
            result
        }
    }

    fn sql(q: &str) -> Rows {
        Local.write(q, &[]).unwrap_or_else(|f| f.raise())
    }

    fn one(q: &str) -> Option<String> {
        sql(q).get(0, 0).map(str::to_string)
    }

    fn sql_error(q: &'static str) -> Caught {
        attempt(|| {
            sql(q);
        })
        .expect_err(q)
    }

    fn node_count() -> i64 {
        one("SELECT count(*) FROM repmgr.nodes")
            .unwrap()
            .parse()
            .unwrap()
    }

    fn columns(relation: &str) -> Vec<String> {
        let rows = Local
            .read(
                "SELECT attname || ' ' || pg_catalog.format_type(atttypid, atttypmod)
                   FROM pg_catalog.pg_attribute
                  WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                &[Some(relation)],
            )
            .unwrap_or_else(|f| f.raise());
        rows.rows
            .into_iter()
            .map(|r| r[0].clone().unwrap())
            .collect()
    }

    fn expect_failure<T: std::fmt::Debug>(
        r: Result<T, Failure>,
        code: PgSqlErrorCode,
        contains: &str,
    ) -> Failure {
        let f = r.expect_err(contains);
        assert_eq!(f.code, code, "{f:?}");
        assert!(
            f.message.contains(contains),
            "expected {contains:?} in {:?}",
            f.message
        );
        assert!(
            f.hint.is_some(),
            "every refusal says what to do next: {f:?}"
        );
        f
    }

    /// A node record inserted directly, standing in for another node.
    fn insert_node(id: i32, name: &str, kind: &str, upstream: Option<i32>, conninfo: &str) {
        let upstream = upstream.map(|u| u.to_string());
        Local
            .write(
                "INSERT INTO repmgr.nodes (node_id, upstream_node_id, node_name, type, conninfo, repluser, config_file)
                 VALUES ($1::int, $2::int, $3, $4, $5, 'postgres', '/x')",
                &[Some(&id.to_string()), upstream.as_deref(), Some(name), Some(kind), Some(conninfo)],
            )
            .unwrap_or_else(|f| f.raise());
    }

    /// A conninfo that reaches this very test server over its Unix socket.
    fn self_conninfo() -> String {
        let dir =
            one("SELECT split_part(current_setting('unix_socket_directories'), ',', 1)").unwrap();
        let port = one("SELECT current_setting('port')").unwrap();
        let user = one("SELECT current_user::text").unwrap();
        format!("host={dir} port={port} dbname=pgrx_tests user={user}")
    }

    #[pg_test]
    fn catalog_tables_match_repmgr() {
        assert_eq!(
            columns("repmgr.nodes"),
            [
                "node_id integer",
                "upstream_node_id integer",
                "active boolean",
                "node_name text",
                "type text",
                "location text",
                "priority integer",
                "conninfo text",
                "repluser character varying(63)",
                "slot_name text",
                "config_file text",
            ]
        );
        assert_eq!(
            columns("repmgr.events"),
            [
                "node_id integer",
                "event text",
                "successful boolean",
                "event_timestamp timestamp with time zone",
                "details text"
            ]
        );
        assert_eq!(
            columns("repmgr.monitoring_history"),
            [
                "primary_node_id integer",
                "standby_node_id integer",
                "last_monitor_time timestamp with time zone",
                "last_apply_time timestamp with time zone",
                "last_wal_primary_location pg_lsn",
                "last_wal_standby_location pg_lsn",
                "replication_lag bigint",
                "apply_lag bigint",
            ]
        );
        assert_eq!(columns("repmgr.voting_term"), ["term integer"]);
        // Constraints repmgr relies on.
        assert_eq!(one("SELECT count(*) FROM pg_constraint WHERE conrelid = 'repmgr.nodes'::regclass AND contype = 'p'").as_deref(), Some("1"));
        assert_eq!(
            one("SELECT condeferrable::text FROM pg_constraint WHERE conrelid = 'repmgr.nodes'::regclass AND contype = 'f'").as_deref(),
            Some("true")
        );
        let bad_type = sql_error(
            "INSERT INTO repmgr.nodes (node_id, node_name, type, conninfo, repluser, config_file) VALUES (5, 'x', 'bdr', '', 'u', '')",
        );
        assert_eq!(bad_type.code, PgSqlErrorCode::ERRCODE_CHECK_VIOLATION);
        let nulls = sql_error("INSERT INTO repmgr.events (node_id, event) VALUES (NULL, 'x')");
        assert_eq!(nulls.code, PgSqlErrorCode::ERRCODE_NOT_NULL_VIOLATION);
    }

    #[pg_test]
    fn views_match_repmgr() {
        assert_eq!(
            columns("repmgr.show_nodes"),
            [
                "node_id integer",
                "node_name text",
                "active boolean",
                "upstream_node_id integer",
                "upstream_node_name text",
                "type text",
                "priority integer",
                "conninfo text",
            ]
        );
        assert_eq!(
            columns("repmgr.replication_status"),
            [
                "primary_node_id integer",
                "standby_node_id integer",
                "standby_name text",
                "node_type text",
                "active boolean",
                "last_monitor_time timestamp with time zone",
                "last_wal_primary_location pg_lsn",
                "last_wal_standby_location pg_lsn",
                "replication_lag text",
                "replication_time_lag interval",
                "apply_lag text",
                "communication_time_lag interval",
            ]
        );
        // The view keeps only each standby's latest row and pretty-prints lag.
        sql("INSERT INTO repmgr.nodes VALUES (1, NULL, true, 'a', 'primary', 'default', 100, 'host=a', 'u', NULL, '/x'),
                                             (2, 1, true, 'b', 'standby', 'default', 100, 'host=b', 'u', NULL, '/x')");
        sql("INSERT INTO repmgr.monitoring_history VALUES
               (1, 2, now() - interval '2 s', now(), '0/3000000', '0/2000000', 999, 5),
               (1, 2, now(), now(), '0/3000000', '0/3000000', 2048, 0)");
        let rows = sql(
            "SELECT standby_name, replication_lag, replication_time_lag IS NOT NULL, apply_lag FROM repmgr.replication_status",
        );
        assert_eq!(rows.rows.len(), 1);
        assert_eq!(
            rows.rows[0],
            [
                Some("b".into()),
                Some("2048 bytes".into()),
                Some("t".into()),
                Some("0 bytes".into())
            ]
        );
    }

    #[pg_test]
    fn catalog_is_dumped_indexed_and_guarded() {
        let dumped = one(
            "SELECT string_agg(c::regclass::text, ',' ORDER BY c::regclass::text)
               FROM pg_extension e, unnest(e.extconfig) c WHERE e.extname = 'repmgr'",
        );
        assert_eq!(
            dumped.as_deref(),
            Some("repmgr.events,repmgr.monitoring_history,repmgr.nodes,repmgr.voting_term")
        );
        assert_eq!(
            one("SELECT pg_get_indexdef('repmgr.idx_monitoring_history_time'::regclass)")
                .as_deref(),
            Some(
                "CREATE INDEX idx_monitoring_history_time ON repmgr.monitoring_history USING btree (last_monitor_time, standby_node_id)"
            )
        );
        sql("INSERT INTO repmgr.voting_term VALUES (1)");
        assert_eq!(
            sql_error("INSERT INTO repmgr.voting_term VALUES (2)").code,
            PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION
        );
        sql("DELETE FROM repmgr.voting_term");
        assert_eq!(
            one("SELECT term::text FROM repmgr.voting_term").as_deref(),
            Some("1"),
            "the term row cannot be deleted"
        );
    }

    #[pg_test]
    fn register_primary_writes_record_term_and_event() {
        assert_eq!(
            one("SELECT repmgr.register_primary()::text").as_deref(),
            Some("1")
        );
        let row = sql("SELECT node_id, upstream_node_id, active, node_name, type, location, priority, conninfo, repluser, slot_name,
                              config_file = current_setting('config_file')
                         FROM repmgr.nodes");
        assert_eq!(row.rows.len(), 1);
        let expected = [
            Some("1"),
            None,
            Some("t"),
            Some("alpha"),
            Some("primary"),
            Some("dc1"),
            Some("70"),
            Some("host=127.0.0.1 port=1 dbname=pgrx_tests user=postgres password=s3cr3t-pw"),
            Some("postgres"),
            Some("repmgr_slot_1"),
            Some("t"),
        ];
        assert_eq!(row.rows[0], expected.map(|v| v.map(str::to_string)));
        assert_eq!(
            one("SELECT term::text FROM repmgr.voting_term").as_deref(),
            Some("1")
        );
        let event = sql("SELECT node_id, event, successful, details FROM repmgr.events");
        assert_eq!(
            event.rows,
            [[
                Some("1".into()),
                Some("primary_register".into()),
                Some("t".into()),
                Some("node 1 (\"alpha\") registered as primary".into())
            ]]
        );
    }

    #[pg_test]
    fn register_primary_twice_needs_force() {
        sql("SELECT repmgr.register_primary()");
        let again = sql_error("SELECT repmgr.register_primary()");
        assert_eq!(again.code, PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT);
        assert_eq!(
            again.message,
            "node 1 is already registered, as primary \"alpha\""
        );
        assert_eq!(
            again.hint.as_deref(),
            Some("To update its record, run SELECT repmgr.register_primary(force => true).")
        );
        assert_eq!(node_count(), 1);
        sql("UPDATE repmgr.nodes SET priority = 5");
        sql("SELECT repmgr.register_primary(force => true)");
        assert_eq!(
            one("SELECT priority::text FROM repmgr.nodes").as_deref(),
            Some("70")
        );
        assert_eq!(
            one("SELECT details FROM repmgr.events ORDER BY event_timestamp DESC, details LIMIT 1")
                .as_deref(),
            Some("existing primary record updated")
        );
    }

    #[pg_test]
    fn register_primary_refuses_bad_settings_and_changes_nothing() {
        let base = Settings::current();
        let mut s = base.clone();
        s.node_id = 0;
        expect_failure(
            registration::register_primary(&s, false),
            PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
            "repmgr.node_id is not set",
        );
        let mut s = base.clone();
        s.conninfo = None;
        expect_failure(
            registration::register_primary(&s, false),
            PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
            "repmgr.conninfo is not set on node 1",
        );
        let mut s = base.clone();
        s.conninfo = Some("host=a password='s3cr3t-pw".into());
        let f = expect_failure(
            registration::register_primary(&s, false),
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "not a valid connection string",
        );
        assert!(!format!("{f:?}").contains(PASSWORD), "{f:?}");
        let mut s = base.clone();
        s.node_name = "x".repeat(64);
        expect_failure(
            registration::register_primary(&s, false),
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "64 bytes long",
        );
        let mut s = base.clone();
        s.replication_user = Some("u".repeat(64));
        expect_failure(
            registration::register_primary(&s, false),
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "replication user name",
        );
        insert_node(2, "alpha", "standby", None, "host=b");
        expect_failure(
            registration::register_primary(&base, false),
            PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
            "already used by node 2",
        );
        assert_eq!(node_count(), 1);
        assert_eq!(
            one("SELECT count(*) FROM repmgr.events").as_deref(),
            Some("0")
        );
    }

    #[pg_test]
    fn register_primary_refuses_a_witness_and_demotes_dead_primaries() {
        insert_node(1, "alpha", "witness", None, "host=a");
        expect_failure(
            registration::register_primary(&Settings::current(), true),
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "is the witness",
        );
        sql("DELETE FROM repmgr.nodes");
        // A registered primary that cannot be reached is not a running primary: mark it inactive.
        insert_node(9, "old", "primary", None, "host=127.0.0.1 port=1 dbname=x");
        registration::register_primary(&Settings::current(), false).unwrap_or_else(|f| f.raise());
        assert_eq!(
            one("SELECT active::text FROM repmgr.nodes WHERE node_id = 9").as_deref(),
            Some("false")
        );
        assert_eq!(
            one("SELECT active::text FROM repmgr.nodes WHERE node_id = 1").as_deref(),
            Some("true")
        );
    }

    #[pg_test]
    fn standby_registration_on_a_primary_is_refused() {
        let e = sql_error("SELECT repmgr.register_standby()");
        assert_eq!(
            e.code,
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
        );
        assert_eq!(
            e.message,
            "cannot register node 1 (\"alpha\") as a standby: this server is not in recovery"
        );
        assert!(e.hint.unwrap().contains("register_primary()"));
        let f = expect_failure(
            registration::register_standby(&Settings::current(), Some(1), false),
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "cannot be its own upstream",
        );
        assert!(f.hint.unwrap().contains("omit upstream_node_id"));
        assert_eq!(node_count(), 0);
    }

    #[pg_test]
    fn witness_registration_refusals() {
        let s = Settings::current();
        let f = expect_failure(
            registration::register_witness(&s, "host=a password='s3cr3t-pw", false),
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "primary_conninfo on node 1",
        );
        assert!(!format!("{f:?}").contains(PASSWORD));
        expect_failure(
            registration::register_witness(&s, "host=127.0.0.1 port=1 dbname=x", false),
            PgSqlErrorCode::ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
            "could not connect to the primary",
        );
        expect_failure(
            registration::register_witness(&s, &self_conninfo(), false),
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "leads to this witness itself",
        );
        assert_eq!(node_count(), 0);
    }

    #[pg_test]
    fn own_conninfo_must_not_lead_elsewhere() {
        // This server reached under another node id is "a different server".
        let mut s = Settings::current();
        s.node_id = 4;
        s.node_name = "delta".into();
        s.conninfo = Some(self_conninfo());
        expect_failure(
            registration::register_primary(&s, false),
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "leads to a different server",
        );
        s.node_id = 1;
        s.node_name = "alpha".into();
        assert_eq!(
            registration::register_primary(&s, false).unwrap_or_else(|f| f.raise()),
            1
        );
    }

    #[pg_test]
    fn unregister_node_rules() {
        sql("SELECT repmgr.register_primary()");
        let e = sql_error("SELECT repmgr.unregister_node()");
        assert_eq!(e.code, PgSqlErrorCode::ERRCODE_OBJECT_IN_USE);
        assert!(
            e.message
                .contains("it is the active primary and it is running"),
            "{e:?}"
        );
        let e = sql_error("SELECT repmgr.unregister_node(99)");
        assert_eq!(e.code, PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT);
        assert_eq!(e.message, "node 99 is not registered");
        insert_node(2, "beta", "standby", Some(1), "host=b");
        insert_node(3, "gamma", "standby", Some(2), "host=c");
        let e = sql_error("SELECT repmgr.unregister_node(2)");
        assert_eq!(
            e.code,
            PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST
        );
        assert_eq!(
            e.message,
            "cannot unregister node 2 (\"beta\"): node 3 (\"gamma\") still use it as upstream"
        );
        assert_eq!(node_count(), 3);
        sql("SELECT repmgr.unregister_node(3)");
        sql("SELECT repmgr.unregister_node(2)");
        assert_eq!(node_count(), 1);
        let events = sql(
            "SELECT node_id, event, details FROM repmgr.events WHERE event LIKE '%unregister' ORDER BY node_id",
        );
        assert_eq!(
            events.rows[0],
            [
                Some("2".into()),
                Some("standby_unregister".into()),
                Some("node 2 (\"beta\") unregistered by node 1 (\"alpha\")".into())
            ]
        );
        // A running primary's record stays, forced or not: it keeps its role whatever its
        // record says, so removing the record would only confuse the cluster.
        let e = sql_error("SELECT repmgr.unregister_node(1, force => true)");
        assert_eq!(e.code, PgSqlErrorCode::ERRCODE_OBJECT_IN_USE);
        assert!(
            e.message
                .contains("it is the active primary and it is running"),
            "{e:?}"
        );
        // Forced, a node others stream from goes, and their upstream is cleared.
        insert_node(2, "beta", "standby", Some(1), "host=b");
        insert_node(3, "gamma", "standby", Some(2), "host=c");
        sql("SELECT repmgr.unregister_node(2, force => true)");
        assert_eq!(
            one("SELECT coalesce(upstream_node_id::text, 'cleared') FROM repmgr.nodes WHERE node_id = 3").as_deref(),
            Some("cleared")
        );
    }

    #[pg_test]
    fn node_status_on_a_primary() {
        sql("SELECT repmgr.register_primary()");
        let r = sql(
            "SELECT node_id, node_name, registered_type, role, in_recovery, timeline >= 1, current_lsn IS NOT NULL,
                    receive_lsn IS NULL, replication_lag_bytes IS NULL, apply_lag_bytes IS NULL, active_slots, inactive_slots
               FROM repmgr.node_status()",
        );
        let got: Vec<_> = r.rows[0]
            .iter()
            .map(|v| v.as_deref().unwrap_or("NULL"))
            .collect();
        assert_eq!(
            got,
            [
                "1", "alpha", "primary", "primary", "f", "t", "t", "t", "t", "t", "0", "0"
            ]
        );
        assert_eq!(
            one("SELECT pg_typeof(current_lsn)::text FROM repmgr.node_status()").as_deref(),
            Some("pg_lsn")
        );
        assert_eq!(
            one("SELECT (current_lsn <= pg_current_wal_lsn())::text FROM repmgr.node_status()")
                .as_deref(),
            Some("true")
        );
        assert_eq!(
            one("SELECT count(*) FROM repmgr.replication_lag()").as_deref(),
            Some("0")
        );
    }

    #[pg_test]
    fn node_check_speaks_up_about_quorum_and_settings() {
        sql("SELECT repmgr.register_primary()");
        let status = |check: &str| {
            let q = format!(
                "SELECT status || ': ' || details FROM repmgr.node_check() WHERE \"check\" = '{check}'"
            );
            Local
                .read(&q, &[])
                .unwrap_or_else(|f| f.raise())
                .get(0, 0)
                .map(str::to_string)
                .unwrap_or_default()
        };
        assert_eq!(status("role"), "OK: registered and running as primary");
        assert!(
            status("worker").starts_with("OK: running (pid "),
            "{}",
            status("worker")
        );
        assert!(
            status("failover quorum").starts_with("WARNING: a single node"),
            "{}",
            status("failover quorum")
        );
        assert_eq!(
            status("failover settings"),
            "OK: heartbeat 200 ms, fence 1600 ms, lease 2100 ms"
        );
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            status("extension version"),
            format!("OK: library and catalog are both {version}")
        );
        assert_eq!(
            one("SELECT repmgr.library_version()").as_deref(),
            Some(version)
        );
        // Two data nodes and no witness: any loss leaves no majority.
        insert_node(2, "beta", "standby", Some(1), "host=127.0.0.1 port=1");
        let quorum = status("failover quorum");
        assert!(
            quorum.starts_with("CRITICAL: only 2 voters (2 data nodes, 0 witness)"),
            "{quorum}"
        );
        assert!(quorum.contains("register a witness"), "{quorum}");
        insert_node(3, "gamma", "witness", None, "host=127.0.0.1 port=1");
        assert!(
            status("failover quorum")
                .starts_with("OK: 3 voters (1 witness): an election needs 2 votes"),
            "{}",
            status("failover quorum")
        );
        // An invalid timing combination is reported with the rule it breaks.
        let mut s = Settings::current();
        s.failover.timing = Err("fence_timeout must be below lease_timeout".into());
        let checks = crate::check::node_check(&s).unwrap_or_else(|f| f.raise());
        let timing = checks
            .iter()
            .find(|c| c.name == "failover settings")
            .unwrap();
        assert_eq!(timing.status, "CRITICAL");
        assert!(
            timing
                .details
                .contains("fence_timeout must be below lease_timeout")
        );
    }

    #[pg_test]
    fn manual_requests_go_through_the_worker() {
        // This server's worker watches database "postgres", which has no extension: it answers
        // at once with why it cannot act, rather than leaving the caller waiting.
        for q in ["SELECT repmgr.promote()", "SELECT repmgr.follow(2)"] {
            let e = sql_error(q);
            assert_eq!(
                e.code,
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "{e:?}"
            );
            assert!(e.message.contains("CREATE EXTENSION repmgr"), "{e:?}");
            assert!(e.hint.is_some(), "{e:?}");
        }
    }

    #[pg_test]
    fn repmgr_compatible_shared_state_functions() {
        sql("SELECT repmgr.set_local_node_id(1)");
        sql("SELECT repmgr.set_local_node_id(2)");
        assert_eq!(
            one("SELECT repmgr.get_local_node_id()::text").as_deref(),
            Some("1"),
            "set only once"
        );
        assert_eq!(
            one("SELECT repmgr.get_upstream_last_seen()::text").as_deref(),
            Some("-1")
        );
        sql("SELECT repmgr.set_upstream_last_seen(7)");
        assert_eq!(
            one("SELECT repmgr.get_upstream_last_seen()::text").as_deref(),
            Some("0")
        );
        assert_eq!(
            one("SELECT repmgr.get_upstream_node_id()::text").as_deref(),
            Some("7")
        );
        let e = sql_error("SELECT repmgr.set_upstream_node_id(1)");
        assert_eq!(
            e.message,
            "upstream node id cannot be the same as the local node id"
        );
        sql("SELECT repmgr.set_upstream_node_id(3)");
        assert_eq!(
            one("SELECT repmgr.get_upstream_node_id()::text").as_deref(),
            Some("3")
        );
        assert_eq!(
            one("SELECT repmgr.get_new_primary()::text").as_deref(),
            Some("-1")
        );
        sql("SELECT repmgr.notify_follow_primary(5)");
        assert_eq!(
            one("SELECT repmgr.get_new_primary()::text").as_deref(),
            Some("5")
        );
        sql("SELECT repmgr.reset_voting_status()");
        assert_eq!(
            one("SELECT repmgr.get_new_primary()::text").as_deref(),
            Some("-1")
        );
        sql("SELECT repmgr.notify_follow_primary(NULL)");
        assert_eq!(
            one("SELECT repmgr.get_new_primary()::text").as_deref(),
            Some("-1"),
            "strict: NULL changes nothing"
        );
        assert_eq!(
            one("SELECT (repmgr.standby_get_last_updated() = '2000-01-01 00:00:00+00')::text")
                .as_deref(),
            Some("true")
        );
        let set = one("SELECT repmgr.standby_set_last_updated()::text").unwrap();
        assert_eq!(
            one("SELECT repmgr.standby_get_last_updated()::text"),
            Some(set)
        );
        // The monitoring worker runs here (it idles: the extension is not in its database).
        assert_eq!(
            one("SELECT (repmgr.get_repmgrd_pid() = (SELECT pid FROM pg_stat_activity WHERE backend_type = 'repmgr monitor'))::text").as_deref(),
            Some("true")
        );
        assert_eq!(
            one("SELECT repmgr.repmgrd_is_running()::text").as_deref(),
            Some("true")
        );
        assert_eq!(
            one("SELECT repmgr.get_wal_receiver_pid()::text").as_deref(),
            Some("0")
        );
        sql("SELECT repmgr.repmgrd_pause(true)");
        assert_eq!(
            one("SELECT repmgr.repmgrd_is_paused()::text").as_deref(),
            Some("true")
        );
        assert_eq!(
            std::fs::read_to_string("pg_stat/repmgrd_state.txt").unwrap(),
            "1:1"
        );
        sql("SELECT repmgr.repmgrd_pause(false)");
        assert_eq!(
            std::fs::read_to_string("pg_stat/repmgrd_state.txt").unwrap(),
            "1:0"
        );
        assert_eq!(
            one("SELECT repmgr.repmgrd_is_paused()::text").as_deref(),
            Some("false")
        );
        sql("SELECT repmgr.pause(true)");
        assert_eq!(
            one("SELECT repmgr.repmgrd_is_paused()::text").as_deref(),
            Some("true")
        );
        sql("SELECT repmgr.pause(false)");
        assert_eq!(
            one("SELECT repmgr.repmgrd_is_paused()::text").as_deref(),
            Some("false")
        );

        // The last error raised on this node is kept for node_status(); other tests raise
        // errors concurrently, so allow a few tries to observe our own.
        let seen = (0..20).any(|_| {
            let _ = sql_error("SELECT repmgr.unregister_node(4242)");
            one("SELECT last_error FROM repmgr.node_status()").as_deref()
                == Some("node 4242 is not registered")
        });
        assert!(seen, "last_error shows the latest failure");
        assert_eq!(one("SELECT (last_error_time > now() - interval '1 minute')::text FROM repmgr.node_status()").as_deref(), Some("true"));
    }

    #[pg_test]
    fn nothing_is_executable_by_public() {
        let public_exec = one(
            "SELECT count(*) FROM pg_proc p WHERE p.pronamespace = 'repmgr'::regnamespace
                AND (p.proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'))",
        );
        assert_eq!(public_exec.as_deref(), Some("0"));
        sql("CREATE ROLE repmgr_test_nobody NOLOGIN");
        let e = attempt(|| {
            sql("SET LOCAL ROLE repmgr_test_nobody");
            sql("SELECT repmgr.get_new_primary()");
        })
        .unwrap_err();
        assert_eq!(e.code, PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE);
        assert_eq!(e.message, "permission denied for schema repmgr");
        sql("GRANT USAGE ON SCHEMA repmgr TO repmgr_test_nobody");
        for (q, msg) in [
            (
                "SELECT repmgr.get_new_primary()",
                "permission denied for function get_new_primary",
            ),
            (
                "SELECT repmgr.register_primary()",
                "permission denied for function register_primary",
            ),
            (
                "SELECT * FROM repmgr.nodes",
                "permission denied for table nodes",
            ),
            (
                "SELECT * FROM repmgr.show_nodes",
                "permission denied for view show_nodes",
            ),
        ] {
            let e = attempt(|| {
                sql("SET LOCAL ROLE repmgr_test_nobody");
                sql(q);
            })
            .unwrap_err();
            assert_eq!(
                (e.code, e.message.as_str()),
                (PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, msg),
                "{q}"
            );
        }
        // What the README tells a DBA to grant is enough.
        sql("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA repmgr TO repmgr_test_nobody");
        sql("GRANT SELECT ON ALL TABLES IN SCHEMA repmgr TO repmgr_test_nobody");
        let ok = attempt(|| {
            sql("SET LOCAL ROLE repmgr_test_nobody");
            let v = one(
                "SELECT repmgr.get_new_primary()::text || (SELECT count(*) FROM repmgr.show_nodes)::text",
            );
            sql("RESET ROLE");
            v
        });
        assert_eq!(ok.unwrap().as_deref(), Some("-10"));
    }

    #[pg_test]
    fn passwords_never_show() {
        assert_eq!(
            one("SELECT repmgr.mask_conninfo('host=a password=''x y'' user=b')").as_deref(),
            Some("host=a password=******** user=b")
        );
        sql("SELECT repmgr.register_primary()");
        let shown = one("SELECT conninfo FROM repmgr.show_nodes").unwrap();
        assert_eq!(
            shown,
            "host=127.0.0.1 port=1 dbname=pgrx_tests user=postgres password=********"
        );
        let everything = one("SELECT string_agg(e::text, ' ') FROM repmgr.events e").unwrap();
        assert!(!everything.contains(PASSWORD));
        let status = one("SELECT s::text FROM repmgr.node_status() s").unwrap();
        assert!(!status.contains(PASSWORD));
        // An error that quotes a connection string masks it too.
        let e = attempt(|| {
            registration::register_witness(
                &Settings::current(),
                "host=a password=s3cr3t-pw bogus",
                false,
            )
            .unwrap_or_else(|f| f.raise())
        })
        .unwrap_err();
        assert!(!format!("{e:?}").contains(PASSWORD), "{e:?}");
        assert!(e.detail.unwrap().contains("password=********"));
    }
}
