//! `POST /v1/op` and `POST /v1/batch`.
//!
//! Both parse the (already verified) body exactly once, resolve each operation in the
//! registry (404), check the key's scopes (403), bind parameters (400), and only then touch the
//! pool. A batch is validated completely before its transaction starts, so a typo in the last
//! operation costs no database work.
//!
//! A single pipelinable read (`OpDef::is_pipelinable`) runs on the shared connections of
//! `crate::pipeline` and falls back to the pool when none can take it; everything else runs on
//! the pool.
//!
//! Password parameters are hashed after validation and before the pool is touched (see
//! `ops::password`), so no connection is held while a hash is computed. Procedures
//! (`ops::ProcedureDef`) are answered by `/v1/op` only.
//!
//! Replay protection (`crate::replay`): a request that only reads must be vouched for by the
//! process memory; a request that writes claims its nonce in the database (`db` does it inside
//! the write's transaction; a procedure claims it before it runs).

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use callmeback_gateway_api::{BatchRequest, OpCall};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::AppState;
use super::auth::SignedBody;
use super::observe::{OpLabel, RequestOutcome};
use crate::error::ApiError;
use crate::ops::password::hash_new_passwords;
use crate::ops::{Mode, RegisteredOp};
use crate::pipeline::SharedRead;
use crate::statement::params::{bind, bind_declared};
use crate::{MAX_BATCH_OPS, db, replay};

/// Longest unknown operation name echoed back in an error.
const MAX_ECHOED_OP_NAME: usize = 64;

pub(super) async fn single(State(state): State<AppState>, signed: SignedBody) -> Response {
    let mut outcome = RequestOutcome::authenticated(signed.key_id.clone());
    let result = run_single(&state, &signed, &mut outcome).await;
    respond(result, outcome)
}

pub(super) async fn batch(State(state): State<AppState>, signed: SignedBody) -> Response {
    let mut outcome = RequestOutcome::authenticated(signed.key_id.clone());
    let result = run_batch(&state, &signed, &mut outcome).await;
    respond(result, outcome)
}

pub(super) async fn not_found() -> Response {
    ApiError::NotFound.into_response()
}

async fn run_single(
    state: &AppState,
    signed: &SignedBody,
    outcome: &mut RequestOutcome,
) -> Result<Vec<u8>, ApiError> {
    let call: OpCall = parse_body(&signed.body, "OpCall")?;
    if let Some(procedure) = state.registry.procedure(&call.op) {
        outcome.op = OpLabel::Single(procedure.name());
        authorize(state, &signed.key_id, procedure.name())?;
        let params = bind_declared(procedure.params(), &call.params)
            .map_err(|error| ApiError::InvalidParams(error.to_string()))?;
        if procedure
            .statements
            .iter()
            .any(|statement| statement.mode == Mode::Write)
        {
            replay::claim_alone(&state.pool, signed.claim()).await?;
        } else {
            signed.require_remembered(state)?;
        }
        let output = (procedure.run)(&state.pool, &params).await?;
        return to_json(&output);
    }
    let RegisteredOp { def: op, index } = resolve(state, &call.op)?;
    outcome.op = OpLabel::Single(op.name());
    authorize(state, &signed.key_id, op.name())?;
    if op.mode == Mode::Read {
        signed.require_remembered(state)?;
    }
    let mut params =
        bind(op, &call.params).map_err(|error| ApiError::InvalidParams(error.to_string()))?;
    hash_new_passwords(&mut params).await?;
    if state.reads.accepts(index)
        && let SharedRead::Done(result) = state.reads.run(index, &params).await
    {
        return to_json(&result?);
    }
    let output = db::run_single(&state.pool, op, &params, signed.claim()).await?;
    to_json(&output)
}

async fn run_batch(
    state: &AppState,
    signed: &SignedBody,
    outcome: &mut RequestOutcome,
) -> Result<Vec<u8>, ApiError> {
    let request: BatchRequest = parse_body(&signed.body, "BatchRequest")?;
    outcome.op = OpLabel::Batch(Vec::with_capacity(request.ops.len()));
    if request.ops.is_empty() {
        return Err(ApiError::BadRequest(
            "a batch needs at least one operation".to_owned(),
        ));
    }
    if request.ops.len() > MAX_BATCH_OPS {
        return Err(ApiError::BadRequest(format!(
            "a batch may hold at most {MAX_BATCH_OPS} operations"
        )));
    }
    let mut calls = Vec::with_capacity(request.ops.len());
    for (index, call) in request.ops.iter().enumerate() {
        if state.registry.is_procedure(&call.op) {
            return Err(ApiError::BadRequest(format!(
                "operation `{}` runs on its own, not in a batch",
                call.op
            ))
            .at(index));
        }
        let op = resolve(state, &call.op)
            .map_err(|error| error.at(index))?
            .def;
        if let OpLabel::Batch(names) = &mut outcome.op {
            names.push(op.name());
        }
        authorize(state, &signed.key_id, op.name()).map_err(|error| error.at(index))?;
        let params = bind(op, &call.params)
            .map_err(|error| ApiError::InvalidParams(error.to_string()).at(index))?;
        calls.push((op, params));
    }
    if calls.iter().all(|(op, _)| op.mode == Mode::Read) {
        signed.require_remembered(state)?;
    }
    for (index, (_, params)) in calls.iter_mut().enumerate() {
        hash_new_passwords(params)
            .await
            .map_err(|error| error.at(index))?;
    }
    let output = db::run_batch(&state.pool, &calls, signed.claim()).await?;
    to_json(&output)
}

fn resolve(state: &AppState, name: &str) -> Result<RegisteredOp, ApiError> {
    state.registry.resolve(name).ok_or_else(|| {
        let echoed: String = name.chars().take(MAX_ECHOED_OP_NAME).collect();
        ApiError::UnknownOperation(echoed)
    })
}

fn authorize(state: &AppState, key_id: &str, op: &'static str) -> Result<(), ApiError> {
    let allowed = state
        .keys
        .get(key_id)
        .is_some_and(|entry| entry.scopes.allows(op));
    if allowed {
        Ok(())
    } else {
        state
            .metrics
            .record_auth_failure(callmeback_gateway_api::codes::FORBIDDEN);
        Err(ApiError::Forbidden {
            key_id: key_id.to_owned(),
            op,
        })
    }
}

/// serde's own messages can quote the offending value, so only its category and position are
/// reported.
fn parse_body<T: DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| {
        let category = match error.classify() {
            serde_json::error::Category::Syntax => "invalid JSON",
            serde_json::error::Category::Eof => "truncated JSON",
            serde_json::error::Category::Data => "unexpected fields or types",
            serde_json::error::Category::Io => "unreadable body",
        };
        ApiError::BadRequest(format!(
            "body is not a valid {shape}: {category} at line {} column {}",
            error.line(),
            error.column()
        ))
    })
}

/// Typical single-row answers fit without growing the buffer.
const RESPONSE_CAPACITY: usize = 256;

fn to_json(value: &impl Serialize) -> Result<Vec<u8>, ApiError> {
    let mut json = Vec::with_capacity(RESPONSE_CAPACITY);
    serde_json::to_writer(&mut json, value)
        .map_err(|error| ApiError::Internal(format!("response encoding failed: {error}")))?;
    Ok(json)
}

fn respond(result: Result<Vec<u8>, ApiError>, outcome: RequestOutcome) -> Response {
    let mut response = match result {
        Ok(json) => {
            let mut response = Response::new(Body::from(json));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            *response.status_mut() = StatusCode::OK;
            response
        }
        Err(error) => {
            if let Some(detail) = error.log_detail() {
                tracing::error!(detail = %detail, code = error.code(), "request failed");
            }
            error.into_response()
        }
    };
    response.extensions_mut().insert(outcome);
    response
}
