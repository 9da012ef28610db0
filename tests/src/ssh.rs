//! sshd on the hosts of a [`Network`]: Debian's openssh-server, one daemon per node namespace
//! listening on the node's address, with a host key and a client key the test creates, so the
//! command line's paths that run `repmgr` on another host go through real ssh. Root logs in
//! with the client key only; everything lives in the test's directory and the daemons are
//! killed on drop.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Network;

pub struct Sshd {
    dir: PathBuf,
    daemons: Vec<(i32, Child)>,
    /// The client configuration installed for programs that take no ssh options.
    client_conf: Option<PathBuf>,
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "repmgr-test", "-f"])
        .arg(path)
        .output()
        .expect("run ssh-keygen");
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Sshd {
    /// Creates the keys in `dir` (made if missing): a host key, and a client key authorized
    /// for root.
    pub fn new(dir: &Path) -> Sshd {
        fs::create_dir_all(dir).expect("create the ssh directory");
        // Traversable: postgres reaches its key here (the host key stays root's own).
        fs::set_permissions(dir, fs::Permissions::from_mode(0o711)).expect("chmod");
        keygen(&dir.join("host_key"));
        keygen(&dir.join("client_key"));
        fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys"))
            .expect("authorize the client key");
        // postgres uses the key too (a standby's restore_command); root can read it anyway.
        let chown = Command::new("chown")
            .args(["postgres:", &dir.join("client_key").to_string_lossy()])
            .status()
            .expect("run chown");
        assert!(chown.success(), "chown the client key");
        // The privilege separation directory Debian's service creates at start.
        fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        Sshd {
            dir: dir.to_path_buf(),
            daemons: Vec::new(),
            client_conf: None,
        }
    }

    /// Makes every ssh client on this machine (any user) use the client key, without host
    /// key checks, for the hosts of `net` only: for programs that take no ssh options, such
    /// as barman-wal-restore in a standby's restore_command. A file of Debian's
    /// `/etc/ssh/ssh_config.d`, removed on drop.
    pub fn configure_clients(&mut self, net: &Network) {
        let glob = format!("{}.*", net.subnet());
        let path = PathBuf::from(format!(
            "/etc/ssh/ssh_config.d/repmgr-test-{}.conf",
            std::process::id()
        ));
        fs::write(
            &path,
            format!(
                "Host {glob}\n    IdentityFile {}\n    IdentitiesOnly yes\n    BatchMode yes\n    StrictHostKeyChecking no\n    UserKnownHostsFile /dev/null\n    LogLevel ERROR\n",
                self.dir.join("client_key").display()
            ),
        )
        .expect("write the ssh client configuration");
        self.client_conf = Some(path);
    }

    /// `ssh_options` for repmgr.conf: the client key, no host key prompts, and `connect`
    /// seconds for ssh to reach a host (TCP and its greeting).
    pub fn options(&self, connect: u32) -> String {
        format!(
            "-q -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout={connect} -l root",
            self.dir.join("client_key").display()
        )
    }

    /// Starts sshd in node `id`'s namespace, on its address, port 22, and waits until it
    /// answers there.
    pub fn start(&mut self, net: &Network, id: i32) {
        self.start_with(net, id, &[]);
    }

    /// [`Sshd::start`], with each `(file, over)` of `binds` bind-mounted over `over` for
    /// sshd and what it runs (a program that host has in place of this machine's).
    pub fn start_with(&mut self, net: &Network, id: i32, binds: &[(PathBuf, PathBuf)]) {
        let conf = self.dir.join(format!("sshd-{id}.conf"));
        fs::write(
            &conf,
            format!(
                "Port 22\nListenAddress {}\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nLogLevel ERROR\n",
                net.address(id),
                self.dir.join("host_key").display(),
                self.dir.join("authorized_keys").display(),
                self.dir.join(format!("sshd-{id}.pid")).display(),
            ),
        )
        .expect("write sshd_config");
        let log = fs::File::create(self.dir.join(format!("sshd-{id}.log"))).expect("sshd log");
        // Each step execs the next, so the child's pid is sshd's.
        let mut script = String::from("set -e\n");
        for (file, over) in binds {
            script.push_str(&format!(
                "mount --bind '{}' '{}'\n",
                file.display(),
                over.display()
            ));
        }
        script.push_str(&format!(
            "exec /usr/sbin/sshd -D -e -f '{}'\n",
            conf.display()
        ));
        let child = Command::new("ip")
            .args(["netns", "exec", &net.namespace(id)])
            .args([
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sshd");
        self.daemons.push((id, child));
        // Asked from the node's own namespace, as any client there would.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = Command::new("ip")
                .args(["netns", "exec", &net.namespace(id), "ssh"])
                .args(self.options(2).split_whitespace())
                .args([&net.address(id), "true"])
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sshd of node {id} did not answer within 10 s: {}",
                fs::read_to_string(self.dir.join(format!("sshd-{id}.log"))).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The pid of node `id`'s sshd (the listener itself: `ip netns exec` runs it in place).
    pub fn pid(&self, id: i32) -> i32 {
        self.daemons
            .iter()
            .find(|(n, _)| *n == id)
            .map(|(_, c)| c.id() as i32)
            .unwrap_or_else(|| panic!("no sshd for node {id}"))
    }

    /// Stops node `id`'s sshd: connections to it are refused from then on.
    pub fn stop(&mut self, id: i32) {
        if let Some(i) = self.daemons.iter().position(|(n, _)| *n == id) {
            let (_, mut c) = self.daemons.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(p) = &self.client_conf {
            let _ = fs::remove_file(p);
        }
        for (_, c) in &mut self.daemons {
            // A stopped (SIGSTOP) daemon dies of SIGKILL too.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
