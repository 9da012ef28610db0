//! Raising a [`Failure`] as a PostgreSQL ERROR at the SQL boundary.
//!
//! Raising also leaves the message in shared memory, so `repmgr.node_status()` can show the
//! last error after the session is gone. Passwords are masked in every part first, in case a
//! connection string found its way into the text.

use pgrx::PgSqlErrorCode;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

use crate::error::{Failure, Result, mask_text};

impl Failure {
    /// Raises this failure as an ERROR. Passwords are masked in every part first, in case a
    /// connection string found its way into the text.
    pub fn raise(self) -> ! {
        let message = mask_text(&self.message);
        crate::shmem::record_error(&message);
        let mut report = ErrorReport::new(self.code, message, "repmgr");
        if let Some(d) = self.detail {
            report = report.set_detail(mask_text(&d));
        }
        if let Some(h) = self.hint {
            report = report.set_hint(mask_text(&h));
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }
}

/// A required argument of SQL function `function`, or a clear error naming it (SQLSTATE
/// 22004) instead of the generic one for a NULL where a value is needed.
pub fn required<T>(value: Option<T>, name: &str, function: &str) -> T {
    value.unwrap_or_else(|| {
        Failure::new(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{function}: {name} must not be NULL"),
        )
        .hint(format!(
            "Pass a value for {name}, or leave it out to use its default."
        ))
        .raise()
    })
}

/// Unwraps an operation's result at the SQL boundary.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|f| f.raise())
    }
}
