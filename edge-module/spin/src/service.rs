//! The `wasi:http` service: beacon endpoints, recording in Redis, flushing closed windows.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hitcount_edge_core::beacon::{
    PIXEL_GIF, PURPOSE_HEADERS, RESULT_HEADER, is_prefetch, parse_beacon,
};
use hitcount_edge_core::filter::{self, HitRequest, Rejection};
use hitcount_edge_core::{SealedBatch, VisitorHasher};
use hitcount_wire::MINUTE_MS;
use hitcount_wire::auth::{DELTA_CONTENT_TYPE, EDGE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use http_body_util::BodyExt;
use spin_sdk::http::{FullBody, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use spin_sdk::http_service;
use spin_sdk::redis::{Connection, RedisParameter, RedisResult};

use crate::window::{
    FLUSH_LOCK_MS, Keys, RECORD_ATTEMPTS_MAX, RECORD_SCRIPT, WINDOW_MS_DEFAULT, WINDOW_MS_MAX,
    WINDOW_MS_MIN, WINDOWS_PER_FLUSH_MAX, counter_field, visitor_member, window_batches,
    window_index,
};

type Reply = Response<FullBody<Bytes>>;

/// Releases the flush lock only if this request still holds it.
const UNLOCK_SCRIPT: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// The component's configuration, from Spin variables (see infra/spin.toml).
struct Settings {
    edge_id: String,
    edge_key: String,
    visitor_secret: String,
    aggregator: String,
    redis_address: String,
    window_ms: u64,
}

async fn variable(name: &str) -> Result<String, String> {
    spin_sdk::variables::get(name)
        .await
        .map_err(|error| format!("variable {name}: {error:?}"))
}

async fn settings() -> Result<Settings, String> {
    let window_ms = match variable("window_ms").await {
        Ok(text) => text
            .parse::<u64>()
            .map_err(|_| format!("window_ms {text:?} is not a number"))?,
        Err(_) => WINDOW_MS_DEFAULT,
    };
    if !(WINDOW_MS_MIN..=WINDOW_MS_MAX).contains(&window_ms) {
        return Err(format!(
            "window_ms must be between {WINDOW_MS_MIN} and {WINDOW_MS_MAX}"
        ));
    }
    let settings = Settings {
        edge_id: variable("edge_id").await?,
        edge_key: variable("edge_key").await?,
        visitor_secret: variable("visitor_secret").await?,
        aggregator: variable("aggregator_url")
            .await?
            .trim_end_matches('/')
            .to_owned(),
        redis_address: variable("redis_address").await?,
        window_ms,
    };
    hitcount_edge_core::validate_config(&settings.edge_id, settings.visitor_secret.as_bytes())
        .map_err(|error| error.to_string())?;
    Ok(settings)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(FullBody::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert("content-type", value);
    }
    response
        .headers_mut()
        .insert("access-control-allow-origin", HeaderValue::from_static("*"));
    response
}

fn error(status: StatusCode, code: &str, message: &str) -> Reply {
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    reply(status, "application/json", body)
}

fn with_result(mut response: Reply, result: &'static str) -> Reply {
    response
        .headers_mut()
        .insert(RESULT_HEADER, HeaderValue::from_static(result));
    response
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
}

fn parameter(text: impl AsRef<[u8]>) -> RedisParameter {
    RedisParameter::Binary(text.as_ref().to_vec())
}

fn text_of(result: &RedisResult) -> Option<String> {
    match result {
        RedisResult::Binary(bytes) => String::from_utf8(bytes.clone()).ok(),
        RedisResult::Status(text) => Some(text.clone()),
        RedisResult::Int64(number) => Some(number.to_string()),
        RedisResult::Nil => None,
    }
}

/// What `record` did with a hit.
enum Outcome {
    Counted { oldest_window: u64 },
    Rejected(Rejection),
}

/// Validates, hashes and counts one hit in Redis.
async fn record(
    settings: &Settings,
    redis: &Connection,
    headers: &HeaderMap,
    resource_id: &str,
    timestamp_ms: Option<u64>,
    now: u64,
) -> Result<Outcome, String> {
    let address = match header(headers, "spin-client-addr") {
        "" => header(headers, "x-forwarded-for")
            .split(',')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned(),
        // Spin gives ip:port; the port changes per connection and must not split visitors.
        address => address
            .rsplit_once(':')
            .map_or(address, |(ip, _)| ip)
            .to_owned(),
    };
    let site = match header(headers, "origin") {
        "" => header(headers, "host"),
        origin => origin,
    };
    let hit = HitRequest {
        resource_id,
        site,
        client_address: &address,
        user_agent: header(headers, "user-agent"),
        prefetch: is_prefetch(PURPOSE_HEADERS.iter().map(|name| header(headers, name))),
        timestamp_ms,
    };
    let at_ms = match filter::check(&hit, now) {
        Ok(at_ms) => at_ms,
        Err(rejection) => return Ok(Outcome::Rejected(rejection)),
    };
    let visitor = VisitorHasher::new(settings.visitor_secret.as_bytes()).hash(
        now,
        hit.site,
        hit.client_address,
        hit.user_agent,
    );
    let minute = at_ms / MINUTE_MS;
    let keys = Keys::new(&settings.edge_id);
    let mut window = window_index(now, settings.window_ms);
    for _ in 0..RECORD_ATTEMPTS_MAX {
        let results = redis
            .execute(
                "EVAL",
                [
                    parameter(RECORD_SCRIPT),
                    RedisParameter::Int64(4),
                    parameter(keys.hits(window)),
                    parameter(keys.visitors(window)),
                    parameter(keys.windows()),
                    parameter(keys.closed()),
                    parameter(window.to_string()),
                    parameter(counter_field(resource_id, minute)),
                    parameter(visitor_member(resource_id, minute, visitor)),
                ],
            )
            .await
            .map_err(|failure| format!("redis: {failure:?}"))?;
        match results.as_slice() {
            [RedisResult::Int64(1), oldest] => {
                let oldest_window = text_of(oldest)
                    .and_then(|text| text.parse().ok())
                    .unwrap_or(window);
                return Ok(Outcome::Counted { oldest_window });
            }
            // The window closed under this hit: it belongs to the next one.
            [RedisResult::Int64(0)] => window += 1,
            other => return Err(format!("unexpected script answer {other:?}")),
        }
    }
    Err("windows closed faster than hits could be recorded".to_owned())
}

enum Delivery {
    Acknowledged,
    Refused(String),
    Retry(String),
}

async fn deliver(settings: &Settings, batch: &SealedBatch) -> Delivery {
    let timestamp = now_ms();
    let signature = hitcount_wire::auth::sign(
        settings.edge_key.as_bytes(),
        &settings.edge_id,
        timestamp,
        &batch.bytes,
    );
    let request = spin_sdk::http::Request::builder()
        .method(Method::POST)
        .uri(format!("{}/v1/deltas", settings.aggregator))
        .header("content-type", DELTA_CONTENT_TYPE)
        .header(EDGE_HEADER, &settings.edge_id)
        .header(TIMESTAMP_HEADER, timestamp.to_string())
        .header(SIGNATURE_HEADER, signature)
        .body(FullBody::new(Bytes::from(batch.bytes.clone())));
    let request = match request {
        Ok(request) => request,
        Err(failure) => return Delivery::Refused(failure.to_string()),
    };
    let response = match spin_sdk::http::send(request).await {
        Ok(response) => response,
        Err(failure) => return Delivery::Retry(format!("{failure:?}")),
    };
    let status = response.status().as_u16();
    let body = match response.into_body().collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        Err(_) => String::new(),
    };
    match status {
        200 => Delivery::Acknowledged,
        400 | 409 | 413 | 415 | 422 => Delivery::Refused(format!("{status}: {body}")),
        _ => Delivery::Retry(format!("{status}: {body}")),
    }
}

/// Flushes windows that closed before the current one, if no other request is doing it.
/// Returns how many windows were delivered.
async fn flush_closed(settings: &Settings, redis: &Connection, now: u64) -> Result<u64, String> {
    let keys = Keys::new(&settings.edge_id);
    let current = window_index(now, settings.window_ms);
    // Random, so only this request's unlock can release this lock.
    let token =
        std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), now)
            .to_string();
    let locked = redis
        .execute(
            "SET",
            [
                parameter(keys.flush_lock()),
                parameter(&token),
                parameter("NX"),
                parameter("PX"),
                RedisParameter::Int64(FLUSH_LOCK_MS as i64),
            ],
        )
        .await
        .map_err(|failure| format!("redis: {failure:?}"))?;
    if !matches!(locked.as_slice(), [RedisResult::Status(_)]) {
        return Ok(0);
    }
    let flushed = flush_locked(settings, redis, &keys, current).await;
    let _ = redis
        .execute(
            "EVAL",
            [
                parameter(UNLOCK_SCRIPT),
                RedisParameter::Int64(1),
                parameter(keys.flush_lock()),
                parameter(&token),
            ],
        )
        .await;
    flushed
}

async fn flush_locked(
    settings: &Settings,
    redis: &Connection,
    keys: &Keys,
    current: u64,
) -> Result<u64, String> {
    let redis_error = |failure| format!("redis: {failure:?}");
    let windows: Vec<u64> = redis
        .execute(
            "ZRANGEBYSCORE",
            [
                parameter(keys.windows()),
                parameter("-inf"),
                parameter(format!("({current}")),
                parameter("LIMIT"),
                RedisParameter::Int64(0),
                RedisParameter::Int64(WINDOWS_PER_FLUSH_MAX as i64),
            ],
        )
        .await
        .map_err(redis_error)?
        .iter()
        .filter_map(|result| text_of(result)?.parse().ok())
        .collect();
    let mut delivered = 0;
    for window in windows {
        // Closed first: from now on the script counts hits of this window into the next one,
        // so what is read below is final and every retry sends the same bytes.
        redis
            .sadd(keys.closed(), &[window.to_string()])
            .await
            .map_err(redis_error)?;
        let fields = redis
            .execute("HGETALL", [parameter(keys.hits(window))])
            .await
            .map_err(redis_error)?;
        let counters: Vec<(String, i64)> = fields
            .chunks(2)
            .filter_map(|pair| match pair {
                [field, hits] => Some((text_of(field)?, text_of(hits)?.parse().ok()?)),
                _ => None,
            })
            .collect();
        let visitors = redis
            .smembers(keys.visitors(window))
            .await
            .map_err(redis_error)?;
        match window_batches(
            &settings.edge_id,
            settings.window_ms,
            window,
            &counters,
            &visitors,
        ) {
            Ok(batches) => {
                for batch in &batches {
                    match deliver(settings, batch).await {
                        Delivery::Acknowledged => {}
                        Delivery::Refused(reason) => {
                            eprintln!(
                                "hitcount: the aggregator refused window {window} batch {}: {reason}; dropped",
                                batch.sequence
                            );
                        }
                        // Left as it is: the next flush sends the same bytes again.
                        Delivery::Retry(reason) => return Err(reason),
                    }
                }
            }
            Err(malformed) => {
                eprintln!("hitcount: window {window} in Redis is malformed ({malformed}); dropped");
            }
        }
        redis
            .del(&[keys.hits(window), keys.visitors(window)])
            .await
            .map_err(redis_error)?;
        redis
            .execute(
                "ZREM",
                [parameter(keys.windows()), parameter(window.to_string())],
            )
            .await
            .map_err(redis_error)?;
        redis
            .srem(keys.closed(), &[window.to_string()])
            .await
            .map_err(redis_error)?;
        delivered += 1;
    }
    Ok(delivered)
}

async fn hit(
    headers: &HeaderMap,
    resource_id: String,
    timestamp: Option<u64>,
    pixel: bool,
) -> Reply {
    let answer = |status: StatusCode, result: &'static str, code: &str, message: &str| {
        if pixel {
            with_result(
                reply(StatusCode::OK, "image/gif", PIXEL_GIF.to_vec()),
                result,
            )
        } else if status == StatusCode::NO_CONTENT {
            with_result(reply(status, "text/plain", Vec::new()), result)
        } else {
            with_result(error(status, code, message), result)
        }
    };
    let settings = match settings().await {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("hitcount: {message}");
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "misconfigured",
                "the edge is misconfigured",
            );
        }
    };
    let redis = match Connection::open(&settings.redis_address).await {
        Ok(redis) => redis,
        Err(failure) => {
            eprintln!("hitcount: redis: {failure:?}");
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "unavailable",
                "the counter store is unreachable; retry",
            );
        }
    };
    let now = now_ms();
    let outcome = record(&settings, &redis, headers, &resource_id, timestamp, now).await;
    match outcome {
        Ok(Outcome::Counted { oldest_window }) => {
            if oldest_window < window_index(now, settings.window_ms)
                && let Err(reason) = flush_closed(&settings, &redis, now).await
            {
                eprintln!("hitcount: delivery failed, will retry: {reason}");
            }
            answer(StatusCode::NO_CONTENT, "counted", "", "")
        }
        Ok(Outcome::Rejected(Rejection::InvalidResourceId)) => answer(
            StatusCode::BAD_REQUEST,
            "invalid_resource_id",
            "invalid_resource_id",
            &Rejection::InvalidResourceId.to_string(),
        ),
        Ok(Outcome::Rejected(Rejection::InvalidTimestamp)) => answer(
            StatusCode::BAD_REQUEST,
            "invalid_timestamp",
            "invalid_timestamp",
            &Rejection::InvalidTimestamp.to_string(),
        ),
        Ok(Outcome::Rejected(rejection)) => {
            answer(StatusCode::NO_CONTENT, rejection.code(), "", "")
        }
        Err(reason) => {
            eprintln!("hitcount: recording failed: {reason}");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "unavailable",
                "the counter store failed; retry",
            )
        }
    }
}

async fn flush_endpoint() -> Reply {
    let settings = match settings().await {
        Ok(settings) => settings,
        Err(message) => return error(StatusCode::SERVICE_UNAVAILABLE, "misconfigured", &message),
    };
    let redis = match Connection::open(&settings.redis_address).await {
        Ok(redis) => redis,
        Err(failure) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                &format!("redis: {failure:?}"),
            );
        }
    };
    match flush_closed(&settings, &redis, now_ms()).await {
        Ok(windows) => reply(
            StatusCode::OK,
            "application/json",
            serde_json::json!({"flushed_windows": windows}).to_string(),
        ),
        Err(reason) => error(StatusCode::BAD_GATEWAY, "delivery_failed", &reason),
    }
}

#[http_service]
async fn handle(request: Request) -> Reply {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    match (method, path.as_str()) {
        (Method::POST, "/hit") => {
            let content_type = request
                .headers()
                .get("content-type")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            let (parts, body) = request.into_parts();
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => return error(StatusCode::BAD_REQUEST, "invalid_body", "unreadable body"),
            };
            match parse_beacon(content_type.as_deref(), &body) {
                Ok(beacon) => {
                    hit(&parts.headers, beacon.resource_id, beacon.timestamp, false).await
                }
                Err(refused) => {
                    let status = match refused.code() {
                        "unsupported_media_type" => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "body_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
                        _ => StatusCode::BAD_REQUEST,
                    };
                    error(status, refused.code(), &refused.to_string())
                }
            }
        }
        (Method::GET, "/hit.gif") => {
            let query = request.uri().query().unwrap_or_default().to_owned();
            let mut resource_id = None;
            let mut timestamp = None;
            for pair in query.split('&') {
                match pair.split_once('=') {
                    Some(("r", value)) => resource_id = Some(value.to_owned()),
                    Some(("t", value)) => timestamp = value.parse().ok(),
                    _ => {}
                }
            }
            match resource_id {
                Some(resource_id) => hit(request.headers(), resource_id, timestamp, true).await,
                None => with_result(
                    reply(StatusCode::OK, "image/gif", PIXEL_GIF.to_vec()),
                    "invalid_resource_id",
                ),
            }
        }
        (Method::OPTIONS, _) => {
            let mut response = reply(StatusCode::NO_CONTENT, "text/plain", Vec::new());
            let headers = response.headers_mut();
            headers.insert(
                "access-control-allow-methods",
                HeaderValue::from_static("GET, POST"),
            );
            headers.insert(
                "access-control-allow-headers",
                HeaderValue::from_static("content-type"),
            );
            headers.insert(
                "access-control-max-age",
                HeaderValue::from(hitcount_edge_core::beacon::CORS_MAX_AGE_S),
            );
            response
        }
        (Method::POST, "/flush") => flush_endpoint().await,
        (Method::GET, "/healthz") => {
            reply(StatusCode::OK, "application/json", r#"{"status":"ok"}"#)
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such route"),
    }
}
