//! Running `repmgr` on another node's machine: over ssh, as repmgr does, or directly when the
//! node lives on this machine (a loopback address, a Unix socket, or an address of ours).

use std::io::Read;
use std::net::{IpAddr, ToSocketAddrs, UdpSocket};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use repmgr_core::conninfo;
use repmgr_core::template::shell_quote;

use crate::config::Config;
use crate::conn::debug;
use crate::exit::{ERR_BAD_SSH, Failure, Result};
use repmgr_core::node::NodeRecord;

/// Whether `host` (from a conninfo) is this machine.
pub fn is_local_host(host: &str) -> bool {
    if host.is_empty() || host.starts_with('/') || host.starts_with('@') || host == "localhost" {
        return true;
    }
    let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => (host, 0)
            .to_socket_addrs()
            .map(|a| a.map(|s| s.ip()).collect())
            .unwrap_or_default(),
    };
    // Binding succeeds only to an address this machine has.
    addrs
        .iter()
        .any(|ip| ip.is_loopback() || UdpSocket::bind((*ip, 0)).is_ok())
}

/// The first host of a node's conninfo (empty: the default Unix socket).
pub fn host_of(node: &NodeRecord) -> String {
    conninfo::get(&node.conninfo, "host")
        .or_else(|| conninfo::get(&node.conninfo, "hostaddr"))
        .unwrap_or_default()
        .split(',')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// What a remote run printed.
pub struct Ran {
    pub success: bool,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// How long a quick command (a version, a status, a list of actions) may take on another
/// node's machine, ssh's connection included.
pub const QUICK: Duration = Duration::from_secs(30);

/// Runs `repmgr <args>` for `node` on its machine, for at most `within`. Its repmgr.conf is the
/// one registered for it (`nodes.config_file`) when that is a repmgr.conf rather than its
/// postgresql.conf; the program is `repmgr_bindir`'s `repmgr` when set, else the one on the
/// remote `PATH`. A command past `within` is given up on (ssh is killed; the command may still
/// run there), as is one ssh could not start (exit 255): both exit with 12 (ERR_BAD_SSH).
pub fn repmgr(cfg: &Config, node: &NodeRecord, args: &[String], within: Duration) -> Result<Ran> {
    let mut full: Vec<String> = Vec::new();
    if !node.config_file.is_empty() && !node.config_file.ends_with("postgresql.conf") {
        full.extend(["-f".to_string(), node.config_file.clone()]);
    }
    full.extend(args.iter().cloned());
    let host = host_of(node);
    let what = format!("repmgr {} for {}", args.join(" "), node.describe());
    if !is_local_host(&host) {
        let program = cfg
            .repmgr_bindir
            .as_ref()
            .map_or("repmgr".to_string(), |d| {
                d.join("repmgr").to_string_lossy().into_owned()
            });
        let line = std::iter::once(shell_quote(&program))
            .chain(full.iter().map(|a| shell_quote(a)))
            .collect::<Vec<_>>()
            .join(" ");
        return ssh(cfg, &host, &line, within, &what);
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| "repmgr".into());
    let mut c = Command::new(exe);
    c.args(&full);
    debug(format!("on {}: {c:?}", node.describe()));
    run_within(c, within).map_err(|e| {
        Failure::new(ERR_BAD_SSH, format!("{what} {e}"))
            .hint("Check that node's server and the command's own log.")
    })
}

/// Runs shell command `line` on `host` over ssh with `ssh_options`, for at most `within`;
/// `what` names it in messages. ssh failing to get there (exit 255) and a run past `within`
/// are failures with exit code 12 (ERR_BAD_SSH); the command's own exit status is the
/// caller's to judge.
pub fn ssh(cfg: &Config, host: &str, line: &str, within: Duration, what: &str) -> Result<Ran> {
    let mut c = Command::new("ssh");
    c.args(cfg.ssh_options.split_whitespace())
        .arg(host)
        .arg(line);
    debug(format!("{what}: {c:?}"));
    let ran = run_within(c, within).map_err(|e| {
        Failure::new(ERR_BAD_SSH, format!("ssh to {host} for {what} {e}")).hint(
            "Check that ssh to that host answers (ssh_options in repmgr.conf: ConnectTimeout bounds a host that does not answer) and what the command is waiting for there.",
        )
    })?;
    // ssh itself failing exits 255; with -q (repmgr's default options) it says nothing.
    if ran.code == 255 {
        let said = ran.stderr.trim();
        let why = if said.is_empty() {
            "ssh exited 255 without a message (ssh_options has -q): the host refused the connection, did not answer within ConnectTimeout, or did not let this user in".to_string()
        } else {
            said.to_string()
        };
        let loud: Vec<&str> = cfg
            .ssh_options
            .split_whitespace()
            .filter(|o| *o != "-q")
            .collect();
        return Err(Failure::new(
            ERR_BAD_SSH,
            format!("ssh to {host} for {what} failed: {why}"),
        )
        .hint(format!(
            "See why with: ssh {} {host} true. repmgr needs passwordless ssh between the nodes as the postgres user (ssh_options in repmgr.conf).",
            loud.join(" ")
        )));
    }
    Ok(ran)
}

/// Runs `c` with its output captured, for at most `within`; the error says why it did not
/// finish (to follow a description of the command).
fn run_within(mut c: Command, within: Duration) -> std::result::Result<Ran, String> {
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not be started: {e}"))?;
    let out = wait_within(child, within).ok_or_else(|| {
        format!(
            "did not finish within {} s; it was given up on here, and may still be running there",
            within.as_secs()
        )
    })?;
    Ok(Ran {
        success: out.status.success(),
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The output of `child` once it exits, or `None` (and it is killed) past `within`. Its pipes
/// are read meanwhile, so that a talkative command never blocks on them.
fn wait_within(mut child: Child, within: Duration) -> Option<Output> {
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + within;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    }?;
    Some(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_local_hosts() {
        for h in [
            "",
            "/var/run/postgresql",
            "localhost",
            "127.0.0.1",
            "127.0.0.2",
            "::1",
        ] {
            assert!(is_local_host(h), "{h}");
        }
        for h in ["192.0.2.1", "2001:db8::1"] {
            assert!(!is_local_host(h), "{h}");
        }
    }
}
