//! Network namespaces for tests that cut nodes off from each other.
//!
//! Each node lives in a namespace of its own with one veth interface, plugged into a bridge
//! that lives in a separate "switch" namespace, so nothing is changed in the machine's own
//! network (no forwarding, no routes). The test process reaches every server through its Unix
//! socket, which a network cut does not affect. Cutting a node off is bringing its port on the
//! switch down; cutting one pair is a blackhole route inside each of the two namespaces.
//! Everything is created with names unique to the test and deleted on drop. Needs root.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip: {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A switch (bridge) and the namespaces plugged into it.
pub struct Network {
    tag: String,
    subnet: String,
    nodes: Vec<i32>,
}

impl Network {
    /// Creates the switch. Panics with a clear message when not running as root.
    pub fn new() -> Network {
        Network::with_subnet(None)
    }

    /// Creates the switch, with node `id` at `<subnet>.<id>` (a /24 such as `10.0.0`) when
    /// given. Any subnet will do: each network is a bridge of its own, which reaches neither
    /// the machine's network nor another test's.
    pub fn with_subnet(subnet: Option<&str>) -> Network {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "network namespace tests need root (CI runs as root)"
        );
        let seq = (std::process::id() * 8 + SEQUENCE.fetch_add(1, Ordering::Relaxed)) & 0xfff;
        let tag = format!("{seq:03x}");
        let net = Network {
            subnet: subnet.map_or_else(
                || format!("10.{}.{}", 100 + (seq >> 8), seq & 0xff),
                str::to_string,
            ),
            nodes: Vec::new(),
            tag,
        };
        let sw = net.switch();
        ip(&["netns", "add", &sw]);
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        net
    }

    fn switch(&self) -> String {
        format!("rmgsw{}", self.tag)
    }

    /// The namespace of node `id`.
    pub fn namespace(&self, id: i32) -> String {
        format!("rmgn{}-{id}", self.tag)
    }

    /// The switch-side port of node `id`.
    fn port(&self, id: i32) -> String {
        format!("rmg{}p{id}", self.tag)
    }

    /// The /24 the nodes' addresses are in, without its last part (`10.0.0`).
    pub fn subnet(&self) -> &str {
        &self.subnet
    }

    /// The address of node `id`.
    pub fn address(&self, id: i32) -> String {
        format!("{}.{id}", self.subnet)
    }

    /// Creates node `id`'s namespace and plugs it into the switch.
    pub fn add_node(&mut self, id: i32) {
        let (ns, sw, port) = (self.namespace(id), self.switch(), self.port(id));
        let inside = format!("rmg{}i{id}", self.tag);
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &inside, "netns", &ns, "type", "veth", "peer", "name", &port, "netns",
            &sw,
        ]);
        ip(&["-n", &sw, "link", "set", &port, "master", "br0"]);
        ip(&["-n", &sw, "link", "set", &port, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", self.address(id)),
            "dev",
            &inside,
        ]);
        ip(&["-n", &ns, "link", "set", &inside, "up"]);
        self.nodes.push(id);
    }

    /// Cuts node `id` off from every other node.
    pub fn isolate(&self, id: i32) {
        ip(&["-n", &self.switch(), "link", "set", &self.port(id), "down"]);
    }

    /// Plugs an isolated node back in.
    pub fn rejoin(&self, id: i32) {
        ip(&["-n", &self.switch(), "link", "set", &self.port(id), "up"]);
    }

    /// Cuts the link between `a` and `b` only (both directions).
    pub fn cut(&self, a: i32, b: i32) {
        self.blackholes("add", a, b);
    }

    /// Restores a link cut with [`Network::cut`].
    pub fn mend(&self, a: i32, b: i32) {
        self.blackholes("del", a, b);
    }

    /// Adds or deletes the blackhole route to the other node in each of the two namespaces.
    fn blackholes(&self, action: &str, a: i32, b: i32) {
        for (from, to) in [(a, b), (b, a)] {
            ip(&[
                "-n",
                &self.namespace(from),
                "route",
                action,
                "blackhole",
                &format!("{}/32", self.address(to)),
            ]);
        }
    }
}

impl Default for Network {
    fn default() -> Self {
        Network::new()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Deleting a namespace deletes its interfaces, and the veth peers with them.
        for id in &self.nodes {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.namespace(*id)])
                .output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.switch()])
            .output();
    }
}
