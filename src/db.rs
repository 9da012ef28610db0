//! One interface for catalog SQL, wherever it runs: locally through SPI, or on another node
//! through a [`crate::peer::Peer`] connection.
//!
//! Registration on a standby writes on the primary, a witness keeps a local copy, and the
//! primary writes locally; the catalog code is written once against [`Db`] for all three.
//! Values travel as text in both directions (parameters are cast in the SQL, `$1::int`), which
//! is exactly libpq's text protocol and costs nothing that matters for catalog operations.

use std::ffi::CStr;
use std::panic::AssertUnwindSafe;

use pgrx::bgworkers::BackgroundWorker;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

use crate::error::Result;

pub use repmgr_pq::Rows;

pub trait Db {
    /// Runs a statement that only reads. Safe on a standby.
    fn read(&mut self, sql: &str, params: &[Option<&str>]) -> Result<Rows>;
    /// Runs a statement that writes.
    fn write(&mut self, sql: &str, params: &[Option<&str>]) -> Result<Rows>;
    /// Where statements run, for messages: "this node" or "node 1 (\"a\")".
    fn label(&self) -> String;
}

/// This server, through SPI, inside the caller's transaction.
pub struct Local;

fn spi_args(params: &[Option<&str>]) -> Vec<DatumWithOid<'static>> {
    params
        .iter()
        .map(|p| match p {
            Some(v) => DatumWithOid::from(v.to_string()),
            None => DatumWithOid::null::<String>(),
        })
        .collect()
}

/// Copies the last SPI result out as text, whatever the column types.
fn spi_rows() -> Rows {
    let mut rows = Rows::default();
    unsafe {
        let table = pg_sys::SPI_tuptable;
        if table.is_null() {
            return rows;
        }
        let desc = (*table).tupdesc;
        let natts = (*desc).natts;
        for col in 1..=natts {
            let name = pg_sys::SPI_fname(desc, col);
            rows.columns.push(if name.is_null() {
                String::new()
            } else {
                CStr::from_ptr(name).to_string_lossy().into_owned()
            });
        }
        for i in 0..(*table).numvals as usize {
            let tuple = *(*table).vals.add(i);
            let row = (1..=natts)
                .map(|col| {
                    let v = pg_sys::SPI_getvalue(tuple, desc, col);
                    (!v.is_null()).then(|| CStr::from_ptr(v).to_string_lossy().into_owned())
                })
                .collect();
            rows.rows.push(row);
        }
    }
    rows
}

impl Db for Local {
    fn read(&mut self, sql: &str, params: &[Option<&str>]) -> Result<Rows> {
        let args = spi_args(params);
        Ok(Spi::connect(|c| {
            c.select(sql, None, &args)
                .expect("SPI reports failures as errors");
            spi_rows()
        }))
    }

    fn write(&mut self, sql: &str, params: &[Option<&str>]) -> Result<Rows> {
        let args = spi_args(params);
        Ok(Spi::connect_mut(|c| {
            c.update(sql, None, &args)
                .expect("SPI reports failures as errors");
            spi_rows()
        }))
    }

    fn label(&self) -> String {
        "this node".into()
    }
}

/// Runs `f` in a transaction of its own, as the worker must for any local SQL.
pub fn in_transaction<R>(f: impl FnOnce() -> R) -> R {
    BackgroundWorker::transaction(AssertUnwindSafe(f))
}

/// Runs `f`, which writes to this node, in a transaction of its own. On a fenced primary its
/// commit would fail, and an error at commit ends the worker, so it is not even started.
pub fn write_transaction<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    match crate::fence::refusal() {
        Some(fenced) => Err(fenced),
        None => in_transaction(f),
    }
}
