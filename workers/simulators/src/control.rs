//! The control and records API under `/sim/...` (JSON), mirroring the library handles, for
//! scripts and benchmarks that run the `callmeback-sim` binary.
//!
//! No authentication: the binary binds 127.0.0.1 by default and this API is for local use only.
//! `PUT …/config` merges the JSON given into the current configuration (fields left out keep
//! their values), so `{"latency_ms": 50}` changes one knob. Errors are
//! `{"error":{"code","message"}}`.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /sim` | liveness and the base URL |
//! | `PUT /sim/twilio/scenarios/{to}` | the [`Scenario`](crate::Scenario) for calls to `to` |
//! | `PUT /sim/twilio/default-scenario` | the scenario for numbers without one |
//! | `GET`/`PUT /sim/twilio/config` | [`TwilioConfig`](crate::TwilioConfig) |
//! | `GET /sim/twilio/calls`, `GET /sim/twilio/calls/{sid}` | call records |
//! | `POST /sim/twilio/calls/{sid}/wait?timeout_ms=` | waits for the call to end (408 on timeout) |
//! | `GET`/`PUT /sim/stt/config`, `GET /sim/stt/records` | Deepgram simulator |
//! | `GET`/`PUT /sim/llm/config`, `POST /sim/llm/replies`, `GET /sim/llm/requests` | LLM simulator |
//! | `GET`/`PUT /sim/tts/config`, `GET /sim/tts/records` | ElevenLabs simulator |
//! | `GET /sim/timings` | per-line instants for the latency benchmark |
//! | `POST /sim/reset` | forget everything, end calls in flight |

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::AppState;
use crate::twilio::{Scenario, TwilioConfig, TwilioHandle};
use crate::{LlmHandle, SttHandle, TtsHandle};

/// A control API error.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("invalid body: {0}")]
    InvalidBody(String),
    #[error("no call with sid {0}")]
    UnknownCall(String),
    #[error("call {0} did not end in time")]
    Timeout(String),
}

impl ControlError {
    pub fn code(&self) -> &'static str {
        match self {
            ControlError::InvalidBody(_) => "invalid_body",
            ControlError::UnknownCall(_) => "unknown_call",
            ControlError::Timeout(_) => "timeout",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ControlError::InvalidBody(_) => StatusCode::BAD_REQUEST,
            ControlError::UnknownCall(_) => StatusCode::NOT_FOUND,
            ControlError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code(), "message": self.to_string()}});
        (self.status(), Json(body)).into_response()
    }
}

/// Merges `patch` into `current` (objects recursively; anything else replaces).
pub fn merge<T: Serialize + DeserializeOwned>(
    current: &T,
    patch: Value,
) -> Result<T, ControlError> {
    fn merge_value(base: &mut Value, patch: Value) {
        match (base, patch) {
            (Value::Object(base), Value::Object(patch)) => {
                for (key, value) in patch {
                    match base.get_mut(&key) {
                        Some(existing) if existing.is_object() && value.is_object() => {
                            merge_value(existing, value)
                        }
                        _ => {
                            base.insert(key, value);
                        }
                    }
                }
            }
            (base, patch) => *base = patch,
        }
    }
    let mut value =
        serde_json::to_value(current).map_err(|e| ControlError::InvalidBody(e.to_string()))?;
    merge_value(&mut value, patch);
    serde_json::from_value(value).map_err(|e| ControlError::InvalidBody(e.to_string()))
}

fn parse<T: DeserializeOwned>(body: Value) -> Result<T, ControlError> {
    serde_json::from_value(body).map_err(|e| ControlError::InvalidBody(e.to_string()))
}

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/sim", get(health))
        .route("/sim/twilio/scenarios/{to}", put(put_scenario))
        .route("/sim/twilio/default-scenario", put(put_default_scenario))
        .route(
            "/sim/twilio/config",
            get(get_twilio_config).put(put_twilio_config),
        )
        .route("/sim/twilio/calls", get(list_calls))
        .route("/sim/twilio/calls/{sid}", get(get_call))
        .route("/sim/twilio/calls/{sid}/wait", post(wait_call))
        .route("/sim/stt/config", get(get_stt_config).put(put_stt_config))
        .route("/sim/stt/records", get(stt_records))
        .route("/sim/llm/config", get(get_llm_config).put(put_llm_config))
        .route("/sim/llm/replies", post(push_replies))
        .route("/sim/llm/requests", get(llm_requests))
        .route("/sim/tts/config", get(get_tts_config).put(put_tts_config))
        .route("/sim/tts/records", get(tts_records))
        .route("/sim/timings", get(timings))
        .route("/sim/reset", post(reset))
}

fn twilio(state: &AppState) -> TwilioHandle {
    TwilioHandle {
        state: state.twilio.clone(),
    }
}

async fn health() -> Json<Value> {
    Json(json!({"ok": true, "simulators": ["twilio", "deepgram", "openai", "elevenlabs"]}))
}

async fn put_scenario(
    State(state): State<AppState>,
    Path(to): Path<String>,
    Json(body): Json<Value>,
) -> Result<Json<Scenario>, ControlError> {
    let scenario: Scenario = parse(body)?;
    twilio(&state).set_scenario(&to, scenario.clone());
    Ok(Json(scenario))
}

async fn put_default_scenario(
    State(state): State<AppState>,
    Json(body): Json<Value>,
) -> Result<Json<Scenario>, ControlError> {
    let scenario: Scenario = parse(body)?;
    twilio(&state).set_default_scenario(scenario.clone());
    Ok(Json(scenario))
}

async fn get_twilio_config(State(state): State<AppState>) -> Json<TwilioConfig> {
    Json(twilio(&state).config())
}

async fn put_twilio_config(
    State(state): State<AppState>,
    Json(body): Json<Value>,
) -> Result<Json<TwilioConfig>, ControlError> {
    let handle = twilio(&state);
    let config = merge(&handle.config(), body)?;
    handle.set_config(config.clone());
    Ok(Json(config))
}

async fn list_calls(State(state): State<AppState>) -> Json<Value> {
    Json(json!(twilio(&state).calls()))
}

async fn get_call(
    State(state): State<AppState>,
    Path(sid): Path<String>,
) -> Result<Json<Value>, ControlError> {
    twilio(&state)
        .call(&sid)
        .map(|c| Json(json!(c)))
        .ok_or(ControlError::UnknownCall(sid))
}

#[derive(Debug, serde::Deserialize)]
struct WaitQuery {
    timeout_ms: Option<u64>,
}

async fn wait_call(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    Query(query): Query<WaitQuery>,
) -> Result<Json<Value>, ControlError> {
    let timeout = Duration::from_millis(query.timeout_ms.unwrap_or(30_000));
    match twilio(&state).wait_for_end(&sid, timeout).await {
        Ok(record) => Ok(Json(json!(record))),
        Err(crate::twilio::WaitError::UnknownCall(sid)) => Err(ControlError::UnknownCall(sid)),
        Err(crate::twilio::WaitError::Timeout(sid, _)) => Err(ControlError::Timeout(sid)),
    }
}

async fn get_stt_config(State(state): State<AppState>) -> Json<Value> {
    Json(json!(SttHandle { state: state.stt }.config()))
}

async fn put_stt_config(
    State(state): State<AppState>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, ControlError> {
    let handle = SttHandle { state: state.stt };
    let config = merge(&handle.config(), body)?;
    handle.set_config(config.clone());
    Ok(Json(json!(config)))
}

async fn stt_records(State(state): State<AppState>) -> Json<Value> {
    Json(json!(SttHandle { state: state.stt }.records()))
}

async fn get_llm_config(State(state): State<AppState>) -> Json<Value> {
    Json(json!(LlmHandle { state: state.llm }.config()))
}

async fn put_llm_config(
    State(state): State<AppState>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, ControlError> {
    let handle = LlmHandle { state: state.llm };
    let config = merge(&handle.config(), body)?;
    handle.set_config(config.clone());
    Ok(Json(json!(config)))
}

/// Body: `["reply", …]` or `{"replies": ["reply", …]}`.
async fn push_replies(
    State(state): State<AppState>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, ControlError> {
    let replies: Vec<String> = match body {
        Value::Object(mut map) => parse(map.remove("replies").unwrap_or(Value::Null))?,
        other => parse(other)?,
    };
    let handle = LlmHandle { state: state.llm };
    handle.push_replies(replies);
    Ok(Json(json!({"queued": handle.queued_replies()})))
}

async fn llm_requests(State(state): State<AppState>) -> Json<Value> {
    Json(json!(LlmHandle { state: state.llm }.requests()))
}

async fn get_tts_config(State(state): State<AppState>) -> Json<Value> {
    Json(json!(TtsHandle { state: state.tts }.config()))
}

async fn put_tts_config(
    State(state): State<AppState>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, ControlError> {
    let handle = TtsHandle { state: state.tts };
    let config = merge(&handle.config(), body)?;
    handle.set_config(config.clone());
    Ok(Json(json!(config)))
}

async fn tts_records(State(state): State<AppState>) -> Json<Value> {
    Json(json!(TtsHandle { state: state.tts }.records()))
}

async fn timings(State(state): State<AppState>) -> Json<Value> {
    Json(json!(state.timings.report()))
}

async fn reset(State(state): State<AppState>) -> StatusCode {
    state.reset();
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_fields_left_out() {
        let config = TwilioConfig::default();
        let merged: TwilioConfig = merge(&config, json!({"jitter_buffer_ms": 40})).expect("merges");
        assert_eq!(merged.jitter_buffer_ms, 40);
        assert_eq!(merged.auth_token, config.auth_token);
        assert!(merge::<TwilioConfig>(&config, json!({"jitter_buffer_ms": "x"})).is_err());
    }
}
