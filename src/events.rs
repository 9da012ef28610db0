//! Events: a row in `repmgr.events` for each action, and the notification command.
//!
//! The row is written on the primary, in the same transaction as the change it describes, so
//! a rolled-back change leaves no event. The notification command runs only after this node's
//! transaction commits, for the same reason, and it never delays the caller by more than
//! [`NOTIFY_WAIT`]: a slow script keeps running in the background and is reaped later.

use std::time::Duration;

use pgrx::{PgXactCallbackEvent, register_xact_callback};
use repmgr_core::{conninfo, template};

use crate::config::Settings;
use crate::db::{Db, Local};
use crate::error::{Result, mask_text};

/// How long a committing session waits to collect a notification command's exit status.
const NOTIFY_WAIT: Duration = Duration::from_secs(1);

/// One event about one node.
#[derive(Debug, Clone, Default)]
pub struct Event {
    pub node_id: i32,
    pub name: &'static str,
    pub successful: bool,
    pub details: String,
    /// `%p`: the primary (or other node) the event refers to, for extended events.
    pub other_node_id: Option<i32>,
    /// `%c`: that node's conninfo (its password is masked before use).
    pub other_conninfo: Option<String>,
    /// `%a`: that node's name.
    pub other_name: Option<String>,
    /// When it happened (`TimestampTz`), for events written later than they occurred.
    pub at: Option<i64>,
}

impl Event {
    pub fn new(node_id: i32, name: &'static str, details: impl Into<String>) -> Event {
        Event {
            node_id,
            name,
            successful: true,
            details: details.into(),
            ..Default::default()
        }
    }

    pub fn about(mut self, node_id: i32, name: &str, conninfo_text: &str) -> Event {
        self.other_node_id = Some(node_id);
        self.other_name = Some(name.to_string());
        self.other_conninfo = Some(conninfo_text.to_string());
        self
    }
}

/// Writes the event through `db` (the primary, or `None` when no primary is writable) and
/// arranges for the notification command to run after this node's transaction commits (the
/// worker, too, records events inside a local transaction).
pub fn record(db: Option<&mut dyn Db>, settings: &Settings, mut ev: Event) -> Result<()> {
    ev.details = mask_text(&ev.details);
    let timestamp = match db {
        Some(db) => crate::catalog::insert_event(
            db,
            ev.node_id,
            ev.name,
            ev.successful,
            &ev.details,
            ev.at,
        )?,
        None => Local
            .read("SELECT pg_catalog.now()::text", &[])?
            .get(0, 0)
            .unwrap_or_default()
            .to_string(),
    };
    if let Some(cmd) = settings.event_notification_command.clone()
        && settings.notifies(ev.name)
    {
        let line = render(&cmd, &ev, &timestamp);
        register_xact_callback(PgXactCallbackEvent::Commit, move || notify(ev.name, line));
    }
    Ok(())
}

/// Fills in repmgr's placeholders.
fn render(cmd: &str, ev: &Event, timestamp: &str) -> String {
    let id = ev.node_id.to_string();
    let other = ev.other_node_id.map(|p| p.to_string()).unwrap_or_default();
    let conn = ev
        .other_conninfo
        .as_deref()
        .map(conninfo::mask)
        .unwrap_or_default();
    let values = [
        ('n', id.as_str()),
        ('e', ev.name),
        ('s', if ev.successful { "1" } else { "0" }),
        ('t', timestamp),
        ('d', ev.details.as_str()),
        ('p', other.as_str()),
        ('c', conn.as_str()),
        ('a', ev.other_name.as_deref().unwrap_or("")),
    ];
    template::render(cmd, &values)
}

/// Runs after commit, where raising an error would take the server down: only logs. The
/// worker never waits (monitoring must go on); a session waits up to [`NOTIFY_WAIT`].
fn notify(event: &str, line: String) {
    let wait = if crate::latch::active() {
        Duration::ZERO
    } else {
        NOTIFY_WAIT
    };
    crate::command::run(
        &format!("event_notification_command for event \"{event}\""),
        &line,
        wait,
    );
}
