//! Proxy mode: requests pass through to a real origin over real sockets, and page views on the
//! counted routes arrive at the aggregator exactly.

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::routing::{get, post};
use hitcount_edge::proxy::{CountRoute, CountRoutes, ProxyConfig};
use reqwest::{Client, StatusCode};
use serde_json::json;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{BROWSER, Server, aggregator, count, edge, edge_config};

/// A small site: pages, a redirect, a 404, an echo of what the origin received.
async fn origin() -> Server {
    let router = Router::new()
        .route("/", get(|| async { "home page" }))
        .route(
            "/blog/{slug}",
            get(|| async {
                (
                    [("x-origin", "yes"), ("content-type", "text/html")],
                    "a post",
                )
            }),
        )
        .route(
            "/old",
            get(|| async { (AxumStatus::MOVED_PERMANENTLY, [("location", "/")]) }),
        )
        .route(
            "/echo",
            post(|headers: HeaderMap, body: Bytes| async move {
                let forwarded = headers
                    .get("x-forwarded-for")
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let host = headers
                    .get("x-forwarded-host")
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                axum::Json(json!({
                    "body": String::from_utf8_lossy(&body),
                    "forwarded_for": forwarded,
                    "forwarded_host": host,
                }))
            }),
        )
        .route("/site.css", get(|| async { "body {}" }));
    hitcount_test_support::serve_router(router).await
}

async fn create(aggregator: &Server, resource_id: &str) {
    hitcount_test_support::create_resource(&aggregator.url(""), resource_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_page_views_are_counted_and_everything_passes_through() {
    let directory = TempDir::new().unwrap();
    let aggregator = aggregator(&directory, None).await;
    for resource_id in ["home", "blog.first", "blog.second"] {
        create(&aggregator, resource_id).await;
    }
    let origin = origin().await;
    let mut config = edge_config(&format!("http://{}", aggregator.address));
    let routes = ["/=home", "/blog/{slug}=blog.{slug}"]
        .iter()
        .map(|route| CountRoute::parse(route).unwrap())
        .collect::<Vec<_>>();
    config.proxy = Some(ProxyConfig::new(
        &format!("http://{}", origin.address),
        CountRoutes::new(&routes).unwrap(),
    ));
    let edge = edge(config).await;
    // Redirects reach the browser as they are.
    let client = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |path: &str, address: &str| {
        client
            .get(edge.url(path))
            .header("user-agent", BROWSER)
            .header("x-forwarded-for", address.to_owned())
            .send()
    };

    // Three views of the home page from two visitors, two of one post, one of another.
    for address in ["10.0.0.1", "10.0.0.2", "10.0.0.1"] {
        let response = get("/", address).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.text().await.unwrap(), "home page");
    }
    for (path, address) in [
        ("/blog/first", "10.0.0.3"),
        ("/blog/first", "10.0.0.4"),
        ("/blog/second", "10.0.0.3"),
    ] {
        let response = get(path, address).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-origin"], "yes");
        assert_eq!(response.text().await.unwrap(), "a post");
    }

    // Not counted: a subresource, an uncounted path, a 404, a redirect, a POST, a bot, a
    // prefetch, a fetch of a page from script.
    let response = get("/site.css", "10.0.0.1").await.unwrap();
    assert_eq!(response.text().await.unwrap(), "body {}");
    assert_eq!(
        get("/missing", "10.0.0.1").await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let redirect = get("/old", "10.0.0.1").await.unwrap();
    assert_eq!(redirect.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(redirect.headers()["location"], "/");
    let echoed: serde_json::Value = client
        .post(edge.url("/echo"))
        .header("x-forwarded-for", "10.0.0.9")
        .body("posted body")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echoed["body"], "posted body");
    // The edge appends the address it saw to what the client sent.
    assert_eq!(echoed["forwarded_for"], "10.0.0.9, 127.0.0.1");
    assert_eq!(echoed["forwarded_host"], edge.address.to_string());
    let bot = client
        .get(edge.url("/"))
        .header(
            "user-agent",
            "Googlebot/2.1 (+http://www.google.com/bot.html)",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(bot.status(), StatusCode::OK);
    let prefetch = client
        .get(edge.url("/blog/first"))
        .header("user-agent", BROWSER)
        .header("sec-purpose", "prefetch")
        .send()
        .await
        .unwrap();
    assert_eq!(prefetch.status(), StatusCode::OK);
    let scripted = client
        .get(edge.url("/blog/first"))
        .header("user-agent", BROWSER)
        .header("sec-fetch-dest", "empty")
        .send()
        .await
        .unwrap();
    assert_eq!(scripted.status(), StatusCode::OK);

    // The edge's own endpoints still answer in proxy mode.
    let health = client.get(edge.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    edge.stop().await;
    assert_eq!(count(&aggregator, "home").await, (3, 2));
    assert_eq!(count(&aggregator, "blog.first").await, (2, 2));
    assert_eq!(count(&aggregator, "blog.second").await, (1, 1));
    origin.stop().await;
    aggregator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_origin_is_a_502_and_counts_nothing() {
    let directory = TempDir::new().unwrap();
    let aggregator = aggregator(&directory, None).await;
    create(&aggregator, "home").await;
    // A port that was bound and released: nothing listens there.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let mut config = edge_config(&format!("http://{}", aggregator.address));
    config.proxy = Some(ProxyConfig::new(
        &format!("http://{closed}"),
        CountRoutes::new(&[CountRoute::parse("/=home").unwrap()]).unwrap(),
    ));
    let edge = edge(config).await;
    let response = Client::new()
        .get(edge.url("/"))
        .header("user-agent", BROWSER)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "origin_unreachable");
    // A declared body over the limit is refused before any of it is read or forwarded.
    let mut stream = tokio::net::TcpStream::connect(edge.address).await.unwrap();
    let request = format!(
        "POST /upload HTTP/1.1\r\nhost: edge\r\ncontent-length: {}\r\n\r\n",
        hitcount_edge::proxy::PROXY_REQUEST_BODY_BYTES_MAX + 1
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 512];
    let read = stream.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
    edge.stop().await;
    assert_eq!(count(&aggregator, "home").await, (0, 0));
    aggregator.stop().await;
}

/// How long the origin in the next test may take to answer; its slow page takes longer.
const ORIGIN_TIMEOUT_MS: u64 = 500;
/// The streamed page: chunks this far apart, three of them, so it outlasts the origin timeout.
const STREAM_CHUNK_GAP_MS: u64 = 400;

/// One counted route whose pages answer in every way the counting rule distinguishes.
async fn varied_origin() -> Server {
    let page = |axum::extract::Path(slug): axum::extract::Path<String>, headers: HeaderMap| async move {
        use axum::response::IntoResponse;
        match slug.as_str() {
            "gone" => (AxumStatus::NOT_FOUND, "no such post").into_response(),
            "moved" => (
                AxumStatus::MOVED_PERMANENTLY,
                [("location", "/blog/cached")],
            )
                .into_response(),
            "broken" => (AxumStatus::INTERNAL_SERVER_ERROR, "origin error").into_response(),
            "cached"
                if headers
                    .get("if-none-match")
                    .is_some_and(|tag| tag == "\"v1\"") =>
            {
                (AxumStatus::NOT_MODIFIED, [("etag", "\"v1\"")]).into_response()
            }
            "cached" => ([("etag", "\"v1\"")], "cached post").into_response(),
            "slow" => {
                tokio::time::sleep(std::time::Duration::from_millis(4 * ORIGIN_TIMEOUT_MS)).await;
                "too late".into_response()
            }
            "stream" => {
                let chunks = futures_util::stream::unfold(0u32, |sent| async move {
                    if sent == 3 {
                        return None;
                    }
                    if sent > 0 {
                        tokio::time::sleep(std::time::Duration::from_millis(STREAM_CHUNK_GAP_MS))
                            .await;
                    }
                    Some((
                        Ok::<_, std::convert::Infallible>(format!("chunk {sent};")),
                        sent + 1,
                    ))
                });
                axum::body::Body::from_stream(chunks).into_response()
            }
            "headers" => {
                let seen: serde_json::Map<String, serde_json::Value> = headers
                    .iter()
                    .map(|(name, value)| {
                        (name.to_string(), json!(value.to_str().unwrap_or_default()))
                    })
                    .collect();
                // A header the origin declares hop-by-hop: the browser must not see it.
                (
                    [
                        ("connection", "x-origin-hop"),
                        ("x-origin-hop", "1"),
                        ("x-origin", "yes"),
                    ],
                    axum::Json(serde_json::Value::Object(seen)),
                )
                    .into_response()
            }
            _ => "a post".into_response(),
        }
    };
    let router = Router::new().route("/blog/{slug}", get(page).post(|| async { "posted" }));
    hitcount_test_support::serve_router(router).await
}

/// The counting rule on a counted route: only a GET answered 2xx or 304 counts; 3xx, 4xx, 5xx,
/// a timeout (504) and a POST pass through uncounted. Hop-by-hop headers go neither way, the
/// origin's deadline covers its headers but not a body that streams for longer, and
/// X-Forwarded-Proto is the edge's own unless a trusted proxy in front set it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_successful_gets_of_counted_routes_count_and_headers_are_proxied_by_the_rules() {
    let directory = TempDir::new().unwrap();
    let aggregator = aggregator(&directory, None).await;
    let slugs = [
        "gone", "moved", "broken", "cached", "slow", "stream", "headers", "posted",
    ];
    for slug in slugs {
        create(&aggregator, &format!("blog.{slug}")).await;
    }
    let origin = varied_origin().await;
    let routes =
        CountRoutes::new(&[CountRoute::parse("/blog/{slug}=blog.{slug}").unwrap()]).unwrap();
    let mut proxy = ProxyConfig::new(&format!("http://{}", origin.address), routes);
    proxy.origin_timeout_ms = ORIGIN_TIMEOUT_MS;
    let mut config = edge_config(&format!("http://{}", aggregator.address));
    config.trust_forwarded_for = false;
    config.proxy = Some(proxy.clone());
    let edge = edge(config).await;
    let client = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |path: &str| {
        client
            .get(edge.url(path))
            .header("user-agent", BROWSER)
            .send()
    };

    assert_eq!(
        get("/blog/gone").await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get("/blog/moved").await.unwrap().status(),
        StatusCode::MOVED_PERMANENTLY
    );
    assert_eq!(
        get("/blog/broken").await.unwrap().status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let first = get("/blog/cached").await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["etag"], "\"v1\"");
    let revalidated = client
        .get(edge.url("/blog/cached"))
        .header("user-agent", BROWSER)
        .header("if-none-match", "\"v1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED);
    let posted = client
        .post(edge.url("/blog/posted"))
        .header("user-agent", BROWSER)
        .body("form")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.text().await.unwrap(), "posted");

    // Past the origin timeout: 504 with the JSON error, not counted.
    let started = std::time::Instant::now();
    let slow = get("/blog/slow").await.unwrap();
    assert_eq!(slow.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < std::time::Duration::from_millis(3 * ORIGIN_TIMEOUT_MS));
    let body: serde_json::Value = slow.json().await.unwrap();
    assert_eq!(body["error"]["code"], "origin_timeout");

    // A body that streams for longer than the timeout arrives whole, its first chunk long before
    // the origin has finished.
    let started = std::time::Instant::now();
    let mut streamed = get("/blog/stream").await.unwrap();
    assert_eq!(streamed.status(), StatusCode::OK);
    let first_chunk = streamed.chunk().await.unwrap().unwrap();
    let first_chunk_after = started.elapsed();
    let mut text = String::from_utf8(first_chunk.to_vec()).unwrap();
    while let Some(chunk) = streamed.chunk().await.unwrap() {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let whole_after = started.elapsed();
    assert_eq!(text, "chunk 0;chunk 1;chunk 2;");
    assert!(
        first_chunk_after < std::time::Duration::from_millis(STREAM_CHUNK_GAP_MS),
        "{first_chunk_after:?}"
    );
    assert!(
        whole_after > std::time::Duration::from_millis(ORIGIN_TIMEOUT_MS),
        "{whole_after:?}"
    );

    // Hop-by-hop headers: those RFC 9110 names and those the Connection header lists are
    // dropped both ways; the others pass; X-Forwarded-Proto from an untrusted client is replaced.
    let direct = client
        .get(format!("http://{}/blog/headers", origin.address))
        .send()
        .await
        .unwrap();
    assert_eq!(
        direct.headers()["x-origin-hop"],
        "1",
        "the origin does send it"
    );
    let proxied = client
        .get(edge.url("/blog/headers"))
        .header("user-agent", BROWSER)
        .header("connection", "keep-alive, x-client-hop")
        .header("x-client-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("x-kept", "yes")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status(), StatusCode::OK);
    assert!(
        proxied.headers().get("x-origin-hop").is_none(),
        "{:?}",
        proxied.headers()
    );
    assert_eq!(proxied.headers()["x-origin"], "yes");
    let seen: serde_json::Value = proxied.json().await.unwrap();
    for dropped in ["x-client-hop", "keep-alive", "te", "proxy-authorization"] {
        assert!(
            seen.get(dropped).is_none(),
            "{dropped} reached the origin: {seen}"
        );
    }
    assert_eq!(seen["x-kept"], "yes");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], edge.address.to_string());
    edge.stop().await;

    // Behind a trusted proxy that ended TLS, its X-Forwarded-Proto is the browser's.
    let mut config = edge_config(&format!("http://{}", aggregator.address));
    config.proxy = Some(proxy);
    let trusting = crate::support::edge(config).await;
    let seen: serde_json::Value = client
        .get(trusting.url("/blog/headers"))
        .header("user-agent", BROWSER)
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["x-forwarded-proto"], "https");
    trusting.stop().await;

    let mut counts = Vec::new();
    for slug in slugs {
        counts.push((slug, count(&aggregator, &format!("blog.{slug}")).await.0));
    }
    assert_eq!(
        counts,
        [
            ("gone", 0),
            ("moved", 0),
            ("broken", 0),
            ("cached", 2),
            ("slow", 0),
            ("stream", 1),
            ("headers", 2),
            ("posted", 0),
        ]
    );
    origin.stop().await;
    aggregator.stop().await;
}
