//! The app's live channel (a WebSocket per device; see [`crate::live`] for what flows on it).
//!
//! - `GET /api/live` upgrades to the WebSocket. It is authenticated either by the usual
//!   `Authorization: Bearer <token>` header (native apps) or, for browsers — which cannot set
//!   headers on a WebSocket — by `?ticket=` from `POST /api/live/ticket`. Either way the session
//!   is checked against the database (not revoked, account active) before the upgrade.
//! - `POST /api/live/ticket` trades the session for a ticket: signed, valid 60 seconds, single use,
//!   naming the session so that logging out closes the socket it opened.

use callmeback_auth::capability;
use callmeback_gateway_api::OpCall;
use callmeback_gateway_api::ops::auth as auth_ops;
use serde_json::json;
use worker::{Method, Response};

use super::{RouteDef, RouteRequest, Service, json_response};
use crate::error::ApiError;
use crate::live::{self, ConnectInfo};
use crate::session::{self, Access, authed_batch};

const CONNECT: &str = "connectLive";
const TICKET: &str = "createLiveTicket";

pub(super) const ROUTES: &[RouteDef] = &[
    // Public in the table: the handler authenticates by header or ticket itself.
    RouteDef::new(
        Method::Get,
        "/api/live",
        Access::Public,
        Service::Live,
        CONNECT,
    ),
    RouteDef::new(
        Method::Post,
        "/api/live/ticket",
        Access::User,
        Service::Live,
        TICKET,
    ),
];

pub(super) async fn handle(route: &RouteDef, request: RouteRequest) -> Result<Response, ApiError> {
    match route.name {
        CONNECT => connect(request).await,
        TICKET => ticket(request).await,
        _ => Err(ApiError::not_found()),
    }
}

async fn ticket(request: RouteRequest) -> Result<Response, ApiError> {
    let session = request.session()?;
    // The session must still be valid now, not just when its token was signed.
    authed_batch(&request.ctx, session, Vec::new()).await?;
    let secret = &request.ctx.config.telephony.get()?.stream_secret;
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|_| ApiError::internal())?;
    let now = request.ctx.now_secs();
    let ticket = capability::live_ticket(
        secret,
        session.user_id(),
        &session.claims.jti,
        session.expires_at,
        &hex::encode(nonce),
        now,
    );
    json_response(
        201,
        &json!({
            "ticket": ticket,
            "expires_at": crate::time::rfc3339_secs(now + capability::LIVE_TICKET_TTL_SECS),
            "url": format!("/api/live?ticket={ticket}"),
        }),
    )
}

async fn connect(request: RouteRequest) -> Result<Response, ApiError> {
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
    let ticket = request
        .req
        .url()?
        .query_pairs()
        .find(|(key, _)| key == "ticket")
        .map(|(_, value)| value.into_owned());
    let info = match ticket {
        Some(ticket) => {
            let secret = &request.ctx.config.telephony.get()?.stream_secret;
            let ticket = capability::verify_live_ticket(secret, &ticket, request.ctx.now_secs())
                .map_err(|reason| {
                    worker::console_log!(
                        "request {}: live ticket refused ({reason})",
                        request.ctx.request_id
                    );
                    session::unauthorized()
                })?;
            let check = OpCall::of(&auth_ops::SESSION_CHECK)
                .param("user_id", ticket.user_id.as_str())
                .param("jti", ticket.jti.as_str());
            match request.ctx.gateway()?.call(&check).await {
                Ok(_) => {}
                Err(crate::gateway::GatewayError::Rejected { code, .. })
                    if code == callmeback_gateway_api::codes::PRECONDITION_FAILED =>
                {
                    return Err(session::unauthorized());
                }
                Err(error) => return Err(error.into()),
            }
            ConnectInfo {
                user_id: ticket.user_id,
                jti: ticket.jti,
                expires_at: ticket.session_expires_at,
                ticket_nonce: Some(ticket.nonce),
                ticket_expires_at: Some(ticket.expires_at),
            }
        }
        None => {
            let session = session::authenticate(&request.ctx, &request.req, Access::User)?;
            authed_batch(&request.ctx, &session, Vec::new()).await?;
            ConnectInfo {
                user_id: session.user_id().to_owned(),
                jti: session.claims.jti.clone(),
                expires_at: session.expires_at,
                ticket_nonce: None,
                ticket_expires_at: None,
            }
        }
    };
    let response = live::connect(&request.ctx.env, request.req, &info).await?;
    match response.status_code() {
        101 => Ok(response),
        409 => Err(ApiError::new(
            401,
            "unauthorized",
            "this ticket was already used",
        )),
        status => {
            worker::console_error!(
                "request {}: live hub answered {status}",
                request.ctx.request_id
            );
            Err(ApiError::internal())
        }
    }
}
