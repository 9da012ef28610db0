//! User-facing failures: what went wrong, on which node, and what to do next.
//!
//! Operations return `Result<T, Failure>`, plain data; the SQL entry points raise the failure
//! as a PostgreSQL error with its SQLSTATE, detail and hint ([`crate::raise`]).

use pgrx::PgSqlErrorCode;
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
}

/// Masks passwords in free text that may quote connection strings.
pub fn mask_text(text: &str) -> String {
    conninfo::mask_in_text(text)
}
