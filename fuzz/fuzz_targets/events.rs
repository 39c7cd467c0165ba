//! Any bytes as the body of `POST /events`, through the real HTTP application in process
//! (`recgw::api::app` over a gateway on the repository's demo `experiments/`): the body parser
//! (poem-openapi's JSON into the batch schema, size limit, batch limit) and then the event
//! checks (types, items, token verification, deduplication, counting).
//!
//! Oracles: never a panic; only 202, 400 and 413; every error is JSON `{error, message}`; a
//! 202 accounts for every event of the batch (`accepted + rejected` = its length, one
//! rejection entry per refused event, in order). The seeds in `corpus/events` carry tokens
//! signed with this secret, so accepted events are reached too.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use poem::http::Method;
use poem::{Endpoint, EndpointExt, Request};
use recgw::config::Settings;
use recgw::server::Server;
use serde_json::Value;

/// The secret the committed seed tokens are signed with.
const SECRET: &str = "fuzz-secret";

struct Harness {
    runtime: tokio::runtime::Runtime,
    app: poem::endpoint::BoxEndpoint<'static>,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the repository");
        let path = |p: &str| repo.join(p).to_str().expect("UTF-8 path").to_string();
        let env = [
            ("RECGW__SERVER__LISTEN", "127.0.0.1:0".to_string()),
            ("RECGW__EXPERIMENTS__DIR", path("experiments")),
            ("RECGW__MODELS__ROOT", path("models")),
        ];
        let mut settings = Settings::load_from(None, env.map(|(k, v)| (k.to_string(), v))).expect("settings");
        settings.tracking.secret = vec![SECRET.to_string()];
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // Bound only to build the gateway the way the server does; nothing listens (the server
        // is dropped, closing its socket) and no background task runs.
        let app = runtime.block_on(async {
            let server = Server::bind(&settings).await.expect("the demo gateway starts");
            server.app().map_to_response().boxed()
        });
        Harness { runtime, app }
    })
}

fuzz_target!(|data: &[u8]| {
    let harness = harness();
    let request = Request::builder()
        .method(Method::POST)
        .uri_str("/events")
        .content_type("application/json")
        .header("content-length", data.len().to_string())
        .body(data.to_vec());
    let (status, body) = harness.runtime.block_on(async {
        let response = harness.app.get_response(request).await;
        let status = response.status().as_u16();
        let body = response.into_body().into_vec().await.expect("body");
        (status, body)
    });
    let text = String::from_utf8_lossy(&body);
    let json: Value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{status}: body not JSON ({e}): {text}"));
    match status {
        202 => {
            let sent: Value = serde_json::from_slice(data).expect("a 202 body was JSON");
            let n = sent["events"].as_array().expect("a 202 body had events").len() as u64;
            let accepted = json["accepted"].as_u64().expect("accepted");
            let rejected = json["rejected"].as_u64().expect("rejected");
            assert_eq!(accepted + rejected, n, "every event accounted for: {text}");
            let rejections = json["rejections"].as_array().expect("rejections");
            assert_eq!(rejections.len() as u64, rejected, "{text}");
            let indices: Vec<u64> = rejections.iter().map(|r| r["index"].as_u64().expect("index")).collect();
            assert!(indices.windows(2).all(|w| w[0] < w[1]), "rejections in order: {text}");
            assert!(indices.iter().all(|i| *i < n), "{text}");
        }
        400 | 413 => {
            assert!(
                json["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{status}: {text}"
            );
            assert!(
                json["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{status}: {text}"
            );
        }
        other => panic!("unexpected status {other}: {text}"),
    }
});
