//! Debian's HAProxy in front of a test cluster, running the README's configuration: the block
//! of README.md whose info string is `haproxy`, with only the addresses changed (the README's
//! nodes `10.0.0.N:5432` with endpoints on 8008 become the cluster's loopback ports, its
//! `bind *:5000` and `*:5001` free ports). Every other line (checks, timeouts, `inter`,
//! `fall`, `rise`, `on-marked-down`) is used as written, so the tests and benchmarks measure
//! the configuration users copy. Stopped when dropped.

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Cluster, free_port};

const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");

/// The README's HAProxy configuration, as written.
pub fn readme_config() -> String {
    let text = std::fs::read_to_string(README).expect("read README.md");
    let start = text
        .find("\n```haproxy\n")
        .expect("README.md has no ```haproxy block");
    let body = &text[start + "\n```haproxy\n".len()..];
    body[..body.find("\n```").expect("an end to the haproxy block")].to_string() + "\n"
}

/// `config` for the nodes of a cluster: node N's PostgreSQL at `127.0.0.1:pg[N]`, its
/// endpoints at `http[N]`; the write and read listeners at `write` and `read`. Panics when the
/// configuration no longer has the shape this rewrites (two listeners, servers pg1 to pg3).
pub fn adapt(
    config: &str,
    pg: &HashMap<i32, u16>,
    http: &HashMap<i32, u16>,
    write: u16,
    read: u16,
) -> String {
    let mut binds = 0;
    let mut servers = 0;
    let lines: Vec<String> = config
        .lines()
        .map(|line| {
            let t = line.trim_start();
            let indent = &line[..line.len() - t.len()];
            if let Some(port) = t.strip_prefix("bind *:") {
                binds += 1;
                let to = match port {
                    "5000" => write,
                    "5001" => read,
                    other => panic!("README's HAProxy configuration binds *:{other}"),
                };
                return format!("{indent}bind 127.0.0.1:{to}");
            }
            if let Some(rest) = t.strip_prefix("server pg") {
                let id: i32 = rest[..1].parse().expect("server pgN");
                let want = format!("server pg{id} 10.0.0.{id}:5432 check port 8008");
                assert!(
                    t.starts_with(&want),
                    "README's HAProxy server line changed shape: {t}"
                );
                servers += 1;
                return format!(
                    "{indent}server pg{id} 127.0.0.1:{} check port {}{}",
                    pg[&id],
                    http[&id],
                    &t[want.len()..]
                );
            }
            line.to_string()
        })
        .collect();
    assert_eq!(
        (binds, servers),
        (2, 6),
        "README's HAProxy configuration: expected two listeners of three servers each"
    );
    lines.join("\n") + "\n"
}

/// A running HAProxy.
pub struct Haproxy {
    child: Child,
    pub write_port: u16,
    pub read_port: u16,
    config: PathBuf,
}

impl Haproxy {
    /// Starts HAProxy with the README's configuration in front of nodes 1 to 3 of `c`, whose
    /// endpoints listen on `http` (by node id); returns once both listeners accept.
    pub fn start(c: &Cluster, http: &HashMap<i32, u16>) -> Haproxy {
        let pg: HashMap<i32, u16> = (1..=3).map(|id| (id, c.node(id).port)).collect();
        let (write_port, read_port) = (free_port(), free_port());
        let config = c.dir.join("haproxy.cfg");
        std::fs::write(
            &config,
            adapt(&readme_config(), &pg, http, write_port, read_port),
        )
        .expect("write haproxy.cfg");
        let check = Command::new("haproxy")
            .args(["-c", "-q", "-f"])
            .arg(&config)
            .output()
            .expect("run haproxy (Debian's haproxy package; cargo xtask setup installs it)");
        assert!(
            check.status.success(),
            "haproxy -c: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        let h = Haproxy {
            child,
            write_port,
            read_port,
            config,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in [write_port, read_port] {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "haproxy does not listen on {port}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        h
    }

    /// How a client reaches the write listener (the primary).
    pub fn write_conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} dbname=repmgr user=postgres",
            self.write_port
        )
    }

    /// How a client reaches the read listener (standbys within the lag limit).
    pub fn read_conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} dbname=repmgr user=postgres",
            self.read_port
        )
    }

    /// The configuration it runs.
    pub fn config(&self) -> String {
        std::fs::read_to_string(&self.config).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_configuration_is_rewritten_only_in_its_addresses() {
        let config = readme_config();
        let pg: HashMap<i32, u16> = [(1, 6001), (2, 6002), (3, 6003)].into();
        let http: HashMap<i32, u16> = [(1, 7001), (2, 7002), (3, 7003)].into();
        let out = adapt(&config, &pg, &http, 9000, 9001);
        assert!(out.contains("bind 127.0.0.1:9000") && out.contains("bind 127.0.0.1:9001"));
        assert!(
            out.contains("server pg2 127.0.0.1:6002 check port 7002"),
            "{out}"
        );
        assert!(!out.contains("10.0.0."), "{out}");
        // Everything else as written.
        let kept = |s: &str| {
            s.lines()
                .filter(|l| !l.contains("bind ") && !l.contains("server "))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(kept(&config), kept(&out));
    }
}
