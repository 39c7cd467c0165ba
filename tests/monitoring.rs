//! Monitoring end to end (ARCHITECTURE.md §7, and the README's monitoring section): a real
//! gateway over the repository's own `experiments/` and `models/` serves traffic to both arms
//! of `home-als-rank` (requests, impressions and clicks with the responses' tracking tokens,
//! rejected events, 4xx), a real Prometheus (Debian package `prometheus`, started here on a
//! port it picks and logs) scrapes it every second and evaluates the repository's
//! `prometheus/alerts.yml`, and then:
//!
//! - every query of every panel of `grafana/dashboards/recgw-experiments.json` is evaluated
//!   through Prometheus's HTTP API with the dashboard variables substituted: each must parse and
//!   return a finite value for each arm (per-arm panels, whose legend names `{{arm}}`) or at
//!   least one finite value (gateway-wide panels); the test lists every query that did not;
//! - the dashboard's template variables list the experiment and its placement;
//! - `promtool check metrics` accepts `/metrics` without a word;
//! - every recording and alerting rule evaluates without error.
//!
//! `dashboard_follows_grafana_schema` checks the dashboard's structure without any server.
//!
//! Needs `prometheus` and `promtool` on PATH (`scripts/test` installs them).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::events::post_outcome;
use common::gateway::{TestGateway, http_client, repo};
use common::page::{Page, recommend};
use common::process::watch_log;
use common::promtool;
use futures::StreamExt;
use serde_json::{Value, json};
use tempfile::TempDir;

/// The demo experiment and its placement (`experiments/home-als-rank.toml`).
const EXPERIMENT: &str = "home-als-rank";
const PLACEMENT: &str = "home";
/// The demo's interleave experiment and its placement (`experiments/feed-als-interleave.toml`),
/// which the interleaving panels are viewed with.
const INTERLEAVE_EXPERIMENT: &str = "feed-als-interleave";
const INTERLEAVE_PLACEMENT: &str = "feed";
/// The demo's experiment with a shadow arm (`experiments/discover-als-shadow.toml`), which the
/// shadow panels are viewed with, and that arm.
const SHADOW_EXPERIMENT: &str = "discover-als-shadow";
const SHADOW_PLACEMENT: &str = "discover";
const SHADOW_ARM: &str = "candidate";
/// Its arms; every per-arm panel must show both.
const ARMS: [&str; 2] = ["control", "treatment"];
/// The datasource every panel and query must name.
const DATASOURCE_UID: &str = "recgw-prometheus";

/// How long Prometheus gets to start and to scrape.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(20);
/// How often waits on Prometheus poll.
const POLL: Duration = Duration::from_millis(200);

fn dashboard() -> Value {
    let path = repo().join("grafana/dashboards/recgw-experiments.json");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// A panel as failures name it.
fn panel_name(panel: &Value) -> String {
    format!(
        "panel {} {:?}",
        panel["id"],
        panel["title"].as_str().unwrap_or_default()
    )
}

/// A dashboard expression with Grafana's variables replaced as the test's view of the split
/// experiment would set them.
fn substitute(expr: &str) -> String {
    substitute_for(expr, EXPERIMENT, PLACEMENT)
}

/// A dashboard expression viewed with `experiment` on `placement`.
fn substitute_for(expr: &str, experiment: &str, placement: &str) -> String {
    expr.replace("${experiment}", experiment)
        .replace("$experiment", experiment)
        .replace("${placement}", placement)
        .replace("$placement", placement)
        .replace("$__rate_interval", "1m")
        .replace("$__range", "1m")
        .replace("$__interval", "1s")
}

/// The experiment, placement and arms a query is viewed with when it is not the split
/// experiment: the interleaving row's queries (gated on the experiment's `interleaved` arm)
/// with the interleave experiment, the shadow arms' queries with the shadow experiment.
fn special_view(expr: &str) -> Option<(&'static str, &'static str, &'static [&'static str])> {
    if expr.contains(r#"arm="interleaved""#) {
        Some((INTERLEAVE_EXPERIMENT, INTERLEAVE_PLACEMENT, &ARMS))
    } else if expr.contains("list_overlap") || expr.contains("shadow_comparisons") {
        Some((SHADOW_EXPERIMENT, SHADOW_PLACEMENT, &[SHADOW_ARM]))
    } else {
        None
    }
}

/// Whether a target draws one line per arm: its legend names the arm.
fn per_arm(target: &Value) -> bool {
    target["legendFormat"].as_str().unwrap_or_default().contains("{{arm}}")
}

// ---------------------------------------------------------------------------------------------
// A real Prometheus
// ---------------------------------------------------------------------------------------------

/// A `prometheus` process scraping one gateway every second with the repository's rules; killed
/// on drop.
struct Prometheus {
    /// The process, killed on drop.
    child: Child,
    /// `http://127.0.0.1:P`, P the port it picked and logged.
    base: String,
    /// Its stdout and stderr, which say why it failed.
    log: PathBuf,
    /// Client for its HTTP API ([`http_client`]: no proxy).
    client: reqwest::Client,
    /// Its configuration, data and log, removed on drop.
    _dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus on a port it picks, scraping `target` as job `recgw` and evaluating
    /// `rules`, and waits until it is ready.
    async fn start(target: SocketAddr, rules: &Path) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        // JSON is YAML: no quoting to get wrong.
        let config = json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [rules.to_str().expect("utf-8 path")],
            "scrape_configs": [{
                "job_name": "recgw",
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "static_configs": [{"targets": [target.to_string()]}],
            }],
        });
        let config_path = dir.path().join("prometheus.yml");
        fs::write(&config_path, config.to_string()).expect("write prometheus.yml");
        let log = dir.path().join("prometheus.log");
        let out = fs::File::create(&log).expect("log file");
        // Port 0: Prometheus picks a free port itself and logs it, so no other process can take
        // it between being found free and being bound.
        let mut child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg("--web.listen-address=127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run prometheus ({e}): install the Debian package `prometheus`"));
        let address = tokio::task::block_in_place(|| {
            watch_log(&mut child, &log, 0, PROMETHEUS_TIMEOUT, "prometheus", listening_address)
        })
        .unwrap_or_else(|exited| panic!("prometheus exited ({}):\n{}", exited.status, exited.log));
        let mut prometheus = Prometheus {
            child,
            base: format!("http://{address}"),
            log,
            client: http_client(),
            _dir: dir,
        };
        let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
        loop {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", prometheus.log());
            }
            let ready = prometheus.client.get(prometheus.url("/-/ready")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return prometheus;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within {PROMETHEUS_TIMEOUT:?}:\n{}",
                prometheus.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// `http://127.0.0.1:P` + `path`.
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The end of Prometheus's log, for failure messages.
    fn log(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// A successful API answer's `data`, or the error Prometheus gave.
    async fn api(&self, request: reqwest::RequestBuilder) -> Result<Value, String> {
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| format!("{status}: {e}"))?;
        if body["status"] == "success" {
            Ok(body["data"].clone())
        } else {
            Err(format!("{status} {}: {}", body["errorType"], body["error"]))
        }
    }

    /// Evaluates `expr` now; the series of the instant vector it returns.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let request = self.client.post(self.url("/api/v1/query")).form(&[("query", expr)]);
        let data = self.api(request).await?;
        match data["resultType"].as_str() {
            Some("vector") => Ok(data["result"].as_array().cloned().unwrap_or_default()),
            other => Err(format!("result type {other:?}, not an instant vector")),
        }
    }

    /// The value of a one-series query, 0 when it returns nothing.
    async fn scalar(&self, expr: &str) -> f64 {
        match self.query(expr).await {
            Ok(series) => series.first().map_or(0.0, value),
            Err(e) => panic!("{expr}: {e}"),
        }
    }

    /// Waits until `expr` is at least `at_least`; returns its value.
    async fn wait_for(&self, expr: &str, at_least: f64) -> f64 {
        let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
        loop {
            let now = self.scalar(expr).await;
            if now >= at_least {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "{expr} stayed at {now} < {at_least} for {PROMETHEUS_TIMEOUT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Every rule Prometheus loaded: (group, name, health, last error).
    async fn rules(&self) -> Vec<(String, String, String, String)> {
        let data = self
            .api(self.client.get(self.url("/api/v1/rules")))
            .await
            .unwrap_or_else(|e| panic!("/api/v1/rules: {e}"));
        let mut rules = Vec::new();
        for group in data["groups"].as_array().into_iter().flatten() {
            for rule in group["rules"].as_array().into_iter().flatten() {
                let text = |key: &str| rule[key].as_str().unwrap_or_default().to_string();
                rules.push((
                    group["name"].as_str().unwrap_or_default().to_string(),
                    text("name"),
                    text("health"),
                    text("lastError"),
                ));
            }
        }
        rules
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in Prometheus's `msg="Listening on" … address=127.0.0.1:P` log line, which it
/// writes once its web listener is bound (to the port it picked, when given port 0).
fn listening_address(log: &str) -> Option<String> {
    log.lines()
        .filter(|line| line.contains(r#"msg="Listening on""#))
        .find_map(|line| line.split_whitespace().find_map(|field| field.strip_prefix("address=")))
        .map(|address| address.trim_matches('"').to_string())
}

/// The number in a series' `value` pair (NaN when it is not one).
fn value(series: &Value) -> f64 {
    series["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

// ---------------------------------------------------------------------------------------------
// Traffic
// ---------------------------------------------------------------------------------------------

/// One round of traffic: requests for 100 users new to the gateway (90 known to the models, 10
/// cold ones), 30 repeats answered by the local cache tier, impressions and clicks on what they
/// were shown, rejected events and 4xx requests. Returns the responses served per arm.
async fn drive_traffic(gw: &TestGateway, round: usize) -> BTreeMap<String, usize> {
    let first = 1 + 90 * round;
    let mut users: Vec<String> = (first..first + 90).map(|i| i.to_string()).collect();
    users.extend((1..=10).map(|i| format!("cold-user-{round}-{i}")));
    users.extend((first..first + 30).map(|i| i.to_string()));
    let served: Vec<Page> = futures::stream::iter(&users)
        .map(|user| async move {
            recommend(gw, user, &format!("placement={PLACEMENT}&limit=5"))
                .await
                .expect_experiment(EXPERIMENT)
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut per_arm = BTreeMap::new();
    for s in &served {
        *per_arm.entry(s.arm.clone()).or_insert(0) += 1;
    }

    // Impressions of every item shown, a click on the first item of every third response.
    let mut events = Vec::new();
    for (n, s) in served.iter().enumerate() {
        for (i, item) in s.items.iter().enumerate() {
            events.push(json!({"type": "impression", "tracking_token": s.token, "item_id": item,
                               "event_id": format!("imp-{round}-{n}-{i}")}));
        }
        if let Some(item) = s.items.first().filter(|_| n % 3 == 0) {
            events.push(json!({"type": "click", "tracking_token": s.token, "item_id": item,
                               "event_id": format!("click-{round}-{n}")}));
        }
    }
    // The interleave experiment: 40 users of the feed, an impression of every item and a click
    // on the first two items (the coin gives the first pick to either team, so both get clicks).
    for (n, user) in (first..first + 40).enumerate() {
        let s = recommend(
            gw,
            &user.to_string(),
            &format!("placement={INTERLEAVE_PLACEMENT}&limit=5"),
        )
        .await
        .expect_experiment(INTERLEAVE_EXPERIMENT);
        assert_eq!(s.arm, "interleaved");
        for (i, item) in s.items.iter().enumerate() {
            events.push(json!({"type": "impression", "tracking_token": s.token, "item_id": item,
                               "event_id": format!("feed-imp-{round}-{n}-{i}")}));
            if i < 2 {
                events.push(json!({"type": "click", "tracking_token": s.token, "item_id": item,
                                   "event_id": format!("feed-click-{round}-{n}-{i}")}));
            }
        }
    }
    // The shadow experiment: 40 users of the discover page, about half of whose responses the
    // shadow arm is compared on.
    for user in first..first + 40 {
        let s = recommend(gw, &user.to_string(), &format!("placement={SHADOW_PLACEMENT}&limit=5"))
            .await
            .expect_experiment(SHADOW_EXPERIMENT);
        assert_eq!(s.arm, "control", "the shadow arm serves nobody");
    }
    for batch in events.chunks(500) {
        let outcome = post_outcome(gw, batch).await;
        assert_eq!(outcome["rejected"], 0, "{outcome}");
        assert_eq!(outcome["accepted"], batch.len(), "{outcome}");
    }

    // Events that must be refused: a tampered token and an unknown type.
    let token = &served[0].token;
    // The first character carries six payload bits (the last may carry padding bits only).
    let first = if token.starts_with('A') { "B" } else { "A" };
    let tampered = format!("{first}{}", &token[1..]);
    let bad = [
        json!({"type": "click", "tracking_token": tampered, "item_id": "1", "event_id": format!("bad-{round}-1")}),
        json!({"type": "purchase", "tracking_token": token, "item_id": "1", "event_id": format!("bad-{round}-2")}),
    ];
    let outcome = post_outcome(gw, &bad).await;
    assert_eq!(outcome["rejected"], 2, "{outcome}");

    // Failed requests: a bad user id, an unknown placement, a limit out of range.
    for (path, status) in [
        (format!("/recommendations/bad%20user?placement={PLACEMENT}"), 400),
        ("/recommendations/1?placement=no-such-placement".to_string(), 404),
        (format!("/recommendations/1?placement={PLACEMENT}&limit=0"), 400),
    ] {
        let reply = gw.get(&path).await;
        assert_eq!(reply.status, status, "GET {path}: {}", reply.body);
    }
    per_arm
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

/// Runs `promtool check metrics` on the gateway's `/metrics`; it must say nothing.
async fn check_metrics(gw: &TestGateway) {
    let reply = gw.get("/metrics").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    tokio::task::block_in_place(|| promtool::check_metrics(&reply.body));
}

/// Every query of every panel: parses, and returns a finite value per arm (per-arm targets) or
/// at least one (the others). Returns one line per query that did not.
async fn check_panels(prometheus: &Prometheus, dashboard: &Value) -> Vec<String> {
    let mut failures = Vec::new();
    let mut queries = 0;
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries += 1;
            let name = format!("{} query {}", panel_name(panel), target["refId"]);
            let Some(expr) = target["expr"].as_str() else {
                failures.push(format!("{name}: no expr"));
                continue;
            };
            let (expr, arms) = match special_view(expr) {
                Some((experiment, placement, arms)) => {
                    // Viewed with the split experiment it shows nothing: that is how it hides.
                    let split = prometheus.query(&substitute(expr)).await.unwrap_or_default();
                    if !split.is_empty() {
                        failures.push(format!("{name}: shows {} series for the split experiment", split.len()));
                    }
                    (substitute_for(expr, experiment, placement), arms)
                }
                None => (substitute(expr), &ARMS[..]),
            };
            if expr.contains('$') {
                failures.push(format!("{name}: unknown variable left in {expr}"));
                continue;
            }
            let series = match prometheus.query(&expr).await {
                Ok(series) => series,
                Err(e) => {
                    failures.push(format!("{name}: {e}\n    {expr}"));
                    continue;
                }
            };
            let finite = |s: &&Value| value(s).is_finite();
            if per_arm(target) {
                for arm in arms {
                    if !series.iter().filter(finite).any(|s| s["metric"]["arm"] == *arm) {
                        failures.push(format!(
                            "{name}: no value for arm {arm}\n    {expr}\n    got {}",
                            Value::from(series.clone())
                        ));
                    }
                }
            } else if !series.iter().any(|s| finite(&s)) {
                failures.push(format!(
                    "{name}: no value\n    {expr}\n    got {}",
                    Value::from(series.clone())
                ));
            }
        }
    }
    assert!(queries > 0, "the dashboard has no queries");
    failures
}

/// Each template variable's `label_values(selector, label)`, evaluated as
/// `count by (label) (selector)`, must offer the value the test views.
async fn check_variables(prometheus: &Prometheus, dashboard: &Value) -> Vec<String> {
    let wanted = BTreeMap::from([("placement", PLACEMENT), ("experiment", EXPERIMENT)]);
    let mut failures = Vec::new();
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        let name = variable["name"].as_str().unwrap_or_default();
        let definition = variable["query"]["query"].as_str().unwrap_or_default();
        let parsed = definition
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
            .and_then(|args| args.rsplit_once(','));
        let Some((selector, label)) = parsed else {
            failures.push(format!(
                "variable {name}: not label_values(selector, label): {definition}"
            ));
            continue;
        };
        let expr = substitute(&format!("count by ({label}) ({selector})"));
        match prometheus.query(&expr).await {
            Ok(series) => {
                let offered: BTreeSet<&str> = series
                    .iter()
                    .filter_map(|s| s["metric"][label.trim()].as_str())
                    .collect();
                if let Some(want) = wanted.get(name).filter(|want| !offered.contains(**want)) {
                    failures.push(format!("variable {name}: {definition} offers {offered:?}, not {want}"));
                }
            }
            Err(e) => failures.push(format!("variable {name}: {e}\n    {expr}")),
        }
    }
    for name in wanted.keys() {
        let defined = dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|v| v["name"] == *name);
        if !defined {
            failures.push(format!("variable {name} is missing"));
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_evaluates_every_dashboard_query_and_rule_against_a_real_gateway() {
    let dashboard = dashboard();
    let gw = TestGateway::demo().await;
    let prometheus = Prometheus::start(gw.addr, &repo().join("prometheus/alerts.yml")).await;

    // Two rounds of traffic, each after a scrape, so that rates see every series grow: also
    // those the first round creates (the first store read of a model, the first 4xx of a kind).
    let scrapes = r#"sum_over_time(up{job="recgw"}[1m])"#;
    let mut per_arm: BTreeMap<String, usize> = BTreeMap::new();
    for round in 0..2 {
        let before = prometheus.scalar(scrapes).await;
        prometheus.wait_for(scrapes, before + 1.0).await;
        for (arm, n) in drive_traffic(&gw, round).await {
            *per_arm.entry(arm).or_default() += n;
        }
    }
    for arm in ARMS {
        let n = per_arm.get(arm).copied().unwrap_or(0);
        assert!(n >= 40, "arm {arm} served {n} responses: {per_arm:?}");
    }
    // Two scrapes after the traffic: every series has a sample with all of it.
    let after = prometheus.scalar(scrapes).await;
    prometheus.wait_for(scrapes, after + 2.0).await;

    check_metrics(&gw).await;

    let mut failures = check_panels(&prometheus, &dashboard).await;
    failures.extend(check_variables(&prometheus, &dashboard).await);
    assert!(
        failures.is_empty(),
        "{} dashboard queries failed or returned nothing:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Every rule evaluated (rules start as "unknown"), without error.
    let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
    let rules = loop {
        let rules = prometheus.rules().await;
        let evaluated = !rules.is_empty() && rules.iter().all(|(_, _, health, _)| health != "unknown");
        if evaluated || Instant::now() >= deadline {
            break rules;
        }
        tokio::time::sleep(POLL).await;
    };
    let alerts_file = fs::read_to_string(repo().join("prometheus/alerts.yml")).expect("alerts.yml");
    let declared = alerts_file
        .lines()
        .filter(|l| l.trim_start().starts_with("- record:") || l.trim_start().starts_with("- alert:"))
        .count();
    assert_eq!(
        rules.len(),
        declared,
        "rules loaded vs declared in alerts.yml: {rules:?}"
    );
    let unhealthy: Vec<String> = rules
        .iter()
        .filter(|(_, _, health, _)| health != "ok")
        .map(|(group, name, health, error)| format!("{group}/{name}: {health} {error}"))
        .collect();
    assert!(
        unhealthy.is_empty(),
        "rules that did not evaluate cleanly:\n{}\n{}",
        unhealthy.join("\n"),
        prometheus.log()
    );
}

/// The dashboard's structure as Grafana's schema (version 39) wants it: unique panel ids,
/// grid positions inside the 24-column grid that do not overlap, the fixed datasource on every
/// panel and query, the `$placement` and `$experiment` variables, and every query using
/// `$experiment` (per-arm queries `$placement` too).
#[test]
fn dashboard_follows_grafana_schema() {
    let dashboard = dashboard();
    let mut problems = Vec::new();
    let datasource = json!({"type": "prometheus", "uid": DATASOURCE_UID});
    assert_eq!(dashboard["schemaVersion"], 39);
    for key in ["uid", "title"] {
        assert!(
            dashboard[key].as_str().is_some_and(|s| !s.is_empty()),
            "dashboard {key} missing"
        );
    }
    let variables = dashboard["templating"]["list"].as_array().cloned().unwrap_or_default();
    for name in ["placement", "experiment"] {
        match variables.iter().find(|v| v["name"] == name) {
            None => problems.push(format!("variable {name} missing")),
            Some(v) => {
                if v["type"] != "query" || v["datasource"] != datasource {
                    problems.push(format!("variable {name}: not a query variable on {DATASOURCE_UID}"));
                }
            }
        }
    }

    let mut ids = BTreeSet::new();
    let mut cells: Vec<(String, [i64; 4])> = Vec::new();
    for panel in panels(&dashboard) {
        let name = panel_name(panel);
        match panel["id"].as_i64() {
            Some(id) if ids.insert(id) => {}
            _ => problems.push(format!("{name}: id missing or not unique")),
        }
        let grid = ["x", "y", "w", "h"].map(|k| panel["gridPos"][k].as_i64().unwrap_or(-1));
        let [x, y, w, h] = grid;
        if x < 0 || y < 0 || w <= 0 || h <= 0 || x + w > 24 {
            problems.push(format!("{name}: bad gridPos {}", panel["gridPos"]));
        }
        for (other, [ox, oy, ow, oh]) in &cells {
            if x < ox + ow && ox < &(x + w) && y < oy + oh && oy < &(y + h) {
                problems.push(format!("{name} overlaps {other}"));
            }
        }
        cells.push((name.clone(), grid));
        if panel["datasource"] != datasource {
            problems.push(format!("{name}: datasource {}", panel["datasource"]));
        }
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("{name}: no queries"));
        }
        let mut refs = BTreeSet::new();
        for target in &targets {
            let r = target["refId"].as_str().unwrap_or_default();
            if r.is_empty() || !refs.insert(r.to_string()) {
                problems.push(format!("{name}: refId {r:?} missing or repeated"));
            }
            if target["datasource"] != datasource {
                problems.push(format!("{name} query {r}: datasource {}", target["datasource"]));
            }
            let expr = target["expr"].as_str().unwrap_or_default();
            if !expr.contains("$experiment") {
                problems.push(format!("{name} query {r}: does not use $experiment"));
            }
            if per_arm(target) && !expr.contains("$placement") {
                problems.push(format!("{name} query {r}: per-arm query without $placement"));
            }
        }
    }
    assert!(problems.is_empty(), "dashboard problems:\n{}", problems.join("\n"));
}
