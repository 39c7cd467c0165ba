//! The route table: every path the gateway serves, declared once with the names it goes by. The
//! layers in front of the handlers (auth, time limits, metrics, the request log), the OpenAPI
//! document's error statuses and the tests all read it, so a new route cannot get a role
//! without a log name, or a metric label without a documented status.

use crate::auth::Role;

/// One route and the names it goes by.
#[derive(Debug, PartialEq, Eq)]
pub struct RouteInfo {
    /// The path as the OpenAPI document writes it (`/experiments/{id}`): what the request log
    /// shows, and how the tests and the document are matched to this table. A trailing `/*`
    /// takes any rest of the path (the documentation pages).
    pub template: &'static str,
    /// The `endpoint` label of the latency and error metrics: few values, so odd URLs cannot
    /// grow the label set, and one per endpoint group so dashboards read per group.
    pub label: &'static str,
    /// The key role the route needs; `None` for the open routes (probes, metrics, the API
    /// documents), which load balancers and Prometheus call without a key.
    pub role: Option<Role>,
}

/// Every route the gateway serves.
pub(crate) static ROUTES: &[RouteInfo] = &[
    RouteInfo {
        template: "/recommendations/{user_id}",
        label: "recommendations",
        role: Some(Role::Client),
    },
    RouteInfo {
        template: "/events",
        label: "events",
        role: Some(Role::Client),
    },
    RouteInfo {
        template: "/experiments",
        label: "experiments",
        role: Some(Role::Client),
    },
    RouteInfo {
        template: "/experiments/{id}",
        label: "experiments",
        role: Some(Role::Client),
    },
    RouteInfo {
        template: "/experiments/{id}/assignment/{user_id}",
        label: "experiments",
        role: Some(Role::Client),
    },
    RouteInfo {
        template: "/experiments/{id}/results",
        label: "experiments",
        role: Some(Role::Client),
    },
    RouteInfo {
        template: "/stats",
        label: "stats",
        role: Some(Role::Client),
    },
    RouteInfo {
        template: "/metrics",
        label: "metrics",
        role: None,
    },
    RouteInfo {
        template: "/health",
        label: "health",
        role: None,
    },
    RouteInfo {
        template: "/ready",
        label: "ready",
        role: None,
    },
    RouteInfo {
        template: "/admin/reload",
        label: "admin",
        role: Some(Role::Admin),
    },
    RouteInfo {
        template: "/admin/cache/invalidate",
        label: "admin",
        role: Some(Role::Admin),
    },
    RouteInfo {
        template: "/admin/experiments/{id}/arms/{arm}/resume",
        label: "admin",
        role: Some(Role::Admin),
    },
    RouteInfo {
        template: "/ui",
        label: "ui",
        role: Some(Role::Client),
    },
    RouteInfo {
        template: "/ui/experiments/{id}",
        label: "ui",
        role: Some(Role::Client),
    },
    RouteInfo {
        template: "/ui/experiments/{id}/arms/{arm}/resume",
        label: "ui",
        role: Some(Role::Admin),
    },
    RouteInfo {
        template: "/ui/sign-in",
        label: "ui",
        role: None,
    },
    RouteInfo {
        template: "/ui/sign-out",
        label: "ui",
        role: None,
    },
    RouteInfo {
        template: "/openapi.json",
        label: "openapi",
        role: None,
    },
    RouteInfo {
        template: "/docs/*",
        label: "docs",
        role: None,
    },
];

/// What a path that matches no route goes by: open, so an unknown path answers 404 to anyone
/// rather than revealing through 401 which prefixes exist.
pub static OTHER: RouteInfo = RouteInfo {
    template: "other",
    label: "other",
    role: None,
};

/// The route `path` (without its query) belongs to; compares segments in place, so the request
/// path allocates nothing.
pub fn route(path: &str) -> &'static RouteInfo {
    resolve(path).1
}

/// The route of `path` and its position in [`ROUTES`] (`ROUTES.len()` for [`OTHER`]), for
/// per-route handles kept in the same order.
pub(crate) fn resolve(path: &str) -> (usize, &'static RouteInfo) {
    match ROUTES.iter().position(|r| matches(r.template, path)) {
        Some(i) => (i, &ROUTES[i]),
        None => (ROUTES.len(), &OTHER),
    }
}

/// Whether `route` serves the API's documents (`/openapi.json`, `/docs/*`) rather than the API.
pub(crate) fn is_document(route: &RouteInfo) -> bool {
    matches!(route.label, "openapi" | "docs")
}

/// The results UI's home as browsers are given it: `/ui/`. poem's router keeps no final `/`, so
/// the front layer reads this path as `/ui`, the route that lists the experiments.
pub(crate) const UI_HOME: &str = "/ui/";

/// Whether `route` is a page of the results UI, whose callers are browsers: they present their
/// key in the sign-in cookie, not in `X-API-Key`.
pub(crate) fn is_page(route: &RouteInfo) -> bool {
    route.label == "ui"
}

/// Whether `path` fits `template`: `{name}` takes one non-empty segment, a final `*` any rest,
/// and a literal segment only itself, byte for byte (percent-encoded, it is another segment).
/// Nothing is trimmed or merged: a doubled, leading or trailing `/` makes an empty segment, which
/// fits no template (`/ui/` is read as `/ui` before: see [`UI_HOME`]). The front layer answers 404 to a path that fits none and passes only the
/// others to the API's router, which dispatches a path with non-empty segments to the one
/// template it fits (see `no_path_fits_two_routes`); so the route whose key was checked is the
/// route that runs. (The router alone would give `{name}` an empty value, and dispatch
/// `/experiments//results` to the results.)
fn matches(template: &str, path: &str) -> bool {
    let Some(path) = path.strip_prefix('/') else {
        return false;
    };
    let mut path = path.split('/');
    for expected in template.trim_start_matches('/').split('/') {
        match (expected, path.next()) {
            ("*", _) => return true,
            (_, None | Some("")) => return false,
            (e, Some(got)) if !e.starts_with('{') && e != got => return false,
            _ => {}
        }
    }
    path.next().is_none()
}

/// The route a documented path (`/experiments/{id}`) is, for the document's statuses.
pub(crate) fn documented(template: &str) -> Option<&'static RouteInfo> {
    ROUTES.iter().find(|r| r.template == template)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_to_their_route() {
        for (path, template) in [
            ("/recommendations/42", "/recommendations/{user_id}"),
            ("/recommendations/a%2Fb", "/recommendations/{user_id}"),
            ("/experiments", "/experiments"),
            ("/experiments/x/assignment/7", "/experiments/{id}/assignment/{user_id}"),
            ("/experiments/x/results", "/experiments/{id}/results"),
            ("/docs", "/docs/*"),
            ("/docs/index.css", "/docs/*"),
            ("/admin/cache/invalidate", "/admin/cache/invalidate"),
            (
                "/admin/experiments/x/arms/treatment/resume",
                "/admin/experiments/{id}/arms/{arm}/resume",
            ),
            ("/recommendations", "other"),
            ("/recommendations/", "other"),
            ("/recommendations//", "other"),
            ("/recommendations/42/", "other"),
            ("//recommendations/42", "other"),
            ("/experiments//results", "other"),
            ("/experiments/x//results", "other"),
            ("/experiments/x/assignment/", "other"),
            ("/admin/experiments/x/arms//resume", "other"),
            ("/admin//reload", "other"),
            ("/admin/reload/", "other"),
            ("/admin/./reload", "other"),
            ("/%61dmin/reload", "other"),
            ("/admin%2Freload", "other"),
            ("*", "other"),
            ("/experiments/x/unknown", "other"),
            ("/admin", "other"),
            ("/", "other"),
            ("/ui", "/ui"),
            ("/ui//", "other"),
            ("/ui/experiments/x", "/ui/experiments/{id}"),
            ("/ui/experiments/x/", "other"),
            ("/ui/experiments/", "other"),
            (
                "/ui/experiments/x/arms/a/resume",
                "/ui/experiments/{id}/arms/{arm}/resume",
            ),
        ] {
            assert_eq!(route(path).template, template, "{path}");
        }
    }

    /// The document and the table name the same routes, and an operation declares a key exactly
    /// when its route needs one (the document is what client teams generate code from).
    #[test]
    fn the_document_and_the_table_agree() {
        let spec: serde_json::Value = serde_json::from_str(&crate::api::service().spec()).expect("JSON");
        let paths = spec["paths"].as_object().expect("paths");
        for (template, operations) in paths {
            let route = documented(template).unwrap_or_else(|| panic!("{template} is not in ROUTES"));
            for (method, operation) in operations.as_object().expect("operations") {
                let keyed = operation["security"].as_array().is_some_and(|s| !s.is_empty());
                assert_eq!(keyed, route.role.is_some(), "{method} {template}");
                let statuses = operation["responses"].as_object().expect("responses");
                for status in ["414", "431", "500", "504"] {
                    assert!(statuses.contains_key(status), "{method} {template} documents {status}");
                }
                // The results UI's pages send a browser without its cookie to sign in (303)
                // rather than refuse it; its forms refuse other sites' pages (403).
                let page = is_page(route) && method == "get";
                let form = is_page(route) && method != "get";
                assert_eq!(
                    statuses.contains_key("303"),
                    route.role.is_some() && page,
                    "{method} {template}"
                );
                assert_eq!(
                    statuses.contains_key("401"),
                    route.role.is_some() && !page,
                    "{method} {template}"
                );
                let admin = route.role == Some(Role::Admin);
                assert_eq!(statuses.contains_key("403"), admin || form, "{method} {template}");
            }
        }
        let served = ROUTES.iter().filter(|r| paths.contains_key(r.template)).count();
        // `/openapi.json` and `/docs/*` serve the document itself and are not in it.
        assert_eq!(served, ROUTES.len() - 2);
    }

    /// A status listed twice on an operation is a duplicate key in the YAML document, which
    /// code generators refuse.
    #[test]
    fn no_operation_lists_a_status_twice() {
        use poem_openapi::OpenApi;
        for path in <crate::api::Apis as OpenApi>::meta().iter().flat_map(|api| &api.paths) {
            for operation in &path.operations {
                let mut statuses: Vec<_> = operation.responses.responses.iter().map(|r| r.status).collect();
                let listed = statuses.len();
                statuses.dedup();
                assert_eq!(statuses.len(), listed, "{} {}", operation.method, path.path);
            }
        }
    }

    /// No path fits two templates: were there one, the router (literals first) and [`resolve`]
    /// (first in the table) could pick different routes for it, and the key checked would not
    /// be the route's. Two templates fit a common path when, up to a `*` of either, they are as
    /// long and every position holds a parameter or the same literal.
    #[test]
    fn no_path_fits_two_routes() {
        let fit_together = |a: &str, b: &str| {
            let (a, b): (Vec<_>, Vec<_>) = (a.split('/').collect(), b.split('/').collect());
            for (x, y) in a.iter().zip(&b) {
                if *x == "*" || *y == "*" {
                    return true;
                }
                if x != y && !x.starts_with('{') && !y.starts_with('{') {
                    return false;
                }
            }
            a.len() == b.len()
        };
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(
                    !fit_together(a.template, b.template),
                    "{} and {} fit a common path",
                    a.template,
                    b.template
                );
            }
        }
    }

    #[test]
    fn every_template_resolves_to_itself() {
        for r in ROUTES {
            let path = r
                .template
                .replace("{id}", "e")
                .replace("{user_id}", "u")
                .replace('*', "x");
            assert_eq!(route(&path), r, "{path}");
        }
    }
}
