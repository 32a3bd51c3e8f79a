//! Scheduled and recurring calls, and the scheduler's claims on them.
//!
//! The cron trigger claims due schedules with `FOR UPDATE SKIP LOCKED` and moves them to
//! `executing` in the same statement: two overlapping runs never claim the same occurrence.
//! After placing the call, the run is recorded with the next occurrence (computed in Rust, in the
//! schedule's time zone) or the reason it failed.

use super::{OpSpec, ParamSpec, ParamType};

/// Creates a schedule for an active persona (`precondition_failed` otherwise).
pub static SCHEDULES_CREATE: OpSpec = OpSpec::new(
    "schedules.create",
    &[
        ParamSpec::required("id", ParamType::Text),
        ParamSpec::required("user_id", ParamType::Text),
        ParamSpec::required("persona_id", ParamType::Text),
        ParamSpec::required("phone_number", ParamType::Text),
        ParamSpec::required("scheduled_time", ParamType::Timestamptz),
        ParamSpec::optional("recurrence_rule", ParamType::Text),
        ParamSpec::optional("recurrence_days", ParamType::Int4),
        ParamSpec::optional("local_time", ParamType::Text),
        ParamSpec::required("timezone", ParamType::Text),
        ParamSpec::optional("scenario_template_id", ParamType::Text),
        ParamSpec::optional("custom_instructions", ParamType::Text),
    ],
);

/// A user's schedules that are not canceled, next first.
pub static SCHEDULES_LIST: OpSpec = OpSpec::new(
    "schedules.list",
    &[ParamSpec::required("user_id", ParamType::Text)],
);

/// Cancels one of a user's schedules (`precondition_failed` when there is no such schedule).
pub static SCHEDULES_CANCEL: OpSpec = OpSpec::new(
    "schedules.cancel",
    &[
        ParamSpec::required("user_id", ParamType::Text),
        ParamSpec::required("id", ParamType::Text),
    ],
);

/// Claims up to `limit` due schedules (`scheduled`, `next_run_at <= now()`) for this run.
pub static SCHEDULES_CLAIM_DUE: OpSpec = OpSpec::new(
    "schedules.claim_due",
    &[ParamSpec::required("limit", ParamType::Int4)],
);

/// Records a claimed run: `scheduled` with the next occurrence (recurring), or `executed` /
/// `failed` (one-off), with the call it placed or why it could not.
pub static SCHEDULES_RECORD_RUN: OpSpec = OpSpec::new(
    "schedules.record_run",
    &[
        ParamSpec::required("id", ParamType::Text),
        ParamSpec::required("status", ParamType::Text),
        ParamSpec::optional("next_run_at", ParamType::Timestamptz),
        ParamSpec::optional("call_id", ParamType::Text),
        ParamSpec::optional("last_error", ParamType::Text),
    ],
);

/// Claims runs stuck in `executing` longer than `older_than_secs` (a scheduler that died), so
/// they can be recorded as failed.
pub static SCHEDULES_RECLAIM_STUCK: OpSpec = OpSpec::new(
    "schedules.reclaim_stuck",
    &[
        ParamSpec::required("older_than_secs", ParamType::Int4),
        ParamSpec::required("limit", ParamType::Int4),
    ],
);

/// Deletes revoked-token rows long past their expiry.
pub static MAINTENANCE_PURGE_BLACKLIST: OpSpec = OpSpec::new("maintenance.purge_blacklist", &[]);
