//! A recommendation response as the tests keep it ([`Page`]) and the one request that gets one
//! ([`recommend`]): every test that serves pages, to send their events or to check what was
//! served, asks for them and reads them this way, so that a page means the same in each file.
//! What a test checks beyond that (the experiment, items at all, its own expectations of the
//! arm) it says on the page it got.

use futures::StreamExt;
use serde_json::Value;

use super::gateway::{Reply, TestGateway, item_ids};

/// One recommendation response: the user it was for, what the tests credit its events by (arm,
/// QA override, items, tracking token), and the body as it came for anything else.
#[derive(Debug, Clone)]
pub struct Page {
    /// The user asked for.
    pub user: String,
    /// `arm`: the assigned one (`default` outside any experiment, `interleaved` on an
    /// interleaved page).
    pub arm: String,
    /// `forced`: a QA override, neither it nor its events counted.
    pub forced: bool,
    /// The `item_id`s, in page order.
    pub items: Vec<String>,
    /// `tracking_token`, which its events carry.
    pub token: String,
    /// `X-Request-Id`, when the gateway sent one.
    pub request_id: Option<String>,
    /// The whole body.
    pub body: Value,
}

impl Page {
    /// Reads `reply`, the answer to a recommendation request for `user`, which must be 200 and
    /// JSON; `what` names the request in a failure.
    pub fn read(user: &str, what: &str, reply: &Reply) -> Page {
        assert_eq!(reply.status, 200, "{what}: {}", reply.body);
        reply.assert_json(what);
        let body = reply.json();
        let text = |field: &str| {
            body[field]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: {field} is not a string: {body}"))
                .to_string()
        };
        Page {
            user: user.to_string(),
            arm: text("arm"),
            forced: body["forced"]
                .as_bool()
                .unwrap_or_else(|| panic!("{what}: forced is not a boolean: {body}")),
            items: item_ids(&body),
            token: text("tracking_token"),
            request_id: reply.request_id.clone(),
            body,
        }
    }

    /// Whether the results count it and its events: it is not a QA override.
    pub fn counted(&self) -> bool {
        !self.forced
    }

    /// `experiment`: the covering one, `None` on the placement default.
    pub fn experiment(&self) -> Option<&str> {
        self.body["experiment"].as_str()
    }

    /// The page, after checking that `experiment` served it.
    pub fn expect_experiment(self, experiment: &str) -> Page {
        assert_eq!(self.experiment(), Some(experiment), "user {}: {}", self.user, self.body);
        self
    }

    /// The page, after checking that it has items.
    pub fn expect_items(self) -> Page {
        assert!(!self.items.is_empty(), "user {}: no items: {}", self.user, self.body);
        self
    }
}

/// `GET /recommendations/{user}?{query}`, expecting 200 and JSON. `query` is the query string
/// without its `?` (`placement=home&limit=5`; empty for the default placement and page).
pub async fn recommend(gw: &TestGateway, user: &str, query: &str) -> Page {
    let path = match query {
        "" => format!("/recommendations/{user}"),
        query => format!("/recommendations/{user}?{query}"),
    };
    Page::read(user, &format!("GET {path}"), &gw.get(&path).await)
}

/// A page of `experiment` with items ([`recommend`] with `query`) for each of `users`,
/// `in_flight` requests at a time; the pages in the order of `users`. The way a test serves
/// the users whose pages it then counts.
pub async fn experiment_pages(
    gw: &TestGateway,
    users: &[String],
    query: &str,
    experiment: &str,
    in_flight: usize,
) -> Vec<Page> {
    futures::stream::iter(users)
        .map(|user| async move {
            recommend(gw, user, query)
                .await
                .expect_experiment(experiment)
                .expect_items()
        })
        .buffered(in_flight)
        .collect()
        .await
}
