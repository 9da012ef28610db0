//! Running `repmgr` on another node's machine: over ssh, as repmgr does, or directly when the
//! node lives on this machine (a loopback address, a Unix socket, or an address of ours).

use std::net::{IpAddr, ToSocketAddrs, UdpSocket};
use std::process::Command;

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

/// Runs `repmgr <args>` for `node` on its machine. Its repmgr.conf is the one registered for it
/// (`nodes.config_file`) when that is a repmgr.conf rather than its postgresql.conf.
pub fn repmgr(cfg: &Config, node: &NodeRecord, args: &[String]) -> Result<Ran> {
    let mut full: Vec<String> = Vec::new();
    if !node.config_file.is_empty() && !node.config_file.ends_with("postgresql.conf") {
        full.extend(["-f".to_string(), node.config_file.clone()]);
    }
    full.extend(args.iter().cloned());
    let host = host_of(node);
    let mut c = if is_local_host(&host) {
        let exe = std::env::current_exe().unwrap_or_else(|_| "repmgr".into());
        let mut c = Command::new(exe);
        c.args(&full);
        c
    } else {
        let line = std::iter::once("repmgr".to_string())
            .chain(full.iter().map(|a| shell_quote(a)))
            .collect::<Vec<_>>()
            .join(" ");
        let mut c = Command::new("ssh");
        c.args(cfg.ssh_options.split_whitespace())
            .arg(&host)
            .arg(line);
        c
    };
    debug(format!("on {}: {c:?}", node.describe()));
    let out = c.stdin(std::process::Stdio::null()).output().map_err(|e| {
        Failure::new(
            ERR_BAD_SSH,
            format!(
                "could not run repmgr for {} on {host}: {e}",
                node.describe()
            ),
        )
    })?;
    let ran = Ran {
        success: out.status.success(),
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    // ssh itself failing exits 255.
    if ran.code == 255 && !is_local_host(&host) {
        return Err(Failure::new(
            ERR_BAD_SSH,
            format!("ssh to {host} for {} failed: {}", node.describe(), ran.stderr.trim()),
        )
        .hint("repmgr needs passwordless ssh between the nodes as the postgres user; check ssh_options in repmgr.conf."));
    }
    Ok(ran)
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
