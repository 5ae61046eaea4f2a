//! Traces: the real `hitcount-edge` and `hitcount-aggregator` binaries, started with
//! `--otlp-endpoint`, export their spans over OTLP/HTTP to a receiver this test runs (it decodes
//! the OpenTelemetry protobuf messages, as a collector does), and an edge's delta delivery and the
//! aggregator's handling of it are one trace: the `traceparent` the edge sends makes the
//! aggregator's request span a child of the edge's delivery span.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use hitcount_test_support::{ADMIN_TOKEN, BROWSER, count, create_resource, spare_port};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use tempfile::TempDir;

use crate::support::binary_beside_tests;

const EDGE_ID: &str = "edge-traced";
const EDGE_KEY: &str = "edge-traced-secret-0123456789";
/// How long the spans may take to reach the receiver: the batch exporter's delay (set short
/// below) and the window, with slack for a loaded machine.
const SPANS_WAIT_MS: u64 = 30_000;

/// A span as the receiver got it, with the service that sent it.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: Vec<KeyValue>,
}

impl ReceivedSpan {
    fn attribute(&self, key: &str) -> Option<String> {
        self.attributes
            .iter()
            .find(|attribute| attribute.key == key)
            .and_then(|attribute| attribute.value.as_ref()?.value.as_ref())
            .map(|value| match value {
                AnyValue::StringValue(text) => text.clone(),
                AnyValue::IntValue(number) => number.to_string(),
                other => format!("{other:?}"),
            })
    }
}

type Received = Arc<Mutex<Vec<ReceivedSpan>>>;

/// `POST /v1/traces` as an OTLP/HTTP collector takes it: a protobuf `ExportTraceServiceRequest`.
async fn export(
    State(received): State<Received>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], Vec<u8>) {
    assert_eq!(headers[header::CONTENT_TYPE], "application/x-protobuf");
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf message");
    let mut spans = received.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|resource| resource.attributes.iter())
            .find(|attribute| attribute.key == "service.name")
            .and_then(
                |attribute| match attribute.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(name) => Some(name.clone()),
                    _ => None,
                },
            )
            .unwrap_or_default();
        for span in resource_spans
            .scope_spans
            .into_iter()
            .flat_map(|scope| scope.spans)
        {
            spans.push(ReceivedSpan {
                service: service.clone(),
                name: span.name,
                trace_id: span.trace_id,
                span_id: span.span_id,
                parent_span_id: span.parent_span_id,
                attributes: span.attributes,
            });
        }
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

async fn start_receiver() -> (SocketAddr, Received) {
    let received = Received::default();
    let router = axum::Router::new()
        .route("/v1/traces", post(export))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (address, received)
}

/// A binary built beside the tests, killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(binary: &str, arguments: &[&str]) -> Process {
    Process(
        Command::new(binary_beside_tests(binary))
            .args(arguments)
            .env("RUST_LOG", "warn")
            // Exported every 100 ms instead of every 5 s: the SDK's standard variable.
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

async fn wait_until_healthy(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reqwest::get(format!("{base}/healthz"))
        .await
        .is_ok_and(|response| response.status().is_success())
    {
        assert!(Instant::now() < deadline, "{base} did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn start_aggregator(data: &Path, port: u16, collector: &str) -> Process {
    start(
        "hitcount-aggregator",
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            data.to_str().unwrap(),
            "--admin-token",
            ADMIN_TOKEN,
            "--edge-key",
            &format!("{EDGE_ID}={EDGE_KEY}"),
            "--otlp-endpoint",
            collector,
        ],
    )
}

fn start_edge(port: u16, aggregator: &str, collector: &str) -> Process {
    start(
        "hitcount-edge",
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--aggregator",
            aggregator,
            "--edge-id",
            EDGE_ID,
            "--edge-key",
            EDGE_KEY,
            "--window-ms",
            "200",
            "--otlp-endpoint",
            collector,
        ],
    )
}

/// The edge's delivery span and the aggregator's span of that request, once both arrived.
async fn delivery_and_its_request(received: &Received) -> (ReceivedSpan, ReceivedSpan) {
    let deadline = Instant::now() + Duration::from_millis(SPANS_WAIT_MS);
    loop {
        let spans = received.lock().unwrap().clone();
        let found = spans
            .iter()
            .filter(|span| span.service == "hitcount-edge" && span.name == "delta delivery")
            .find_map(|delivery| {
                let request = spans.iter().find(|span| {
                    span.service == "hitcount-aggregator" && span.parent_span_id == delivery.span_id
                })?;
                Some((delivery.clone(), request.clone()))
            });
        if let Some(found) = found {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no aggregator span with an edge delivery span as its parent; received: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_delta_delivery_and_its_merge_are_one_trace_across_the_edge_and_the_aggregator() {
    let (collector, received) = start_receiver().await;
    let collector = format!("http://{collector}");
    let data = TempDir::new().unwrap();
    let aggregator_port = spare_port();
    let aggregator_base = format!("http://127.0.0.1:{aggregator_port}");
    let _aggregator = start_aggregator(data.path(), aggregator_port, &collector);
    wait_until_healthy(&aggregator_base).await;
    create_resource(&aggregator_base, "home").await;
    let edge_port = spare_port();
    let _edge = start_edge(edge_port, &aggregator_base, &collector);
    let edge_base = format!("http://127.0.0.1:{edge_port}");
    wait_until_healthy(&edge_base).await;

    let response = reqwest::Client::new()
        .post(format!("{edge_base}/hit"))
        .header("content-type", "text/plain")
        .header("user-agent", BROWSER)
        .body(r#"{"resource_id":"home"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    let (delivery, request) = delivery_and_its_request(&received).await;
    assert_eq!(request.trace_id, delivery.trace_id, "one trace");
    assert_eq!(request.name, "POST /v1/deltas");
    assert_eq!(
        request.attribute("http.route").as_deref(),
        Some("/v1/deltas")
    );
    assert_eq!(
        request.attribute("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        delivery.attribute("hitcount.edge_id").as_deref(),
        Some(EDGE_ID)
    );
    assert_eq!(
        delivery.attribute("http.response.status_code").as_deref(),
        Some("200")
    );
    // The traced delivery is the one that counted the hit.
    assert_eq!(count(&aggregator_base, "home").await.0, 1);
}

#[test]
fn an_otlp_endpoint_that_is_not_http_is_refused_at_start_saying_so() {
    for binary in ["hitcount-aggregator", "hitcount-edge"] {
        let output = Command::new(binary_beside_tests(binary))
            .args(["--otlp-endpoint", "otel-collector:4318"])
            .env("HITCOUNT_EDGE_KEY", EDGE_KEY)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{binary} started");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(
                r#"--otlp-endpoint "otel-collector:4318" is not an http:// or https:// address"#
            ),
            "{binary}: {stderr}"
        );
    }
}
