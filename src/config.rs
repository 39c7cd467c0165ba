//! Settings (ARCHITECTURE.md §2): built-in defaults that serve the demo with nothing else running,
//! then an optional TOML file, then `RECGW__SECTION__KEY` environment variables. Unknown keys
//! are errors that name the key, because a misspelt setting silently ignored is an outage
//! waiting for its trigger.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Every setting, by section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// HTTP listener.
    pub server: ServerSettings,
    /// Where experiments come from.
    pub experiments: ExperimentSettings,
    /// Where model outputs come from.
    pub models: ModelSettings,
    /// The local and Redis cache tiers.
    pub cache: CacheSettings,
    /// Tracking tokens for impression and click events.
    pub tracking: TrackingSettings,
    /// API keys.
    pub auth: AuthSettings,
    /// The analysts' results.
    pub results: ResultsSettings,
    /// Exposure and event logs written as Parquet, for warehouse analyses.
    pub logs: LogSettings,
}

/// `[logs]`: exposure and event logs (README, "Exposure logs"; `crate::logs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// Where the `exposures/` and `events/` tables go: a folder, `file://…` or
    /// `hdfs://host:port/path`, through the same object store layer as the models. Unset or
    /// empty (the default) writes no logs and costs requests nothing.
    pub root: Option<String>,
    /// How often each replica writes what it buffered: one file per table and hour partition
    /// per interval, so the interval trades file count against how fresh the tables are.
    #[serde(deserialize_with = "duration")]
    pub flush_interval: Duration,
    /// Rows held in memory at most per table, written or waiting for an unreachable log root;
    /// rows past it are dropped and counted (`logs_dropped_rows_total`) rather than let memory
    /// grow without end. About 200 bytes a row before it is encoded, far less after.
    pub max_buffered_rows: usize,
    /// How long one file's write (put and rename) may take before it counts as failed and is
    /// tried again at the next interval: an `hdfs://` name node that does not answer is retried
    /// by the HDFS client with backoff for minutes, which must not hold the flusher that long.
    #[serde(deserialize_with = "duration")]
    pub write_timeout: Duration,
    /// A name for this replica in file names (`part-{replica_id}-{run}-{seq}.parquet`), e.g.
    /// the pod name, so an operator can tell whose files are whose; empty (the default) uses
    /// only the random run id drawn at each start. 1-64 characters from `[A-Za-z0-9_-]`.
    pub replica_id: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            root: None,
            flush_interval: Duration::from_secs(60),
            max_buffered_rows: 1_000_000,
            write_timeout: Duration::from_secs(30),
            replica_id: String::new(),
        }
    }
}

impl LogSettings {
    /// The log root, when logs are on.
    pub(crate) fn root(&self) -> Option<&str> {
        self.root.as_deref().map(str::trim).filter(|root| !root.is_empty())
    }
}

/// `[results]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResultsSettings {
    /// Impressions an arm needs before its comparison is worth reading (`min_sample_reached`).
    pub(crate) min_sample_size: u64,
    /// Where counts and event claims live; empty (the default) means `cache.redis_url`. A
    /// cache wants `maxmemory-policy allkeys-lru`, and counts must never be evicted
    /// (`noeviction`), so a large deployment gives them a Redis of their own.
    pub redis_url: String,
    /// What to do when the counts' Redis may evict them, or its `maxmemory-policy` cannot be
    /// read: hold the counts (the default), or, for a managed Redis whose provider disables
    /// `CONFIG`, count into it anyway with a warning ([`crate::redis::eviction`]).
    pub eviction_check: EvictionCheck,
    /// Hash tags (`{experiment:shard}`) each experiment's per-user state is spread over, so a
    /// large experiment's users fill every node of a Redis Cluster rather than one slot. Fixed
    /// for the life of the counts: a changed value puts users under other keys, where they
    /// count again.
    pub(crate) shards: u32,
    /// Users this process holds in memory at most: with Redis, new users waiting out an outage;
    /// without, every user it counts. Past it users are not counted, and the results say so.
    pub(crate) max_buffered_users: u64,
}

/// `results.eviction_check`: what an evicting counts' Redis, or one whose policy cannot be read,
/// gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvictionCheck {
    /// Nothing is written to it: counts are held in memory, events refused, and `/ready`
    /// answers 503 with the reason, until every node runs `noeviction`.
    Refuse,
    /// Counted into anyway, with a warning in the log and in `/ready`: for a managed Redis that
    /// disables `CONFIG`, whose policy the operator has checked by other means.
    Warn,
}

/// The largest `results.shards`: a cluster has 16,384 slots, and a read sends a pipeline per
/// shard.
const MAX_SHARDS: u32 = 1024;

impl Default for ResultsSettings {
    fn default() -> Self {
        ResultsSettings {
            min_sample_size: 1000,
            redis_url: String::new(),
            eviction_check: EvictionCheck::Refuse,
            shards: 16,
            max_buffered_users: 1_000_000,
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// `[[auth.keys]]` entries (`sha256`, `role`, `name`); none turns auth off, with a loud
    /// warning at start and admin routes answering loopback callers only, or nobody.
    pub keys: Vec<crate::auth::KeySettings>,
    /// With auth off, whether admin routes answer loopback callers without a key: the demo's
    /// convenience (true by default). Every process on the host is such a caller, and behind a
    /// sidecar or a local reverse proxy so is every request it forwards; false closes admin
    /// routes until `auth.keys` holds an admin key. Without effect once keys are configured.
    pub loopback_admin: bool,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            keys: Vec::new(),
            loopback_admin: true,
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address to bind; loopback by default so a demo never listens on the network.
    pub listen: SocketAddr,
    /// A request still running after this gets a 504 JSON error instead of hanging.
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// On SIGTERM/SIGINT, in-flight requests get this long to finish.
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// A connection that sends and receives nothing for this long is closed: a client that
    /// stalls in its headers or between requests cannot hold a socket forever (nginx's
    /// `client_header_timeout` and `keepalive_timeout` play this part). Longer than
    /// `request_timeout`, so it never cuts a request the gateway is still answering.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// One log line per request (method, route, status, latency, request id, key name, and the
    /// experiment, arm and source of recommendations), written off the request path. Off, a
    /// request logs nothing unless something fails, and costs no span: for replicas whose load
    /// balancer already keeps an access log.
    pub access_log: bool,
    /// An HTTP/1 request whose headers have not all arrived this long after the connection
    /// started waiting for them is dropped with its connection: `idle_timeout` restarts at every
    /// byte, so a client trickling a header byte at a time would otherwise hold its connection
    /// forever (nginx's `client_header_timeout`, whose default this is). hyper starts the clock
    /// when a connection waits for a request, so it also closes a kept-alive connection idle
    /// this long: kept as long as `idle_timeout`'s default, it closes no pooled connection
    /// sooner than before.
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// Connections served at once; more are answered 503 and closed at once (and counted in
    /// `http_connections_refused_total`), so a flood of connections cannot take every file
    /// descriptor, nor the memory of their buffers. Each costs a descriptor and a few KiB.
    pub max_connections: usize,
    /// Requests (streams) one HTTP/2 connection may have in flight; a client opening more has
    /// them refused by the HTTP/2 layer, so one connection cannot queue unbounded work.
    pub http2_max_concurrent_streams: u32,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            request_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            access_log: true,
            header_read_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            http2_max_concurrent_streams: 128,
        }
    }
}

/// `[experiments]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExperimentSettings {
    /// Folder of experiment TOML files and `placements.toml`.
    pub(crate) dir: PathBuf,
    /// How often the folder is checked for changes.
    #[serde(deserialize_with = "duration")]
    pub reload_interval: Duration,
}

impl Default for ExperimentSettings {
    fn default() -> Self {
        ExperimentSettings {
            dir: PathBuf::from("experiments"),
            reload_interval: Duration::from_secs(5),
        }
    }
}

/// `[models]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSettings {
    /// Where relative model paths resolve: a folder, `file://…` or `hdfs://host:port/path`.
    pub(crate) root: String,
    /// How often each model's `_SUCCESS` marker is checked for a new version.
    #[serde(deserialize_with = "duration")]
    pub(crate) refresh_interval: Duration,
    /// Store reads in flight at most; more wait their turn, so a burst of cold users cannot
    /// exhaust memory or file handles.
    pub(crate) max_concurrent_reads: usize,
    /// Where each loaded version's serving snapshot is written and mapped; created at start
    /// (mode 0700), and used only while this process's user owns it and nobody else may enter
    /// it (`store::private_dir`). On local disk of the serving node: the point is to read no
    /// remote storage per lookup. The default is named after the user, so two users of one
    /// machine do not contend for one folder in the shared temp folder.
    pub snapshot_dir: PathBuf,
    /// A model whose snapshot would be larger is served by page reads instead (per model).
    pub snapshot_max_bytes: u64,
}

impl Default for ModelSettings {
    fn default() -> Self {
        ModelSettings {
            root: "models".into(),
            refresh_interval: Duration::from_secs(60),
            max_concurrent_reads: 64,
            snapshot_dir: std::env::temp_dir().join(format!("recgw-snapshots-{}", crate::store::process_uid())),
            snapshot_max_bytes: 16 << 30,
        }
    }
}

/// `[cache]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// `redis://…`, or a comma-separated list of `redis://` nodes for Redis Cluster; empty
    /// (the default) runs without the Redis tier, so the demo needs no Redis.
    pub redis_url: String,
    /// Entries in the in-process tier; 0 disables it (misses are still coalesced).
    pub local_capacity: u64,
    /// Default lifetime of a cached list, jittered ±10%; an arm's `cache_ttl` overrides it.
    #[serde(deserialize_with = "duration")]
    pub ttl: Duration,
    /// Deadline of each Redis command; past it the request goes on to the store.
    #[serde(deserialize_with = "duration")]
    pub redis_timeout: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            redis_url: String::new(),
            local_capacity: 100_000,
            ttl: Duration::from_secs(3600),
            redis_timeout: Duration::from_millis(50),
        }
    }
}

/// `[tracking]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackingSettings {
    /// HMAC keys of tracking tokens: the first signs, every one verifies, so a secret is
    /// rotated without refusing the tokens of pages already served (`[old, new]` on every
    /// replica, then `[new, old]`, then `[new]` once `token_max_age` has passed). One string is
    /// a list of one, as before lists were taken; none (or one empty string) draws a random key
    /// per process (with a warning): replicas that share traffic must share their secrets.
    /// See [`secrets`] for the forms.
    #[serde(deserialize_with = "secrets")]
    pub secret: Vec<String>,
    /// Events whose token is older than this are rejected as expired.
    #[serde(deserialize_with = "duration")]
    pub token_max_age: Duration,
    /// The format new tokens are signed in (both are verified): `binary`, or `json` while
    /// upgrading from a release that reads only JSON tokens (README, "Tracking tokens").
    pub token_format: crate::feedback::token::TokenFormat,
}

impl Default for TrackingSettings {
    fn default() -> Self {
        TrackingSettings {
            secret: Vec::new(),
            token_max_age: Duration::from_secs(24 * 3600),
            token_format: crate::feedback::token::TokenFormat::Binary,
        }
    }
}

/// `tracking.secret`: a TOML list of strings, or one string, which is one secret unless it is
/// a JSON list of strings (`["new…", "old…"]`, how an environment variable gives a list; no
/// secret worth the name starts with `[`). An empty string is no secret.
fn secrets<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        One(String),
        Many(Vec<String>),
    }
    match Form::deserialize(deserializer)? {
        Form::Many(secrets) => Ok(secrets),
        Form::One(text) if text.trim_start().starts_with('[') => serde_json::from_str(&text).map_err(|e| {
            serde::de::Error::custom(format!("a secret starting with [ must be a JSON list of strings: {e}"))
        }),
        Form::One(text) if text.is_empty() => Ok(Vec::new()),
        Form::One(text) => Ok(vec![text]),
    }
}

/// Durations are humantime strings (`250ms`, `5s`, `1h`) in files and environment alike.
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a duration like 250ms, 5s or 1h: {e}")))
}

/// The longest duration any setting may have: a year is beyond every period and deadline the
/// gateway has, so a longer one is a typo (and `u64::MAX` seconds would overflow a timer).
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The shortest `tracking.secret` accepted once Redis is shared: 32 bytes, the HMAC-SHA256
/// output size, below which the key is weaker than the signature it makes.
const MIN_SHARED_SECRET_BYTES: usize = 32;

/// Settings could not be read or are invalid.
#[derive(Debug, thiserror::Error)]
#[error("invalid settings: {0}")]
pub struct SettingsError(#[from] config::ConfigError);

impl Settings {
    /// Layers defaults, the optional `file` and the process environment.
    pub(crate) fn load(file: Option<&Path>) -> Result<Settings, SettingsError> {
        Self::load_from(file, std::env::vars())
    }

    /// As [`Settings::load`], with the environment given explicitly (tests must not depend on,
    /// or change, the process environment).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, SettingsError> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).format(config::FileFormat::Toml).required(true));
        }
        let env = env.into_iter().filter(|(key, _)| key.starts_with("RECGW__")).collect();
        let environment = config::Environment::with_prefix("RECGW")
            .prefix_separator("__")
            .separator("__")
            .source(Some(env));
        let settings: Settings = builder.add_source(environment).build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// The rules no single field can check, in one place: [`Settings::load`] applies them, and
    /// so does `Server::bind`, for settings built in code. Every duration setting is listed
    /// here, since a zero period panics inside the task that ticks on it (and stops it
    /// silently) and an absurd one overflows the clock arithmetic of timers.
    pub(crate) fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |message: String| Err(SettingsError(config::ConfigError::Message(message)));
        let durations = [
            ("server.request_timeout", self.server.request_timeout),
            ("server.shutdown_grace", self.server.shutdown_grace),
            ("server.idle_timeout", self.server.idle_timeout),
            ("server.header_read_timeout", self.server.header_read_timeout),
            ("experiments.reload_interval", self.experiments.reload_interval),
            ("models.refresh_interval", self.models.refresh_interval),
            ("cache.ttl", self.cache.ttl),
            ("cache.redis_timeout", self.cache.redis_timeout),
            ("tracking.token_max_age", self.tracking.token_max_age),
            ("logs.flush_interval", self.logs.flush_interval),
            ("logs.write_timeout", self.logs.write_timeout),
        ];
        for (key, value) in durations {
            if value.is_zero() {
                return invalid(format!("{key} must be longer than zero"));
            }
            if value > MAX_DURATION {
                return invalid(format!(
                    "{key} ({}) is longer than a year, which no period or deadline of the gateway needs",
                    humantime::format_duration(value)
                ));
            }
        }
        if self.server.idle_timeout <= self.server.request_timeout {
            return invalid(format!(
                "server.idle_timeout ({:?}) must be longer than server.request_timeout ({:?}), or idle connections \
                 would be cut while their request is still being answered",
                self.server.idle_timeout, self.server.request_timeout
            ));
        }
        if self.server.max_connections == 0 {
            return invalid("server.max_connections must be at least 1".into());
        }
        if self.server.http2_max_concurrent_streams == 0 {
            return invalid("server.http2_max_concurrent_streams must be at least 1".into());
        }
        if !(1..=MAX_SHARDS).contains(&self.results.shards) {
            return invalid(format!(
                "results.shards ({}) must be 1-{MAX_SHARDS}: the hash tags an experiment's users are spread over",
                self.results.shards
            ));
        }
        if self.results.max_buffered_users == 0 {
            return invalid("results.max_buffered_users must be at least 1".into());
        }
        if self.logs.max_buffered_rows == 0 {
            return invalid("logs.max_buffered_rows must be at least 1".into());
        }
        let replica = &self.logs.replica_id;
        if !replica.is_empty()
            && (replica.len() > 64
                || !replica
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
        {
            return invalid(format!(
                "logs.replica_id {replica:?} must be 1-64 characters from [A-Za-z0-9_-]: it is part of file names"
            ));
        }
        let secrets = &self.tracking.secret;
        if let Some(at) = secrets.iter().position(String::is_empty) {
            return invalid(format!(
                "tracking.secret lists an empty secret (at {at}): list the secrets that sign or verify, or none"
            ));
        }
        let redis = [
            ("cache.redis_url", &self.cache.redis_url),
            ("results.redis_url", &self.results.redis_url),
        ];
        let shortest = secrets.iter().map(String::len).min();
        if let Some((key, _)) = redis.iter().find(|(_, url)| !url.trim().is_empty())
            && shortest.is_none_or(|len| len < MIN_SHARED_SECRET_BYTES)
        {
            let found = match (shortest, secrets.len()) {
                (None, _) => "it is not set".to_string(),
                (Some(n), 1) => format!("it is {n} bytes"),
                (Some(n), _) => format!("one of its secrets is {n} bytes"),
            };
            return invalid(format!(
                "tracking.secret must be at least {MIN_SHARED_SECRET_BYTES} bytes (each of them, when it lists \
                 several) when {key} is set ({found}): \
                 replicas sharing a Redis share traffic, and one signing with a key of its own rejects the \
                 others' tokens as forged; give every replica the same secret, e.g. \
                 RECGW__TRACKING__SECRET=$(openssl rand -hex 32)"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_serve_the_demo() {
        let settings = Settings::load_from(None, env(&[])).expect("defaults");
        assert_eq!(settings.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(settings.experiments.dir, PathBuf::from("experiments"));
        assert_eq!(settings.experiments.reload_interval, Duration::from_secs(5));
        assert_eq!(settings.models.root, "models");
        assert_eq!(settings.models.refresh_interval, Duration::from_secs(60));
        assert_eq!(settings.cache.redis_url, "");
        assert_eq!(settings.cache.local_capacity, 100_000);
        assert_eq!(settings.cache.ttl, Duration::from_secs(3600));
        assert_eq!(settings.cache.redis_timeout, Duration::from_millis(50));
        assert_eq!(settings.logs.root(), None, "logs are off by default");
        assert_eq!(
            settings.models.snapshot_dir,
            std::env::temp_dir().join(format!("recgw-snapshots-{}", crate::store::process_uid())),
            "the user's own folder, not one all users of the machine share"
        );
        assert_eq!(settings.logs.flush_interval, Duration::from_secs(60));
    }

    #[test]
    fn log_settings_come_from_the_environment_and_are_checked() {
        let settings = Settings::load_from(
            None,
            env(&[
                ("RECGW__LOGS__ROOT", "hdfs://nn:8020/logs"),
                ("RECGW__LOGS__FLUSH_INTERVAL", "250ms"),
                ("RECGW__LOGS__REPLICA_ID", "pod-7"),
            ]),
        )
        .expect("valid");
        assert_eq!(settings.logs.root(), Some("hdfs://nn:8020/logs"));
        assert_eq!(settings.logs.flush_interval, Duration::from_millis(250));
        let empty = Settings::load_from(None, env(&[("RECGW__LOGS__ROOT", " ")])).expect("valid");
        assert_eq!(empty.logs.root(), None, "an empty root is off");
        let refused = Settings::load_from(None, env(&[("RECGW__LOGS__REPLICA_ID", "a/b")])).expect_err("refused");
        assert!(refused.to_string().contains("logs.replica_id"), "{refused}");
        let refused = Settings::load_from(None, env(&[("RECGW__LOGS__MAX_BUFFERED_ROWS", "0")])).expect_err("refused");
        assert!(refused.to_string().contains("logs.max_buffered_rows"), "{refused}");
        let refused = Settings::load_from(None, env(&[("RECGW__LOGS__ROOTS", "x")])).expect_err("unknown key");
        assert!(refused.to_string().contains("roots"), "{refused}");
    }

    #[test]
    fn an_idle_timeout_within_the_request_timeout_is_refused() {
        let refused = Settings::load_from(
            None,
            env(&[
                ("RECGW__SERVER__REQUEST_TIMEOUT", "5s"),
                ("RECGW__SERVER__IDLE_TIMEOUT", "5s"),
            ]),
        )
        .expect_err("refused");
        assert!(refused.to_string().contains("server.idle_timeout"), "{refused}");
        let accepted = Settings::load_from(None, env(&[("RECGW__SERVER__IDLE_TIMEOUT", "6s")])).expect("accepted");
        assert_eq!(accepted.server.idle_timeout, Duration::from_secs(6));
    }

    #[test]
    fn connection_bounds_are_read_and_zero_is_refused() {
        let settings = Settings::load_from(
            None,
            env(&[
                ("RECGW__SERVER__MAX_CONNECTIONS", "3"),
                ("RECGW__SERVER__HTTP2_MAX_CONCURRENT_STREAMS", "7"),
                ("RECGW__SERVER__HEADER_READ_TIMEOUT", "250ms"),
            ]),
        )
        .expect("valid");
        assert_eq!(settings.server.max_connections, 3);
        assert_eq!(settings.server.http2_max_concurrent_streams, 7);
        assert_eq!(settings.server.header_read_timeout, Duration::from_millis(250));
        for key in ["MAX_CONNECTIONS", "HTTP2_MAX_CONCURRENT_STREAMS"] {
            let refused = Settings::load_from(None, env(&[(&format!("RECGW__SERVER__{key}"), "0")]))
                .expect_err("zero is refused");
            let name = format!("server.{}", key.to_ascii_lowercase());
            assert!(refused.to_string().contains(&name), "{refused}");
        }
    }

    #[test]
    fn zero_and_absurd_durations_are_refused_naming_the_key() {
        for key in [
            "SERVER__REQUEST_TIMEOUT",
            "SERVER__SHUTDOWN_GRACE",
            "SERVER__IDLE_TIMEOUT",
            "SERVER__HEADER_READ_TIMEOUT",
            "EXPERIMENTS__RELOAD_INTERVAL",
            "MODELS__REFRESH_INTERVAL",
            "CACHE__TTL",
            "CACHE__REDIS_TIMEOUT",
            "TRACKING__TOKEN_MAX_AGE",
            "LOGS__FLUSH_INTERVAL",
            "LOGS__WRITE_TIMEOUT",
        ] {
            let name = key.to_ascii_lowercase().replace("__", ".");
            for value in ["0s", "0ms", "1000years"] {
                let refused = Settings::load_from(None, env(&[(&format!("RECGW__{key}"), value)]))
                    .expect_err(&format!("{name} = {value:?} is refused"));
                assert!(refused.to_string().contains(&name), "{name} = {value:?}: {refused}");
            }
        }
        let mut settings = Settings::default();
        settings.experiments.reload_interval = Duration::ZERO;
        let refused = settings
            .validate()
            .expect_err("settings built in code are checked alike");
        assert!(refused.to_string().contains("experiments.reload_interval"), "{refused}");
    }

    #[test]
    fn a_shared_redis_needs_a_shared_secret_of_32_bytes() {
        let secret = "s".repeat(32);
        for key in ["RECGW__CACHE__REDIS_URL", "RECGW__RESULTS__REDIS_URL"] {
            let setting = key
                .trim_start_matches("RECGW__")
                .to_ascii_lowercase()
                .replace("__", ".");
            for short in ["", "change-me", &secret[1..]] {
                let refused = Settings::load_from(
                    None,
                    env(&[(key, "redis://127.0.0.1:7001"), ("RECGW__TRACKING__SECRET", short)]),
                )
                .expect_err("refused");
                let message = refused.to_string();
                assert!(
                    message.contains("tracking.secret") && message.contains(&setting),
                    "{message}"
                );
                assert!(
                    message.contains("RECGW__TRACKING__SECRET"),
                    "says how to set it: {message}"
                );
            }
            Settings::load_from(
                None,
                env(&[(key, "redis://127.0.0.1:7001"), ("RECGW__TRACKING__SECRET", &secret)]),
            )
            .expect("32 bytes are enough");
        }
        // Without Redis a replica's tokens come back to it: any secret, or none, will do.
        Settings::load_from(None, env(&[("RECGW__TRACKING__SECRET", "k3y")])).expect("no Redis");
    }

    /// One secret as a string (the form before lists), a list in a file, a JSON list in the
    /// environment; empty is none; an empty entry of a list, or a short one with Redis, is
    /// refused.
    #[test]
    fn tracking_secrets_are_one_string_or_a_list() {
        let secret = |env_value: &str| {
            Settings::load_from(None, env(&[("RECGW__TRACKING__SECRET", env_value)])).map(|s| s.tracking.secret)
        };
        assert_eq!(secret("k3y").expect("one"), ["k3y"]);
        assert_eq!(secret("").expect("none"), Vec::<String>::new());
        assert_eq!(secret(r#"["new", "old"]"#).expect("a JSON list"), ["new", "old"]);
        let refused = secret("[not a list").expect_err("refused");
        assert!(refused.to_string().contains("JSON list"), "{refused}");
        let refused = secret(r#"["new", ""]"#).expect_err("refused");
        assert!(refused.to_string().contains("empty secret"), "{refused}");
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("recgw.toml");
        let (new, old) = ("n".repeat(32), "o".repeat(32));
        std::fs::write(&file, format!("[tracking]\nsecret = [\"{new}\", \"{old}\"]\n")).expect("write");
        let listed = Settings::load_from(
            Some(&file),
            env(&[("RECGW__CACHE__REDIS_URL", "redis://127.0.0.1:7001")]),
        )
        .expect("a list in a file");
        assert_eq!(listed.tracking.secret, [new.clone(), old]);
        let short = format!(r#"["{new}", "short"]"#);
        let refused = Settings::load_from(
            None,
            env(&[
                ("RECGW__CACHE__REDIS_URL", "redis://127.0.0.1:7001"),
                ("RECGW__TRACKING__SECRET", &short),
            ]),
        )
        .expect_err("every secret has 32 bytes with Redis");
        assert!(refused.to_string().contains("5 bytes"), "{refused}");
    }

    #[test]
    fn redis_url_and_capacity_come_from_the_environment() {
        let settings = Settings::load_from(
            None,
            env(&[
                ("RECGW__CACHE__REDIS_URL", "redis://127.0.0.1:7001"),
                ("RECGW__TRACKING__SECRET", "a-secret-of-at-least-thirty-two-bytes"),
                ("RECGW__CACHE__LOCAL_CAPACITY", "0"),
            ]),
        )
        .expect("valid");
        assert_eq!(settings.cache.redis_url, "redis://127.0.0.1:7001");
        assert_eq!(settings.cache.local_capacity, 0);
    }

    #[test]
    fn file_then_environment_override_defaults() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("recgw.toml");
        std::fs::write(
            &file,
            "[models]\nroot = \"hdfs://nn:8020/recs\"\nrefresh_interval = \"30s\"\n",
        )
        .expect("write");
        let settings = Settings::load_from(
            Some(&file),
            env(&[
                ("RECGW__MODELS__REFRESH_INTERVAL", "250ms"),
                ("RECGW__SERVER__LISTEN", "0.0.0.0:9000"),
            ]),
        )
        .expect("valid");
        assert_eq!(settings.models.root, "hdfs://nn:8020/recs");
        assert_eq!(settings.models.refresh_interval, Duration::from_millis(250));
        assert_eq!(settings.server.listen.to_string(), "0.0.0.0:9000");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = Settings::load_from(None, env(&[("RECGW__MODELS__ROOTS", "x")])).expect_err("unknown key");
        assert!(err.to_string().contains("roots"), "{err}");
        let err = Settings::load_from(None, env(&[("RECGW__EXPERIMENTS__RELOAD_INTERVAL", "soon")]))
            .expect_err("bad duration");
        assert!(err.to_string().contains("soon"), "{err}");
    }
}
