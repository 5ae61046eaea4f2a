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
    config.proxy = Some(ProxyConfig {
        origin: format!("http://{}", origin.address),
        routes: CountRoutes::new(&routes).unwrap(),
    });
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
    config.proxy = Some(ProxyConfig {
        origin: format!("http://{closed}"),
        routes: CountRoutes::new(&[CountRoute::parse("/=home").unwrap()]).unwrap(),
    });
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
