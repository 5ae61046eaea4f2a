//! `POST /v1/deltas` is binary, so the schema-driven fuzzer of `.ci/api-fuzz` skips it: this
//! seeded generator sends it random bytes, truncated and mutated batches, wrong and missing
//! headers, wrong content types and an oversized body, and checks each answer against the
//! document. A valid batch among them is applied exactly once.

use hitcount_aggregator::now_ms;
use hitcount_wire::auth::{DELTA_CONTENT_TYPE, EDGE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use reqwest::StatusCode;

use crate::support::{
    Api, EDGE_ID, EDGE_SECRET, Server, batch, batch_from, body, documented_statuses, error_code,
    openapi_document, post_delta,
};

/// Generated requests per run: a few seconds against a dev build.
const CASES: usize = 400;
/// Fixed, so a failure reproduces; change it to explore.
const SEED: u64 = 0x5eed_de17a5;

/// SplitMix64: small, seeded, and good enough to pick cases and bytes.
struct Generator(u64);

impl Generator {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        mixed ^ (mixed >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }

    fn bytes(&mut self, length: usize) -> Vec<u8> {
        (0..length).map(|_| self.next() as u8).collect()
    }
}

/// One generated request: body, content type, and the three signature headers (any may be
/// missing or wrong).
struct Case {
    what: &'static str,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    edge: Option<String>,
    timestamp: Option<String>,
    signature: Option<String>,
}

impl Case {
    fn signed(what: &'static str, body: Vec<u8>) -> Self {
        let now = now_ms();
        let signature = hitcount_wire::auth::sign(EDGE_SECRET.as_bytes(), EDGE_ID, now, &body);
        Self {
            what,
            body,
            content_type: Some(DELTA_CONTENT_TYPE),
            edge: Some(EDGE_ID.to_owned()),
            timestamp: Some(now.to_string()),
            signature: Some(signature),
        }
    }
}

fn generate(generator: &mut Generator, template: &[u8], sequence: u64) -> Case {
    match generator.below(9) {
        0 => {
            let length = generator.below(2_048);
            Case::signed("random bytes", generator.bytes(length))
        }
        1 => {
            let length = generator.below(template.len());
            Case::signed("truncated batch", template[..length].to_vec())
        }
        2 | 3 => {
            // A fresh sequence number, so a mutation that still decodes is applied, not a conflict.
            let mut bytes = batch(sequence, &[("home", 1, &["mutant"])])
                .encode()
                .unwrap();
            for _ in 0..=generator.below(3) {
                let index = generator.below(bytes.len());
                bytes[index] ^= 1 << generator.below(8);
            }
            Case::signed("mutated batch", bytes)
        }
        4 => {
            let mut case = Case::signed("missing header", template.to_vec());
            match generator.below(3) {
                0 => case.edge = None,
                1 => case.timestamp = None,
                _ => case.signature = None,
            }
            case
        }
        5 => {
            let mut case = Case::signed("wrong header", template.to_vec());
            match generator.below(4) {
                0 => case.signature = Some(hex_of(&generator.bytes(32))),
                1 => case.timestamp = Some("yesterday".to_owned()),
                2 => case.timestamp = Some((now_ms() - 10 * 60_000).to_string()),
                _ => case.edge = Some("edge-nobody".to_owned()),
            }
            case
        }
        6 => {
            let mut case = Case::signed("wrong content type", template.to_vec());
            case.content_type =
                [None, Some("application/json"), Some("text/plain")][generator.below(3)];
            case
        }
        7 => Case::signed(
            "another edge's batch",
            batch_from("edge-other", 1, sequence, &[("home", 1, &[])])
                .encode()
                .unwrap(),
        ),
        _ => Case::signed("replayed valid batch", template.to_vec()),
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

async fn send(server: &Server, case: Case) -> (StatusCode, serde_json::Value) {
    let mut request = server.client.post(server.url("/v1/deltas")).body(case.body);
    for (name, value) in [
        ("content-type", case.content_type.map(str::to_owned)),
        (EDGE_HEADER, case.edge),
        (TIMESTAMP_HEADER, case.timestamp),
        (SIGNATURE_HEADER, case.signature),
    ] {
        if let Some(value) = value {
            request = request.header(name, value);
        }
    }
    body(request.send().await.unwrap()).await
}

#[tokio::test]
async fn generated_deltas_get_documented_answers_and_apply_once() {
    let server = Server::start().await;
    let api = Api::admin(&server);
    api.create_resource("home").await;
    api.create_resource("exact").await;
    let documented = documented_statuses(&openapi_document(&server).await, "/v1/deltas", "post");

    // The valid batch: the only one that names `exact`, replayed among the generated cases.
    let valid = batch_from(EDGE_ID, 7, 0, &[("exact", 42, &["a", "b"])]);
    let template = valid.encode().unwrap();
    let (status, value) = post_delta(&server, &valid).await;
    assert_eq!(
        (status, value["status"].as_str()),
        (StatusCode::OK, Some("applied"))
    );

    let mut generator = Generator(SEED);
    let started = std::time::Instant::now();
    for index in 0..CASES {
        let case = generate(&mut generator, &template, index as u64);
        let what = case.what;
        let (status, value) = send(&server, case).await;
        assert!(
            documented.contains(&status.as_u16()),
            "case {index} ({what}): {status} is not documented ({documented:?}): {value}"
        );
        assert!(!status.is_server_error(), "case {index} ({what}): {value}");
        if status.is_success() {
            let outcome = value["status"].as_str();
            assert!(
                matches!(outcome, Some("applied" | "duplicate")),
                "case {index} ({what}): {value}"
            );
            if what == "replayed valid batch" {
                assert_eq!(outcome, Some("duplicate"), "case {index}");
            }
        } else {
            // error_code asserts the JSON error shape.
            error_code(&value);
        }
    }

    // Over the limit: 413, naming the route's own limit.
    let oversized = Case::signed("oversized", vec![0u8; hitcount_wire::BATCH_BYTES_MAX + 1]);
    let (status, value) = send(&server, oversized).await;
    assert_eq!(
        (status, error_code(&value).as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    assert!(
        value["error"]["message"]
            .as_str()
            .unwrap()
            .contains("8 MiB"),
        "{value}"
    );

    assert_eq!(
        api.count("exact", "5m").await,
        (42, 2),
        "the valid batch counted exactly once"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "bounded in time"
    );
    server.stop().await;
}
