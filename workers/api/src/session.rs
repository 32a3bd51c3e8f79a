//! Sessions: who is calling, checked without an extra gateway round trip.
//!
//! A session token (JWT HS256, see `callmeback-auth`) is verified in the Worker: signature, key id,
//! algorithm, expiry. Revocation (logout), account deactivation and the admin role live in the
//! database, so [`authed_batch`] puts `auth.session_check` (and for admin routes
//! `auth.require_admin`) in front of the request's own operations in ONE gateway batch. A revoked
//! token is therefore refused on its very next request, and the check costs no round trip of its
//! own; if it fails, the batch rolls back and nothing else ran.

use callmeback_auth::{Role, SessionClaims};
use callmeback_gateway_api::ops::auth;
use callmeback_gateway_api::{OpCall, OpResult, codes};
use worker::Request;

use crate::ctx::RequestCtx;
use crate::error::ApiError;
use crate::gateway::GatewayError;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Public,
    /// A signed-in user (a valid, unrevoked session token).
    User,
    /// A signed-in user whose role is `admin` (checked against the database).
    Admin,
}

/// A verified caller.
#[derive(Debug, Clone)]
pub struct Session {
    pub claims: SessionClaims,
    pub expires_at: i64,
    pub access: Access,
}

impl Session {
    pub fn user_id(&self) -> &str {
        &self.claims.sub
    }

    /// The operations that must succeed before this session's own operations run.
    fn guard_ops(&self) -> Vec<OpCall> {
        let mut ops = vec![
            OpCall::of(&auth::SESSION_CHECK)
                .param("user_id", self.claims.sub.as_str())
                .param("jti", self.claims.jti.as_str()),
        ];
        if self.access == Access::Admin {
            ops.push(OpCall::of(&auth::REQUIRE_ADMIN).param("user_id", self.claims.sub.as_str()));
        }
        ops
    }
}

/// The one answer for every token problem: which check failed is never revealed.
pub fn unauthorized() -> ApiError {
    ApiError::new(
        401,
        "unauthorized",
        "missing, invalid or expired session token",
    )
}

pub fn forbidden() -> ApiError {
    ApiError::new(403, "forbidden", "this route needs the admin role")
}

/// Verifies the bearer token of a request for a route with the given access level.
pub fn authenticate(ctx: &RequestCtx, req: &Request, access: Access) -> Result<Session, ApiError> {
    let header = req
        .headers()
        .get("authorization")
        .ok()
        .flatten()
        .ok_or_else(unauthorized)?;
    let token = header
        .strip_prefix("Bearer ")
        .ok_or_else(unauthorized)?
        .trim();
    // The keyring is parsed once per isolate (see `crate::config`), not per request.
    let verified = ctx
        .config
        .jwt
        .get()?
        .verify(token, ctx.now_secs())
        .map_err(|reason| {
            worker::console_log!(
                "request {}: token refused ({})",
                ctx.request_id,
                reason.code()
            );
            unauthorized()
        })?;
    // The database has the final word on the role (see `authed_batch`), but a token that does not
    // even claim admin can be turned away without a round trip.
    if access == Access::Admin && verified.claims.role != Role::Admin {
        return Err(forbidden());
    }
    Ok(Session {
        claims: verified.claims,
        expires_at: verified.expires_at,
        access,
    })
}

/// Runs `ops` in one transaction behind the session's guard operations, returning only the
/// results of `ops`.
pub async fn authed_batch(
    ctx: &RequestCtx,
    session: &Session,
    ops: Vec<OpCall>,
) -> Result<Vec<OpResult>, ApiError> {
    let mut batch = session.guard_ops();
    let guards = batch.len();
    batch.extend(ops);
    match ctx.gateway()?.batch(batch).await {
        Ok(response) => Ok(response.results.into_iter().skip(guards).collect()),
        Err(GatewayError::Rejected {
            code,
            op_index: Some(index),
            ..
        }) if index < guards && code == codes::PRECONDITION_FAILED => Err(if index == 0 {
            unauthorized()
        } else {
            forbidden()
        }),
        Err(GatewayError::Rejected {
            status,
            code,
            message,
            op_index: Some(index),
        }) if index >= guards => Err(ApiError::from(GatewayError::Rejected {
            status,
            code,
            message,
            op_index: Some(index - guards),
        })),
        Err(other) => Err(ApiError::from(other)),
    }
}

/// Like [`authed_batch`] for a single operation.
pub async fn authed_call(
    ctx: &RequestCtx,
    session: &Session,
    op: OpCall,
) -> Result<OpResult, ApiError> {
    let mut results = authed_batch(ctx, session, vec![op]).await?;
    results.pop().ok_or_else(ApiError::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_calls_match_their_specs() {
        let session = |access| Session {
            claims: SessionClaims {
                jti: "tok_1".to_owned(),
                sub: "usr_1".to_owned(),
                email: "ada@example.com".to_owned(),
                role: Role::Admin,
            },
            expires_at: 1_800_000_000,
            access,
        };
        assert_eq!(session(Access::User).guard_ops().len(), 1);
        let admin = session(Access::Admin).guard_ops();
        assert_eq!(admin.len(), 2);
        for call in admin {
            assert_eq!(call.conforms(), Ok(()), "{}", call.op);
        }
    }
}
