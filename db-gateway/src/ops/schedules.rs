//! Scheduled and recurring calls, the scheduler's claims, and housekeeping.
//!
//! `schedules.claim_due` is the scheduler's only way to take work: one statement picks due rows
//! with `FOR UPDATE SKIP LOCKED` and marks them `executing`, so two overlapping cron runs never
//! fire one occurrence twice. The next occurrence of a recurring schedule is computed by the
//! caller (`callmeback_domain::schedule`, IANA zones with daylight-saving rules) and recorded with
//! the run.

use callmeback_gateway_api::ops::schedules as spec;

use crate::statement::{DEFAULT_STATEMENT_TIMEOUT_MS, Expect, Mode, OpDef};

/// Columns of a schedule as the API shows it.
macro_rules! schedule_columns {
    () => {
        "s.id, s.persona_id, s.phone_number, s.scheduled_time, s.status, s.recurrence_rule, \
         s.recurrence_days::int4 AS recurrence_days, to_char(s.local_time, 'HH24:MI') AS local_time, \
         s.timezone, s.next_run_at, s.last_run_at, s.scenario_template_id, s.custom_instructions, \
         s.call_id, s.last_error, s.created_at, s.updated_at"
    };
}

pub static OPS: &[OpDef] = &[
    OpDef {
        spec: &spec::SCHEDULES_CREATE,
        sql: concat!(
            "INSERT INTO scheduled_calls AS s (id, user_id, persona_id, phone_number, scheduled_time, \
                 recurrence_rule, recurrence_days, local_time, timezone, scenario_template_id, \
                 custom_instructions, next_run_at) \
             SELECT $1::text, $2::text, $3::text, $4::text, $5::timestamptz, $6::text, \
                    $7::int4::smallint, $8::text::time, $9::text, $10::text, $11::text, $5::timestamptz \
             WHERE EXISTS (SELECT 1 FROM personas p WHERE p.id = $3::text AND p.is_active) \
             RETURNING ",
            schedule_columns!()
        ),
        mode: Mode::Write,
        expect: Expect::One {
            message: "persona not found or not active",
        },
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::SCHEDULES_LIST,
        sql: concat!(
            "SELECT ",
            schedule_columns!(),
            " FROM scheduled_calls s WHERE s.user_id = $1::text AND s.status <> 'canceled' \
              ORDER BY s.next_run_at NULLS LAST, s.created_at"
        ),
        mode: Mode::Read,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::SCHEDULES_CANCEL,
        sql: concat!(
            "UPDATE scheduled_calls s SET status = 'canceled', claimed_at = NULL \
             WHERE s.user_id = $1::text AND s.id = $2::text AND s.status <> 'canceled' \
             RETURNING ",
            schedule_columns!()
        ),
        mode: Mode::Write,
        expect: Expect::One {
            message: "schedule not found",
        },
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::SCHEDULES_CLAIM_DUE,
        sql: "UPDATE scheduled_calls s SET status = 'executing', claimed_at = now() \
              FROM (SELECT id FROM scheduled_calls \
                     WHERE status = 'scheduled' AND next_run_at <= now() \
                     ORDER BY next_run_at LIMIT $1::int4 FOR UPDATE SKIP LOCKED) due \
              WHERE s.id = due.id \
              RETURNING s.id, s.user_id, s.persona_id, s.phone_number, s.recurrence_rule, \
                        s.recurrence_days::int4 AS recurrence_days, \
                        to_char(s.local_time, 'HH24:MI') AS local_time, s.timezone, \
                        s.scenario_template_id, s.custom_instructions, s.next_run_at",
        mode: Mode::Write,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::SCHEDULES_RECORD_RUN,
        sql: "UPDATE scheduled_calls SET status = $2::text, next_run_at = $3::timestamptz, \
                     last_run_at = now(), executed_at = now(), call_id = COALESCE($4::text, call_id), \
                     last_error = $5::text, claimed_at = NULL \
              WHERE id = $1::text AND status = 'executing' \
              RETURNING id, status, next_run_at",
        mode: Mode::Write,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::SCHEDULES_RECLAIM_STUCK,
        sql: "UPDATE scheduled_calls s SET claimed_at = now() \
              WHERE s.id IN (SELECT id FROM scheduled_calls \
                              WHERE status = 'executing' \
                                AND claimed_at < now() - make_interval(secs => $1::int4) \
                              ORDER BY claimed_at LIMIT $2::int4 FOR UPDATE SKIP LOCKED) \
              RETURNING s.id, s.recurrence_rule, s.recurrence_days::int4 AS recurrence_days, \
                        to_char(s.local_time, 'HH24:MI') AS local_time, s.timezone, s.next_run_at",
        mode: Mode::Write,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::MAINTENANCE_PURGE_BLACKLIST,
        // An hour past expiry: well beyond any clock leeway a verifier grants.
        sql: "DELETE FROM token_blacklist WHERE expires_at < now() - interval '1 hour'",
        mode: Mode::Write,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
];
