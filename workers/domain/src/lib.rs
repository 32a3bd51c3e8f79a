//! The business rules of callmeback, written as plain functions over plain data.
//!
//! The Worker (wasm32) and the native db-gateway must agree on these rules exactly. So they live
//! in one crate that does no I/O, has no async runtime, and never reads the clock or the OS
//! random source. Time arrives as unix seconds, randomness arrives as bytes. That keeps every
//! rule unit-testable on the host, and the crate builds unchanged for `wasm32-unknown-unknown`.
//!
//! Modules:
//! - [`tier`]: subscription tiers, their limits (the rule table), credits charged per call, and
//!   whether a call may start and for how long.
//! - [`pricing`]: what a call costs from each provider (Twilio, Deepgram, Cerebras, ElevenLabs)
//!   in exact integer micro-cents ([`Cents`]).
//! - [`budget`]: per-user spending caps, and whether to carry on, warn or cut off.
//! - [`validate`]: checks on API input that produce field-level errors ([`FieldErrors`]), plus
//!   checked newtypes: [`Email`], [`PhoneE164`] (masked when printed), [`Password`], [`Name`].
//! - [`fields`]: partial-update (`PUT`) bodies checked member by member: keep, clear or set.
//! - [`personas`]: the input rules of personas, relationships and scenario templates.
//! - [`stripe`]: Stripe webhook signature verification (HMAC-SHA256, in constant time, with
//!   secret rotation).
//! - [`stripe_events`]: which Stripe events matter and what each asks for (a purchase, a
//!   subscription refill or end), decided from the event alone.
//! - [`ratelimit`]: sliding-window rate limits (check/record, or an atomic take with release),
//!   the logic behind the `RateLimiter` Durable Object.
//! - [`network`]: which network a client address belongs to for per-address limits (IPv4 per
//!   address, IPv6 per /64).
//! - [`calls`]: a call's statuses, how Twilio's map onto them, and the never-backwards rule.
//! - [`schedule`]: recurring calls in local time (IANA zones, daylight-saving changes).
//! - [`ids`]: prefixed ids such as `usr_…`, built from caller-supplied random bytes.
//!
//! Every error type has a `code()` that returns a stable snake_case string, meant for API clients.

pub mod budget;
pub mod calls;
pub mod fields;
pub mod ids;
pub mod network;
pub mod personas;
pub mod pricing;
pub mod ratelimit;
pub mod schedule;
pub mod stripe;
pub mod stripe_events;
pub mod tier;
pub mod validate;

pub use budget::{BudgetLimit, BudgetSettings, BudgetStatus};
pub use ids::{is_valid_id, new_id};
pub use network::{ClientNetwork, client_network};
pub use pricing::{Cents, CostBreakdown, Usage};
pub use ratelimit::{Decision, RateLimitPolicy, SlidingWindowLog, Take};
pub use stripe::{StripeSigError, sign_stripe_payload, verify_stripe_signature};
pub use tier::{CallGrant, CallRefusal, Tier, TierLimits, can_start_call, credits_for_call};
pub use validate::{
    Email, FieldError, FieldErrors, Name, Password, PhoneE164, ValidationError, bounded_text,
};
