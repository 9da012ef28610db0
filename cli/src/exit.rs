//! Exit codes, numbered as repmgr numbers them so that scripts keep working.

/// Success.
pub const SUCCESS: i32 = 0;
/// Bad configuration, metadata or precondition (most refusals).
pub const ERR_BAD_CONFIG: i32 = 1;
/// A database connection could not be made.
pub const ERR_DB_CONN: i32 = 6;
/// The command ran but found problems (warnings in `cluster show`).
pub const ERR_NODE_STATUS: i32 = 25;
