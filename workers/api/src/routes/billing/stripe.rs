//! `POST /api/webhooks/stripe`: purchases, subscription refills and cancellations.
//!
//! The signature is checked on the raw body against every secret in `STRIPE_WEBHOOK_SECRETS`
//! (comma-separated, so a secret can be rotated), with Stripe's 300 s tolerance. A forged or
//! malformed signature answers 400 `invalid_signature`; a genuine but old one answers 400
//! `stale_signature` (the domain check reports staleness only after the signature matched, so the
//! distinction tells an attacker nothing, and it tells an operator the clock or a replay is at
//! fault). The event id is recorded in `processed_webhook_events` in the same gateway transaction
//! as the event's effect: a replay answers 200 `{received: true, duplicate: true}` and changes
//! nothing.
//!
//! Which events are acted on, and the metadata contract the checkout code must follow, is
//! `callmeback_domain::stripe_events`. Events whose `livemode` is not this deployment's
//! (`STRIPE_LIVEMODE`, default `false`) answer 200 `{received: true, ignored: true, reason:
//! "livemode_mismatch"}`. Subscription events are applied against the subscription's own history
//! (see `subscriptions.refill` and `subscriptions.end` in the gateway), so arrival order does not
//! matter: one that is older than what is known, or repeats it, changes nothing and answers 200
//! `{received: true, ignored: true, reason: "stale_event"}`. Other event types answer 200 `{received: true, ignored:
//! true}`. So do acted-on events that cannot be applied (no such user, metadata missing or
//! invalid, a subscription checkout whose invoice does the work): Stripe would otherwise retry them
//! for days, and a retry cannot fix them. They are logged with the event id and a reason (never
//! personal data) for an operator to reconcile. A body that is not JSON, or not an event, after a
//! valid signature answers 400.

use callmeback_domain::ids::{new_id, prefix};
use callmeback_domain::stripe::DEFAULT_TOLERANCE_SECS;
use callmeback_domain::stripe_events::{
    StripeAction, StripeEvent, parse_stripe_event, plan_stripe_event,
};
use callmeback_domain::{StripeSigError, Tier, verify_stripe_signature};
use callmeback_gateway_api::ops::billing;
use callmeback_gateway_api::{OpCall, codes};
use serde_json::{Value, json};
use worker::Response;

use crate::ctx::read_body;
use crate::error::ApiError;
use crate::gateway::GatewayError;
use crate::routes::{RouteRequest, json_response, random_16};
use crate::time::rfc3339_secs;

/// Stripe events are small, but an invoice with many lines is larger than a typical API body.
const MAX_WEBHOOK_BYTES: usize = 256 * 1024;

pub(super) async fn webhook(mut request: RouteRequest) -> Result<Response, ApiError> {
    let ctx = &request.ctx;
    let header = request
        .req
        .headers()
        .get("stripe-signature")
        .ok()
        .flatten()
        .ok_or_else(invalid_signature)?;
    let stripe = ctx.config.stripe.get()?;
    let secrets = stripe.webhook_secrets();

    let body = read_body(&mut request.req, MAX_WEBHOOK_BYTES).await?;

    verify_stripe_signature(
        &header,
        &body,
        &secrets,
        ctx.now_secs(),
        DEFAULT_TOLERANCE_SECS,
    )
    .map_err(|error| {
        worker::console_log!(
            "request {}: stripe webhook refused ({})",
            ctx.request_id,
            error.code()
        );
        match error {
            StripeSigError::Stale => ApiError::bad_request(
                "stale_signature",
                "the signature timestamp is outside the tolerance",
            ),
            _ => invalid_signature(),
        }
    })?;

    let event = parse_stripe_event(&body)
        .map_err(|error| ApiError::bad_request(error.code(), error.to_string()))?;
    let action = plan_stripe_event(&event, stripe.livemode);
    if let StripeAction::Ignore { reason } = action {
        worker::console_log!(
            "request {}: stripe event {} ({}) ignored: {reason}",
            ctx.request_id,
            event.id,
            event.kind
        );
        return json_response(
            200,
            &json!({"received": true, "ignored": true, "reason": reason}),
        );
    }
    let Some(ops) = action_ops(&event, &action, random_16()?) else {
        worker::console_error!(
            "stripe event {}: no operations for an applicable action",
            event.id
        );
        return Err(ApiError::internal());
    };

    match ctx.gateway()?.batch(ops).await {
        Ok(response) => {
            let effect = response.results.get(1);
            if matches!(action, StripeAction::Purchase { .. })
                && effect.is_some_and(|result| result.row_count == 0)
            {
                // The other event of the same purchase got there first.
                worker::console_log!(
                    "request {}: stripe event {}: payment already credited",
                    ctx.request_id,
                    event.id
                );
                return json_response(200, &json!({"received": true, "duplicate": true}));
            }
            let outcome = effect
                .and_then(|result| result.first())
                .map(subscription_outcome)
                .unwrap_or_default();
            if let Some(outcome) = outcome {
                worker::console_log!(
                    "request {}: stripe event {} ({}): {outcome}",
                    ctx.request_id,
                    event.id,
                    event.kind
                );
                if outcome == SubscriptionOutcome::Nothing {
                    return json_response(
                        200,
                        &json!({"received": true, "ignored": true, "reason": "stale_event"}),
                    );
                }
            } else {
                worker::console_log!(
                    "request {}: stripe event {} ({}) applied",
                    ctx.request_id,
                    event.id,
                    event.kind
                );
            }
            json_response(200, &json!({"received": true}))
        }
        Err(error) => match webhook_failure(&action, &error) {
            Some(body) => {
                worker::console_log!(
                    "request {}: stripe event {} ({}): {}",
                    ctx.request_id,
                    event.id,
                    event.kind,
                    body.get("reason")
                        .and_then(Value::as_str)
                        .unwrap_or("duplicate")
                );
                json_response(200, &body)
            }
            None => Err(ApiError::from(error)),
        },
    }
}

/// What a subscription event did, from the row `subscriptions.refill` / `subscriptions.end`
/// answer with (`None` for other effects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubscriptionOutcome {
    /// The period's credits were added and the subscription moved to this invoice.
    RefilledAndActivated,
    /// The period's credits were added; the subscription already knew something newer (or had
    /// ended), so tier and limits stayed.
    RefilledOnly,
    /// The subscription moved to this invoice; the period had been refilled already.
    ActivatedOnly,
    /// The subscription ended and the user is back on the free tier.
    Ended,
    /// Older than what is known (or a repeat): nothing changed.
    Nothing,
}

impl std::fmt::Display for SubscriptionOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::RefilledAndActivated => "period refilled, subscription updated",
            Self::RefilledOnly => "period refilled, subscription state kept (newer state known)",
            Self::ActivatedOnly => "subscription updated, period already refilled",
            Self::Ended => "subscription ended",
            Self::Nothing => "older than the subscription's known state: nothing changed",
        })
    }
}

fn subscription_outcome(row: &serde_json::Map<String, Value>) -> Option<SubscriptionOutcome> {
    let flag = |name: &str| row.get(name).and_then(Value::as_bool);
    if let Some(ended) = flag("ended") {
        return Some(if ended {
            SubscriptionOutcome::Ended
        } else {
            SubscriptionOutcome::Nothing
        });
    }
    Some(match (flag("refilled")?, flag("activated")?) {
        (true, true) => SubscriptionOutcome::RefilledAndActivated,
        (true, false) => SubscriptionOutcome::RefilledOnly,
        (false, true) => SubscriptionOutcome::ActivatedOnly,
        (false, false) => SubscriptionOutcome::Nothing,
    })
}

/// How a refused webhook batch is answered when it is not a real failure: a replayed event id
/// (op 0) or a duplicate purchase racing in under another event id are duplicates; a user or
/// subscription that does not exist is ignored (a retry cannot fix it). Anything else is an
/// error Stripe should retry.
fn webhook_failure(action: &StripeAction, error: &GatewayError) -> Option<Value> {
    let GatewayError::Rejected { code, op_index, .. } = error else {
        return None;
    };
    match (op_index, code.as_str(), action) {
        (Some(0), codes::PRECONDITION_FAILED, _) => {
            Some(json!({"received": true, "duplicate": true}))
        }
        (Some(1), codes::CONFLICT, StripeAction::Purchase { .. }) => {
            Some(json!({"received": true, "duplicate": true}))
        }
        (Some(1), codes::FOREIGN_KEY_VIOLATION, StripeAction::Purchase { .. }) => {
            Some(json!({"received": true, "ignored": true, "reason": "unknown_user"}))
        }
        (Some(1), codes::PRECONDITION_FAILED, StripeAction::SubscriptionPaid { .. }) => {
            Some(json!({"received": true, "ignored": true, "reason": "unknown_user"}))
        }
        (Some(1), codes::PRECONDITION_FAILED, StripeAction::SubscriptionEnded { .. }) => {
            Some(json!({"received": true, "ignored": true, "reason": "unknown_subscription"}))
        }
        _ => None,
    }
}

/// The gateway operations an action needs, `webhooks.record_event` first; `None` for nothing.
fn action_ops(event: &StripeEvent, action: &StripeAction, random: [u8; 16]) -> Option<Vec<OpCall>> {
    let record = OpCall::of(&billing::WEBHOOKS_RECORD_EVENT)
        .param("provider", "stripe")
        .param("event_id", event.id.as_str())
        .param("event_type", event.kind.as_str());
    let transaction_id = new_id(prefix::CREDIT_TRANSACTION, random);
    let effect = match action {
        StripeAction::Ignore { .. } => return None,
        StripeAction::Purchase {
            user_id,
            credits,
            payment_intent_id,
        } => OpCall::of(&billing::CREDITS_ADD)
            .param("user_id", user_id.as_str())
            .param("amount", *credits)
            .param("type", "purchase")
            .param("transaction_id", transaction_id)
            .param("payment_intent_id", payment_intent_id.as_str())
            .param("description", format!("Purchase of {credits} credits")),
        StripeAction::SubscriptionPaid {
            user_id,
            customer_id,
            subscription_id,
            tier,
            period: (start, end),
            event_created,
        } => {
            let limits = tier.limits();
            let monthly = limits.monthly_credits.unwrap_or(0);
            OpCall::of(&billing::SUBSCRIPTIONS_REFILL)
                .param("user_id", user_id.clone())
                .param("stripe_customer_id", customer_id.clone())
                .param("subscription_id", subscription_id.as_str())
                .param("tier", tier.as_str())
                .param("monthly_credits", monthly)
                .param("max_calls_per_day", limits.calls_per_day)
                .param("max_call_seconds", limits.max_call_seconds)
                .param("transaction_id", transaction_id)
                .param(
                    "description",
                    format!("{tier} subscription: {monthly} monthly credits"),
                )
                .param("period_start", rfc3339_secs(*start)?)
                .param("period_end", rfc3339_secs(*end)?)
                .param("event_created", rfc3339_secs(*event_created)?)
        }
        StripeAction::SubscriptionEnded {
            user_id,
            customer_id,
            subscription_id,
            ended_at,
            event_created,
        } => {
            let free = Tier::Free;
            let limits = free.limits();
            OpCall::of(&billing::SUBSCRIPTIONS_END)
                .param("subscription_id", subscription_id.as_str())
                .param("user_id", user_id.clone())
                .param("stripe_customer_id", customer_id.clone())
                .param("tier", free.as_str())
                .param("monthly_credits", limits.monthly_credits.unwrap_or(0))
                .param("max_calls_per_day", limits.calls_per_day)
                .param("max_call_seconds", limits.max_call_seconds)
                .param("ended_at", rfc3339_secs(*ended_at)?)
                .param("event_created", rfc3339_secs(*event_created)?)
        }
    };
    Some(vec![record, effect])
}

fn invalid_signature() -> ApiError {
    ApiError::bad_request(
        "invalid_signature",
        "the Stripe-Signature header is missing or does not match",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, object: Value) -> StripeEvent {
        StripeEvent::new("evt_1", kind, object)
    }

    fn ignore(reason: &'static str) -> StripeAction {
        StripeAction::Ignore { reason }
    }

    #[test]
    fn ops_carry_the_tier_rules_from_the_domain() {
        let paid = StripeAction::SubscriptionPaid {
            user_id: None,
            customer_id: Some("cus_1".into()),
            subscription_id: "sub_1".into(),
            tier: Tier::Basic,
            period: (0, 86_400 * 31),
            event_created: 86_400,
        };
        let source = event("invoice.paid", json!({}));
        let ops = action_ops(&source, &paid, [7; 16]).expect("ops");
        assert_eq!(ops[0].op, "webhooks.record_event");
        assert_eq!(ops[0].params["event_id"], "evt_1");
        assert_eq!(ops[1].op, "subscriptions.refill");
        let params = &ops[1].params;
        assert_eq!(params["monthly_credits"], 100);
        assert_eq!(params["max_calls_per_day"], 10);
        assert_eq!(params["max_call_seconds"], 600);
        assert_eq!(params["period_start"], "1970-01-01T00:00:00Z");
        assert_eq!(params["period_end"], "1970-02-01T00:00:00Z");
        assert_eq!(params["event_created"], "1970-01-02T00:00:00Z");
        assert!(
            params["transaction_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("txn_"))
        );

        let unlimited = StripeAction::SubscriptionPaid {
            user_id: None,
            customer_id: Some("cus_1".into()),
            subscription_id: "sub_1".into(),
            tier: Tier::Unlimited,
            period: (0, 10),
            event_created: 5,
        };
        let ops = action_ops(&source, &unlimited, [7; 16]).expect("ops");
        assert_eq!(ops[1].params["monthly_credits"], 0);
        assert_eq!(ops[1].params["max_calls_per_day"], Value::Null);

        let ended = StripeAction::SubscriptionEnded {
            user_id: None,
            customer_id: None,
            subscription_id: "sub_1".into(),
            ended_at: 1_700_000_000,
            event_created: 1_700_000_001,
        };
        let ops = action_ops(&source, &ended, [7; 16]).expect("ops");
        assert_eq!(ops[1].params["tier"], "free");
        assert_eq!(ops[1].params["max_calls_per_day"], 3);
        assert_eq!(ops[1].params["max_call_seconds"], 300);
        assert_eq!(ops[1].params["ended_at"], "2023-11-14T22:13:20Z");
        assert_eq!(ops[1].params["event_created"], "2023-11-14T22:13:21Z");

        assert!(action_ops(&source, &ignore("x"), [7; 16]).is_none());
    }

    #[test]
    fn subscription_rows_say_what_happened() {
        let row = |value: Value| value.as_object().cloned().unwrap();
        assert_eq!(
            subscription_outcome(&row(json!({"refilled": true, "activated": false}))),
            Some(SubscriptionOutcome::RefilledOnly)
        );
        assert_eq!(
            subscription_outcome(&row(json!({"refilled": false, "activated": false}))),
            Some(SubscriptionOutcome::Nothing)
        );
        assert_eq!(
            subscription_outcome(&row(json!({"user_id": "usr_1", "ended": false}))),
            Some(SubscriptionOutcome::Nothing)
        );
        assert_eq!(
            subscription_outcome(&row(json!({"ended": true}))),
            Some(SubscriptionOutcome::Ended)
        );
        assert_eq!(subscription_outcome(&row(json!({"id": "txn_1"}))), None);
    }

    #[test]
    fn refused_webhook_batches_that_are_not_failures() {
        let purchase = StripeAction::Purchase {
            user_id: "usr_1".into(),
            credits: 1,
            payment_intent_id: "pi_1".into(),
        };
        let rejected = |code: &str, index: usize| GatewayError::Rejected {
            status: 409,
            code: code.to_owned(),
            message: String::new(),
            op_index: Some(index),
        };
        assert_eq!(
            webhook_failure(&purchase, &rejected(codes::PRECONDITION_FAILED, 0)),
            Some(json!({"received": true, "duplicate": true}))
        );
        assert_eq!(
            webhook_failure(&purchase, &rejected(codes::CONFLICT, 1)),
            Some(json!({"received": true, "duplicate": true}))
        );
        assert_eq!(
            webhook_failure(&purchase, &rejected(codes::FOREIGN_KEY_VIOLATION, 1))
                .expect("ignored")["reason"],
            "unknown_user"
        );
        assert_eq!(
            webhook_failure(&purchase, &rejected(codes::TIMEOUT, 1)),
            None
        );
        assert_eq!(
            webhook_failure(&purchase, &GatewayError::Unreachable("down".into())),
            None
        );
    }

    #[test]
    fn every_gateway_call_matches_its_spec() {
        let source = event("invoice.paid", json!({}));
        let actions = [
            StripeAction::Purchase {
                user_id: "usr_1".into(),
                credits: 5,
                payment_intent_id: "pi_1".into(),
            },
            StripeAction::SubscriptionPaid {
                user_id: Some("usr_1".into()),
                customer_id: None,
                subscription_id: "sub_1".into(),
                tier: Tier::Premium,
                period: (0, 86_400),
                event_created: 1,
            },
            StripeAction::SubscriptionEnded {
                user_id: None,
                customer_id: Some("cus_1".into()),
                subscription_id: "sub_1".into(),
                ended_at: 2,
                event_created: 2,
            },
        ];
        for action in &actions {
            for call in action_ops(&source, action, [7; 16]).expect("ops") {
                assert_eq!(call.conforms(), Ok(()), "{}", call.op);
            }
        }
    }
}
