//! `pg_lsn` as a Rust type for function results (pgrx has no mapping for it).
//!
//! A `pg_lsn` datum is the 64-bit WAL position passed by value, so the mapping is direct and
//! SQL callers get a real `pg_lsn` they can subtract and compare.

use pgrx::callconv::{BoxRet, FcInfo};
use pgrx::datum::Datum;
use pgrx::prelude::*;
use repmgr_core::lsn::Lsn;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PgLsn(pub Lsn);

impl PgLsn {
    /// Parses PostgreSQL's `X/Y` text form.
    pub fn parse(text: Option<&str>) -> Option<PgLsn> {
        text.and_then(Lsn::parse).map(PgLsn)
    }
}

impl IntoDatum for PgLsn {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(pg_sys::Datum::from(self.0.0))
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::PG_LSNOID
    }
}

impl FromDatum for PgLsn {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<PgLsn> {
        (!is_null).then(|| PgLsn(Lsn(datum.value() as u64)))
    }
}

unsafe impl BoxRet for PgLsn {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
        unsafe { fcinfo.return_raw_datum(pg_sys::Datum::from(self.0.0)) }
    }
}

pgrx::impl_sql_translatable!(PgLsn, "pg_lsn");
