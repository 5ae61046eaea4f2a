//! Speaking the aggregator's REST API in tests: JSON with tokens, the error shape, `/metrics` and
//! the OpenAPI document.

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::ADMIN_TOKEN;
use crate::server::Server;

/// The Prometheus text of a server's `/metrics`.
pub async fn metrics_text(server: &Server) -> String {
    server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The sum over label sets of the series whose line starts with `prefix`.
pub async fn metric(server: &Server, prefix: &str) -> u64 {
    metrics_text(server)
        .await
        .lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Waits until the metric reaches `at_least`, for at most `budget`.
pub async fn wait_for_metric(
    server: &Server,
    name: &str,
    at_least: u64,
    budget: std::time::Duration,
) {
    let deadline = std::time::Instant::now() + budget;
    while metric(server, name).await < at_least {
        assert!(
            std::time::Instant::now() < deadline,
            "{name} did not reach {at_least} within {budget:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

pub async fn body(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("body");
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"))
    };
    (status, value)
}

/// The served `/openapi.json`.
pub async fn openapi_document(server: &Server) -> Value {
    let (status, document) = body(
        server
            .client
            .get(server.url("/openapi.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    document
}

/// The statuses the document lists for one operation.
pub fn documented_statuses(document: &Value, path: &str, method: &str) -> Vec<u16> {
    document["paths"][path][method]["responses"]
        .as_object()
        .unwrap_or_else(|| panic!("{method} {path} is not in the document"))
        .keys()
        .map(|status| status.parse().unwrap())
        .collect()
}

/// Asserts the API's error shape and returns its code.
pub fn error_code(value: &Value) -> String {
    let code = value["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {value}"));
    assert!(
        value["error"]["message"]
            .as_str()
            .is_some_and(|message| !message.is_empty()),
        "{value}"
    );
    code.to_owned()
}

/// A thin JSON client bound to one server and one token.
#[derive(Debug)]
pub struct Api<'a> {
    pub server: &'a Server,
    pub token: String,
}

impl<'a> Api<'a> {
    pub fn admin(server: &'a Server) -> Self {
        Self {
            server,
            token: ADMIN_TOKEN.to_owned(),
        }
    }

    pub fn with_token(server: &'a Server, token: &str) -> Self {
        Self {
            server,
            token: token.to_owned(),
        }
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .server
            .client
            .get(self.server.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request");
        body(response).await
    }

    pub async fn post(&self, path: &str, payload: Value) -> (StatusCode, Value) {
        let response = self
            .server
            .client
            .post(self.server.url(path))
            .bearer_auth(&self.token)
            .json(&payload)
            .send()
            .await
            .expect("request");
        body(response).await
    }

    /// A POST of `payload` as it is, with `content_type`: for bodies that are not valid JSON,
    /// not JSON at all, or too long.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        payload: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let response = self
            .server
            .client
            .post(self.server.url(path))
            .bearer_auth(&self.token)
            .header("content-type", content_type)
            .body(payload)
            .send()
            .await
            .expect("request");
        body(response).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .server
            .client
            .delete(self.server.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request");
        body(response).await
    }

    pub async fn create_resource(&self, id: &str) {
        let (status, value) = self
            .post("/resources", json!({"name": id, "resource_id": id}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{value}");
    }

    pub async fn token_with(&self, scopes: &[&str]) -> String {
        let (status, value) = self
            .post("/tokens", json!({"name": "test", "scopes": scopes}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{value}");
        value["token"].as_str().expect("token").to_owned()
    }

    /// Total count for a resource over the last `window`.
    pub async fn count(&self, resource_id: &str, window: &str) -> (u64, u64) {
        let (status, value) = self
            .get(&format!("/hits/{resource_id}?window={window}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{value}");
        (
            value["count"].as_u64().expect("count"),
            value["uniques"].as_u64().expect("uniques"),
        )
    }
}

/// Asserts that the OpenAPI `document` lists every (path, method, statuses) of `promised`.
pub fn assert_documented(document: &Value, promised: &[(&str, &str, &[u16])]) {
    for (path, method, statuses) in promised {
        let responses = &document["paths"][path][method]["responses"];
        assert!(
            responses.is_object(),
            "{method} {path} is missing from the OpenAPI document"
        );
        for status in *statuses {
            assert!(
                responses.get(status.to_string()).is_some(),
                "{method} {path} lacks {status}"
            );
        }
    }
}
