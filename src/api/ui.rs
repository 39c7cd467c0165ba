//! The results UI (`/ui/`): the pages analysts open in a browser to read what the JSON results
//! say — every experiment with its decision and health, and one experiment's arms, lift over
//! time, CTR by position, interleaving preference and shadow overlap. Rendered here from the
//! same body `GET /experiments/{id}/results` answers ([`super::results::load`]), so a page
//! cannot show other numbers than the API; no script is needed to read a page.
//!
//! A browser cannot send `X-API-Key`, so the pages take the same keys through a sign-in form
//! that sets an `HttpOnly`, `SameSite=Strict` cookie scoped to `/ui` ([`SESSION_COOKIE`]);
//! the key never appears in a URL. With auth off, the pages are as open as the results. Every
//! `POST` under `/ui` (sign-in, sign-out, resume) must come from the gateway's own pages: a
//! browser's `Sec-Fetch-Site` or `Origin` naming another site is refused ([`refuse_cross_site`]),
//! so another site's page can neither use the cookie nor, with auth off, a loopback admin.

mod page;

use std::sync::Arc;

use base64::Engine;
use futures::future::join_all;
use poem::http::{StatusCode, Uri, header};
use poem::web::Data;
use poem::{Request, RequestBody, Response};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::{Form, Html};
use poem_openapi::registry::{MetaSecurityScheme, Registry};
use poem_openapi::{ApiExtractor, ApiExtractorType, ApiResponse, ExtractParamOptions, Object, OpenApi};
use serde::Deserialize;

use super::auth::{Granted, SESSION_COOKIE};
use super::error::ApiError;
use super::{ApiTags, limit_body};
use crate::auth::{Keys, Role};
use crate::gateway::Gateway;

/// The results UI's endpoint group.
#[derive(Default)]
pub(crate) struct UiApi;

/// Declares on a page that it takes the sign-in cookie, optional because a gateway may run with
/// auth off; the cookie itself is checked by [`super::auth::authorize`] before the page runs.
/// Written out rather than derived: poem-openapi's derived cookie scheme needs its `cookie`
/// feature, whose middleware parses the cookies of every API request.
struct PageAuth;

impl<'a> ApiExtractor<'a> for PageAuth {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        registry.create_security_scheme(
            "SignInCookie",
            MetaSecurityScheme {
                ty: "apiKey",
                description: Some("An API key, kept by the browser after `POST /ui/sign-in`."),
                name: Some(SESSION_COOKIE),
                key_in: Some("cookie"),
                scheme: None,
                bearer_format: None,
                flows: None,
                openid_connect_url: None,
            },
        );
    }

    fn security_schemes() -> Vec<&'static str> {
        vec!["SignInCookie"]
    }

    fn has_security_fallback() -> bool {
        true
    }

    async fn from_request(
        _request: &'a Request,
        _body: &mut RequestBody,
        _options: ExtractParamOptions<()>,
    ) -> poem::Result<Self> {
        Ok(PageAuth)
    }
}

/// Where a form sends the browser next.
#[derive(Debug, ApiResponse)]
enum SeeOther {
    /// Done: the browser goes to `Location`, with the sign-in cookie set or cleared when
    /// `Set-Cookie` is given.
    #[oai(status = 303)]
    Redirect(
        #[oai(header = "Location")] String,
        #[oai(header = "Set-Cookie")] Option<String>,
    ),
}

/// The sign-in form.
#[derive(Debug, Deserialize, Object)]
#[serde(deny_unknown_fields)]
struct SignInForm {
    /// An API key of `auth.keys` (a client key reads, an admin key may also resume arms).
    key: String,
    /// The page to go to once signed in (a path under `/ui/`; anything else goes to `/ui/`).
    next: Option<String>,
}

/// What a URL component may hold as it is (RFC 3986's unreserved characters); everything else
/// is percent-encoded.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// How long a sign-in lasts: a working day, after which the browser forgets the key.
const SESSION_SECONDS: u64 = 12 * 3600;

/// The page a browser is sent to after signing in: `next` when it is one of the UI's own
/// paths, else the list. Never another site's address (`//host`, `/\host`, `https://…`), which
/// would make the sign-in form an open redirect.
fn next_page(next: Option<&str>) -> String {
    match next {
        Some(path) if path.starts_with("/ui/") && !path.contains(['\\', '\r', '\n']) => path.to_string(),
        _ => "/ui/".to_string(),
    }
}

/// Where a browser that is not signed in is sent: the sign-in page, carrying the page it asked
/// for (a path, never a key) so it comes back to it.
pub(crate) fn to_sign_in(asked: &Uri) -> Response {
    let next = asked.path_and_query().map(|p| p.as_str()).unwrap_or("/ui/");
    let next: String = percent_encoding::utf8_percent_encode(next, UNRESERVED).collect();
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, format!("/ui/sign-in?next={next}"))
        .finish()
}

/// Refuses a state-changing request under `/ui` that a browser says came from another site: a
/// `Sec-Fetch-Site` other than `same-origin` or `none` (typed by the user), or an `Origin`
/// other than the gateway's own (`Host`). Clients that are not browsers send neither header
/// and are not a cross-site risk. `SameSite=Strict` already keeps the cookie off such requests;
/// this also covers the gateway with auth off, where loopback callers are admins.
pub(crate) fn refuse_cross_site(request: &Request) -> Option<poem::Error> {
    if matches!(*request.method(), poem::http::Method::GET | poem::http::Method::HEAD) {
        return None;
    }
    let headers = request.headers();
    let text = |name| headers.get(name).map(|v| v.to_str().unwrap_or("?"));
    let cross_site = match (text("sec-fetch-site"), text("origin")) {
        (Some(site), _) if site != "same-origin" && site != "none" => true,
        (_, Some(origin)) => {
            let own = text("host");
            let host = origin.split_once("://").map(|(_, host)| host);
            own.is_none() || host != own
        }
        _ => false,
    };
    cross_site.then(|| {
        poem::Error::from_string(
            "the results UI takes forms only from its own pages (Origin or Sec-Fetch-Site names another site)",
            StatusCode::FORBIDDEN,
        )
    })
}

/// The `Set-Cookie` value that signs a browser in with `key` (or, `None`, out). `Secure` when
/// the gateway is reached over TLS through a proxy that says so (`X-Forwarded-Proto`).
fn session_cookie(key: Option<&str>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match key {
        Some(key) => format!(
            "{SESSION_COOKIE}={}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECONDS}{secure}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
        ),
        None => format!("{SESSION_COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

/// Whether the browser reached the gateway over TLS, as a proxy in front of it says.
fn over_tls(request: &Request) -> bool {
    request
        .headers()
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

/// What the caller may do on the page, as the front layer granted it.
fn is_admin(request: &Request) -> bool {
    request.extensions().get::<Granted>() == Some(&Granted(Role::Admin))
}

#[OpenApi(tag = "ApiTags::Ui")]
impl UiApi {
    /// The results UI: every experiment with its placement, kind, status, age, users and each
    /// arm's decision, flagged when its split is broken (sample-ratio mismatch), an arm is
    /// paused by a guardrail, or the sample is not yet enough. HTML for browsers; a browser
    /// that is not signed in (auth on) is sent to `/ui/sign-in`. Also answered at `/ui/`.
    #[oai(path = "/ui", method = "get")]
    async fn list(&self, gateway: Data<&Arc<Gateway>>, _auth: PageAuth) -> Html<String> {
        let catalog = gateway.catalog();
        let experiments: Vec<_> = catalog.experiments().cloned().collect();
        let results = join_all(experiments.iter().map(|e| super::results::load(&gateway, &e.id, false))).await;
        Html(page::list(&experiments, results).into_string())
    }

    /// One experiment's results page: the arms' table (users, exposures, impressions, clicks,
    /// CTR with its interval, lift with its fixed and always-valid intervals, decision, and the
    /// CUPED figures where the experiment names covariates), the cumulative lift per day inside
    /// its always-valid band, CTR by position, an interleave experiment's preference, a shadow
    /// arm's overlap, each chart with its numbers in a table, and what to act on. Admins see a
    /// button that resumes an arm a guardrail paused.
    #[oai(path = "/ui/experiments/:id", method = "get")]
    async fn experiment(
        &self,
        gateway: Data<&Arc<Gateway>>,
        request: &Request,
        id: Path<String>,
        _auth: PageAuth,
    ) -> Result<Html<String>, ApiError> {
        let body = super::results::load(&gateway, &id, true).await?;
        let catalog = gateway.catalog();
        let experiment = catalog
            .experiment(&id)
            .ok_or_else(|| ApiError::not_found("unknown_experiment", format!("no experiment {:?} is loaded", *id)))?;
        Ok(Html(
            page::experiment(experiment, &body, is_admin(request)).into_string(),
        ))
    }

    /// The resume button of a paused arm: lifts the guardrail's pause on every replica, as
    /// `POST /admin/experiments/{id}/arms/{arm}/resume` does, and goes back to the page.
    #[oai(path = "/ui/experiments/:id/arms/:arm/resume", method = "post")]
    async fn resume(
        &self,
        gateway: Data<&Arc<Gateway>>,
        id: Path<String>,
        arm: Path<String>,
        _auth: PageAuth,
    ) -> Result<SeeOther, ApiError> {
        super::admin::resume_arm(&gateway, &id, &arm).await?;
        let back: String = percent_encoding::utf8_percent_encode(&id, UNRESERVED).collect();
        Ok(SeeOther::Redirect(format!("/ui/experiments/{back}"), None))
    }

    /// The sign-in form: a browser signs in with an API key, which is kept in an `HttpOnly`,
    /// `SameSite=Strict` cookie for the pages under `/ui` only (never in a URL).
    #[oai(path = "/ui/sign-in", method = "get")]
    async fn sign_in_form(
        &self,
        keys: Data<&Arc<Keys>>,
        /// The page to go back to once signed in.
        next: Query<Option<String>>,
        /// Set after a key that is not configured was tried.
        failed: Query<Option<bool>>,
    ) -> Html<String> {
        let next = next_page(next.as_deref());
        Html(page::sign_in(&next, failed.unwrap_or(false), keys.is_off()).into_string())
    }

    /// Signs a browser in: a configured key sets the cookie and goes on to `next`; any other
    /// goes back to the form, told so.
    #[oai(path = "/ui/sign-in", method = "post", transform = "limit_body")]
    async fn sign_in(&self, keys: Data<&Arc<Keys>>, request: &Request, form: Form<SignInForm>) -> SeeOther {
        let next = next_page(form.next.as_deref());
        if keys.check(&form.key).is_none() {
            let next: String = percent_encoding::utf8_percent_encode(&next, UNRESERVED).collect();
            return SeeOther::Redirect(format!("/ui/sign-in?failed=true&next={next}"), None);
        }
        SeeOther::Redirect(next, Some(session_cookie(Some(&form.key), over_tls(request))))
    }

    /// Signs a browser out: the cookie is cleared.
    #[oai(path = "/ui/sign-out", method = "post")]
    async fn sign_out(&self, request: &Request) -> SeeOther {
        SeeOther::Redirect("/ui/sign-in".to_string(), Some(session_cookie(None, over_tls(request))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_uis_own_pages_are_gone_to_after_signing_in() {
        for (next, want) in [
            (Some("/ui/experiments/home?x=1"), "/ui/experiments/home?x=1"),
            (Some("/ui/"), "/ui/"),
            (Some("//evil.example/ui/"), "/ui/"),
            (Some("https://evil.example/ui/"), "/ui/"),
            (Some("/ui/\\evil"), "/ui/"),
            (Some("/experiments"), "/ui/"),
            (None, "/ui/"),
        ] {
            assert_eq!(next_page(next), want, "{next:?}");
        }
    }

    #[test]
    fn the_cookie_is_kept_from_scripts_and_other_sites() {
        let cookie = session_cookie(Some("k; v=1"), false);
        assert!(cookie.starts_with("recgw_key=azsgdj0x;"), "{cookie}");
        for part in ["Path=/ui", "HttpOnly", "SameSite=Strict", "Max-Age=43200"] {
            assert!(cookie.split("; ").any(|p| p == part), "{cookie} has {part}");
        }
        assert!(!cookie.contains("Secure"));
        assert!(session_cookie(Some("k"), true).ends_with("; Secure"));
        assert!(session_cookie(None, false).contains("recgw_key=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"));
    }

    #[test]
    fn forms_from_other_sites_are_refused() {
        let post = |headers: &[(&str, &str)]| {
            let mut request = Request::builder()
                .method(poem::http::Method::POST)
                .uri(Uri::from_static("/ui/sign-out"));
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            refuse_cross_site(&request.finish()).is_some()
        };
        assert!(!post(&[]), "no browser");
        assert!(!post(&[("host", "gw:8080"), ("origin", "http://gw:8080")]));
        assert!(!post(&[
            ("host", "gw:8080"),
            ("origin", "http://gw:8080"),
            ("sec-fetch-site", "same-origin")
        ]));
        assert!(post(&[("host", "gw:8080"), ("origin", "http://evil.example")]));
        assert!(post(&[("host", "gw:8080"), ("origin", "null")]));
        assert!(post(&[("origin", "http://gw:8080")]), "no Host to compare with");
        assert!(post(&[("host", "gw:8080"), ("sec-fetch-site", "cross-site")]));
        assert!(post(&[("host", "gw:8080"), ("sec-fetch-site", "same-site")]));
        let get = Request::builder()
            .uri(Uri::from_static("/ui/"))
            .header("sec-fetch-site", "cross-site")
            .finish();
        assert!(
            refuse_cross_site(&get).is_none(),
            "links from elsewhere may open a page"
        );
    }
}
