//! The caller's relationships with personas: `GET /api/me/personas` and
//! `PUT /api/personas/{id}/relationship`. The owner is always the session's user.

use callmeback_domain::fields::{is_slug, parse_query_bool};
use callmeback_domain::ids::{new_id, prefix};
use callmeback_domain::personas::{RelationshipPatchBody, relationship_patch_params};
use callmeback_domain::{FieldError, FieldErrors};
use callmeback_gateway_api::OpCall;
use callmeback_gateway_api::ops::personas;
use serde_json::{Map, Value, json};
use worker::Response;

use super::{persona_not_found, refine_not_found};
use crate::ctx::read_json;
use crate::error::ApiError;
use crate::routes::{RouteRequest, json_response, random_16};
use crate::rows;
use crate::session::authed_call;

/// `GET /api/me/personas?favorite=true&archived=true`: `favorite=true` lists favourites only;
/// `archived=true` also lists archived relationships (hidden by default). `false` is the same as
/// leaving the parameter out. Other query parameters are ignored.
pub(super) async fn list_mine(request: RouteRequest) -> Result<Response, ApiError> {
    let session = request.session()?;
    let url = request.req.url()?;
    let mut errors = FieldErrors::new();
    let mut favorites_only = false;
    let mut include_archived = false;
    for (key, value) in url.query_pairs() {
        let target = match key.as_ref() {
            "favorite" => &mut favorites_only,
            "archived" => &mut include_archived,
            _ => continue,
        };
        match parse_query_bool(&value) {
            Some(flag) => *target = flag,
            None => errors.add(
                &key,
                FieldError::new("invalid_type", "must be true or false"),
            ),
        }
    }
    errors.into_result().map_err(ApiError::validation_failed)?;

    let op = list_op(session.user_id(), favorites_only, include_archived);
    let result = authed_call(&request.ctx, session, op).await?;
    let relationships = result
        .rows
        .iter()
        .map(relationship_json)
        .collect::<Result<Vec<_>, _>>()?;
    json_response(200, &json!({ "relationships": relationships }))
}

pub(super) async fn put(mut request: RouteRequest) -> Result<Response, ApiError> {
    let persona_id = request.params.get("id").to_owned();
    let body: RelationshipPatchBody = read_json(&mut request.req).await?;
    if !is_slug(&persona_id) {
        return Err(persona_not_found());
    }
    let params = relationship_patch_params(body).map_err(ApiError::validation_failed)?;
    let session = request.session()?;
    let id = new_id(prefix::PERSONA_RELATIONSHIP, random_16()?);
    let op = upsert_op(&id, session.user_id(), &persona_id, params);
    let result = authed_call(&request.ctx, session, op)
        .await
        .map_err(|error| refine_not_found(error, persona_not_found))?;
    let row = rows::first_row(&result)?;
    json_response(200, &json!({ "relationship": relationship_json(row)? }))
}

fn list_op(user_id: &str, favorites_only: bool, include_archived: bool) -> OpCall {
    OpCall::of(&personas::LIST_FOR_USER)
        .param("user_id", user_id)
        .param("favorites_only", favorites_only)
        .param("include_archived", include_archived)
}

/// `patch` is what `relationship_patch_params` validated (with `set_fields`).
fn upsert_op(id: &str, user_id: &str, persona_id: &str, patch: Map<String, Value>) -> OpCall {
    OpCall::of(&personas::UPSERT)
        .param("id", id)
        .param("user_id", user_id)
        .param("persona_id", persona_id)
        .with_params(patch)
}

/// A relationship row of the gateway as the API shows it: the persona's public fields nested
/// under `persona`, the total duration as a number (it is BIGINT, so it crosses the gateway as a
/// digit string; seconds of talk stay far below 2^53).
fn relationship_json(row: &Map<String, Value>) -> Result<Value, ApiError> {
    let mut persona = Map::new();
    persona.insert(
        "id".to_owned(),
        row.get("persona_id").cloned().unwrap_or(Value::Null),
    );
    let mut relationship = Map::new();
    for (key, value) in row {
        match key.strip_prefix("persona_") {
            Some("id") => {
                relationship.insert(key.clone(), value.clone());
            }
            Some(public_field) => {
                persona.insert(public_field.to_owned(), value.clone());
            }
            None if key == "total_duration_seconds" => {
                relationship.insert(key.clone(), json!(rows::int(row, key)?));
            }
            None => {
                relationship.insert(key.clone(), value.clone());
            }
        }
    }
    relationship.insert("persona".to_owned(), Value::Object(persona));
    Ok(Value::Object(relationship))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relationship_rows_nest_the_persona_and_count_seconds_as_numbers() {
        let row = json!({
            "id": "rel_1", "persona_id": "brad", "relationship_type": "coach",
            "total_calls": 3, "total_duration_seconds": "9007199254740",
            "persona_name": "Brad", "persona_default_voice_settings": {"speed": 1.0},
        });
        let Value::Object(row) = row else {
            unreachable!()
        };
        let shaped = relationship_json(&row).expect("well-formed");
        assert_eq!(
            shaped["total_duration_seconds"],
            json!(9_007_199_254_740_i64)
        );
        assert_eq!(
            shaped["persona"],
            json!({"id": "brad", "name": "Brad", "default_voice_settings": {"speed": 1.0}})
        );
        assert_eq!(shaped["persona_id"], json!("brad"));
        assert!(shaped.get("persona_name").is_none());
    }

    #[test]
    fn every_gateway_call_matches_its_spec() {
        let patch: RelationshipPatchBody =
            serde_json::from_value(json!({"is_favorite": true, "voice_id": null})).unwrap();
        let patch = relationship_patch_params(patch).expect("valid");
        for call in [
            list_op("usr_1", true, false),
            upsert_op("rel_1", "usr_1", "brad", patch),
        ] {
            assert_eq!(call.conforms(), Ok(()), "{}", call.op);
        }
    }
}
