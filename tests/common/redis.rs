//! Real Redis for the cache tests: [`RedisServer::start`] runs a private `redis-server` on a
//! free loopback port (never 6379, which belongs to the machine's own Redis) with nothing
//! persisted, and [`RedisCluster::start`] runs a Redis Cluster of such nodes. A port another
//! process took before the server bound it is replaced by a fresh one ([`on_free_ports`]), or
//! tried again a while on a restart, which cannot move. Every process is killed when its handle
//! is dropped; every wait is bounded and panics with the server's log.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::ports::{PortTaken, RESERVED_PORT, on_free_ports, retry_taken};
use super::process::{file_len, run_bounded, watch_log};

/// The binaries of the Debian `redis-server` package (in `/usr/bin`), found on `PATH`.
const REDIS_SERVER: &str = "redis-server";
const REDIS_CLI: &str = "redis-cli";
/// How long a server gets to answer PING, and a cluster to report `cluster_state:ok`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a cluster gets to join and agree on its slots. Joining is gossip between the nodes
/// once a second or so; on a 2-core machine also compiling, it was seen to take past 10 s, and
/// a test that fails because the machine was busy is a defect of the harness.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(60);
/// How often bounded waits poll.
const POLL: Duration = Duration::from_millis(20);
/// What redis-server logs once it listens on its port (and, in a cluster, its bus port).
const READY: &str = "Ready to accept connections";
/// What redis-server logs, after "Could not create server TCP listening socket 127.0.0.1:P:
/// bind:", before it exits when one of its ports is taken.
const ADDRESS_IN_USE: &str = "Address already in use";

/// What a test asks of its `redis-server` beyond the defaults of [`RedisServer::args`].
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// `requirepass` (and, on a cluster node, `masterauth`): every client, the harness's own
    /// too, must send it, so [`RedisServer::url`] carries it.
    pub password: Option<String>,
    /// Further directives as `redis-server` arguments, e.g. `["--maxmemory-policy",
    /// "allkeys-lru"]` or `["--rename-command", "CONFIG", ""]`.
    pub args: Vec<String>,
}

/// One `redis-server` process on fixed ports; killed on drop.
pub struct RedisServer {
    /// The port clients use.
    port: u16,
    /// The cluster bus port, for a cluster node: a port of its own rather than port + 10000,
    /// which may be taken or beyond 65535.
    bus: Option<u16>,
    /// `--dir`, and where `redis.log` goes.
    dir: TempDir,
    /// The running process; `None` once stopped.
    child: Option<Child>,
    /// Its password and further directives, kept for its restarts.
    config: Config,
}

impl RedisServer {
    /// A stand-alone server on a free port, persisting nothing; returns once PING answers.
    pub fn start() -> RedisServer {
        Self::start_with(&Config::default())
    }

    /// [`RedisServer::start`] with a password or further directives.
    pub fn start_with(config: &Config) -> RedisServer {
        Self::launch(false, config)
    }

    /// A server, a cluster node when `cluster`, on free ports, in a folder of its own; ports
    /// another process took first are replaced by fresh ones.
    fn launch(cluster: bool, config: &Config) -> RedisServer {
        let what = if cluster {
            "redis-server (cluster node)"
        } else {
            REDIS_SERVER
        };
        on_free_ports(what, if cluster { 2 } else { 1 }, |ports| {
            assert!(!ports.contains(&RESERVED_PORT), "never the machine's own Redis");
            let mut server = RedisServer {
                port: ports[0],
                bus: ports.get(1).copied(),
                dir: tempfile::tempdir().expect("tempdir for redis"),
                child: None,
                config: config.clone(),
            };
            server.spawn()?;
            Ok(server)
        })
    }

    /// The arguments of `redis-server` beyond its port, folder and log: nothing persisted,
    /// cluster mode on the bus port of a cluster node, then what its [`Config`] asks.
    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            // `DEBUG SLEEP` simulates a slow server; Redis 7 refuses DEBUG unless enabled.
            "--enable-debug-command",
            "local",
        ]
        .map(String::from)
        .to_vec();
        if let Some(bus) = self.bus {
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    &bus.to_string(),
                    "--cluster-node-timeout",
                    "2000",
                ]
                .map(String::from),
            );
        }
        if let Some(password) = &self.config.password {
            args.extend(["--requirepass".into(), password.clone()]);
            if self.bus.is_some() {
                args.extend(["--masterauth".into(), password.clone()]);
            }
        }
        args.extend(self.config.args.iter().cloned());
        args
    }

    /// Runs the process and waits until its log says it listens and PING answers.
    /// [`PortTaken`] when one of its ports was taken (the process has exited then); any other
    /// failure panics with the log.
    fn spawn(&mut self) -> Result<(), PortTaken> {
        assert!(self.child.is_none(), "redis-server on {} already runs", self.port);
        let log = self.log_path();
        // A restarted server appends to the log of its earlier runs, whose READY does not count.
        let skip = file_len(&log);
        let child = Command::new(REDIS_SERVER)
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {REDIS_SERVER}: {e}"));
        let child = self.child.insert(child);
        let what = format!("redis-server on port {} (bus {:?})", self.port, self.bus);
        match watch_log(child, &log, skip, START_TIMEOUT, &what, |text| {
            text.contains(READY).then_some(())
        }) {
            Ok(()) => {
                self.wait_for_ping();
                Ok(())
            }
            Err(exited) => {
                self.child = None;
                if exited.log.contains(ADDRESS_IN_USE) {
                    Err(PortTaken(exited.log))
                } else {
                    panic!("{what} exited with {}; log:\n{}", exited.status, exited.log)
                }
            }
        }
    }

    /// Waits until PING answers, which follows at once once the log said it listens (the port
    /// is its own by then); panics with the log when it does not.
    fn wait_for_ping(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                panic!(
                    "redis-server on port {} exited with {status}; log:\n{}",
                    self.port,
                    self.log()
                );
            }
            let last = match self.try_query::<String>(&["PING"]) {
                Ok(pong) if pong == "PONG" => return,
                Ok(other) => other,
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                panic!(
                    "redis-server on port {} does not answer PING within {START_TIMEOUT:?} ({last}); log:\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:{port}`, or `redis://:{password}@127.0.0.1:{port}` with a password.
    pub fn url(&self) -> String {
        match &self.config.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// `--dir`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where the server logs (in its folder), which says why it failed.
    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the process (SIGKILL, as a crash would) and reaps it. Its data is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// [`RedisServer::restart`] with `config` from now on, as an operator redeploying it with
    /// other settings.
    pub fn restart_with(&mut self, config: &Config) {
        self.config = config.clone();
        self.restart();
    }

    /// Starts the server again on the same ports (stopping it first when it runs), empty. Its
    /// clients and cluster know it by its ports, so a port taken meanwhile cannot be replaced:
    /// it is tried again a while, for a process that held it only for a moment.
    pub fn restart(&mut self) {
        self.stop();
        let ports: Vec<u16> = [self.port].into_iter().chain(self.bus).collect();
        let what = format!("redis-server restarted on port {} (bus {:?})", self.port, self.bus);
        retry_taken(&what, || ports.clone(), |_| self.spawn());
    }

    /// A new synchronous connection (1 s connect and I/O timeouts).
    pub fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let client = redis::Client::open(self.url())?;
        let connection = client.get_connection_with_timeout(Duration::from_secs(1))?;
        connection.set_read_timeout(Some(Duration::from_secs(5)))?;
        connection.set_write_timeout(Some(Duration::from_secs(1)))?;
        Ok(connection)
    }

    /// Runs one command on a fresh connection.
    pub fn try_query<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let mut connection = self.connection()?;
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut connection)
    }

    /// [`RedisServer::try_query`], panicking on failure.
    pub fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        self.try_query(args)
            .unwrap_or_else(|e| panic!("redis {} {args:?}: {e}", self.port))
    }

    /// Keys matching `pattern` (`KEYS`; test data sets are small), sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self.query(&["KEYS", pattern]);
        keys.sort();
        keys
    }

    /// `DBSIZE`.
    pub fn dbsize(&self) -> u64 {
        self.query(&["DBSIZE"])
    }

    /// Makes the server sleep `seconds` (`DEBUG SLEEP`), as a slow or stuck Redis would, from a
    /// client of its own on a thread; the thread yields the answer and how long it took.
    pub fn debug_sleep(&self, seconds: f64) -> std::thread::JoinHandle<(redis::RedisResult<String>, Duration)> {
        let mut connection = self.connection().expect("second redis client");
        std::thread::spawn(move || {
            let started = Instant::now();
            let answer = redis::cmd("DEBUG").arg("SLEEP").arg(seconds).query(&mut connection);
            (answer, started.elapsed())
        })
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Cluster of masters without replicas, each node its own process and folder.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` cluster-enabled nodes, joins them with `redis-cli --cluster create` and
    /// waits until every node reports `cluster_state:ok`.
    pub fn start(masters: usize) -> RedisCluster {
        Self::start_with(masters, &Config::default())
    }

    /// [`RedisCluster::start`] with every node given `config` (a password is also each node's
    /// `masterauth`).
    pub fn start_with(masters: usize, config: &Config) -> RedisCluster {
        assert!(masters >= 3, "redis-cli --cluster create needs at least 3 masters");
        let nodes: Vec<RedisServer> = (0..masters).map(|_| RedisServer::launch(true, config)).collect();
        let mut create = Command::new(REDIS_CLI);
        if let Some(password) = &config.password {
            // Rather than `-a`, which redis-cli warns about on every run.
            create.env("REDISCLI_AUTH", password);
        }
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port()));
        }
        create.args(["--cluster-replicas", "0", "--cluster-yes"]);
        run_bounded(&mut create, b"", CLUSTER_TIMEOUT).expect_success("redis-cli --cluster create");
        let cluster = RedisCluster { nodes };
        cluster.wait_ok();
        cluster
    }

    /// Waits until every node reports `cluster_state:ok`.
    fn wait_ok(&self) {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        for node in &self.nodes {
            loop {
                let info = node.try_query::<String>(&["CLUSTER", "INFO"]);
                if info.as_deref().is_ok_and(|i| i.contains("cluster_state:ok")) {
                    break;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "node {} not cluster_state:ok within {CLUSTER_TIMEOUT:?}: {info:?}; log:\n{}",
                        node.port(),
                        node.log()
                    );
                }
                std::thread::sleep(POLL);
            }
        }
    }

    /// Kills every node (SIGKILL); their data is gone, their cluster configuration is kept.
    pub fn stop(&mut self) {
        self.nodes.iter_mut().for_each(RedisServer::stop);
    }

    /// Starts every node again on its port and folder (so it rejoins the cluster with its slots)
    /// and waits until the cluster is whole.
    pub fn restart(&mut self) {
        self.nodes.iter_mut().for_each(RedisServer::restart);
        self.wait_ok();
    }

    /// [`RedisCluster::restart`] with every node given `config` from now on.
    pub fn restart_with(&mut self, config: &Config) {
        self.nodes.iter_mut().for_each(|node| node.restart_with(config));
        self.wait_ok();
    }

    /// The nodes, in start order.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// `redis://127.0.0.1:P1,redis://127.0.0.1:P2,…`, as `cache.redis_url` takes a cluster.
    pub fn url(&self) -> String {
        self.nodes.iter().map(RedisServer::url).collect::<Vec<_>>().join(",")
    }

    /// Keys matching `pattern` on every node, sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self.nodes.iter().flat_map(|n| n.keys(pattern)).collect();
        keys.sort();
        keys
    }

    /// `DBSIZE` of each node.
    pub fn dbsizes(&self) -> Vec<u64> {
        self.nodes.iter().map(RedisServer::dbsize).collect()
    }

    /// Runs a command on the node owning `key` (`CLUSTER KEYSLOT`, then that node's slots).
    pub fn query_key<T: redis::FromRedisValue>(&self, args: &[&str], key: &str) -> T {
        let slot: u16 = self.nodes[0].query(&["CLUSTER", "KEYSLOT", key]);
        let slots: Vec<Vec<redis::Value>> = self.nodes[0].query(&["CLUSTER", "SLOTS"]);
        for range in &slots {
            let bound = |i: usize| match range.get(i) {
                Some(redis::Value::Int(n)) => *n,
                other => panic!("CLUSTER SLOTS entry {other:?}"),
            };
            if (bound(0)..=bound(1)).contains(&i64::from(slot)) {
                let port = match range.get(2) {
                    Some(redis::Value::Array(master)) => match master.get(1) {
                        Some(redis::Value::Int(port)) => *port,
                        other => panic!("CLUSTER SLOTS master {other:?}"),
                    },
                    other => panic!("CLUSTER SLOTS master {other:?}"),
                };
                let node = self
                    .nodes
                    .iter()
                    .find(|n| i64::from(n.port()) == port)
                    .unwrap_or_else(|| panic!("slot {slot} on unknown port {port}"));
                return node.query(args);
            }
        }
        panic!("slot {slot} of {key:?} is not served: {slots:?}")
    }
}

/// Runs an async test once per [`Mode`] it is named for, so that a test of anything that
/// talks to Redis states its modes in one place instead of a wrapper function each:
///
/// ```ignore
/// redis_modes! {
///     #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
///     replicas_add_up {
///         /// Docs of this one.
///         replicas_add_up_on_one_redis_node => Node,
///         replicas_add_up_on_a_redis_cluster => Cluster,
///     }
/// }
/// ```
///
/// makes each `name => Mode` an `async fn name()` with the attributes given first (each with
/// its own docs) that runs `replicas_add_up(Mode::…).await`. The test names are spelled out,
/// not derived, so that a name quoted in a note is found by a search. `test(args, …)` passes
/// `args` after the mode; `mod test { … }` puts the functions in a module `test` (named
/// `test::name`), calling `super::test`.
#[macro_export]
macro_rules! redis_modes {
    ($(#[$($attr:tt)*])* mod $test:ident $(($($arg:expr),* $(,)?))? { $($tests:tt)* }) => {
        mod $test {
            $crate::redis_modes!(@each [$(#[$($attr)*])*] [super::$test] [$($($arg),*)?] $($tests)*);
        }
    };
    ($(#[$($attr:tt)*])* $test:ident $(($($arg:expr),* $(,)?))? { $($tests:tt)* }) => {
        $crate::redis_modes!(@each [$(#[$($attr)*])*] [$test] [$($($arg),*)?] $($tests)*);
    };
    (@each $attrs:tt $test:tt $args:tt) => {};
    (
        @each [$($attrs:tt)*] [$($test:tt)+] [$($arg:expr),*]
        $(#[$($doc:tt)*])* $name:ident => $mode:ident $(, $($rest:tt)*)?
    ) => {
        $($attrs)*
        $(#[$($doc)*])*
        async fn $name() {
            $($test)+($crate::common::redis::Mode::$mode $(, $arg)*).await;
        }
        $crate::redis_modes!(@each [$($attrs)*] [$($test)+] [$($arg),*] $($($rest)*)?);
    };
}

/// Where a test's counts live: in the gateway's memory, on one Redis node, or on a 3-node
/// Redis Cluster. Tests of anything that talks to Redis run in every mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Memory,
    Node,
    Cluster,
}

impl Mode {
    /// What the `counts` field of the results says in this mode.
    pub fn counts(self) -> &'static str {
        match self {
            Mode::Memory => "memory",
            Mode::Node | Mode::Cluster => "redis",
        }
    }
}

/// The Redis of a [`Mode`], kept alive for the test.
pub enum Redis {
    None,
    Node(RedisServer),
    Cluster(RedisCluster),
}

impl Redis {
    /// Starts what `mode` needs (nothing for [`Mode::Memory`]).
    pub fn start(mode: Mode) -> Redis {
        Self::start_with(mode, &Config::default())
    }

    /// [`Redis::start`] with every server given `config`.
    pub fn start_with(mode: Mode, config: &Config) -> Redis {
        match mode {
            Mode::Memory => Redis::None,
            Mode::Node => Redis::Node(RedisServer::start_with(config)),
            Mode::Cluster => Redis::Cluster(RedisCluster::start_with(3, config)),
        }
    }

    /// Its servers: none, the one node, or the cluster's nodes.
    pub fn servers(&self) -> &[RedisServer] {
        match self {
            Redis::None => &[],
            Redis::Node(server) => std::slice::from_ref(server),
            Redis::Cluster(cluster) => cluster.nodes(),
        }
    }

    /// Kills every server (SIGKILL); see [`RedisServer::stop`].
    pub fn stop(&mut self) {
        match self {
            Redis::None => {}
            Redis::Node(server) => server.stop(),
            Redis::Cluster(cluster) => cluster.stop(),
        }
    }

    /// Starts every server again on its ports, empty, and waits until a cluster is whole; see
    /// [`RedisServer::restart`].
    pub fn restart(&mut self) {
        match self {
            Redis::None => {}
            Redis::Node(server) => server.restart(),
            Redis::Cluster(cluster) => cluster.restart(),
        }
    }

    /// [`Redis::restart`] with every server given `config` from now on.
    pub fn restart_with(&mut self, config: &Config) {
        match self {
            Redis::None => {}
            Redis::Node(server) => server.restart_with(config),
            Redis::Cluster(cluster) => cluster.restart_with(config),
        }
    }

    /// Keys matching `pattern` on every server, sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        match self {
            Redis::None => Vec::new(),
            Redis::Node(server) => server.keys(pattern),
            Redis::Cluster(cluster) => cluster.keys(pattern),
        }
    }

    /// [`Redis::start`] from a test on the multi-threaded runtime, off its async threads.
    pub fn start_in_place(mode: Mode) -> Redis {
        tokio::task::block_in_place(|| Redis::start(mode))
    }

    /// Its URL for `cache.redis_url`; empty (no Redis) for [`Mode::Memory`].
    pub fn url(&self) -> String {
        match self {
            Redis::None => String::new(),
            Redis::Node(server) => server.url(),
            Redis::Cluster(cluster) => cluster.url(),
        }
    }
}
