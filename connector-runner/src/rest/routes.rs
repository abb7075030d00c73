//! The routes, in Kafka Connect's shape: every body JSON, every error
//! `{"error_code": <status>, "message": ...}` (unknown paths, wrong methods, bodies too large and
//! bad JSON included).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use connector_core::runner::control::{
    ConnectControl, ConnectorInfo, ControlError, Health, OffsetEntry, PutOutcome, RestartRequest,
    TargetState,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::auth::{require_token, Token};

/// Largest request body accepted (413 above).
const BODY_LIMIT: usize = 1 << 20;
/// How long a client may take to send a request's body (its headers: see `rest::HANDSHAKE_BOUND`).
const BODY_READ_BOUND: std::time::Duration = std::time::Duration::from_secs(30);

type Ctl = Arc<dyn ConnectControl>;

/// An error response: `{"error_code": <status>, "message": ...}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub(crate) fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error_code": self.status.as_u16(), "message": self.message}));
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::NotFound(m) => Self::not_found(m),
            ControlError::Conflict(m) => Self::new(StatusCode::CONFLICT, m),
            ControlError::Invalid(errors) => {
                let problems: Vec<String> = errors.iter().map(ToString::to_string).collect();
                Self::bad_request(format!(
                    "Connector configuration is invalid and contains the following {} error(s):\n{}",
                    problems.len(),
                    problems.join("\n")
                ))
            }
            ControlError::BadRequest(m) => Self::bad_request(m),
            ControlError::Unavailable(m) => Self::new(StatusCode::SERVICE_UNAVAILABLE, m),
            other => Self::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

type ApiResult<T = Response> = Result<T, ApiError>;

/// The body as JSON of type `T`, or a 400/413 naming what is wrong.
fn json_body<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> ApiResult<T> {
    let bytes = body.map_err(|r| ApiError::new(r.status(), r.body_text()))?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    T::deserialize(value).map_err(|e| {
        ApiError::bad_request(format!("the request body does not fit this endpoint: {e}"))
    })
}

/// The router over `control`, every route but `/health` behind `token` when one is set.
pub(crate) fn router(control: Ctl, token: Option<Token>) -> Router {
    let guarded = Router::new()
        .route("/", get(root))
        .route("/connectors", get(list).post(create))
        .route("/connectors/:c", get(info).delete(delete))
        .route("/connectors/:c/config", get(config).put(put_config))
        .route("/connectors/:c/status", get(status))
        .route("/connectors/:c/tasks", get(tasks))
        .route("/connectors/:c/tasks/:t/status", get(task_status))
        .route("/connectors/:c/tasks/:t/restart", post(restart_task))
        .route("/connectors/:c/pause", put(pause))
        .route("/connectors/:c/resume", put(resume))
        .route("/connectors/:c/stop", put(stop))
        .route("/connectors/:c/restart", post(restart))
        .route("/connectors/:c/offsets", get(offsets).patch(alter_offsets).delete(reset_offsets))
        .route("/connector-plugins", get(plugins))
        .route("/connector-plugins/:type/config/validate", put(validate))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(token, require_token));
    guarded
        .route("/health", get(health))
        .fallback(unknown_path)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn(body_in_time))
        .layer(axum::middleware::map_response(json_errors))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(control)
}

/// The router of a connection accepted over the connection limit: `/health` only (so probes
/// get through while slow or many clients hold every slot), anything else 503.
pub(crate) fn health_only(control: Ctl) -> Router {
    Router::new()
        .route("/health", get(health))
        .fallback(too_many_connections)
        .layer(axum::middleware::map_response(json_errors))
        .with_state(control)
}

async fn too_many_connections() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many connections: only GET /health is served on this one; try again",
    )
}

/// Reads the request's body within [`BODY_READ_BOUND`] (a client trickling it would hold its
/// connection, one of a bounded number, for ever): 408 past it.
async fn body_in_time(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT) {
        // Refused by the body limit (413) without reading it.
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(BODY_READ_BOUND, axum::body::to_bytes(body, BODY_LIMIT)).await {
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))).await
        }
        // Over the limit (a body without a length), or the client went away.
        Ok(Err(_)) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body could not be read whole within {BODY_LIMIT} bytes"),
        )
        .into_response(),
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {} s", BODY_READ_BOUND.as_secs()),
        )
        .into_response(),
    }
}

async fn unknown_path(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no such path: {}", uri.path()))
}

async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed on {}", uri.path()),
    )
}

/// Any error response not already JSON (one axum made itself) becomes Kafka Connect's shape.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let reason = status.canonical_reason().unwrap_or("error");
        return ApiError::new(status, reason).into_response();
    }
    response
}

/// `?a=b&c` as pairs (values percent-decoded; a key without `=` has an empty value).
fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 3)
            .filter(|_| bytes[i] == b'%')
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], escaped) {
            (_, Some(b)) => {
                out.push(b);
                i += 3;
                continue;
            }
            (b'+', None) => out.push(b' '),
            (b, None) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A boolean query flag: `true` (any case), or present without a value.
fn flag(pairs: &[(String, String)], name: &str) -> bool {
    pairs.iter().any(|(k, v)| k == name && (v.is_empty() || v.eq_ignore_ascii_case("true")))
}

fn info_body(info: &ConnectorInfo) -> Value {
    let tasks: Vec<Value> =
        (0..info.tasks).map(|t| json!({"connector": info.name, "task": t})).collect();
    json!({
        "name": info.name,
        "config": info.config,
        "tasks": tasks,
        "type": info.kind.to_string(),
    })
}

async fn root(State(ctl): State<Ctl>) -> Json<Value> {
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "commit": option_env!("CONNECT_GIT_COMMIT").unwrap_or("unknown"),
        "kafka_cluster_id": ctl.kafka_cluster_id(),
    }))
}

async fn list(State(ctl): State<Ctl>, RawQuery(q): RawQuery) -> ApiResult {
    let pairs = query_pairs(q.as_deref());
    let expand: Vec<&str> =
        pairs.iter().filter(|(k, _)| k == "expand").map(|(_, v)| v.as_str()).collect();
    for e in &expand {
        if *e != "status" && *e != "info" {
            return Err(ApiError::bad_request(format!(
                "expand={e}: expected expand=status or expand=info"
            )));
        }
    }
    let names = ctl.connectors().await;
    if expand.is_empty() {
        return Ok(Json(names).into_response());
    }
    let mut out = Map::new();
    for name in names {
        let mut entry = Map::new();
        // A connector deleted meanwhile is left out.
        if expand.contains(&"status") {
            match ctl.status(&name).await {
                Ok(s) => {
                    entry.insert("status".into(), serde_json::to_value(s).unwrap_or(Value::Null));
                }
                Err(ControlError::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        if expand.contains(&"info") {
            match ctl.info(&name).await {
                Ok(i) => {
                    entry.insert("info".into(), info_body(&i));
                }
                Err(ControlError::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        out.insert(name, Value::Object(entry));
    }
    Ok(Json(Value::Object(out)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    config: Map<String, Value>,
}

async fn create(State(ctl): State<Ctl>, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let CreateBody { name, config } = json_body(body)?;
    if name.trim().is_empty() {
        return Err(ApiError::bad_request("name: must not be empty"));
    }
    ctl.create(&name, config).await?;
    let info = ctl.info(&name).await?;
    Ok((StatusCode::CREATED, Json(info_body(&info))).into_response())
}

async fn info(State(ctl): State<Ctl>, Path(c): Path<String>) -> ApiResult {
    Ok(Json(info_body(&ctl.info(&c).await?)).into_response())
}

async fn delete(State(ctl): State<Ctl>, Path(c): Path<String>) -> ApiResult {
    ctl.delete(&c).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn config(State(ctl): State<Ctl>, Path(c): Path<String>) -> ApiResult {
    Ok(Json(ctl.info(&c).await?.config).into_response())
}

async fn put_config(
    State(ctl): State<Ctl>,
    Path(c): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let config: Map<String, Value> = json_body(body)?;
    let outcome = ctl.put_config(&c, config).await?;
    let info = ctl.info(&c).await?;
    let status = match outcome {
        PutOutcome::Created => StatusCode::CREATED,
        PutOutcome::Updated => StatusCode::OK,
    };
    Ok((status, Json(info_body(&info))).into_response())
}

async fn status(State(ctl): State<Ctl>, Path(c): Path<String>) -> ApiResult {
    Ok(Json(ctl.status(&c).await?).into_response())
}

async fn tasks(State(ctl): State<Ctl>, Path(c): Path<String>) -> ApiResult {
    let configs = ctl.task_configs(&c).await?;
    let body: Vec<Value> = configs
        .into_iter()
        .enumerate()
        .map(|(t, config)| json!({"id": {"connector": c, "task": t}, "config": config}))
        .collect();
    Ok(Json(body).into_response())
}

fn task_id(c: &str, t: &str) -> ApiResult<usize> {
    t.parse().map_err(|_| ApiError::not_found(format!("Task {t} of connector {c} not found")))
}

async fn task_status(State(ctl): State<Ctl>, Path((c, t)): Path<(String, String)>) -> ApiResult {
    let id = task_id(&c, &t)?;
    let report = ctl.status(&c).await?;
    let task = report
        .tasks
        .into_iter()
        .find(|task| task.id == id)
        .ok_or_else(|| ApiError::not_found(format!("Task {id} of connector {c} not found")))?;
    Ok(Json(task).into_response())
}

async fn restart_task(State(ctl): State<Ctl>, Path((c, t)): Path<(String, String)>) -> ApiResult {
    let id = task_id(&c, &t)?;
    ctl.restart_task(&c, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn target(ctl: &Ctl, c: &str, target: TargetState) -> ApiResult {
    ctl.set_target(c, target).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

async fn pause(State(ctl): State<Ctl>, Path(c): Path<String>) -> ApiResult {
    target(&ctl, &c, TargetState::Paused).await
}

async fn resume(State(ctl): State<Ctl>, Path(c): Path<String>) -> ApiResult {
    target(&ctl, &c, TargetState::Running).await
}

async fn stop(State(ctl): State<Ctl>, Path(c): Path<String>) -> ApiResult {
    target(&ctl, &c, TargetState::Stopped).await
}

async fn restart(
    State(ctl): State<Ctl>,
    Path(c): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let pairs = query_pairs(q.as_deref());
    let req = RestartRequest {
        include_tasks: flag(&pairs, "includeTasks"),
        only_failed: flag(&pairs, "onlyFailed"),
    };
    let report = ctl.restart(&c, req).await?;
    if !req.include_tasks && !req.only_failed {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    Ok((StatusCode::ACCEPTED, Json(report)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OffsetsBody {
    offsets: Vec<OffsetEntry>,
}

async fn offsets(State(ctl): State<Ctl>, Path(c): Path<String>) -> ApiResult {
    let offsets = ctl.offsets(&c).await?;
    Ok(Json(json!({"offsets": offsets})).into_response())
}

async fn alter_offsets(
    State(ctl): State<Ctl>,
    Path(c): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let OffsetsBody { offsets } = json_body(body)?;
    ctl.alter_offsets(&c, offsets).await?;
    Ok(Json(json!({"message": "The offsets for this connector have been altered successfully"}))
        .into_response())
}

async fn reset_offsets(State(ctl): State<Ctl>, Path(c): Path<String>) -> ApiResult {
    ctl.reset_offsets(&c).await?;
    Ok(Json(json!({"message": "The offsets for this connector have been reset successfully"}))
        .into_response())
}

async fn plugins(State(ctl): State<Ctl>, RawQuery(q): RawQuery) -> ApiResult {
    let pairs = query_pairs(q.as_deref());
    let connectors_only =
        !pairs.iter().any(|(k, v)| k == "connectorsOnly" && v.eq_ignore_ascii_case("false"));
    let plugins: Vec<_> = ctl
        .plugins()
        .into_iter()
        .filter(|p| !connectors_only || p.kind == "source" || p.kind == "sink")
        .collect();
    Ok(Json(plugins).into_response())
}

async fn validate(
    State(ctl): State<Ctl>,
    Path(type_name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let config: Map<String, Value> = json_body(body)?;
    let errors = ctl.validate(&type_name, config)?;
    let configs: Vec<Value> = errors
        .iter()
        .map(|e| {
            json!({"value": {
                "name": e.path,
                "value": Value::Null,
                "recommended_values": [],
                "errors": [e.message],
                "visible": true,
            }})
        })
        .collect();
    Ok(Json(json!({
        "name": type_name,
        "error_count": configs.len(),
        "groups": [],
        "configs": configs,
    }))
    .into_response())
}

async fn health(State(ctl): State<Ctl>) -> Response {
    match ctl.health().await {
        Health::Healthy => Json(json!({
            "status": "healthy",
            "message": "Worker has completed startup and is ready to handle requests."
        }))
        .into_response(),
        Health::Starting(why) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "starting", "message": why})))
                .into_response()
        }
        Health::Unhealthy(why) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "unhealthy", "message": why})))
                .into_response()
        }
    }
}

async fn metrics(State(ctl): State<Ctl>) -> Response {
    let text = crate::metrics::encode_metrics(&ctl.worker(), &ctl.worker_id());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_decode_and_flags_read_kafka_connect_style() {
        let p =
            query_pairs(Some("expand=status&expand=info&includeTasks&onlyFailed=TRUE&x=a%20b+c"));
        assert_eq!(p[0], ("expand".into(), "status".into()));
        assert_eq!(p[4], ("x".into(), "a b c".into()));
        assert!(flag(&p, "includeTasks") && flag(&p, "onlyFailed") && !flag(&p, "nope"));
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%4"), "%4");
    }
}
