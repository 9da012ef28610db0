//! `DROP EXTENSION repmgr` (or `DROP SCHEMA repmgr`) on a node whose catalog still lists
//! registered nodes is refused, with what to do instead.
//!
//! The catalog is what every node's monitoring reads, and a drop replicates to the standbys:
//! dropped by accident on a running cluster, it leaves nothing to monitor with and nothing
//! to rebuild from. The failover protocol itself survives it (its state is in shared memory
//! and the data directory), so an operator who means it — to rebuild the catalog in place,
//! as the README's recovery procedure does — sets `repmgr.allow_drop_extension = on` for the
//! session first, and is never locked out of repairing a node.

use std::ffi::CStr;

use pgrx::PgSqlErrorCode;
use pgrx::prelude::*;

use crate::db::{Db, Local};
use crate::error::Failure;

static mut PREVIOUS: pg_sys::ProcessUtility_hook_type = None;

/// Installs the check for every backend. Only while preloading.
pub fn install() {
    unsafe {
        PREVIOUS = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

/// Whether `stmt` drops the repmgr extension or its schema.
unsafe fn drops_repmgr(stmt: *mut pg_sys::Node) -> bool {
    if stmt.is_null() || unsafe { (*stmt).type_ } != pg_sys::NodeTag::T_DropStmt {
        return false;
    }
    let drop = unsafe { &*(stmt as *mut pg_sys::DropStmt) };
    if drop.removeType != pg_sys::ObjectType::OBJECT_EXTENSION
        && drop.removeType != pg_sys::ObjectType::OBJECT_SCHEMA
    {
        return false;
    }
    let objects = unsafe { pgrx::PgList::<pg_sys::Node>::from_pg(drop.objects) };
    objects.iter_ptr().any(|n| {
        !n.is_null()
            && unsafe { (*n).type_ } == pg_sys::NodeTag::T_String
            && unsafe { CStr::from_ptr((*(n as *mut pg_sys::String)).sval) }.to_bytes() == b"repmgr"
    })
}

/// The registered nodes of this database's catalog, when it has one.
fn registered() -> i64 {
    let exists = Local
        .read(
            "SELECT pg_catalog.to_regclass('repmgr.nodes') IS NOT NULL",
            &[],
        )
        .ok()
        .is_some_and(|r| r.get(0, 0) == Some("t"));
    if !exists {
        return 0;
    }
    Local
        .read("SELECT count(*) FROM repmgr.nodes", &[])
        .ok()
        .and_then(|r| r.get(0, 0).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    let stmt = unsafe { (*pstmt).utilityStmt };
    if unsafe { drops_repmgr(stmt) } && !crate::config::allow_drop_extension() {
        let n = registered();
        if n > 0 {
            Failure::new(
                PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
                format!(
                    "cannot drop the repmgr extension: its catalog lists {n} registered node(s), which this cluster's monitoring and failover use"
                ),
            )
            .detail("The drop would replicate to every standby and leave no node list to monitor with or to rebuild from.")
            .hint("To remove repmgr from this cluster, unregister every node first (repmgr standby/witness/primary unregister). To rebuild the catalog in place, save repmgr.nodes (\\copy repmgr.nodes TO 'nodes.csv' CSV), then SET repmgr.allow_drop_extension = on in this session and see the README's \"Recovering a lost catalog\".")
            .raise();
        }
    }
    let previous = unsafe { PREVIOUS };
    unsafe {
        match previous {
            Some(previous) => previous(
                pstmt,
                query,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
            None => pg_sys::standard_ProcessUtility(
                pstmt,
                query,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
        }
    }
}
