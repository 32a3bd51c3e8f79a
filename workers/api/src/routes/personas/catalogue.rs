//! The public catalogue: active personas and scenario templates, without their prompts.

use callmeback_domain::fields::is_slug;
use callmeback_gateway_api::OpCall;
use callmeback_gateway_api::ops::personas;
use serde_json::json;
use worker::Response;

use super::{persona_not_found, refine_not_found, single_row};
use crate::error::ApiError;
use crate::routes::{RouteRequest, json_response};
use crate::rows;

pub(super) async fn list_personas(request: RouteRequest) -> Result<Response, ApiError> {
    let result = request
        .ctx
        .gateway()?
        .call(&OpCall::of(&personas::LIST_ACTIVE))
        .await?;
    json_response(200, &json!({ "personas": rows::into_values(result) }))
}

pub(super) async fn get_persona(request: RouteRequest) -> Result<Response, ApiError> {
    let id = request.params.get("id");
    if !is_slug(id) {
        return Err(persona_not_found());
    }
    let op = get_persona_op(id);
    let result = request
        .ctx
        .gateway()?
        .call(&op)
        .await
        .map_err(ApiError::from)
        .map_err(|error| refine_not_found(error, persona_not_found))?;
    let persona = single_row(result)?;
    json_response(200, &json!({ "persona": persona }))
}

pub(super) async fn list_templates(request: RouteRequest) -> Result<Response, ApiError> {
    let result = request
        .ctx
        .gateway()?
        .call(&OpCall::of(&personas::TEMPLATES_LIST_ACTIVE))
        .await?;
    json_response(200, &json!({ "templates": rows::into_values(result) }))
}

fn get_persona_op(id: &str) -> OpCall {
    OpCall::of(&personas::GET_ACTIVE).param("id", id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_gateway_call_matches_its_spec() {
        for call in [
            OpCall::of(&personas::LIST_ACTIVE),
            OpCall::of(&personas::TEMPLATES_LIST_ACTIVE),
            get_persona_op("brad"),
        ] {
            assert_eq!(call.conforms(), Ok(()), "{}", call.op);
        }
    }
}
