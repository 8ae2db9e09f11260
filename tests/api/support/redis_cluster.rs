//! A private, throwaway Redis Cluster per test, made of [`RedisServer`]s.
//!
//! Every node is a `RedisServer` in cluster mode: its own free port on 127.0.0.1, its own temp
//! dir (which holds its `nodes.conf`), SIGKILLed on drop. `redis-cli --cluster create` joins
//! them, then [`RedisCluster::start`] waits until every node agrees the cluster is whole. Node
//! ports are picked with port + 10000 free too: that is where the cluster bus listens, and the
//! offset is fixed on Redis before 7.0. Topology questions are answered by asking each node
//! about itself over the std-only RESP client, never by a client library under test.
//!
//! [`RedisCluster::start_tls`] adds a TLS port to every node and moves the bus and replication
//! onto TLS. The plain port stays for the helper: a node announces its plain ports to clients
//! on its plain port and its TLS ports to clients on a TLS one, so the helper's view (and every
//! port it takes or returns) stays in plain ports while the service only ever sees TLS ports.
// Not every test binary uses every helper.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::net::TcpListener;
use std::ops::RangeInclusive;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::redis_server::{self, command_at, pipeline_at, RedisReply, RedisServer};
use super::skips;
use super::tls::TlsFiles;

/// How long the cluster may take to form or to heal after a restart.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Short, because a killed node refuses at once and a paused one must not stall a poll.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
const POLL: Duration = Duration::from_millis(50);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const BUS_PORT_OFFSET: u16 = 10_000;
pub const SLOTS: u16 = 16_384;

#[rustfmt::skip]
const NODE_ARGS: [&str; 12] = [
    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
    // 1 s until a silent master is suspected, so failovers take seconds, not the default 15 s.
    "--cluster-node-timeout", "1000",
    // Slots of a dead master fail on their own; the rest of the cluster keeps answering.
    "--cluster-require-full-coverage", "no",
    // A replica may take over however long it was cut off from its master: a test that
    // paused the cluster must not end up with replicas too stale to fail over.
    "--cluster-replica-validity-factor", "0",
    // A replica's full sync starts at once instead of waiting 5 s for more replicas to join it.
    "--repl-diskless-sync-delay", "0",
];

/// One node as it describes itself in `CLUSTER NODES` (its `myself` line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    pub port: u16,
    pub id: String,
    /// e.g. `["myself", "master"]` or `["myself", "slave"]`.
    pub flags: Vec<String>,
    /// The master's port, for a replica.
    pub replica_of: Option<u16>,
    /// Bumped by every failover; the higher epoch wins when two nodes claim a slot.
    pub config_epoch: u64,
    pub slots: Vec<RangeInclusive<u16>>,
}

impl ClusterNode {
    pub fn is_master(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }

    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|r| r.contains(&slot))
    }
}

pub struct RedisCluster {
    /// In start order. A mutex each, so a test can kill or restart a node through `&self`
    /// (e.g. from another thread while requests are in flight).
    nodes: Vec<Mutex<RedisServer>>,
    ports: Vec<u16>,
    /// Each node's TLS port, in start order, when started with [`start_tls`](Self::start_tls).
    tls_ports: Option<Vec<u16>>,
}

impl RedisCluster {
    /// Starts `masters * (1 + replicas_per_master)` nodes and joins them into one cluster with
    /// all 16384 slots spread over the masters, or returns `None` (recorded as a skip) when
    /// redis-server or redis-cli is missing; under `CI=true`/`CI=1` that panics instead.
    pub fn start(masters: usize, replicas_per_master: usize) -> Option<RedisCluster> {
        Self::start_nodes(masters, replicas_per_master, None)
    }

    /// Like [`start`](Self::start), with every node also on a TLS port serving `tls`'s server
    /// certificate, and the cluster bus and replication over TLS. [`seed_urls`](Self::seed_urls)
    /// are then `rediss://` ones; every other method still takes and returns plain ports.
    pub fn start_tls(
        masters: usize,
        replicas_per_master: usize,
        tls: &TlsFiles,
    ) -> Option<RedisCluster> {
        Self::start_nodes(masters, replicas_per_master, Some(tls))
    }

    fn start_nodes(
        masters: usize,
        replicas_per_master: usize,
        tls: Option<&TlsFiles>,
    ) -> Option<RedisCluster> {
        assert!(
            masters >= 3,
            "redis-cli --cluster create needs at least 3 masters, got {masters}"
        );
        for (bin, package) in [
            ("redis-server", "redis-server"),
            ("redis-cli", "redis-tools"),
        ] {
            if !redis_server::on_path(bin) {
                if skips::on_ci() {
                    panic!("{bin} is required when CI=true; install it with apt-get install -y {package}");
                }
                // Same wording as RedisServer's, so the skip report counts them together.
                skips::record(&format!("{bin} not found (apt-get install -y {package})"));
                return None;
            }
        }
        let total = masters * (1 + replicas_per_master);
        let mut nodes = Vec::with_capacity(total);
        let mut tls_ports = Vec::new();
        for _ in 0..total {
            let Some(tls) = tls else {
                nodes.push(RedisServer::start_picking(free_port_with_bus, &NODE_ARGS)?);
                continue;
            };
            // With `tls-cluster yes` the bus listens on the TLS port + 10000; the plain port
            // then needs no bus, only to differ from both.
            let tls_port = free_port_with_bus();
            let taken = [tls_port, tls_port + BUS_PORT_OFFSET];
            let plain_port = move || loop {
                let port = redis_server::free_port();
                if !taken.contains(&port) {
                    return port;
                }
            };
            let tls_port_arg = tls_port.to_string();
            #[rustfmt::skip]
            let tls_args = [
                "--tls-port", &tls_port_arg, "--tls-cluster", "yes", "--tls-replication", "yes",
                "--tls-cert-file", &tls.cert, "--tls-key-file", &tls.key,
                "--tls-ca-cert-file", &tls.ca,
                // The service checks the server's certificate; it shows none of its own.
                "--tls-auth-clients", "no",
            ];
            let args: Vec<&str> = NODE_ARGS.iter().copied().chain(tls_args).collect();
            nodes.push(RedisServer::start_picking(plain_port, &args)?);
            tls_ports.push(tls_port);
        }
        let cluster = RedisCluster {
            ports: nodes.iter().map(RedisServer::port).collect(),
            nodes: nodes.into_iter().map(Mutex::new).collect(),
            tls_ports: tls.map(|_| tls_ports),
        };
        // `redis-cli --tls` speaks TLS to every address it is given, so those are the TLS ports.
        let create_ports = cluster.tls_ports.as_ref().unwrap_or(&cluster.ports);
        let addrs: Vec<String> = create_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let mut create = Command::new("redis-cli");
        if let Some(tls) = tls {
            create.args(["--tls", "--cacert", &tls.ca]);
        }
        let out = create
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas_per_master.to_string()])
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        if !out.status.success() {
            panic!(
                "redis-cli --cluster create {} failed ({}):\n{}{}\n{}",
                addrs.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                cluster.describe()
            );
        }
        cluster.wait_until_ok(READY_TIMEOUT);
        Some(cluster)
    }

    /// Every node's port, in start order (killed ones included).
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The TLS port of the node on plain `port`, for a cluster from
    /// [`start_tls`](Self::start_tls): the address the service knows that node by.
    pub fn tls_port_of(&self, port: u16) -> u16 {
        let index = self.ports.iter().position(|&p| p == port);
        match (index, &self.tls_ports) {
            (Some(index), Some(tls_ports)) => tls_ports[index],
            _ => panic!("no TLS node on port {port}; nodes: {:?}", self.ports),
        }
    }

    /// `redis://127.0.0.1:p1,redis://127.0.0.1:p2,...` over every node (`rediss://` and the
    /// TLS ports for a cluster from [`start_tls`](Self::start_tls)), for
    /// `STREAMTOKEN_REDIS_CLUSTER_URLS`.
    pub fn seed_urls(&self) -> String {
        let urls: Vec<String> = match &self.tls_ports {
            Some(tls_ports) => tls_ports
                .iter()
                .map(|p| format!("rediss://127.0.0.1:{p}"))
                .collect(),
            None => self
                .ports
                .iter()
                .map(|p| format!("redis://127.0.0.1:{p}"))
                .collect(),
        };
        urls.join(",")
    }

    /// Each answering node's own view of itself, in start order; killed and paused nodes are
    /// left out.
    pub fn nodes(&self) -> Vec<ClusterNode> {
        self.ports
            .iter()
            .filter_map(|&port| match probe(port, &["CLUSTER", "NODES"]) {
                Some(RedisReply::Bulk(view)) => parse_myself(&view),
                _ => None,
            })
            .collect()
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`, asked of any answering node).
    pub fn slot_of(&self, key: &str) -> u16 {
        for &port in &self.ports {
            if let Some(RedisReply::Int(slot)) = probe(port, &["CLUSTER", "KEYSLOT", key]) {
                return u16::try_from(slot).expect("CLUSTER KEYSLOT is below 16384");
            }
        }
        panic!("no node answered CLUSTER KEYSLOT\n{}", self.describe())
    }

    /// Port of the master that serves `key`'s slot now (by its own account; after a
    /// failover, the promoted replica).
    pub fn master_for_key(&self, key: &str) -> u16 {
        let slot = self.slot_of(key);
        self.nodes()
            .into_iter()
            .filter(|n| n.is_master() && n.serves(slot))
            // Until gossip settles, a deposed master that is still running also claims it.
            .max_by_key(|n| n.config_epoch)
            .map(|n| n.port)
            .unwrap_or_else(|| {
                panic!(
                    "no master serves slot {slot} (key {key:?})\n{}",
                    self.describe()
                )
            })
    }

    /// Ports of the replicas that follow `master_port` now.
    pub fn replica_ports_of(&self, master_port: u16) -> Vec<u16> {
        self.nodes()
            .into_iter()
            .filter(|n| n.replica_of == Some(master_port))
            .map(|n| n.port)
            .collect()
    }

    /// Sends one command to the node on `port`; panics on I/O errors (a killed node).
    /// No redirects are followed: a key on another node's slot answers `MOVED`.
    pub fn command(&self, port: u16, args: &[&str]) -> RedisReply {
        self.pipeline(port, &[args]).remove(0)
    }

    /// Sends `commands` on one connection to the node on `port` (see [`pipeline_at`]);
    /// panics on I/O errors.
    pub fn pipeline(&self, port: u16, commands: &[&[&str]]) -> Vec<RedisReply> {
        assert!(
            self.ports.contains(&port),
            "no node on port {port}; nodes: {:?}",
            self.ports
        );
        pipeline_at(port, commands, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("redis {commands:?} on port {port}: {e}"))
    }

    /// SIGKILLs the master on `port` (panics if it is not a master), as a crashed host.
    pub fn kill_master(&self, port: u16) {
        let is_master = self.nodes().iter().any(|n| n.port == port && n.is_master());
        assert!(
            is_master,
            "port {port} is not a running master\n{}",
            self.describe()
        );
        self.node(port).kill();
    }

    /// Waits until `key`'s slot takes writes again after [`kill_master`](Self::kill_master),
    /// i.e. the other masters voted a replica in and it answers as master; returns how long
    /// that took from this call (so call it right after the kill). Other nodes may learn of
    /// the promotion a moment later; [`wait_until_ok`](Self::wait_until_ok) waits for them.
    /// Writes a probe key in `key`'s hash slot, never `key` itself. Panics with the nodes'
    /// logs after `timeout`.
    pub fn wait_for_failover(&self, key: &str, timeout: Duration) -> Duration {
        let started = Instant::now();
        let probe_key = self.probe_key_for(key);
        loop {
            // Only the slot's master answers OK; every other node, replicas included,
            // answers MOVED, and the dead one refuses the connection.
            let served = self.ports.iter().any(|&port| {
                probe(port, &["SET", &probe_key, "failover-probe"])
                    == Some(RedisReply::Status("OK".into()))
            });
            if served {
                return started.elapsed();
            }
            if started.elapsed() > timeout {
                panic!(
                    "no master took writes for {key:?} (slot {}) within {timeout:?}\n{}",
                    self.slot_of(key),
                    self.describe()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGSTOPs every running node: ports stay open but nothing answers. Resume within the
    /// node timeout (1 s) unless failovers on resume are part of the test.
    pub fn pause_all(&self) {
        for node in &self.nodes {
            let mut node = lock(node);
            if node.is_running() {
                node.pause();
            }
        }
    }

    /// SIGCONT for every node [`pause_all`](Self::pause_all) stopped.
    pub fn resume_all(&self) {
        for node in &self.nodes {
            let mut node = lock(node);
            if node.is_running() {
                node.resume();
            }
        }
    }

    /// SIGKILLs every node: Redis is gone, as after a crash of all hosts.
    pub fn stop_all(&self) {
        for node in &self.nodes {
            lock(node).kill();
        }
    }

    /// Restarts every node on its old port and dir (its `nodes.conf` rejoins it to the
    /// cluster; data is gone, there is no persistence) and waits until the cluster is ok.
    pub fn restart_all(&self) {
        for node in &self.nodes {
            lock(node).restart();
        }
        self.wait_until_ok(READY_TIMEOUT);
    }

    /// Restarts one node (e.g. a killed master, which rejoins as a replica of the one that
    /// replaced it) and waits until the cluster is ok.
    pub fn restart_node(&self, port: u16) {
        self.node(port).restart();
        self.wait_until_ok(READY_TIMEOUT);
    }

    /// Waits until every running node says the cluster is ok with all slots served, sees
    /// every other running node as healthy, and (for a replica) is linked to its master.
    /// Killed nodes are ignored; paused ones make this time out.
    pub fn wait_until_ok(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let problem = match self.check() {
                Ok(()) => return,
                Err(problem) => problem,
            };
            if Instant::now() >= deadline {
                panic!(
                    "Redis Cluster on ports {:?} not ok within {timeout:?}: {problem}\n{}",
                    self.ports,
                    self.describe()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// For failure messages (the helper's and tests'): each node's state and log tail.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (port, node) in self.ports.iter().zip(&self.nodes) {
            let mut node = lock(node);
            let state = if !node.is_running() {
                "not running".to_string()
            } else {
                match probe(*port, &["CLUSTER", "INFO"]) {
                    Some(RedisReply::Bulk(info)) => info
                        .lines()
                        .filter(|l| {
                            l.starts_with("cluster_state") || l.starts_with("cluster_slots_ok")
                        })
                        .map(str::trim_end)
                        .collect::<Vec<_>>()
                        .join(" "),
                    other => format!("CLUSTER INFO: {other:?}"),
                }
            };
            let log = node.log();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let _ = writeln!(out, "--- node {port}: {state}; last log lines:");
            for line in tail.iter().rev() {
                let _ = writeln!(out, "    {line}");
            }
        }
        out
    }

    /// The first reason the cluster is not ok yet, if any.
    fn check(&self) -> Result<(), String> {
        let running: Vec<u16> = self
            .ports
            .iter()
            .zip(&self.nodes)
            .filter(|(_, node)| lock(node).is_running())
            .map(|(&port, _)| port)
            .collect();
        for &port in &running {
            let info = match probe(port, &["CLUSTER", "INFO"]) {
                Some(RedisReply::Bulk(info)) => info,
                other => return Err(format!("{port}: CLUSTER INFO answered {other:?}")),
            };
            let all_slots = format!("cluster_slots_ok:{SLOTS}");
            for wanted in ["cluster_state:ok", &all_slots] {
                if !info.lines().any(|l| l.trim_end() == wanted) {
                    return Err(format!("{port}: no {wanted} in CLUSTER INFO"));
                }
            }
            let Some(RedisReply::Bulk(view)) = probe(port, &["CLUSTER", "NODES"]) else {
                return Err(format!("{port}: no answer to CLUSTER NODES"));
            };
            for &other in &running {
                let line = view.lines().find(|l| {
                    l.split(' ')
                        .nth(1)
                        .is_some_and(|addr| addr_port(addr) == Some(other))
                });
                let Some(line) = line else {
                    return Err(format!("{port} does not know {other} yet"));
                };
                let flags = line.split(' ').nth(2).unwrap_or("");
                let unhealthy = ["fail", "fail?", "handshake", "noaddr"];
                if flags.split(',').any(|f| unhealthy.contains(&f)) {
                    return Err(format!("{port} sees {other} as {flags}"));
                }
                if other == port && flags.split(',').any(|f| f == "slave") {
                    let Some(RedisReply::Bulk(repl)) = probe(port, &["INFO", "replication"]) else {
                        return Err(format!("{port}: no answer to INFO replication"));
                    };
                    if !repl
                        .lines()
                        .any(|l| l.trim_end() == "master_link_status:up")
                    {
                        return Err(format!("replica {port} is not linked to its master yet"));
                    }
                }
            }
        }
        // A restarted master claims its old slots until it hears who took them over.
        let mut claims = vec![0u8; usize::from(SLOTS)];
        for master in self.nodes().iter().filter(|n| n.is_master()) {
            for slot in master.slots.iter().flat_map(|r| r.clone()) {
                claims[usize::from(slot)] += 1;
            }
        }
        match claims.iter().position(|&c| c != 1) {
            Some(slot) => Err(format!(
                "slot {slot} is claimed by {} masters",
                claims[slot]
            )),
            None => Ok(()),
        }
    }

    /// A key with `key`'s hash slot that the helper may overwrite: `key`'s hash tag (or
    /// all of it, when it has none) wrapped in braces.
    fn probe_key_for(&self, key: &str) -> String {
        let tag = key
            .find('{')
            .and_then(|open| {
                let rest = &key[open + 1..];
                rest.find('}')
                    .filter(|&close| close > 0)
                    .map(|close| &rest[..close])
            })
            .unwrap_or(key);
        let probe_key = format!("{{{tag}}}:streamtoken-test-probe");
        assert_eq!(
            self.slot_of(&probe_key),
            self.slot_of(key),
            "cannot build a probe key in the slot of {key:?}; use a key without '}}' or with a hash tag"
        );
        probe_key
    }

    fn node(&self, port: u16) -> MutexGuard<'_, RedisServer> {
        let index = self
            .ports
            .iter()
            .position(|&p| p == port)
            .unwrap_or_else(|| panic!("no node on port {port}; nodes: {:?}", self.ports));
        lock(&self.nodes[index])
    }
}

fn lock(node: &Mutex<RedisServer>) -> MutexGuard<'_, RedisServer> {
    // A test that panicked while holding a node still leaves a node worth killing.
    node.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One command with a short timeout; `None` if the node is dead, paused or confused.
fn probe(port: u16, args: &[&str]) -> Option<RedisReply> {
    command_at(port, args, PROBE_TIMEOUT).ok()
}

/// A free port whose cluster bus port (+10000) is free and valid too.
fn free_port_with_bus() -> u16 {
    for _ in 0..1000 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("free port");
        let port = listener.local_addr().expect("bound address").port();
        let Some(bus) = port.checked_add(BUS_PORT_OFFSET) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", bus)).is_ok() {
            return port;
        }
    }
    panic!("found no free port p with p + {BUS_PORT_OFFSET} free on 127.0.0.1");
}

/// The port in a `CLUSTER NODES` address, `127.0.0.1:7000@17000[,hostname]`.
fn addr_port(addr: &str) -> Option<u16> {
    let (host_port, _) = addr.split_once('@')?;
    host_port
        .rsplit_once(':')?
        .1
        .parse()
        .ok()
        .filter(|&p| p != 0)
}

/// The `myself` line of a `CLUSTER NODES` reply, whose lines read
/// `<id> <addr> <flags> <master-id|-> <ping> <pong> <epoch> <link> <slot|from-to>...`.
fn parse_myself(view: &str) -> Option<ClusterNode> {
    let lines: Vec<Vec<&str>> = view.lines().map(|l| l.split(' ').collect()).collect();
    let fields = lines.iter().find(|f| {
        f.get(2)
            .is_some_and(|flags| flags.split(',').any(|f| f == "myself"))
    })?;
    let slots = fields
        .iter()
        .skip(8)
        // `[slot->-id]` / `[slot-<-id]` are slots being migrated, not served.
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| match s.split_once('-') {
            Some((from, to)) => Some(from.parse().ok()?..=to.parse().ok()?),
            None => s.parse().ok().map(|slot| slot..=slot),
        })
        .collect();
    // The master's address comes from this node's own view, so it resolves even when the
    // master is dead.
    let replica_of = match *fields.get(3)? {
        "-" => None,
        master_id => lines
            .iter()
            .find(|f| f[0] == master_id)
            .and_then(|f| addr_port(f.get(1)?)),
    };
    Some(ClusterNode {
        port: addr_port(fields.get(1)?)?,
        id: fields[0].to_string(),
        flags: fields[2].split(',').map(String::from).collect(),
        replica_of,
        config_epoch: fields.get(6)?.parse().ok()?,
        slots,
    })
}
