//! Accounts and sessions: register, login, logout, me; admin role changes.

use worker::Response;

use super::{Call, RouteDef};
use crate::error::ApiError;

pub(super) const ROUTES: &[RouteDef] = &[];

pub(super) async fn handle(_route: &RouteDef, _call: Call) -> Result<Response, ApiError> {
    Err(ApiError::not_found())
}
