//! A host for the hitcount Spin component that behaves as Spin does where it matters to the
//! component: `wasi:http/handler@0.3.0` served with a fresh instance per request, Spin's Redis
//! interface (`spin:redis/redis@3.0.0`, backed by a real Redis), Spin's variables interface, the
//! `spin-client-addr` header, and outgoing HTTP through `wasi:http/client`.
//!
//! Spin itself cannot be installed on these machines (no internet beyond package registries);
//! this host lets the tests run the exact `.wasm` a Spin deployment runs. It is not a Spin
//! replacement: one component, one Redis address, no manifest.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::body::{Body, Bytes};
use http_body_util::{BodyExt, Full, Limited};
use tokio::net::TcpListener;
use wasmtime::component::{Accessor, Component, HasData, Linker, Resource, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "spin-imports",
        with: {
            "spin:redis/redis.connection": super::RedisConnection,
        },
    });
}

use bindings::spin::redis::redis::{
    self as spin_redis, Error as RedisError, RedisParameter, RedisResult,
};
use bindings::spin::variables::variables::{self as spin_variables, Error as VariableError};

/// The Spin component built with this crate (see build.rs).
pub const SPIN_MODULE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hitcount_edge_spin.wasm"));

/// Request bodies the host reads for the component; beacons are far smaller.
pub const REQUEST_BODY_BYTES_MAX: usize = 64 * 1024;

/// An open `spin:redis` connection: a handle on the host's one multiplexed connection.
#[derive(Debug)]
pub struct RedisConnection {
    connection: redis::aio::MultiplexedConnection,
}

struct HostState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    shared: Arc<Shared>,
}

/// What every request's instance shares.
struct Shared {
    variables: BTreeMap<String, String>,
    /// The Redis address the component may open (Spin's `allowed_outbound_hosts`).
    redis_address: String,
    redis: redis::aio::MultiplexedConnection,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: wasmtime_wasi_http::default_hooks(),
        }
    }
}

/// The marker through which the Spin interfaces reach [`HostState`].
struct Spin;

impl HasData for Spin {
    type Data<'a> = &'a mut HostState;
}

impl spin_redis::HostConnection for HostState {
    fn drop(&mut self, connection: Resource<RedisConnection>) -> wasmtime::Result<()> {
        self.table.delete(connection)?;
        Ok(())
    }
}

impl spin_redis::Host for HostState {}
impl spin_variables::Host for HostState {}

fn redis_failure(error: redis::RedisError) -> RedisError {
    RedisError::Other(error.to_string())
}

/// Spin flattens a reply into a list of results; so does this.
fn results_of(value: redis::Value, out: &mut Vec<RedisResult>) {
    match value {
        redis::Value::Nil => out.push(RedisResult::Nil),
        redis::Value::Int(number) => out.push(RedisResult::Int64(number)),
        redis::Value::BulkString(bytes) => out.push(RedisResult::Binary(bytes)),
        redis::Value::SimpleString(text) => out.push(RedisResult::Status(text)),
        redis::Value::Okay => out.push(RedisResult::Status("OK".to_owned())),
        redis::Value::Array(values) | redis::Value::Set(values) => {
            for value in values {
                results_of(value, out);
            }
        }
        other => out.push(RedisResult::Binary(format!("{other:?}").into_bytes())),
    }
}

async fn run<T: redis::FromRedisValue>(
    accessor: &Accessor<HostState, Spin>,
    connection: &Resource<RedisConnection>,
    command: redis::Cmd,
) -> Result<T, RedisError> {
    let mut redis = accessor
        .with(|mut access| {
            access
                .get()
                .table
                .get(connection)
                .map(|open| open.connection.clone())
        })
        .map_err(|error| RedisError::Other(error.to_string()))?;
    command.query_async(&mut redis).await.map_err(redis_failure)
}

fn command_with(name: &str, key: &str, values: &[String]) -> redis::Cmd {
    let mut command = redis::cmd(name);
    command.arg(key);
    for value in values {
        command.arg(value);
    }
    command
}

impl spin_redis::HostConnectionWithStore<HostState> for Spin {
    async fn open(
        accessor: &Accessor<HostState, Self>,
        address: String,
    ) -> Result<Resource<RedisConnection>, RedisError> {
        accessor.with(|mut access| {
            let state = access.get();
            if address != state.shared.redis_address {
                return Err(RedisError::InvalidAddress);
            }
            let connection = state.shared.redis.clone();
            state
                .table
                .push(RedisConnection { connection })
                .map_err(|error| RedisError::Other(error.to_string()))
        })
    }

    async fn publish(
        accessor: &Accessor<HostState, Self>,
        connection: Resource<RedisConnection>,
        channel: String,
        payload: Vec<u8>,
    ) -> Result<(), RedisError> {
        let mut command = redis::cmd("PUBLISH");
        command.arg(channel).arg(payload);
        run::<i64>(accessor, &connection, command).await.map(drop)
    }

    async fn get(
        accessor: &Accessor<HostState, Self>,
        connection: Resource<RedisConnection>,
        key: String,
    ) -> Result<Option<Vec<u8>>, RedisError> {
        run(accessor, &connection, command_with("GET", &key, &[])).await
    }

    async fn set(
        accessor: &Accessor<HostState, Self>,
        connection: Resource<RedisConnection>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), RedisError> {
        let mut command = redis::cmd("SET");
        command.arg(key).arg(value);
        run::<()>(accessor, &connection, command).await
    }

    async fn incr(
        accessor: &Accessor<HostState, Self>,
        connection: Resource<RedisConnection>,
        key: String,
    ) -> Result<i64, RedisError> {
        run(accessor, &connection, command_with("INCR", &key, &[])).await
    }

    async fn del(
        accessor: &Accessor<HostState, Self>,
        connection: Resource<RedisConnection>,
        keys: Vec<String>,
    ) -> Result<u32, RedisError> {
        let mut command = redis::cmd("DEL");
        command.arg(keys);
        run(accessor, &connection, command).await
    }

    async fn sadd(
        accessor: &Accessor<HostState, Self>,
        connection: Resource<RedisConnection>,
        key: String,
        values: Vec<String>,
    ) -> Result<u32, RedisError> {
        run(accessor, &connection, command_with("SADD", &key, &values)).await
    }

    async fn smembers(
        accessor: &Accessor<HostState, Self>,
        connection: Resource<RedisConnection>,
        key: String,
    ) -> Result<Vec<String>, RedisError> {
        run(accessor, &connection, command_with("SMEMBERS", &key, &[])).await
    }

    async fn srem(
        accessor: &Accessor<HostState, Self>,
        connection: Resource<RedisConnection>,
        key: String,
        values: Vec<String>,
    ) -> Result<u32, RedisError> {
        run(accessor, &connection, command_with("SREM", &key, &values)).await
    }

    async fn execute(
        accessor: &Accessor<HostState, Self>,
        connection: Resource<RedisConnection>,
        command: String,
        arguments: Vec<RedisParameter>,
    ) -> Result<Vec<RedisResult>, RedisError> {
        let mut request = redis::cmd(&command);
        for argument in arguments {
            match argument {
                RedisParameter::Int64(number) => request.arg(number),
                RedisParameter::Binary(bytes) => request.arg(bytes),
            };
        }
        let value: redis::Value = run(accessor, &connection, request).await?;
        let mut results = Vec::new();
        results_of(value, &mut results);
        Ok(results)
    }
}

impl spin_variables::HostWithStore<HostState> for Spin {
    async fn get(
        accessor: &Accessor<HostState, Self>,
        name: String,
    ) -> Result<String, VariableError> {
        accessor.with(|mut access| {
            access
                .get()
                .shared
                .variables
                .get(&name)
                .cloned()
                .ok_or(VariableError::Undefined(name))
        })
    }
}

/// wasmtime has its own error type; this keeps its full chain in the message.
fn wasm<T>(result: wasmtime::Result<T>, what: &str) -> anyhow::Result<T> {
    result.map_err(|error| anyhow::anyhow!("{what}: {error:?}"))
}

/// The Spin component, compiled and linked once; instantiated per request.
pub struct SpinHost {
    engine: Engine,
    pre: ServicePre<HostState>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SpinHost {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SpinHost")
            .field("redis_address", &self.shared.redis_address)
            .finish_non_exhaustive()
    }
}

/// A response as the component gave it, body read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: axum::http::HeaderMap,
    pub body: Bytes,
}

impl SpinHost {
    /// Compiles `module` (the embedded build if `None`) and connects to `redis_address`.
    /// `variables` are Spin's application variables.
    pub async fn new(
        module: Option<&Path>,
        variables: BTreeMap<String, String>,
        redis_address: &str,
    ) -> anyhow::Result<Self> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.wasm_component_model_async(true);
        let engine = wasm(Engine::new(&config), "creating the engine")?;
        let component = match module {
            Some(path) => wasm(Component::from_file(&engine, path), "loading the module")?,
            None => wasm(Component::new(&engine, SPIN_MODULE), "compiling the module")?,
        };
        let mut linker: Linker<HostState> = Linker::new(&engine);
        wasm(
            wasmtime_wasi::p2::add_to_linker_async(&mut linker),
            "linking WASI 0.2",
        )?;
        wasm(
            wasmtime_wasi::p3::add_to_linker(&mut linker),
            "linking WASI 0.3",
        )?;
        wasm(
            wasmtime_wasi_http::p3::add_to_linker(&mut linker),
            "linking wasi:http 0.3",
        )?;
        wasm(
            bindings::SpinImports::add_to_linker::<HostState, Spin>(&mut linker, |state| state),
            "linking the Spin interfaces",
        )?;
        let pre = wasm(
            linker.instantiate_pre(&component).and_then(ServicePre::new),
            "linking the module",
        )?;
        let redis = redis::Client::open(redis_address)
            .context("parsing the Redis address")?
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("connecting to Redis at {redis_address}"))?;
        Ok(Self {
            engine,
            pre,
            shared: Arc::new(Shared {
                variables,
                redis_address: redis_address.to_owned(),
                redis,
            }),
        })
    }

    /// Serves one request in a fresh instance, as Spin does.
    pub async fn handle(
        &self,
        request: axum::http::Request<Body>,
        client: SocketAddr,
    ) -> anyhow::Result<Answer> {
        let (mut parts, body) = request.into_parts();
        let body = Limited::new(body, REQUEST_BODY_BYTES_MAX)
            .collect()
            .await
            .map_err(|error| anyhow::anyhow!("reading the request body: {error}"))?
            .to_bytes();
        // Spin tells the component who is calling in this header.
        parts.headers.insert(
            "spin-client-addr",
            client
                .to_string()
                .parse()
                .context("the client address as a header")?,
        );
        // wasi:http wants an absolute URI.
        if parts.uri.authority().is_none() {
            let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
            parts.uri = format!("http://localhost{path}")
                .parse()
                .context("the request URI")?;
        }
        let body = Full::new(body)
            .map_err(|never: Infallible| -> wasmtime_wasi_http::Error { match never {} });
        let request = axum::http::Request::from_parts(parts, body);
        let mut store = Store::new(
            &self.engine,
            HostState {
                wasi: WasiCtx::builder().inherit_stderr().build(),
                http: WasiHttpCtx::new(),
                table: ResourceTable::new(),
                shared: Arc::clone(&self.shared),
            },
        );
        let service = wasm(
            self.pre.instantiate_async(&mut store).await,
            "instantiating the module",
        )?;
        let (request, _request_io) = wasmtime_wasi_http::p3::Request::from_http(
            wasmtime_wasi_http::default_hooks(),
            request,
        );
        let answer = store
            .run_concurrent(async move |accessor| -> anyhow::Result<Answer> {
                let response = wasm(
                    service.handle(accessor, request).await,
                    "calling the handler",
                )?
                .map_err(|code| anyhow::anyhow!("the handler failed: {code:?}"))?;
                let response = wasm(
                    accessor.with(|access| response.into_http(access, async { Ok(()) })),
                    "reading the response",
                )?;
                let (parts, body) = response.into_parts();
                let body = body
                    .collect()
                    .await
                    .map_err(|error| anyhow::anyhow!("reading the response body: {error:?}"))?
                    .to_bytes();
                Ok(Answer {
                    status: parts.status.as_u16(),
                    headers: parts.headers,
                    body,
                })
            })
            .await;
        wasm(answer, "running the request")?
    }
}

async fn serve_one(
    axum::extract::State(host): axum::extract::State<Arc<SpinHost>>,
    axum::extract::ConnectInfo(client): axum::extract::ConnectInfo<SocketAddr>,
    request: axum::http::Request<Body>,
) -> axum::response::Response {
    match host.handle(request, client).await {
        Ok(answer) => {
            let mut response = axum::response::Response::new(Body::from(answer.body));
            *response.status_mut() =
                axum::http::StatusCode::from_u16(answer.status).unwrap_or_default();
            *response.headers_mut() = answer.headers;
            response
        }
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "the component failed");
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(serde_json::json!({
                    "error": {"code": "component_failed", "message": "the component failed"}
                })),
            )
                .into_response()
        }
    }
}

use axum::response::IntoResponse;

/// Serves `host` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    host: Arc<SpinHost>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let router = axum::Router::new().fallback(serve_one).with_state(host);
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .context("serving HTTP")
}
