//! Twilio's requests: the voice webhook (TwiML), status and answering-machine callbacks, and the
//! media stream's WebSocket.
//!
//! Every one is checked against `X-Twilio-Signature` (HMAC-SHA1 over the URL Twilio called and
//! its sorted form parameters, base64; with and without the port, as Twilio's own validator
//! does — see `callmeback_providers::twilio::signature`) and refused with 403
//! `invalid_signature` otherwise. The URL is the one the request arrived at: behind Cloudflare
//! that is the public URL Twilio was given.
//!
//! - `POST /twilio/voice/{call_id}`: the callee answered. The call's object opens STT and TTS at
//!   once (they are ready before the first audio), and Twilio gets
//!   `<Connect><Stream url="wss://…/twilio/media/{call_id}">` with a short-lived signed token as a
//!   `<Parameter>` (Twilio refuses query strings on stream URLs).
//! - `POST /twilio/status/{call_id}`, `POST /twilio/amd/{call_id}`: forwarded to the call's
//!   object, which keeps the status moving forward only and records the outcome.
//! - `GET /twilio/media/{call_id}`: the WebSocket upgrade, handed to the call's object, which
//!   accepts it and checks the stream token in the `start` message.

use callmeback_domain::calls::AnsweredBy;
use callmeback_domain::ids::prefix;
use callmeback_domain::is_valid_id;
use callmeback_providers::twilio::{rest, signature, twiml};
use worker::{Method, Request, RequestInit, Response};

use super::{RouteDef, RouteRequest, Service};
use crate::call_session::{self, AmdRequest, StatusRequest};
use crate::ctx::read_body;
use crate::error::ApiError;
use crate::session::Access;

const VOICE: &str = "twilioVoice";
const STATUS: &str = "twilioStatus";
const AMD: &str = "twilioAmd";
const MEDIA: &str = "twilioMedia";

pub(super) const ROUTES: &[RouteDef] = &[
    RouteDef::new(
        Method::Post,
        "/twilio/voice/{call_id}",
        Access::Public,
        Service::Twilio,
        VOICE,
    ),
    RouteDef::new(
        Method::Post,
        "/twilio/status/{call_id}",
        Access::Public,
        Service::Twilio,
        STATUS,
    ),
    RouteDef::new(
        Method::Post,
        "/twilio/amd/{call_id}",
        Access::Public,
        Service::Twilio,
        AMD,
    ),
    RouteDef::new(
        Method::Get,
        "/twilio/media/{call_id}",
        Access::Public,
        Service::Twilio,
        MEDIA,
    ),
];

/// Twilio's form posts are small; anything larger is not Twilio.
const MAX_FORM_BYTES: usize = 16 * 1024;

pub(super) async fn handle(
    route: &RouteDef,
    mut request: RouteRequest,
) -> Result<Response, ApiError> {
    let call_id = request.params.get("call_id").to_owned();
    if !is_valid_id(prefix::CALL, &call_id) {
        return Err(ApiError::not_found());
    }
    let telephony = request.ctx.config.telephony.get()?;
    let url = request.req.url()?.to_string();
    let header = request
        .req
        .headers()
        .get("x-twilio-signature")
        .ok()
        .flatten()
        .unwrap_or_default();
    if route.name == MEDIA {
        // A handshake has no body: the signature covers the URL alone.
        if !signature::is_valid(&telephony.auth_token, &url, &[], &header) {
            return Err(invalid_signature(&request, &call_id));
        }
        return media(request, &call_id).await;
    }
    let body = read_body(&mut request.req, MAX_FORM_BYTES).await?;
    let params = signature::parse_form(&body);
    if !signature::is_valid(&telephony.auth_token, &url, &params, &header) {
        return Err(invalid_signature(&request, &call_id));
    }
    match route.name {
        VOICE => voice(&request, &call_id).await,
        STATUS => status(&request, &call_id, &params).await,
        AMD => amd(&request, &call_id, &params).await,
        _ => Err(ApiError::not_found()),
    }
}

fn invalid_signature(request: &RouteRequest, call_id: &str) -> ApiError {
    worker::console_warn!(
        "request {}: Twilio signature refused for call {call_id}",
        request.ctx.request_id
    );
    ApiError::new(
        403,
        "invalid_signature",
        "the request is not signed by Twilio",
    )
}

async fn voice(request: &RouteRequest, call_id: &str) -> Result<Response, ApiError> {
    let namespace = request.ctx.env.durable_object(call_session::BINDING)?;
    let answered =
        call_session::send(&namespace, call_id, "/answered", &serde_json::json!({})).await;
    let known = answered
        .as_ref()
        .is_ok_and(|response| response.status_code() == 200);
    let xml = if known {
        let telephony = request.ctx.config.telephony.get()?;
        let url = request.req.url()?;
        let base = crate::placing::public_base_url(telephony, Some(&url))
            .ok_or_else(ApiError::internal)?;
        let stream_url = format!("{}/twilio/media/{call_id}", websocket_origin(&base));
        let token = callmeback_auth::capability::media_stream_token(
            &telephony.stream_secret,
            call_id,
            request.ctx.now_secs(),
        );
        twiml::connect_stream(&stream_url, &[("token", &token)])
    } else {
        // The call is unknown or over: end Twilio's leg rather than leave someone on a dead line.
        worker::console_warn!(
            "request {}: voice webhook for an unknown or ended call {call_id}",
            request.ctx.request_id
        );
        twiml::hang_up()
    };
    let response = Response::ok(xml)?;
    response
        .headers()
        .set("content-type", "text/xml; charset=utf-8")?;
    Ok(response)
}

/// `https://host` → `wss://host`, `http://host` → `ws://host` (local development).
fn websocket_origin(base: &str) -> String {
    if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    }
}

async fn status(
    request: &RouteRequest,
    call_id: &str,
    params: &[(String, String)],
) -> Result<Response, ApiError> {
    let Some(report) = rest::status_report(params) else {
        return Err(ApiError::bad_request(
            "invalid_callback",
            "CallSid and CallStatus are required",
        ));
    };
    let Some(status) = report.status else {
        worker::console_warn!(
            "request {}: call {call_id}: undocumented CallStatus ignored",
            request.ctx.request_id
        );
        return no_content();
    };
    forward(
        request,
        call_id,
        "/status",
        &StatusRequest {
            status,
            duration_secs: report.duration_secs,
            call_sid: report.call_sid,
        },
    )
    .await
}

async fn amd(
    request: &RouteRequest,
    call_id: &str,
    params: &[(String, String)],
) -> Result<Response, ApiError> {
    let raw = params
        .iter()
        .find(|(name, _)| name == "AnsweredBy")
        .map(|(_, value)| value.clone())
        .ok_or_else(|| ApiError::bad_request("invalid_callback", "AnsweredBy is required"))?;
    let answered_by = AnsweredBy::from_twilio(&raw);
    forward(request, call_id, "/amd", &AmdRequest { answered_by, raw }).await
}

async fn forward<T: serde::Serialize>(
    request: &RouteRequest,
    call_id: &str,
    path: &str,
    body: &T,
) -> Result<Response, ApiError> {
    let namespace = request.ctx.env.durable_object(call_session::BINDING)?;
    let response = call_session::send(&namespace, call_id, path, body).await?;
    if response.status_code() == 404 {
        // An unknown or already recorded call: nothing to do, and nothing for Twilio to retry.
        worker::console_warn!(
            "request {}: callback for unknown call {call_id}",
            request.ctx.request_id
        );
    } else if response.status_code() != 200 {
        worker::console_error!(
            "request {}: call {call_id} refused a callback ({})",
            request.ctx.request_id,
            response.status_code()
        );
        return Err(ApiError::internal());
    }
    no_content()
}

fn no_content() -> Result<Response, ApiError> {
    Ok(Response::empty()?.with_status(204))
}

async fn media(request: RouteRequest, call_id: &str) -> Result<Response, ApiError> {
    let upgrade = request
        .req
        .headers()
        .get("upgrade")
        .ok()
        .flatten()
        .unwrap_or_default();
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return Err(ApiError::new(
            426,
            "upgrade_required",
            "this route is a WebSocket",
        ));
    }
    let namespace = request.ctx.env.durable_object(call_session::BINDING)?;
    let mut init = RequestInit::new();
    init.with_method(Method::Get)
        .with_headers(request.req.headers().clone());
    let forwarded = Request::new_with_init("https://call.internal/media", &init)?;
    let response = call_session::stub(&namespace, call_id)?
        .fetch_with_request(forwarded)
        .await?;
    if response.status_code() == 101 {
        return Ok(response);
    }
    Err(match response.status_code() {
        404 => ApiError::not_found(),
        _ => ApiError::new(
            409,
            "stream_refused",
            "the call does not accept a media stream now",
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_urls_use_the_websocket_scheme_of_the_origin() {
        assert_eq!(
            websocket_origin("https://api.example.com"),
            "wss://api.example.com"
        );
        assert_eq!(
            websocket_origin("http://127.0.0.1:8787"),
            "ws://127.0.0.1:8787"
        );
    }
}
