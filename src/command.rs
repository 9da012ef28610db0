//! Shell commands from settings (notifications, the child-disconnect command): started through
//! `/bin/sh`, waited for a bounded time, and reaped later if they run longer.
//!
//! Their placeholders are already substituted and quoted (see `repmgr_core::template`).
//! Commands may run at times when raising an error is not allowed (after a commit), so
//! nothing here raises: problems are logged.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pgrx::prelude::*;

/// Commands still running, with what they were for, reaped opportunistically.
static RUNNING: Mutex<Vec<(String, Child)>> = Mutex::new(Vec::new());

/// Runs `line`, waiting up to `wait` for it to finish. Returns its exit status if it finished;
/// a command still running then is reaped by a later [`reap`]. `what` names it in the log.
pub fn run(what: &str, line: &str, wait: Duration) -> Option<ExitStatus> {
    reap();
    let mut child = match Command::new("/bin/sh")
        .arg("-c")
        .arg(line)
        .stdin(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            warning!("repmgr: could not start {what}: {e}");
            return None;
        }
    };
    let until = Instant::now() + wait;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                report(what, status);
                return Some(status);
            }
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => break,
            Err(_) => return None,
        }
    }
    if let Ok(mut running) = RUNNING.lock() {
        running.push((what.to_string(), child));
    }
    None
}

fn report(what: &str, status: ExitStatus) {
    if !status.success() {
        warning!("repmgr: {what} failed ({status})");
    }
}

/// Collects commands that have finished since they were started.
pub fn reap() {
    let Ok(mut running) = RUNNING.lock() else {
        return;
    };
    running.retain_mut(|(what, child)| match child.try_wait() {
        Ok(Some(status)) => {
            report(what, status);
            false
        }
        Ok(None) => true,
        Err(_) => false,
    });
}
