//! Faults injected into a gateway while it serves (issue 8): model folders deleted, truncated
//! or replaced by a wrong schema, the models disk gone for a moment, an HDFS name node that
//! does not answer, and an experiments folder made invalid, emptied or unreadable. Each test
//! keeps clients sending requests through the fault and asserts that none of them failed, then
//! that `/ready` and the metrics said what was wrong, and that everything clears once the fault
//! is repaired.
//!
//! Redis faults have their own tests next to what they protect: `tests/cache.rs` (Redis killed
//! and restarted under load, Redis slowed down with `DEBUG SLEEP`) and `tests/results.rs`
//! (counts and events through a Redis outage, exact afterwards).
//!
//! Tests run as root here, where file permissions do not deny reads, so "unreadable" is made
//! the ways that do fail for root: a folder that is gone, and a file that is not text.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::assignment::bucket;
use common::gateway;
use common::gateway::{DemoCopy, READY_TIMEOUT, Reply, TestGateway, copy_dir, eventually, model_status, settings};
use common::spark::SparkOutput;
use common::traffic::Traffic;
use reqwest::Method;
use serde_json::Value;

/// Users of the demo models (`0..2000` in both ALS models).
const USERS: usize = 2000;
/// Concurrent clients of a [`Load`].
const CLIENTS: usize = 4;
/// Requests a fault must at least overlap, so a test cannot pass by serving nothing.
const DURING: usize = 200;

/// Checks one answer; `Err` says what was wrong with it.
type Check = dyn Fn(&Reply) -> Result<(), String> + Send + Sync;

/// [`Traffic`] of clients sending `GET /recommendations/{user}?placement=home` over every demo
/// user until [`Load::finish`], which puts every answer through a [`Check`].
struct Load {
    /// The clients.
    traffic: Traffic,
    /// What every answer must pass.
    check: Arc<Check>,
}

impl Load {
    fn start(gw: &TestGateway, check: Arc<Check>) -> Load {
        let traffic = Traffic::start(gw, CLIENTS, Duration::ZERO, |client, n| {
            let user = (client * USERS / CLIENTS + n) % USERS;
            format!("/recommendations/{user}?placement=home")
        });
        Load { traffic, check }
    }

    /// Waits until `n` more answers came (the fault overlapped them).
    async fn overlap(&self, n: usize, what: &str) {
        self.traffic.overlap(n, what).await;
    }

    /// Stops the clients; asserts every answer was a 200 passing the check and returns how many
    /// came.
    async fn finish(self) -> usize {
        let sent = self.traffic.stop().await;
        let failures: Vec<String> = sent
            .iter()
            .filter_map(|s| {
                let outcome = match &s.answer {
                    Ok(reply) if reply.status == 200 => (self.check)(reply),
                    _ => Err(String::new()),
                };
                outcome.err().map(|e| format!("{s}: {e}"))
            })
            .collect();
        assert!(
            failures.is_empty(),
            "{} of {} requests failed; first: {:?}",
            failures.len(),
            sent.len(),
            &failures[..failures.len().min(5)]
        );
        sent.len()
    }
}

/// The demo copy's settings with the local tier off, so every request reads its model.
fn uncached(demo: &DemoCopy, experiments: &Path) -> recgw::config::Settings {
    let mut settings = settings(experiments, &demo.models(), "100ms");
    settings.cache.local_capacity = 0;
    settings
}

/// An answer from the arm's own model: never the placement default standing in for it.
fn not_a_fallback(reply: &Reply) -> Result<(), String> {
    let body = reply.json();
    match body["source"].as_str() {
        Some("fallback") | None => Err(body.to_string()),
        Some(_) => Ok(()),
    }
}

/// Waits until the `/ready` entry of `model` shows an error containing every one of `parts`;
/// returns the error.
async fn wait_error(gw: &TestGateway, model: &str, parts: &[&str]) -> String {
    let what = format!("/ready shows an error of {model} naming {parts:?}");
    let (_, body) = gw
        .wait_model(model, &what, |m| {
            m["error"].as_str().is_some_and(|e| parts.iter().all(|p| e.contains(p)))
        })
        .await;
    model_status(&body, model).expect("listed")["error"]
        .as_str()
        .expect("error")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_folder_deleted_truncated_or_given_a_wrong_schema_keeps_its_loaded_version_serving() {
    let demo = DemoCopy::new();
    let gw = TestGateway::launch_ready(&uncached(&demo, &demo.experiments())).await;
    let ready = gw.wait_ready().await;
    let v1 = model_status(&ready, "als-v1").expect("als-v1")["version"]
        .as_str()
        .expect("loaded")
        .to_string();
    let folder = demo.models().join("als-v1");
    let original = tempfile::tempdir().expect("tempdir");
    copy_dir(&folder, original.path());
    // Kept without its marker: each run below is written as Spark writes one, part files first
    // and `_SUCCESS` last (`commit`), so the poller never sees a marker over half-copied parts
    // (a load failure the test did not cause on purpose).
    for marker in ["_SUCCESS", "._SUCCESS.crc"] {
        std::fs::remove_file(original.path().join(marker)).expect("marker");
    }

    // Every als-v1 answer comes from version v1, whatever happens to its folder.
    let expected = v1.clone();
    let load = Load::start(
        &gw,
        Arc::new(move |reply: &Reply| {
            not_a_fallback(reply)?;
            let body = reply.json();
            match (body["model"].as_str(), body["model_version"].as_str()) {
                (Some("als-v1"), Some(version)) if version != expected => Err(body.to_string()),
                _ => Ok(()),
            }
        }),
    );
    load.overlap(DURING, "before the faults").await;

    // 1. The folder deleted (a retention job, an operator's mistake).
    std::fs::remove_dir_all(&folder).expect("delete");
    wait_error(&gw, "als-v1", &["als-v1", "_SUCCESS"]).await;
    load.overlap(DURING, "folder deleted").await;

    // 2. A new run whose second part file is cut short.
    copy_dir(original.path(), &folder);
    let part = std::fs::read_dir(&folder)
        .expect("folder")
        .map(|e| e.expect("entry").path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("part-00001"))
        })
        .expect("part-00001");
    let bytes = std::fs::read(&part).expect("part");
    std::fs::write(&part, &bytes[..bytes.len() / 3]).expect("truncate");
    common::spark::commit(&folder);
    let part_name = part.file_name().expect("name").to_string_lossy().to_string();
    wait_error(&gw, "als-v1", &["failed to load", &part_name]).await;
    load.overlap(DURING, "truncated version").await;

    // 3. A new run with a different schema: an extra id column makes the user column ambiguous.
    SparkOutput::nested()
        .names("userId", "recommendations", "movieId", "rating")
        .extra_column("runId")
        .part(vec![(1, vec![(50, 0.5)])])
        .write(&folder);
    wait_error(&gw, "als-v1", &["failed to load", "runId"]).await;
    load.overlap(DURING, "wrong schema").await;

    let metrics = gw.metrics().await;
    assert_eq!(
        gateway::sample(&metrics, "model_load_failures_total", &[("model", "als-v1")]),
        2.0,
        "the truncated and the wrong-schema versions"
    );
    assert_eq!(
        gateway::sample(&metrics, "model_info", &[("model", "als-v1"), ("version", &v1)]),
        1.0,
        "model_info still names the serving version"
    );
    let ready = gw.get("/ready").await;
    assert_eq!(ready.status, 200, "v1 is loaded: still ready: {}", ready.body);
    let served = load.finish().await;

    // 4. A good run again: it loads and the error clears.
    std::fs::remove_dir_all(&folder).expect("delete");
    copy_dir(original.path(), &folder);
    common::spark::commit(&folder);
    let (_, body) = gw
        .wait_model("als-v1", "a repaired als-v1 loads", |m| {
            m["error"].is_null() && m["version"].as_str().is_some_and(|v| v != v1)
        })
        .await;
    let v2 = model_status(&body, "als-v1").expect("listed")["version"].clone();
    let control = (0..USERS)
        .find(|u| bucket("home-als-rank", &u.to_string()) < 5000)
        .expect("a control user");
    let answer = gw.ok(&format!("/recommendations/{control}?placement=home")).await;
    assert_eq!(
        (&answer["model"], &answer["model_version"]),
        (&"als-v1".into(), &v2),
        "{answer}"
    );
    eprintln!("{served} requests through the faults; als-v1 {v1} -> {v2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_models_disk_gone_for_a_moment_costs_no_request() {
    let demo = DemoCopy::new();
    let gw = TestGateway::launch_ready(&uncached(&demo, &demo.experiments())).await;
    let before = gw.wait_ready().await;
    let load = Load::start(&gw, Arc::new(not_a_fallback));
    load.overlap(DURING, "before").await;

    // The mount point empty for a moment (an NFS or disk remount): every path under it fails.
    let models = demo.models();
    let away = models.with_extension("away");
    std::fs::rename(&models, &away).expect("unmount");
    for model in ["als-v1", "als-v2", "popular"] {
        wait_error(&gw, model, &[model]).await;
    }
    load.overlap(DURING, "disk gone").await;
    std::fs::rename(&away, &models).expect("mount again");
    for model in ["als-v1", "als-v2", "popular"] {
        gw.wait_model(model, "the error clears", |m| m["error"].is_null()).await;
    }
    load.overlap(DURING, "after").await;
    let served = load.finish().await;

    let after = gw.get("/ready").await;
    assert_eq!(after.status, 200, "{}", after.body);
    for model in ["als-v1", "als-v2", "popular"] {
        assert_eq!(
            model_status(&after.json(), model).expect("listed")["version"],
            model_status(&before, model).expect("listed")["version"],
            "{model}: the same files, the same version"
        );
    }
    eprintln!("{served} requests while the models folder came and went");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_hdfs_name_node_fails_only_its_model() {
    // A port nothing listens on: the name node refuses every connection.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let uri = format!("hdfs://127.0.0.1:{port}/recs/als-v2");
    let demo = DemoCopy::new();
    let file = demo.experiments().join("home-als-rank.toml");
    let text = std::fs::read_to_string(&file).expect("experiment");
    std::fs::write(&file, text.replace("model = \"als-v2\"", &format!("model = \"{uri}\""))).expect("write");

    let started = Instant::now();
    let gw = TestGateway::launch(&uncached(&demo, &demo.experiments())).await;
    let bound = started.elapsed();
    // Every other model serves at once; the HDFS arm's users get the placement default.
    let (status, body) = gw
        .wait_model("als-v1", "als-v1 loads beside the unreachable name node", |m| {
            m["version"].is_string()
        })
        .await;
    let loaded = started.elapsed();
    assert_eq!(status, 503, "a referenced model has no version: not ready: {body}");
    let mut arms = std::collections::BTreeMap::<String, usize>::new();
    for user in 0..200 {
        let answer = gw.ok(&format!("/recommendations/{user}?placement=home")).await;
        let arm = answer["arm"].as_str().expect("arm").to_string();
        match arm.as_str() {
            "control" => assert_eq!(answer["source"], "store", "{answer}"),
            _ => {
                assert_eq!(answer["source"], "fallback", "{answer}");
                assert_eq!(answer["fallback_reason"], "model_not_loaded", "{answer}");
                assert_eq!(answer["model"], "popular", "{answer}");
            }
        }
        *arms.entry(arm).or_default() += 1;
    }
    assert_eq!(arms.len(), 2, "both arms were asked: {arms:?}");
    let other = gw.ok("/recommendations/7?placement=default").await;
    assert_eq!(other["model"], "popular", "{other}");

    let error = wait_error(&gw, &uri, &[&format!("hdfs://127.0.0.1:{port}")]).await;
    let reported = started.elapsed();
    let metrics = gw.metrics().await;
    assert_eq!(
        gateway::sample(
            &metrics,
            "fallbacks_total",
            &[
                ("placement", "home"),
                ("experiment", "home-als-rank"),
                ("arm", "treatment"),
                ("reason", "model_not_loaded")
            ]
        ),
        arms["treatment"] as f64
    );
    eprintln!("bound in {bound:?}, als-v1 served after {loaded:?}, HDFS error after {reported:?}: {error}");
}

/// `/ready`'s `experiments_error` once it contains every one of `parts`.
async fn wait_rejected(gw: &TestGateway, parts: &[&str]) -> String {
    eventually(
        READY_TIMEOUT,
        &format!("experiments_error naming {parts:?}"),
        async || {
            let body: Value = gw.get("/ready").await.json();
            match body["experiments_error"].as_str() {
                Some(e) if parts.iter().all(|p| e.contains(p)) => Ok(e.to_string()),
                _ => Err(body.to_string()),
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_experiments_folder_made_invalid_emptied_or_unreadable_keeps_the_set_in_force() {
    let demo = DemoCopy::new();
    let experiments = demo.experiments();
    let mut settings = uncached(&demo, &experiments);
    settings.experiments.reload_interval = Duration::from_millis(100);
    let gw = TestGateway::launch_ready(&settings).await;
    let digest = gw.wait_ready().await["experiments_digest"].clone();
    let original = tempfile::tempdir().expect("tempdir");
    copy_dir(&experiments, original.path());
    let load = Load::start(
        &gw,
        Arc::new(|reply: &Reply| {
            let body = reply.json();
            // `qa-user-1` aside, users of `home` are all in the demo experiment.
            (body["experiment"] == "home-als-rank")
                .then_some(())
                .ok_or(body.to_string())
        }),
    );
    load.overlap(DURING, "before").await;
    let rejections = async || gw.metric("config_reload_failures_total", &[]).await;
    // Put back as a deploy tool would, so that no reload sees a half-copied folder (a rejection
    // the test did not cause on purpose): staged beside it, then renamed into place, the whole
    // folder when it is gone, else file by file (each step a complete set).
    let restore = || {
        let staged = tempfile::tempdir_in(experiments.parent().expect("parent")).expect("tempdir");
        copy_dir(original.path(), staged.path());
        if !experiments.exists() {
            std::fs::rename(staged.path(), &experiments).expect("rename folder");
            return;
        }
        for entry in std::fs::read_dir(staged.path()).expect("staged") {
            let entry = entry.expect("entry");
            std::fs::rename(entry.path(), experiments.join(entry.file_name())).expect("rename file");
        }
    };

    // 1. A typo in the experiment.
    let file = experiments.join("home-als-rank.toml");
    let text = std::fs::read_to_string(&file).expect("experiment");
    std::fs::write(&file, text.replace("weight = 50.0", "weight = \"fifty\"")).expect("write");
    let error = wait_rejected(&gw, &["home-als-rank.toml", "weight"]).await;
    load.overlap(DURING, "invalid").await;
    assert_eq!(rejections().await, 1.0, "{error}");

    // 2. Emptied (a deploy that cleared the folder before copying).
    for entry in std::fs::read_dir(&experiments).expect("folder") {
        std::fs::remove_file(entry.expect("entry").path()).expect("remove");
    }
    wait_rejected(&gw, &["placements.toml", "missing"]).await;
    load.overlap(DURING, "emptied").await;
    assert_eq!(rejections().await, 2.0);

    // 3. Unreadable: the folder gone, then a file that is not text.
    std::fs::remove_dir(&experiments).expect("remove folder");
    wait_rejected(&gw, &["cannot read folder"]).await;
    load.overlap(DURING, "folder gone").await;
    restore();
    std::fs::write(experiments.join("home-als-rank.toml"), [0xff, 0xfe, 0x00, 0x9f]).expect("write");
    wait_rejected(&gw, &["home-als-rank.toml", "cannot read"]).await;
    load.overlap(DURING, "file not text").await;
    assert_eq!(rejections().await, 4.0);

    let reload = gw.request(Method::POST, "/admin/reload").await;
    assert_eq!(reload.status, 422, "{}", reload.body);
    let ready = gw.get("/ready").await;
    assert_eq!(
        ready.status, 200,
        "the set in force serves: still ready: {}",
        ready.body
    );
    assert_eq!(ready.json()["experiments_digest"], digest, "{}", ready.body);

    // Repaired: the same set, so nothing changes but the error clears.
    restore();
    eventually(READY_TIMEOUT, "experiments_error clears", async || {
        let body: Value = gw.get("/ready").await.json();
        body["experiments_error"]
            .is_null()
            .then_some(())
            .ok_or(body.to_string())
    })
    .await;
    let served = load.finish().await;
    assert_eq!(gw.wait_ready().await["experiments_digest"], digest);
    assert_eq!(rejections().await, 4.0, "each broken state counted once");
    eprintln!("{served} requests through four broken experiment folders");
}

/// Waits until `/ready` shows `model` served from `serving`; returns its entry.
async fn wait_serving(gw: &TestGateway, model: &str, serving: &str) -> Value {
    let what = format!("{model} served from {serving}");
    let (_, body) = gw.wait_model(model, &what, |m| m["serving"] == serving).await;
    model_status(&body, model).expect("listed").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_folder_made_unwritable_or_a_corrupt_snapshot_on_restart_costs_no_request() {
    let demo = DemoCopy::new();
    let snapshots = tempfile::tempdir().expect("tempdir");
    let dir = snapshots.path().join("snapshots");
    let settings = gateway::with_snapshots(uncached(&demo, &demo.experiments()), &dir);
    let gw = TestGateway::launch_ready(&settings).await;
    for model in ["als-v1", "als-v2"] {
        let entry = wait_serving(&gw, model, "snapshot").await;
        assert!(entry["snapshot_bytes"].as_u64().is_some_and(|b| b > 0), "{entry}");
    }
    let before = gw.get("/recommendations/42?placement=home").await.json();
    assert_eq!(before["source"], "snapshot", "{before}");
    assert_eq!(
        gw.metric("model_serving_mode", &[("model", "als-v1"), ("mode", "snapshot")])
            .await,
        1.0
    );

    // The folder becomes unwritable (a file where it was), and a new version of als-v2
    // commits: it serves by page reads, the mapped als-v1 goes on serving from its file.
    let load = Load::start(&gw, Arc::new(not_a_fallback));
    let kept = snapshots.path().join("kept");
    std::fs::rename(&dir, &kept).expect("move the folder away");
    std::fs::write(&dir, b"not a folder").expect("block it");
    common::spark::commit(&demo.models().join("als-v2"));
    let entry = wait_serving(&gw, "als-v2", "pages").await;
    assert!(
        entry["snapshot"].as_str().is_some_and(|n| n.contains("cannot write")),
        "{entry}"
    );
    wait_serving(&gw, "als-v1", "snapshot").await;
    load.overlap(DURING, "unwritable snapshot folder").await;
    assert_eq!(
        gw.metric("model_serving_mode", &[("model", "als-v2"), ("mode", "pages")])
            .await,
        1.0
    );
    let served = load.finish().await;
    gw.stop().await;

    // Restart with the folder back and als-v1's snapshot corrupt: detected, rebuilt, and no
    // answer comes from the corrupt file.
    std::fs::remove_file(&dir).expect("unblock");
    std::fs::rename(&kept, &dir).expect("folder back");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .expect("snapshots")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    for file in &files {
        let mut bytes = std::fs::read(file).expect("snapshot");
        let at = bytes.len() - 100;
        bytes[at] ^= 0xff;
        std::fs::write(file, &bytes).expect("corrupt");
    }
    let gw = TestGateway::launch_ready(&settings).await;
    let load = Load::start(&gw, Arc::new(not_a_fallback));
    for model in ["als-v1", "als-v2"] {
        wait_serving(&gw, model, "snapshot").await;
    }
    load.overlap(DURING, "restart over corrupt snapshots").await;
    let after = gw.get("/recommendations/42?placement=home").await.json();
    assert_eq!(
        (&after["items"], &after["source"]),
        (&before["items"], &"snapshot".into())
    );
    let served = served + load.finish().await;
    eprintln!("{served} requests through an unwritable snapshot folder and a restart over corrupt snapshots");
    gw.stop().await;
}

/// Permission bits of `path`.
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A snapshot folder is used only while it is the gateway's alone: created 0700, its files
/// written read-only. One that others may enter (a shared temp folder), or that another user
/// owns (who could plant a file passing the unkeyed checksum, or truncate a mapped one), is
/// refused: the gateway starts, serves every model by page reads without a failed request,
/// writes nothing there, and `/ready` says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_folder_others_may_enter_or_own_is_refused_and_snapshots_are_read_only() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let demo = DemoCopy::new();
    let folders = tempfile::tempdir().expect("tempdir");
    let private = folders.path().join("private");
    let gw = TestGateway::launch_ready(&gateway::with_snapshots(uncached(&demo, &demo.experiments()), &private)).await;
    for model in ["als-v1", "als-v2"] {
        wait_serving(&gw, model, "snapshot").await;
    }
    gw.stop().await;
    assert_eq!(mode(&private), 0o700, "created for the gateway alone");
    let files: Vec<_> = std::fs::read_dir(&private)
        .expect("snapshots")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    for file in &files {
        assert_eq!(mode(file), 0o400, "{} is read-only", file.display());
    }

    let shared = folders.path().join("shared");
    let group = folders.path().join("group");
    let owned = folders.path().join("owned");
    let mut refused = vec![(shared.clone(), "mode 777"), (group.clone(), "mode 750")];
    for (dir, bits) in [(&shared, 0o777), (&group, 0o750), (&owned, 0o700)] {
        std::fs::create_dir(dir).expect("folder");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(bits)).expect("chmod");
    }
    // Only root can give a folder away; elsewhere the mode cases stand alone.
    let uid = std::fs::metadata(folders.path()).expect("tempdir").uid();
    if uid == 0 {
        std::os::unix::fs::chown(&owned, Some(65534), Some(65534)).expect("chown");
        refused.push((owned.clone(), "owned by uid 65534"));
    } else {
        eprintln!("not root: the folder owned by another user is not tried");
    }
    for (dir, why) in refused {
        let gw = TestGateway::launch_ready(&gateway::with_snapshots(uncached(&demo, &demo.experiments()), &dir)).await;
        let load = Load::start(&gw, Arc::new(not_a_fallback));
        for model in ["als-v1", "als-v2"] {
            let entry = wait_serving(&gw, model, "pages").await;
            let note = entry["snapshot"].as_str().unwrap_or_default();
            assert!(
                note.contains("snapshots are off") && note.contains(why),
                "{}: {entry}",
                dir.display()
            );
        }
        load.overlap(DURING, "a refused snapshot folder").await;
        load.finish().await;
        gw.stop().await;
        let written: Vec<_> = std::fs::read_dir(&dir).expect("folder").collect();
        assert!(written.is_empty(), "{}: {written:?}", dir.display());
    }
}
