//! User-facing failures: what went wrong, on which node, and what to do next.
//!
//! Operations return `Result<T, Failure>` and the SQL entry points raise the failure as a
//! PostgreSQL error with its SQLSTATE, detail and hint. Raising also leaves the message in
//! shared memory, so `repmgr.node_status()` can show the last error after the session is gone.

use pgrx::PgSqlErrorCode;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use repmgr_core::conninfo;

#[derive(Debug, Clone)]
pub struct Failure {
    pub code: PgSqlErrorCode,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

pub type Result<T> = std::result::Result<T, Failure>;

impl Failure {
    pub fn new(code: PgSqlErrorCode, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// The node is in the wrong state for the request (SQLSTATE 55000).
    pub fn state(message: impl Into<String>) -> Failure {
        Failure::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            message,
        )
    }

    /// A value given by the caller or in a setting is not acceptable (SQLSTATE 22023).
    pub fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, message)
    }

    /// A required setting is missing (SQLSTATE F0000).
    pub fn config(message: impl Into<String>) -> Failure {
        Failure::new(PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR, message)
    }

    /// Whether the other side never answered (could not connect, or timed out), as opposed
    /// to answering with an error.
    pub fn is_no_answer(&self) -> bool {
        matches!(
            self.code,
            PgSqlErrorCode::ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION
                | PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE
        )
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Failure {
        self.detail = Some(detail.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Failure {
        self.hint = Some(hint.into());
        self
    }

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

/// Masks passwords in free text that may quote connection strings.
pub fn mask_text(text: &str) -> String {
    conninfo::mask_in_text(text)
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
