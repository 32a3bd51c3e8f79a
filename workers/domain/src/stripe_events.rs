//! Stripe webhook events as plain data: which events matter and what each one asks for.
//!
//! The Worker verifies the signature ([`crate::stripe`]), reads the event with
//! [`parse_stripe_event`], and turns the [`StripeAction`] that [`plan_stripe_event`] decides into
//! gateway operations. Nothing here does I/O, so every rule below is unit-tested.
//!
//! Events acted on, and the contract the checkout code (the frontend's server side and the Stripe
//! configuration) must follow:
//! - `checkout.session.completed` (mode `payment`, `payment_status` `paid`) and
//!   `payment_intent.succeeded` buy credits. Set `client_reference_id` to the user id and
//!   `metadata: {user_id, credits}` on the Checkout Session, and the same metadata on the
//!   PaymentIntent (`payment_intent_data.metadata`). `credits` is a whole number from 1 to
//!   [`MAX_PURCHASE_CREDITS`]. The purchase is keyed on the PaymentIntent id, so the session
//!   event and the PaymentIntent event of one purchase credit it once, whichever arrives first.
//! - `invoice.paid` for a subscription refills its monthly credits and sets the tier, status and
//!   limits from `Tier::limits()`. The tier is the price's `lookup_key` (`basic`, `premium`,
//!   `unlimited`, optionally followed by `_` and anything, e.g. `premium_monthly`) or
//!   `metadata.tier` on the subscription. The user is the subscription's `metadata.user_id`, else
//!   the user whose `stripe_customer_id` is the invoice's customer, else the user who has this
//!   subscription on file.
//! - `customer.subscription.deleted` returns that user to the free tier; credits are kept.
//!
//! Stripe delivers events in no particular order and retries late, so what an event does depends
//! on the subscription's own history, which the gateway keeps (`stripe_subscriptions`,
//! `subscription_refills`), not on when it arrives:
//! - a paid invoice refills its billing period's credits once per (subscription,
//!   `lines.data[0].period.start`), whenever it arrives: credits are what the invoice paid for;
//! - tier, status and limits follow the newest state: an invoice changes them only if its period
//!   (then the event's `created`) is later than the newest one applied, and never for a
//!   subscription that ended unless its period starts at or after the end (Stripe never
//!   re-activates a canceled subscription, so a late invoice of an earlier period cannot
//!   resurrect one);
//! - a deletion ends the subscription unless a paid period that starts after `ended_at` is
//!   already known.
//!
//! Events whose `livemode` differs from the deployment's (`STRIPE_LIVEMODE`) are ignored.
//!
//! Other event types, and acted-on events that cannot be applied (metadata missing or invalid, a
//! subscription checkout whose invoice does the work), are [`StripeAction::Ignore`] with a
//! reason.

use serde::Deserialize;
use serde_json::Value;

use crate::Tier;

/// Most credits one purchase may carry (metadata is configuration, so this bounds a mistake).
pub const MAX_PURCHASE_CREDITS: u32 = 100_000;

/// The parts of a Stripe event the webhook reads; Stripe sends many more.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StripeEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: StripeEventData,
    /// When Stripe created the event (unix seconds): the order of two events about the same
    /// billing period.
    #[serde(default)]
    pub created: i64,
    /// Whether the event is from live mode (real money) or test mode.
    #[serde(default)]
    pub livemode: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StripeEventData {
    pub object: Value,
}

impl StripeEvent {
    /// A test-mode event created at time 0 (tests set `created` and `livemode` as they need).
    pub fn new(id: impl Into<String>, kind: impl Into<String>, object: Value) -> Self {
        Self {
            id: id.into(),
            kind: kind.into(),
            data: StripeEventData { object },
            created: 0,
            livemode: false,
        }
    }
}

/// Why a (genuinely signed) body is not an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StripeEventError {
    #[error("the body is not valid JSON")]
    InvalidJson,
    #[error("the body is not a Stripe event")]
    NotAnEvent,
}

impl StripeEventError {
    /// Stable machine-readable code.
    pub const fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::NotAnEvent => "invalid_event",
        }
    }
}

/// Reads an event: JSON with a plain `id`, a `type` and an object under `data.object`.
pub fn parse_stripe_event(body: &[u8]) -> Result<StripeEvent, StripeEventError> {
    let event: StripeEvent = serde_json::from_slice(body).map_err(|error| {
        if error.is_syntax() || error.is_eof() {
            StripeEventError::InvalidJson
        } else {
            StripeEventError::NotAnEvent
        }
    })?;
    if !is_plain_id(&event.id)
        || event.kind.is_empty()
        || event.kind.len() > 255
        || !event.data.object.is_object()
    {
        return Err(StripeEventError::NotAnEvent);
    }
    Ok(event)
}

/// What an event asks for, decided without I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StripeAction {
    /// Credit a one-off purchase, keyed on its PaymentIntent (so it is credited once).
    Purchase {
        user_id: String,
        credits: u32,
        payment_intent_id: String,
    },
    /// A paid subscription invoice: refill the period's credits (once per period) and, if it is
    /// the newest thing known about the subscription, set the tier's limits. The user is
    /// `user_id`, else the customer's, else the subscription's on file.
    SubscriptionPaid {
        user_id: Option<String>,
        customer_id: Option<String>,
        subscription_id: String,
        tier: Tier,
        /// The billing period the invoice pays for (`lines.data[0].period`), unix seconds.
        period: (i64, i64),
        /// The event's `created`, unix seconds.
        event_created: i64,
    },
    /// Back to the free tier (credits are kept), unless the subscription is known to have been
    /// paid for a period starting after `ended_at`.
    SubscriptionEnded {
        user_id: Option<String>,
        customer_id: Option<String>,
        subscription_id: String,
        /// `ended_at`, else `canceled_at`, else the event's `created`, unix seconds.
        ended_at: i64,
        event_created: i64,
    },
    /// Nothing to do; `reason` is logged and answered (a retry could not change it).
    Ignore { reason: &'static str },
}

/// Decides what an event asks for (see the module docs for the contract). `livemode` is the mode
/// this deployment runs in: an event from the other mode is ignored, so a test-mode event signed
/// with a secret that leaked into production (or the reverse) moves no money.
pub fn plan_stripe_event(event: &StripeEvent, livemode: bool) -> StripeAction {
    if event.livemode != livemode {
        return ignore("livemode_mismatch");
    }
    let object = &event.data.object;
    match event.kind.as_str() {
        "checkout.session.completed" => {
            if str_at(object, "/mode").is_some_and(|mode| mode != "payment") {
                return ignore("subscription_checkout");
            }
            if str_at(object, "/payment_status") != Some("paid") {
                return ignore("not_paid");
            }
            let Some(payment_intent_id) = id_at(object, "/payment_intent") else {
                return ignore("missing_payment_intent");
            };
            let user_id = id_text(object, "/client_reference_id")
                .or_else(|| id_text(object, "/metadata/user_id"));
            purchase(user_id, object, payment_intent_id)
        }
        "payment_intent.succeeded" => {
            let Some(payment_intent_id) = id_text(object, "/id") else {
                return ignore("missing_payment_intent");
            };
            purchase(
                id_text(object, "/metadata/user_id"),
                object,
                payment_intent_id,
            )
        }
        "invoice.paid" => {
            let Some(subscription_id) = id_at(object, "/subscription")
                .or_else(|| id_at(object, "/parent/subscription_details/subscription"))
            else {
                return ignore("not_a_subscription_invoice");
            };
            let Some(tier) = invoice_tier(object) else {
                return ignore("unknown_tier");
            };
            let user_id = INVOICE_METADATA
                .into_iter()
                .find_map(|metadata| id_text(object, &format!("{metadata}/user_id")));
            let period = match (
                object
                    .pointer("/lines/data/0/period/start")
                    .and_then(Value::as_i64),
                object
                    .pointer("/lines/data/0/period/end")
                    .and_then(Value::as_i64),
            ) {
                (Some(start), Some(end)) if end >= start => (start, end),
                // The period is what makes a refill once-only and orders invoices; a
                // subscription invoice always has one.
                _ => return ignore("missing_period"),
            };
            StripeAction::SubscriptionPaid {
                user_id,
                customer_id: id_at(object, "/customer"),
                subscription_id,
                tier,
                period,
                event_created: event.created,
            }
        }
        "customer.subscription.deleted" => {
            let Some(subscription_id) = id_text(object, "/id") else {
                return ignore("missing_subscription");
            };
            StripeAction::SubscriptionEnded {
                user_id: id_text(object, "/metadata/user_id"),
                customer_id: id_at(object, "/customer"),
                subscription_id,
                ended_at: object
                    .get("ended_at")
                    .and_then(Value::as_i64)
                    .or_else(|| object.get("canceled_at").and_then(Value::as_i64))
                    .unwrap_or(event.created),
                event_created: event.created,
            }
        }
        _ => ignore("unhandled_event_type"),
    }
}

fn ignore(reason: &'static str) -> StripeAction {
    StripeAction::Ignore { reason }
}

fn purchase(user_id: Option<String>, object: &Value, payment_intent_id: String) -> StripeAction {
    let Some(user_id) = user_id else {
        return ignore("missing_user");
    };
    match purchase_credits(object.pointer("/metadata/credits")) {
        Some(credits) => StripeAction::Purchase {
            user_id,
            credits,
            payment_intent_id,
        },
        None => ignore("invalid_credits_metadata"),
    }
}

/// `metadata.credits`: Stripe metadata values are strings, but a number is accepted too.
fn purchase_credits(value: Option<&Value>) -> Option<u32> {
    let credits = match value? {
        Value::String(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            text.parse().ok()?
        }
        Value::Number(number) => u32::try_from(number.as_u64()?).ok()?,
        _ => return None,
    };
    (1..=MAX_PURCHASE_CREDITS)
        .contains(&credits)
        .then_some(credits)
}

/// Where subscription metadata sits in an invoice, newest API version first.
const INVOICE_METADATA: [&str; 3] = [
    "/parent/subscription_details/metadata",
    "/subscription_details/metadata",
    "/metadata",
];

/// The paid tier an invoice is for: a line's price `lookup_key`, else `metadata.tier`.
fn invoice_tier(invoice: &Value) -> Option<Tier> {
    let from_lines = invoice
        .pointer("/lines/data")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find_map(|line| str_at(line, "/price/lookup_key").and_then(paid_tier_from_key));
    from_lines.or_else(|| {
        INVOICE_METADATA
            .into_iter()
            .find_map(|metadata| str_at(invoice, &format!("{metadata}/tier")))
            .and_then(paid_tier_from_key)
    })
}

/// `premium` or `premium_monthly` → premium. The free tier is never bought.
fn paid_tier_from_key(key: &str) -> Option<Tier> {
    let name = key.split_once('_').map_or(key, |(name, _)| name);
    name.parse::<Tier>().ok().filter(|tier| *tier != Tier::Free)
}

/// A string at a JSON pointer, if present and non-empty.
fn str_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty())
}

/// An identifier string at a pointer: non-empty, at most 255 characters, no control characters.
fn id_text(value: &Value, pointer: &str) -> Option<String> {
    str_at(value, pointer)
        .filter(|text| is_plain_id(text))
        .map(str::to_owned)
}

/// 1 to 255 bytes, no control characters: safe to log and to store.
fn is_plain_id(text: &str) -> bool {
    (1..=255).contains(&text.len()) && !text.chars().any(char::is_control)
}

/// A Stripe reference that is either an id string or, when expanded, an object with an `id`.
fn id_at(value: &Value, pointer: &str) -> Option<String> {
    id_text(value, pointer).or_else(|| id_text(value, &format!("{pointer}/id")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(kind: &str, object: Value) -> StripeEvent {
        StripeEvent::new("evt_1", kind, object)
    }

    /// Plans in test mode, as the events built here are.
    fn plan(event: &StripeEvent) -> StripeAction {
        plan_stripe_event(event, false)
    }

    #[test]
    fn purchases_read_the_metadata_contract() {
        let session = json!({
            "mode": "payment", "payment_status": "paid", "payment_intent": "pi_1",
            "client_reference_id": "usr_1", "metadata": {"credits": "50"}
        });
        assert_eq!(
            plan(&event("checkout.session.completed", session.clone())),
            StripeAction::Purchase {
                user_id: "usr_1".into(),
                credits: 50,
                payment_intent_id: "pi_1".into()
            }
        );
        let intent = json!({"id": "pi_1", "metadata": {"user_id": "usr_1", "credits": 50}});
        assert_eq!(
            plan(&event("payment_intent.succeeded", intent)),
            StripeAction::Purchase {
                user_id: "usr_1".into(),
                credits: 50,
                payment_intent_id: "pi_1".into()
            }
        );
        let expanded = json!({
            "mode": "payment", "payment_status": "paid", "payment_intent": {"id": "pi_2"},
            "metadata": {"user_id": "usr_2", "credits": "7"}
        });
        assert!(matches!(
            plan(&event("checkout.session.completed", expanded)),
            StripeAction::Purchase { ref payment_intent_id, credits: 7, .. } if payment_intent_id == "pi_2"
        ));

        for (change, reason) in [
            (json!({"mode": "subscription"}), "subscription_checkout"),
            (json!({"payment_status": "unpaid"}), "not_paid"),
            (json!({"payment_intent": null}), "missing_payment_intent"),
            (json!({"client_reference_id": null}), "missing_user"),
            (
                json!({"metadata": {"credits": "0"}}),
                "invalid_credits_metadata",
            ),
            (
                json!({"metadata": {"credits": "100001"}}),
                "invalid_credits_metadata",
            ),
            (
                json!({"metadata": {"credits": "1.5"}}),
                "invalid_credits_metadata",
            ),
            (json!({"metadata": {}}), "invalid_credits_metadata"),
        ] {
            let mut object = session.clone();
            for (key, value) in change.as_object().expect("object") {
                object[key] = value.clone();
            }
            assert_eq!(
                plan(&event("checkout.session.completed", object)),
                StripeAction::Ignore { reason },
                "{change}"
            );
        }
        assert_eq!(
            plan(&event("charge.refunded", json!({}))),
            StripeAction::Ignore {
                reason: "unhandled_event_type"
            }
        );
    }

    #[test]
    fn invoices_name_their_tier_by_lookup_key_or_metadata() {
        let invoice = json!({
            "customer": "cus_1", "subscription": "sub_1",
            "lines": {"data": [{"price": {"lookup_key": "premium_monthly"},
                                "period": {"start": 1_763_942_400, "end": 1_766_620_800}}]},
            "subscription_details": {"metadata": {"user_id": "usr_1"}}
        });
        assert_eq!(
            plan(&event("invoice.paid", invoice)),
            StripeAction::SubscriptionPaid {
                user_id: Some("usr_1".into()),
                customer_id: Some("cus_1".into()),
                subscription_id: "sub_1".into(),
                tier: Tier::Premium,
                period: (1_763_942_400, 1_766_620_800),
                event_created: 0,
            }
        );
        // Newer API versions: subscription under `parent`, tier in its metadata.
        let newer = json!({
            "customer": {"id": "cus_2"},
            "parent": {"subscription_details": {"subscription": "sub_2", "metadata": {"tier": "basic"}}},
            "lines": {"data": [{"pricing": {"price_details": {"price": "price_x"}},
                                "period": {"start": 10, "end": 20}}]}
        });
        assert!(matches!(
            plan(&event("invoice.paid", newer)),
            StripeAction::SubscriptionPaid { tier: Tier::Basic, user_id: None, ref customer_id, .. }
                if customer_id.as_deref() == Some("cus_2")
        ));
        assert_eq!(
            plan(&event("invoice.paid", json!({"customer": "cus_1"}))),
            StripeAction::Ignore {
                reason: "not_a_subscription_invoice"
            }
        );
        for key in ["free", "gold", "Premium"] {
            let invoice = json!({"subscription": "sub_1", "metadata": {"tier": key}});
            assert_eq!(
                plan(&event("invoice.paid", invoice)),
                StripeAction::Ignore {
                    reason: "unknown_tier"
                },
                "{key}"
            );
        }
    }

    #[test]
    fn events_of_the_other_mode_are_ignored() {
        let invoice = json!({
            "subscription": "sub_1", "metadata": {"tier": "basic"},
            "lines": {"data": [{"period": {"start": 10, "end": 20}}]}
        });
        let mut live = event("invoice.paid", invoice);
        live.livemode = true;
        assert_eq!(
            plan_stripe_event(&live, false),
            StripeAction::Ignore {
                reason: "livemode_mismatch"
            }
        );
        assert!(matches!(
            plan_stripe_event(&live, true),
            StripeAction::SubscriptionPaid { .. }
        ));
        let test_purchase = event("charge.refunded", json!({}));
        assert_eq!(
            plan_stripe_event(&test_purchase, true),
            StripeAction::Ignore {
                reason: "livemode_mismatch"
            }
        );
        // Parsed from the wire: `livemode` and `created` are read, and default to test mode, 0.
        let parsed = parse_stripe_event(
            br#"{"id": "evt_9", "type": "x", "livemode": true, "created": 1700000000, "data": {"object": {}}}"#,
        )
        .unwrap();
        assert!(parsed.livemode);
        assert_eq!(parsed.created, 1_700_000_000);
        let bare =
            parse_stripe_event(br#"{"id": "evt_9", "type": "x", "data": {"object": {}}}"#).unwrap();
        assert!(!bare.livemode);
    }

    #[test]
    fn invoices_carry_their_period_and_deletions_their_end() {
        let mut paid = event(
            "invoice.paid",
            json!({
                "subscription": "sub_1", "metadata": {"tier": "basic"},
                "lines": {"data": [{"period": {"start": 100, "end": 200}}]}
            }),
        );
        paid.created = 150;
        assert!(matches!(
            plan(&paid),
            StripeAction::SubscriptionPaid {
                period: (100, 200),
                event_created: 150,
                ..
            }
        ));
        // Without a period there is nothing to refill once, nor to order by.
        for lines in [
            json!({"data": []}),
            json!({"data": [{"period": {"start": 200, "end": 100}}]}),
        ] {
            let invoice =
                json!({"subscription": "sub_1", "metadata": {"tier": "basic"}, "lines": lines});
            assert_eq!(
                plan(&event("invoice.paid", invoice)),
                StripeAction::Ignore {
                    reason: "missing_period"
                }
            );
        }
        let mut deleted = event(
            "customer.subscription.deleted",
            json!({"id": "sub_1", "canceled_at": 300}),
        );
        deleted.created = 400;
        assert!(matches!(
            plan(&deleted),
            StripeAction::SubscriptionEnded {
                ended_at: 300,
                event_created: 400,
                ..
            }
        ));
        deleted.data.object = json!({"id": "sub_1", "ended_at": 350, "canceled_at": 300});
        assert!(matches!(
            plan(&deleted),
            StripeAction::SubscriptionEnded { ended_at: 350, .. }
        ));
        deleted.data.object = json!({"id": "sub_1"});
        assert!(matches!(
            plan(&deleted),
            StripeAction::SubscriptionEnded { ended_at: 400, .. }
        ));
    }

    #[test]
    fn stripe_bodies_must_be_events() {
        assert_eq!(
            parse_stripe_event(b"{").expect_err("syntax").code(),
            "invalid_json"
        );
        assert_eq!(
            parse_stripe_event(br#"{"id": "evt_1"}"#)
                .expect_err("shape")
                .code(),
            "invalid_event"
        );
        assert_eq!(
            parse_stripe_event(br#"{"id": "", "type": "x", "data": {"object": {}}}"#)
                .expect_err("empty id")
                .code(),
            "invalid_event"
        );
        let event = parse_stripe_event(
            br#"{"id": "evt_9", "object": "event", "type": "invoice.paid", "data": {"object": {"id": "in_1"}}}"#,
        )
        .expect("valid event");
        assert_eq!(event.kind, "invoice.paid");
    }
}
