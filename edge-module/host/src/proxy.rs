//! Proxy mode: the edge forwards every request that is not one of its own endpoints to an origin,
//! and counts the page views among them, so a site can be counted without JavaScript.
//!
//! A request is counted when it is a `GET` whose path matches a configured route, the origin
//! answered 2xx or 304, and the browser did not say it fetches something other than a document
//! (`Sec-Fetch-Dest`). Routes use axum's path syntax (`/blog/{slug}`, `/docs/{*rest}`), matched
//! by `matchit`, the router axum itself uses; the resource id is a template over the captures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::EdgeState;
use crate::counting::{hit_from, record, result_code};
use crate::error::EdgeError;

/// Requests with a larger declared body get 413 without reaching the origin; a chunked body
/// that grows past it is cut off, and the origin's connection with it.
pub const PROXY_REQUEST_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The origin must start answering (status and headers) within this time unless
/// `--origin-timeout-ms` says otherwise; the body then streams without a deadline.
pub const ORIGIN_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// The longest `--origin-timeout-ms`.
pub const ORIGIN_TIMEOUT_MS_MAX: u64 = 600_000;
/// Counted routes per edge: each is one entry in the route table.
pub const COUNT_ROUTES_MAX: usize = 1_024;

/// Headers that describe one hop and must not be forwarded (RFC 9110, section 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A counted route: the path pattern, and the resource id it counts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountRoute {
    pub pattern: String,
    pub resource_template: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("--count-route {0:?} is not of the form /PATH=RESOURCE")]
    Form(String),
    #[error("--count-route {route:?}: {reason}")]
    Pattern { route: String, reason: String },
    #[error("--count-route {route:?}: the resource {template:?} names no capture {name:?}")]
    UnknownCapture {
        route: String,
        template: String,
        name: String,
    },
    #[error("--count-route {route:?}: {template:?} cannot be a resource id: {reason}")]
    Resource {
        route: String,
        template: String,
        reason: String,
    },
    #[error("at most {COUNT_ROUTES_MAX} --count-route flags")]
    TooMany,
}

/// The capture names of a pattern, `{name}` and `{*name}` alike.
fn captures(pattern: &str) -> Vec<String> {
    pattern
        .split('{')
        .skip(1)
        .filter_map(|part| part.split_once('}'))
        .map(|(name, _)| name.trim_start_matches('*').to_owned())
        .collect()
}

impl CountRoute {
    /// Parses `PATTERN=RESOURCE`, e.g. `/blog/{slug}=blog.{slug}`.
    pub fn parse(text: &str) -> Result<Self, RouteError> {
        let (pattern, template) = text
            .rsplit_once('=')
            .ok_or_else(|| RouteError::Form(text.to_owned()))?;
        if !pattern.starts_with('/') || template.is_empty() {
            return Err(RouteError::Form(text.to_owned()));
        }
        let names = captures(pattern);
        // Every placeholder of the template must be a capture; with each replaced by a sample
        // value, the template must be a valid resource id.
        let mut sample = template.to_owned();
        for placeholder in captures(template) {
            if !names.contains(&placeholder) {
                return Err(RouteError::UnknownCapture {
                    route: text.to_owned(),
                    template: template.to_owned(),
                    name: placeholder,
                });
            }
            sample = sample.replace(&format!("{{{placeholder}}}"), "x");
        }
        hitcount_wire::validate_resource_id(&sample).map_err(|reason| RouteError::Resource {
            route: text.to_owned(),
            template: template.to_owned(),
            reason: reason.to_string(),
        })?;
        Ok(Self {
            pattern: pattern.to_owned(),
            resource_template: template.to_owned(),
        })
    }
}

/// The counted routes, compiled.
#[derive(Debug, Clone)]
pub struct CountRoutes {
    router: matchit::Router<String>,
}

impl CountRoutes {
    pub fn new(routes: &[CountRoute]) -> Result<Self, RouteError> {
        if routes.len() > COUNT_ROUTES_MAX {
            return Err(RouteError::TooMany);
        }
        let mut router = matchit::Router::new();
        for route in routes {
            router
                .insert(route.pattern.clone(), route.resource_template.clone())
                .map_err(|reason| RouteError::Pattern {
                    route: format!("{}={}", route.pattern, route.resource_template),
                    reason: reason.to_string(),
                })?;
        }
        Ok(Self { router })
    }

    /// The resource id a path counts as, if any route matches. Captured path segments become
    /// part of the id with `/` turned into `.`; a capture with characters ids cannot hold gives
    /// an id the module rejects (and a metric says so).
    pub fn resource_for(&self, path: &str) -> Option<String> {
        let matched = self.router.at(path).ok()?;
        let mut resource = matched.value.clone();
        for (name, value) in matched.params.iter() {
            let value = value.trim_matches('/').replace('/', ".");
            resource = resource.replace(&format!("{{{name}}}"), &value);
        }
        Some(resource)
    }
}

/// Where proxied requests go, and which of them count.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// `http://host:port`, no trailing slash.
    pub origin: String,
    pub routes: CountRoutes,
    /// How long the origin may take to send its status and headers.
    pub origin_timeout_ms: u64,
}

impl ProxyConfig {
    /// Proxy mode for `origin` with the default origin timeout.
    pub fn new(origin: &str, routes: CountRoutes) -> Self {
        Self {
            origin: origin.trim_end_matches('/').to_owned(),
            routes,
            origin_timeout_ms: ORIGIN_TIMEOUT_MS_DEFAULT,
        }
    }
}

/// The HTTP client for origins: no redirects followed (the browser must see them), no automatic
/// decompression (bodies pass through as the origin encoded them).
pub fn client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

fn is_hop_by_hop(name: &HeaderName, listed: &[String]) -> bool {
    HOP_BY_HOP.contains(&name.as_str()) || listed.iter().any(|listed| listed == name.as_str())
}

/// Header names the `Connection` header lists are hop-by-hop too.
fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect()
}

/// The request's headers for the origin: hop-by-hop ones dropped, `X-Forwarded-*` set. With
/// `--trust-forwarded-for` the edge sits behind a proxy or CDN, whose `X-Forwarded-Proto` (say,
/// `https` where it ended TLS) is the browser's and is kept; otherwise it is `http`, what the edge
/// itself serves.
fn forwarded_headers(headers: &HeaderMap, peer: SocketAddr, behind_proxy: bool) -> HeaderMap {
    let listed = connection_listed(headers);
    let mut forwarded = HeaderMap::with_capacity(headers.len() + 3);
    for (name, value) in headers {
        if name != header::HOST && !is_hop_by_hop(name, &listed) {
            forwarded.append(name.clone(), value.clone());
        }
    }
    let client = match headers
        .get("x-forwarded-for")
        .and_then(|value| value.to_str().ok())
    {
        Some(earlier) => format!("{earlier}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&client) {
        forwarded.insert("x-forwarded-for", value);
    }
    if let Some(host) = headers.get(header::HOST) {
        forwarded.insert("x-forwarded-host", host.clone());
    }
    let proto_from_proxy = headers
        .get("x-forwarded-proto")
        .filter(|_| behind_proxy)
        .cloned();
    forwarded.insert(
        "x-forwarded-proto",
        proto_from_proxy.unwrap_or(HeaderValue::from_static("http")),
    );
    forwarded
}

/// The browser says this is not a page load (an image, a script, a fetch from the page).
fn is_subresource(headers: &HeaderMap) -> bool {
    headers
        .get("sec-fetch-dest")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|destination| destination != "document" && destination != "iframe")
}

/// The fallback of the edge's router in proxy mode.
pub async fn forward(
    State(state): State<Arc<EdgeState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let Some(proxy) = &state.config.proxy else {
        return EdgeError::NotFound.into_response();
    };
    let (parts, body) = request.into_parts();
    let declared_length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared_length.is_some_and(|length| length > PROXY_REQUEST_BODY_BYTES_MAX as u64) {
        return EdgeError::ProxyBodyTooLarge {
            limit_bytes: PROXY_REQUEST_BODY_BYTES_MAX,
        }
        .into_response();
    }
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|value| value.as_str())
        .unwrap_or("/");
    let url = format!("{}{path_and_query}", proxy.origin);
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes())
        .unwrap_or(reqwest::Method::GET);
    let limited = http_body_util::Limited::new(body, PROXY_REQUEST_BODY_BYTES_MAX);
    let sending = state
        .proxy_client
        .request(method, url)
        .headers(forwarded_headers(
            &parts.headers,
            peer,
            state.config.trust_forwarded_for,
        ))
        .body(reqwest::Body::wrap_stream(
            Body::new(limited).into_data_stream(),
        ))
        .send();
    // The deadline covers the origin's status and headers only (`send` resolves with them):
    // reqwest's own request timeout would also cut off a body that streams for longer.
    let upstream =
        tokio::time::timeout(Duration::from_millis(proxy.origin_timeout_ms), sending).await;
    let upstream = match upstream {
        Ok(Ok(upstream)) => upstream,
        Err(_elapsed) => return EdgeError::OriginTimeout.into_response(),
        Ok(Err(failure)) => {
            tracing::warn!(error = %failure, "the origin is unreachable");
            return EdgeError::OriginUnreachable.into_response();
        }
    };
    let status = upstream.status();
    let counted = parts.method == Method::GET
        && (status.is_success() || status == StatusCode::NOT_MODIFIED)
        && !is_subresource(&parts.headers);
    if counted && let Some(resource_id) = proxy.routes.resource_for(parts.uri.path()) {
        let hit = hit_from(&state, &parts.headers, Some(peer), resource_id, None);
        match record(&state, hit).await {
            Ok(outcome) => {
                metrics::counter!("hitcount_edge_proxied_views_total", "result" => result_code(outcome))
                    .increment(1);
            }
            Err(_trapped) => {
                metrics::counter!("hitcount_edge_proxied_views_total", "result" => "unavailable")
                    .increment(1);
            }
        }
    }
    let mut response = Response::builder().status(status.as_u16());
    let listed = connection_listed(upstream.headers());
    if let Some(headers) = response.headers_mut() {
        for (name, value) in upstream.headers() {
            if !is_hop_by_hop(name, &listed) {
                headers.append(name.clone(), value.clone());
            }
        }
    }
    let body = Body::from_stream(upstream.bytes_stream());
    response
        .body(body)
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_map_paths_to_resource_ids() {
        let routes = CountRoutes::new(&[
            CountRoute::parse("/=home").unwrap(),
            CountRoute::parse("/blog/{slug}=blog.{slug}").unwrap(),
            CountRoute::parse("/docs/{*rest}=docs.{rest}").unwrap(),
            CountRoute::parse("/pricing=pricing").unwrap(),
        ])
        .unwrap();
        assert_eq!(routes.resource_for("/").as_deref(), Some("home"));
        assert_eq!(routes.resource_for("/pricing").as_deref(), Some("pricing"));
        assert_eq!(
            routes.resource_for("/blog/first-post").as_deref(),
            Some("blog.first-post")
        );
        assert_eq!(
            routes.resource_for("/docs/guide/install").as_deref(),
            Some("docs.guide.install")
        );
        assert_eq!(routes.resource_for("/static/site.css"), None);
        assert_eq!(routes.resource_for("/blog/a/b"), None);
    }

    #[test]
    fn bad_routes_are_refused_with_the_reason() {
        assert!(matches!(
            CountRoute::parse("blog=blog"),
            Err(RouteError::Form(_))
        ));
        assert!(matches!(
            CountRoute::parse("/blog"),
            Err(RouteError::Form(_))
        ));
        assert!(matches!(
            CountRoute::parse("/blog/{slug}=blog.{id}"),
            Err(RouteError::UnknownCapture { .. })
        ));
        assert!(matches!(
            CountRoute::parse("/about=about us"),
            Err(RouteError::Resource { .. })
        ));
        let conflicting = [
            CountRoute::parse("/{page}=page.{page}").unwrap(),
            CountRoute::parse("/{name}=name.{name}").unwrap(),
        ];
        assert!(matches!(
            CountRoutes::new(&conflicting),
            Err(RouteError::Pattern { .. })
        ));
    }
}
