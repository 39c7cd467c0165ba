//! The results UI (`/ui/`, `src/api/ui.rs`) in a real headless Chromium (`common::browser`),
//! against a real gateway in this process over a copy of the demo's three experiments, with
//! keys on, after traffic the test sends and keeps a count of:
//!
//! - `home-als-rank`'s treatment points at a model that does not exist, under a fallback-rate
//!   guardrail, so the guardrail pauses it; it is given eight times fewer users than the
//!   control, so the sample-ratio test flags the split; it names a covariate table, so its page
//!   shows CUPED figures too;
//! - `discover-als-shadow`'s description holds a `<script>`, which must show as text;
//! - `feed-als-interleave` gets interleaved pages and clicks.
//!
//! 1. In the browser: a page asked for without signing in goes to the sign-in form, and a client
//!    key signs in; the list shows every experiment, the script as text (and no script runs),
//!    the SRM and paused badges on `home-als-rank` and the users the JSON results count; each
//!    experiment's page holds, in each arm's row and in its interleaving, shadow and by-position
//!    tables, exactly the numbers of `GET /experiments/{id}/results`; a client sees no resume
//!    button, an admin does, and pressing it resumes the arm. Screenshots of the list and of an
//!    experiment's page are saved (the README's `examples/results-page.png` is one).
//! 2. Over HTTP: the sign-in cookie is `HttpOnly`, `SameSite=Strict`, scoped to `/ui`, opens no
//!    JSON route, and the key is in no URL; forms from another site are refused; a wrong key goes
//!    back to the form; a client's cookie cannot resume; errors are the JSON shape.
//! 3. With auth off the pages are open, as the results are.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::assignment::bucket;
use common::browser::Browser;
use common::edits::{edit, with_lines};
use common::events::{self, event, post_all_accepted};
use common::gateway::{DemoCopy, TestGateway, eventually, exchange};
use common::page::recommend;
use common::rng::Rng;
use recgw::auth::{KeySettings, Role, hash_key};
use recgw::synthetic::{covariate_row, write_covariates};
use serde_json::{Value, json};

const CLIENT_KEY: &str = "ui-client-key-0123456789";
const ADMIN_KEY: &str = "ui-admin-key-0123456789";
const SPLIT: &str = "home-als-rank";
const INTERLEAVE: &str = "feed-als-interleave";
const SHADOW: &str = "discover-als-shadow";
/// What `discover-als-shadow`'s description says: markup that must be shown, not run.
const HOSTILE: &str = "<script>document.title = 'owned'</script><b>v2</b> & \"v1\"";
/// Users the demo models know: `0..USERS`.
const USERS: usize = 2000;
/// Control and treatment users of `home-als-rank`: 8 to 1 against weights of 50/50.
const CONTROL_USERS: usize = 240;
const TREATMENT_USERS: usize = 30;

/// The demo with the three provocations above, its gateway with a client and an admin key.
async fn provoked_gateway() -> (DemoCopy, TestGateway) {
    let demo = DemoCopy::new();
    let experiments = demo.experiments();
    // `with_lines` writes the repository's copy with the lines added: one call, before any edit.
    with_lines(
        &experiments,
        &format!("{SPLIT}.toml"),
        "guardrails = { fallback_rate = 0.2, min_requests = 20 }\nguardrail_window = \"2s\"\ncovariates = \"pre-period\"",
    );
    edit(
        &experiments,
        &format!("{SPLIT}.toml"),
        "model = \"als-v2\"",
        "model = \"als-missing\"",
    );
    let rows: Vec<_> = (0..USERS as u32).map(|u| covariate_row(7, u)).collect();
    write_covariates(&demo.models().join("pre-period"), &rows, 2, 7).expect("covariates written");
    edit(
        &experiments,
        &format!("{SHADOW}.toml"),
        "description = \"ALS v2 in shadow behind v1 on the discover page\"",
        &format!("description = {}", toml_string(HOSTILE)),
    );
    let mut settings = demo.settings("");
    settings.auth.keys = vec![
        KeySettings {
            sha256: hash_key(CLIENT_KEY),
            role: Role::Client,
            name: "analyst".into(),
        },
        KeySettings {
            sha256: hash_key(ADMIN_KEY),
            role: Role::Admin,
            name: "ops".into(),
        },
    ];
    // Every request of the harness is a client's.
    let gw = TestGateway::launch(&settings).await.with_key(CLIENT_KEY);
    for model in ["als-v1", "popular", "pre-period"] {
        gw.wait_model(model, &format!("{model} loaded"), |m| m["version"].is_string())
            .await;
    }
    (demo, gw)
}

/// `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A client that does not follow redirects, so the tests see them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// Serves `user` on `placement` and reports impressions of the page's first `seen` items
/// and a click on each with probability `ctr`; all must be accepted.
async fn visit(gw: &TestGateway, rng: &mut Rng, user: &str, placement: &str, seen: usize, ctr: f64) {
    let page = recommend(gw, user, &format!("placement={placement}")).await;
    let mut events = Vec::new();
    for item in page.items.iter().take(seen) {
        events.push(event("impression", &page.token, item, None));
        if rng.chance(ctr) {
            events.push(event("click", &page.token, item, None));
        }
    }
    if !events.is_empty() {
        post_all_accepted(gw, &events, 1000).await;
    }
}

/// The traffic of the module's doc: the split's users 8 to 1, its broken treatment asked for
/// until the guardrail pauses it; interleaved and shadowed pages with clicks.
async fn send_traffic(gw: &TestGateway) {
    let mut rng = Rng::new(31);
    let of_arm = |control: bool, n: usize| -> Vec<String> {
        (0..USERS)
            .map(|u| u.to_string())
            .filter(|u| (bucket(SPLIT, u) < 5000) == control)
            .take(n)
            .collect()
    };
    for user in of_arm(true, CONTROL_USERS) {
        visit(gw, &mut rng, &user, "home", 5, 0.08).await;
    }
    let treatment = of_arm(false, TREATMENT_USERS);
    for user in &treatment {
        visit(gw, &mut rng, user, "home", 5, 0.12).await;
    }
    eventually(Duration::from_secs(30), "the broken treatment paused", async || {
        for user in &treatment {
            gw.get(&format!("/recommendations/{user}?placement=home")).await;
        }
        let results = events::results(gw, SPLIT, "?by=day").await;
        match results["arms"][1]["state"].as_str() {
            Some("paused_by_guardrail") => Ok(()),
            state => Err(format!("treatment {state:?}")),
        }
    })
    .await;
    for user in (0..150).map(|u| (u * 7).to_string()) {
        visit(gw, &mut rng, &user, "feed", 6, 0.1).await;
        visit(gw, &mut rng, &user, "discover", 4, 0.06).await;
    }
    eventually(Duration::from_secs(10), "every user counted", async || {
        let results = events::results(gw, SPLIT, "?by=day").await;
        let users: Vec<u64> = results["arms"]
            .as_array()
            .expect("arms")
            .iter()
            .map(|a| a["users"].as_u64().expect("users"))
            .collect();
        match users == [CONTROL_USERS as u64, TREATMENT_USERS as u64] {
            true => Ok(()),
            false => Err(format!("users {users:?}")),
        }
    })
    .await;
}

/// Every figure of the page's element `css` (a row): field name → `data-value`, or `null`
/// where the page shows that the figure is absent.
const FIGURES: &str = "
    const of = (root) => Object.fromEntries([...root.querySelectorAll('[data-field]')]
        .map(e => [e.dataset.field, e.dataset.value === undefined ? null : e.dataset.value]));
    return [...document.querySelectorAll(arguments[0])]
        .map(row => ({ key: row.dataset.arm || row.dataset.position || row.dataset.experiment || '', figures: of(row) }));";

/// The rows `css` picks, each as (its `data-arm`/`data-position`/`data-experiment`, figures).
async fn rows(browser: &Browser, css: &str) -> Vec<(String, BTreeMap<String, Option<String>>)> {
    let rows = browser.run(FIGURES, vec![json!(css)]).await;
    rows.as_array()
        .expect("rows")
        .iter()
        .map(|row| {
            let figures = row["figures"]
                .as_object()
                .expect("figures")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string)))
                .collect();
            (row["key"].as_str().unwrap_or_default().to_string(), figures)
        })
        .collect()
}

/// Checks that every figure the page shows equals the JSON's under the same name (`cuped.x`
/// is `x` of the JSON's `cuped`), and that each of `required` is shown; `what` names the row.
fn same_figures(what: &str, page: &BTreeMap<String, Option<String>>, json: &Value, required: &[&str]) {
    for field in required {
        assert!(page.contains_key(*field), "{what}: the page shows no {field}: {page:?}");
    }
    for (field, shown) in page {
        let want = field.split('.').fold(json, |v, k| &v[k]);
        match (want, shown) {
            (Value::Null, None) => {}
            (Value::Number(n), Some(text)) => {
                let shown: f64 = text.parse().unwrap_or_else(|e| panic!("{what}.{field}: {text:?}: {e}"));
                assert_eq!(shown, n.as_f64().expect("a number"), "{what}.{field}");
            }
            (Value::String(s), Some(text)) => assert_eq!(s, text, "{what}.{field}"),
            (want, shown) => panic!("{what}.{field}: the JSON says {want}, the page {shown:?}"),
        }
    }
}

/// The badges of the rows or page `css` picks.
async fn badges(browser: &Browser, css: &str) -> Vec<String> {
    let found = browser
        .run(
            "return [...document.querySelectorAll(arguments[0] + ' [data-badge]')].map(b => b.dataset.badge);",
            vec![json!(css)],
        )
        .await;
    serde_json::from_value(found).expect("badges")
}

/// Signs the browser in with `key` from the sign-in page it is on.
async fn sign_in(browser: &Browser, key: &str) {
    assert!(browser.url().await.contains("/ui/sign-in"), "{}", browser.url().await);
    browser.type_into("input[name=key]", key).await;
    browser.click("form[action='/ui/sign-in'] button").await;
}

/// Saves a screenshot under the test's temporary folder and says where.
fn save(name: &str, png: &[u8]) {
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, png).expect("screenshot written");
    eprintln!("screenshot: {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_show_the_json_results_in_a_real_browser() {
    let (_demo, gw) = provoked_gateway().await;
    send_traffic(&gw).await;
    let browser = Browser::start(1600, 1400).await;

    // Not signed in: the sign-in form, which comes back to the list.
    browser.open(&gw.url("/ui/")).await;
    sign_in(&browser, CLIENT_KEY).await;
    assert_eq!(browser.url().await, gw.url("/ui/"));
    assert!(!browser.url().await.contains(CLIENT_KEY), "no key in a URL");

    // The list.
    let listed = rows(&browser, "#experiments tbody tr").await;
    let ids: Vec<&str> = listed.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, [SHADOW, INTERLEAVE, SPLIT], "every experiment, by id");
    for (id, figures) in &listed {
        let results = events::results(&gw, id, "?by=day").await;
        let users: u64 = results["arms"]
            .as_array()
            .expect("arms")
            .iter()
            .filter(|a| a["shadow"] != true)
            .map(|a| a["users"].as_u64().expect("users"))
            .sum();
        assert_eq!(figures["users"], Some(users.to_string()), "{id}");
    }
    let split_badges = badges(&browser, &format!("tr[data-experiment={SPLIT}]")).await;
    assert!(split_badges.contains(&"srm".to_string()), "{split_badges:?}");
    assert!(split_badges.contains(&"paused".to_string()), "{split_badges:?}");
    let shown = browser
        .run(
            "return { description: document.querySelector(`tr[data-experiment='${arguments[0]}'] [data-field=description]`).textContent, \
             scripts: document.scripts.length, title: document.title, bold: document.querySelectorAll('td b').length };",
            vec![json!(SHADOW)],
        )
        .await;
    assert_eq!(shown["description"], HOSTILE, "shown as text");
    assert_eq!(shown["scripts"], 0, "no script on the page: {shown}");
    assert_eq!(shown["bold"], 0, "no markup from TOML: {shown}");
    assert_eq!(shown["title"], "Experiments · recgw results");
    save("ui-list.png", &browser.screenshot().await);

    // The split: every arm's row holds the JSON's figures.
    browser.open(&gw.url(&format!("/ui/experiments/{SPLIT}"))).await;
    let results = events::results(&gw, SPLIT, "?by=day").await;
    let arms = rows(&browser, "#arms tbody tr").await;
    assert_eq!(arms.len(), 2);
    let counts = [
        "users",
        "exposures",
        "impressions",
        "clicks",
        "ctr",
        "ctr_low",
        "ctr_high",
        "state",
    ];
    let comparison = [
        "cuped.lift",
        "cuped.sequential_lift_low",
        "cuped.sequential_lift_high",
        "cuped.variance_reduction",
        "lift",
        "lift_low",
        "lift_high",
        "p_value",
        "sequential_lift_low",
        "sequential_lift_high",
        "sequential_p_value",
        "decision",
    ];
    for ((name, figures), json) in arms.iter().zip(results["arms"].as_array().expect("arms")) {
        assert_eq!(name, json["name"].as_str().expect("name"));
        let required: Vec<&str> = match json["control"] == true {
            true => counts.to_vec(),
            false => counts.iter().chain(&comparison).copied().collect(),
        };
        same_figures(&format!("{SPLIT}/{name}"), figures, json, &required);
    }
    assert_eq!(arms[1].1["state"].as_deref(), Some("paused_by_guardrail"));
    let page_badges = badges(&browser, "body > p").await;
    assert!(
        page_badges.contains(&"srm".to_string()) && page_badges.contains(&"paused".to_string()),
        "{page_badges:?}"
    );
    let act_on = browser
        .run("return document.querySelector('#act-on').textContent;", vec![])
        .await;
    assert_eq!(act_on, results["act_on"]);
    for (position, figures) in rows(&browser, "#by-position tbody tr").await {
        for (arm, json) in [("control", &results["arms"][0]), ("treatment", &results["arms"][1])] {
            let cell = rows(
                &browser,
                &format!("#by-position tr[data-position='{position}'] td[data-arm={arm}]"),
            )
            .await;
            let bucket = json["by_position"]
                .as_array()
                .expect("by_position")
                .iter()
                .find(|p| p["position"] == position.as_str())
                .expect("the same ranks");
            same_figures(
                &format!("{SPLIT}/{arm}/{position}"),
                &cell[0].1,
                bucket,
                &["ctr", "clicks", "impressions"],
            );
        }
        assert!(!figures.is_empty());
    }
    let days = rows(&browser, "#days tbody tr").await;
    assert_eq!(
        days.len(),
        results["days"].as_array().expect("days").len(),
        "a row a day"
    );
    let chart = browser
        .run("return document.querySelectorAll('#lift-chart svg').length;", vec![])
        .await;
    assert_eq!(chart, 1, "the lift chart is drawn");
    let buttons = browser
        .run("return document.querySelectorAll('[data-resume]').length;", vec![])
        .await;
    assert_eq!(buttons, 0, "a client key may not resume");
    save("ui-experiment.png", &browser.screenshot().await);

    // The interleave experiment: its preference and team click share.
    browser.open(&gw.url(&format!("/ui/experiments/{INTERLEAVE}"))).await;
    let results = events::results(&gw, INTERLEAVE, "?by=day").await;
    let preference = rows(&browser, "#interleaving tbody tr").await;
    same_figures(
        INTERLEAVE,
        &preference[0].1,
        &results["interleaving"],
        &[
            "users_compared",
            "ties",
            "preference",
            "preference_low",
            "preference_high",
            "p_value",
        ],
    );
    let teams = rows(&browser, "#team-share tbody tr").await;
    let clicks: u64 = results["arms"]
        .as_array()
        .expect("arms")
        .iter()
        .map(|a| a["clicks"].as_u64().expect("clicks"))
        .sum();
    assert!(clicks > 0, "clicks on the interleaved pages");
    for ((name, figures), json) in teams.iter().zip(results["arms"].as_array().expect("arms")) {
        assert_eq!(name, json["name"].as_str().expect("name"));
        assert_eq!(figures["clicks"], Some(json["clicks"].to_string()), "{name}");
        assert_eq!(figures["wins"], Some(json["wins"].to_string()), "{name}");
        let share: f64 = figures["click_share"]
            .as_deref()
            .expect("a share")
            .parse()
            .expect("a number");
        assert_eq!(
            share,
            json["clicks"].as_f64().expect("clicks") / clicks as f64,
            "{name}"
        );
    }

    // The shadow arm: its overlap.
    browser.open(&gw.url(&format!("/ui/experiments/{SHADOW}"))).await;
    let results = events::results(&gw, SHADOW, "?by=day").await;
    let shadow = rows(&browser, "#shadow tbody tr").await;
    assert_eq!(shadow.len(), 1);
    same_figures(
        SHADOW,
        &shadow[0].1,
        &results["arms"][1],
        &[
            "compared",
            "overlap_jaccard",
            "overlap_rbo",
            "distinct_items",
            "catalogue_coverage",
        ],
    );
    let description = browser
        .run(
            "return document.querySelector('p[data-field=description]').textContent;",
            vec![],
        )
        .await;
    assert_eq!(description, HOSTILE);

    // An admin sees the resume button, and pressing it resumes the arm.
    browser.click("header form button").await;
    assert!(browser.url().await.ends_with("/ui/sign-in"), "{}", browser.url().await);
    browser.open(&gw.url(&format!("/ui/experiments/{SPLIT}"))).await;
    sign_in(&browser, ADMIN_KEY).await;
    assert_eq!(browser.url().await, gw.url(&format!("/ui/experiments/{SPLIT}")));
    browser.click("button[data-resume=treatment]").await;
    assert_eq!(browser.url().await, gw.url(&format!("/ui/experiments/{SPLIT}")));
    let arms = rows(&browser, "#arms tbody tr").await;
    assert_eq!(arms[1].1["state"].as_deref(), Some("serving"), "resumed");
    assert_eq!(
        events::results(&gw, SPLIT, "?by=day").await["arms"][1]["state"],
        "serving"
    );
    browser.client.clone().close().await.expect("the browser closes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_keeps_the_key_in_a_cookie_for_the_pages_only() {
    let (_demo, gw) = provoked_gateway().await;
    let client = no_redirects();

    // A page without the cookie goes to the sign-in form, carrying where it came from.
    let reply = exchange(&client, client.get(gw.url(&format!("/ui/experiments/{SPLIT}?by=x"))))
        .await
        .expect("answer");
    assert_eq!(reply.status, 303);
    let asked = client
        .get(gw.url(&format!("/ui/experiments/{SPLIT}")))
        .send()
        .await
        .expect("answer");
    assert_eq!(
        asked.headers()["location"],
        "/ui/sign-in?next=%2Fui%2Fexperiments%2Fhome-als-rank"
    );

    // A configured key: the cookie, for the pages only, out of scripts' and other sites' reach.
    let signed = client
        .post(gw.url("/ui/sign-in"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("key={CLIENT_KEY}&next=%2Fui%2Fexperiments%2F{SPLIT}"))
        .send()
        .await
        .expect("answer");
    assert_eq!(signed.status(), 303);
    assert_eq!(signed.headers()["location"], format!("/ui/experiments/{SPLIT}"));
    let cookie = signed.headers()["set-cookie"].to_str().expect("text").to_string();
    let attributes: Vec<&str> = cookie.split("; ").collect();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=43200"] {
        assert!(attributes.contains(&attribute), "{cookie}");
    }
    assert!(!cookie.contains(CLIENT_KEY), "the key is encoded: {cookie}");
    let pair = attributes[0];
    let page = exchange(
        &client,
        client
            .get(gw.url(&format!("/ui/experiments/{SPLIT}")))
            .header("cookie", pair),
    )
    .await
    .expect("answer");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.content_type.starts_with("text/html"), "{}", page.content_type);
    let json = exchange(
        &client,
        client
            .get(gw.url(&format!("/experiments/{SPLIT}/results")))
            .header("cookie", pair),
    )
    .await
    .expect("answer");
    assert_eq!(
        (json.status, json.json()["error"].clone()),
        (401, json!("unauthorized")),
        "the cookie opens no JSON route"
    );

    // A client's cookie cannot resume an arm; an admin's can.
    let resume = format!("/ui/experiments/{SPLIT}/arms/treatment/resume");
    let refused = exchange(&client, client.post(gw.url(&resume)).header("cookie", pair))
        .await
        .expect("answer");
    assert_eq!(
        (refused.status, refused.json()["error"].clone()),
        (403, json!("forbidden"))
    );
    let anonymous = exchange(&client, client.post(gw.url(&resume))).await.expect("answer");
    assert_eq!(
        (anonymous.status, anonymous.json()["error"].clone()),
        (401, json!("unauthorized"))
    );

    // A key that is not configured goes back to the form, told so; no cookie.
    let wrong = client
        .post(gw.url("/ui/sign-in"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("key=guess&next=%2Fui%2F")
        .send()
        .await
        .expect("answer");
    assert_eq!(wrong.status(), 303);
    assert_eq!(wrong.headers()["location"], "/ui/sign-in?failed=true&next=%2Fui%2F");
    assert!(wrong.headers().get("set-cookie").is_none());

    // Another site's form is refused, whatever it carries.
    for headers in [
        [("origin", "http://evil.example"), ("sec-fetch-site", "cross-site")],
        [("origin", "null"), ("sec-fetch-site", "cross-site")],
    ] {
        let mut request = client
            .post(gw.url("/ui/sign-in"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("key={ADMIN_KEY}"));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let reply = exchange(&client, request).await.expect("answer");
        assert_eq!(
            (reply.status, reply.json()["error"].clone()),
            (403, json!("forbidden")),
            "{headers:?}"
        );
    }
    let own = exchange(
        &client,
        client
            .post(gw.url("/ui/sign-out"))
            .header("origin", format!("http://{}", gw.addr))
            .header("sec-fetch-site", "same-origin"),
    )
    .await
    .expect("answer");
    assert_eq!(own.status, 303, "the gateway's own form");

    // Errors keep the JSON shape.
    let unknown = exchange(
        &client,
        client.get(gw.url("/ui/experiments/nope")).header("cookie", pair),
    )
    .await
    .expect("answer");
    assert_eq!(
        (unknown.status, unknown.json()["error"].clone()),
        (404, json!("unknown_experiment"))
    );
}

#[tokio::test]
async fn with_auth_off_the_pages_are_open() {
    let gw = TestGateway::demo().await;
    let list = gw.get("/ui/").await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert!(list.content_type.starts_with("text/html"), "{}", list.content_type);
    for id in [SPLIT, INTERLEAVE, SHADOW] {
        assert!(list.body.contains(&format!("data-experiment=\"{id}\"")), "{id} listed");
        let page = gw.get(&format!("/ui/experiments/{id}")).await;
        assert_eq!(page.status, 200, "{id}: {}", page.body);
    }
    let sign_in = gw.get("/ui/sign-in").await;
    assert!(sign_in.body.contains("Auth is off"), "{}", sign_in.body);
}
