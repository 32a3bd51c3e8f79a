//! Phone calls: placing, status, finalisation, reports, memory, preferences.
//!
//! The rules the statements themselves enforce:
//! - **The daily limit holds under concurrency.** `calls.lock_user` locks the user's row for the
//!   transaction, then `calls.create` counts today's calls and inserts in one statement; two
//!   requests for one user serialise on the lock, so the second sees the first's row. Calls that
//!   never reached Twilio (`failed` without a sid) do not count.
//! - **An idempotency key places one call.** A unique index on `(user_id, idempotency_key)` makes
//!   a retried request's insert do nothing; the caller then reads the existing call.
//! - **Statuses only move forward.** `calls.advance_status` matches only when the new status
//!   ranks higher (`call_status_rank()`), so late or repeated callbacks change nothing.
//! - **An outcome is recorded once.** `calls.finalize` matches only a call whose `finalized_at`
//!   is unset and sets it; run it first in the finalisation batch, and a second attempt fails
//!   the batch before anything else runs. The ledger's one-deduction-per-call index backs the
//!   credit charge up.
//! - **A call never costs more credits than there are.** `credits.charge_call` takes the amount
//!   or the balance, whichever is smaller, in one statement with its ledger row.

use callmeback_gateway_api::ops::calls as spec;

use crate::statement::{DEFAULT_STATEMENT_TIMEOUT_MS, Expect, Mode, OpDef};

/// Columns of a call as the API shows it.
macro_rules! call_columns {
    () => {
        "c.id, c.persona_id, c.status, c.phone_number, c.twilio_call_sid, c.scenario_template_id, \
         c.custom_instructions, c.scheduled_call_id, c.duration_seconds, c.credits_used, \
         c.actual_cost_cents, c.error_message, c.answered_at, c.answered_by, c.end_time AS ended_at, \
         c.created_at, c.updated_at"
    };
}

/// Calls of today (UTC) that count against the daily limit.
macro_rules! calls_today {
    ($user:literal) => {
        concat!(
            "(SELECT count(*)::int4 FROM calls ct WHERE ct.user_id = ",
            $user,
            " AND ct.created_at >= date_trunc('day', now(), 'UTC') \
             AND NOT (ct.status = 'failed' AND ct.twilio_call_sid IS NULL))"
        )
    };
}

pub static OPS: &[OpDef] = &[
    OpDef {
        spec: &spec::CALLS_PREPARE,
        sql: concat!(
            "SELECT u.id AS user_id, u.name AS user_name, u.phone AS user_phone, u.voicemail_action, \
                    p.id AS persona_id, p.name AS persona_name, p.is_active AS persona_active, \
                    p.core_system_prompt, p.default_greeting, p.default_voice_id, p.default_voice_settings, \
                    p.llm_temperature, p.llm_max_tokens, \
                    r.relationship_type, r.custom_system_prompt, r.voice_id AS custom_voice_id, \
                    r.voice_settings AS custom_voice_settings, r.memory_summary, \
                    t.id AS template_id, t.is_active AS template_active, t.system_prompt_addition, \
                    t.opening_line, t.name AS template_name, \
                    uc.available_credits, uc.subscription_tier, ",
            calls_today!("u.id"),
            " AS calls_today, \
                    b.max_cost_per_call_cents, b.max_monthly_spend_cents, b.warn_at_percent_per_call, \
                    b.enable_auto_cutoff, \
                    (SELECT COALESCE(sum(ccb.total_cost_cents), 0) FROM call_cost_breakdowns ccb \
                       JOIN calls cm ON cm.id = ccb.call_id \
                      WHERE cm.user_id = u.id AND cm.created_at >= date_trunc('month', now(), 'UTC')) \
                      AS month_spent_cents, \
                    (SELECT ci.id FROM calls ci WHERE ci.user_id = u.id AND ci.idempotency_key = $4::text) \
                      AS existing_call_id \
             FROM users u \
             LEFT JOIN personas p ON p.id = $2::text \
             LEFT JOIN user_persona_relationships r ON r.user_id = u.id AND r.persona_id = $2::text \
             LEFT JOIN call_scenario_templates t ON t.id = $3::text \
             LEFT JOIN user_credits uc ON uc.user_id = u.id \
             LEFT JOIN user_budget_settings b ON b.user_id = u.id \
             WHERE u.id = $1::text AND u.is_active"
        ),
        mode: Mode::Read,
        expect: Expect::One {
            message: "user not found",
        },
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::CALLS_LOCK_USER,
        // NO KEY UPDATE: serialises call creation per user without blocking rows that merely
        // reference the user (ledger rows, audit rows).
        sql: "SELECT id FROM users WHERE id = $1::text FOR NO KEY UPDATE",
        mode: Mode::Write,
        expect: Expect::One {
            message: "user not found",
        },
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::CALLS_CREATE,
        sql: concat!(
            "INSERT INTO calls AS c (id, user_id, persona_id, phone_number, status, scenario_template_id, \
                                     custom_instructions, scheduled_call_id, payment_method, idempotency_key) \
             SELECT $1::text, $2::text, $3::text, $4::text, 'initiating', $5::text, $6::text, $7::text, \
                    $8::text, $9::text \
             WHERE $10::int4 IS NULL OR ",
            calls_today!("$2::text"),
            " < $10::int4 \
             ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
             RETURNING ",
            call_columns!()
        ),
        mode: Mode::Write,
        expect: Expect::One {
            message: "daily call limit reached or idempotency key already used",
        },
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::CALLS_BY_IDEMPOTENCY_KEY,
        sql: concat!(
            "SELECT ",
            call_columns!(),
            " FROM calls c WHERE c.user_id = $1::text AND c.idempotency_key = $2::text"
        ),
        mode: Mode::Read,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::CALLS_MARK_PLACED,
        sql: "UPDATE calls SET twilio_call_sid = $2::text, \
                     status = CASE WHEN call_status_rank(status) < call_status_rank('calling') \
                                   THEN 'calling' ELSE status END \
              WHERE id = $1::text RETURNING id, status",
        mode: Mode::Write,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::CALLS_MARK_FAILED,
        sql: "UPDATE calls SET status = 'failed', error_message = $2::text, end_time = now(), \
                     finalized_at = now() \
              WHERE id = $1::text AND finalized_at IS NULL RETURNING id",
        mode: Mode::Write,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::CALLS_ADVANCE_STATUS,
        sql: "UPDATE calls SET status = $2::text, \
                     answered_at = CASE WHEN $2::text IN ('connected', 'in_progress') \
                                        THEN COALESCE(answered_at, now()) ELSE answered_at END, \
                     twilio_call_sid = COALESCE(twilio_call_sid, $3::text) \
              WHERE id = $1::text AND finalized_at IS NULL \
                AND call_status_rank(status) < call_status_rank($2::text) \
                AND call_status_rank($2::text) < 4 \
              RETURNING id, status",
        mode: Mode::Write,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::CALLS_FINALIZE,
        sql: "UPDATE calls SET status = $2::text, end_time = GREATEST($3::timestamptz, start_time), \
                     duration_seconds = $4::int4, credits_used = $5::int4, actual_cost_cents = $6::int4, \
                     error_message = COALESCE($7::text, error_message), \
                     answered_at = COALESCE(answered_at, $8::timestamptz), \
                     answered_by = COALESCE($9::text, answered_by), finalized_at = now(), \
                     payment_method = CASE WHEN $5::int4 > 0 THEN 'credit' ELSE payment_method END, \
                     payment_status = CASE WHEN $5::int4 > 0 THEN 'credit_used' ELSE payment_status END \
              WHERE id = $1::text AND finalized_at IS NULL \
              RETURNING id, user_id, persona_id",
        mode: Mode::Write,
        expect: Expect::One {
            message: "the call was already finalised",
        },
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::CALL_LOGS_RECORD,
        sql: "INSERT INTO call_logs (id, call_id, user_id, persona_id, twilio_call_sid, duration_seconds, \
                                     status, error_message, cost_stt, cost_llm, cost_tts, cost_twilio, \
                                     cost_total, turn_count, interrupt_count, avg_response_time_ms, \
                                     started_at, ended_at, end_reason, failures, response_times_ms) \
              SELECT $1::text, c.id, c.user_id, c.persona_id, c.twilio_call_sid, $4::int4, $3::text, \
                     $5::text, $6::int4, $7::int4, $8::int4, $9::int4, $10::int4, $11::int4, $12::int4, \
                     $13::int4, COALESCE($14::timestamptz, c.created_at), \
                     GREATEST($15::timestamptz, COALESCE($14::timestamptz, c.created_at)), \
                     $16::text, $17::jsonb, $18::jsonb \
              FROM calls c WHERE c.id = $2::text \
              ON CONFLICT (call_id) DO NOTHING \
              RETURNING id",
        mode: Mode::Write,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::COST_BREAKDOWN_RECORD,
        sql: "INSERT INTO call_cost_breakdowns (id, call_id, twilio_cost_cents, deepgram_cost_cents, \
                                               cerebras_cost_cents, elevenlabs_cost_cents, \
                                               twilio_duration_seconds, deepgram_audio_seconds, \
                                               cerebras_input_tokens, cerebras_output_tokens, \
                                               elevenlabs_characters) \
              VALUES ($1::text, $2::text, $3::text::numeric, $4::text::numeric, $5::text::numeric, \
                      $6::text::numeric, $7::int4, $8::text::numeric, $9::int4, $10::int4, $11::int4) \
              ON CONFLICT (call_id) DO UPDATE SET \
                  twilio_cost_cents = EXCLUDED.twilio_cost_cents, \
                  deepgram_cost_cents = EXCLUDED.deepgram_cost_cents, \
                  cerebras_cost_cents = EXCLUDED.cerebras_cost_cents, \
                  elevenlabs_cost_cents = EXCLUDED.elevenlabs_cost_cents, \
                  twilio_duration_seconds = EXCLUDED.twilio_duration_seconds, \
                  deepgram_audio_seconds = EXCLUDED.deepgram_audio_seconds, \
                  cerebras_input_tokens = EXCLUDED.cerebras_input_tokens, \
                  cerebras_output_tokens = EXCLUDED.cerebras_output_tokens, \
                  elevenlabs_characters = EXCLUDED.elevenlabs_characters \
              RETURNING id, total_cost_cents",
        mode: Mode::Write,
        expect: Expect::One {
            message: "the breakdown was not recorded",
        },
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::COST_EVENTS_ADD,
        sql: "INSERT INTO call_cost_events (id, call_id, provider, kind, quantity, unit, cost_cents, \
                                           occurred_at) \
              SELECT e->>'id', $1::text, e->>'provider', e->>'kind', (e->>'quantity')::numeric, \
                     e->>'unit', (e->>'cost_cents')::numeric, (e->>'occurred_at')::timestamptz \
              FROM jsonb_array_elements($2::jsonb) AS e \
              ON CONFLICT (id) DO NOTHING",
        mode: Mode::Write,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::CREDITS_CHARGE_CALL,
        sql: "WITH current_balance AS ( \
                  SELECT user_id, available_credits FROM user_credits WHERE user_id = $1::text FOR UPDATE \
              ), debit AS ( \
                  UPDATE user_credits uc \
                     SET available_credits = uc.available_credits - LEAST($2::int4, cb.available_credits) \
                    FROM current_balance cb \
                   WHERE uc.user_id = cb.user_id AND LEAST($2::int4, cb.available_credits) > 0 \
                  RETURNING uc.user_id, cb.available_credits AS balance_before, \
                            uc.available_credits AS balance_after \
              ) \
              INSERT INTO credit_transactions (id, user_id, amount, type, call_id, description, \
                                               balance_before, balance_after) \
              SELECT $3::text, user_id, balance_after - balance_before, 'call_deduction', $4::text, \
                     $5::text, balance_before, balance_after \
              FROM debit \
              RETURNING id, amount, balance_before, balance_after",
        mode: Mode::Write,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::RELATIONSHIPS_RECORD_CALL,
        sql: "INSERT INTO user_persona_relationships AS r (id, user_id, persona_id, total_calls, \
                  total_duration_seconds, last_call_at, memory_summary, memory_updated_at) \
              VALUES ($1::text, $2::text, $3::text, 1, $4::int4, $5::timestamptz, $6::text, \
                      CASE WHEN $6::text IS NULL THEN NULL ELSE now() END) \
              ON CONFLICT (user_id, persona_id) DO UPDATE SET \
                  total_calls = r.total_calls + 1, \
                  total_duration_seconds = r.total_duration_seconds + EXCLUDED.total_duration_seconds, \
                  last_call_at = GREATEST(r.last_call_at, EXCLUDED.last_call_at), \
                  memory_summary = COALESCE(EXCLUDED.memory_summary, r.memory_summary), \
                  memory_updated_at = COALESCE(EXCLUDED.memory_updated_at, r.memory_updated_at) \
              RETURNING id, total_calls, total_duration_seconds, last_call_at",
        mode: Mode::Write,
        expect: Expect::One {
            message: "the relationship was not recorded",
        },
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::TRANSCRIPTS_SAVE,
        sql: "INSERT INTO call_transcripts (call_id, messages) VALUES ($1::text, $2::jsonb) \
              ON CONFLICT (call_id) DO UPDATE SET messages = EXCLUDED.messages \
              RETURNING call_id",
        mode: Mode::Write,
        expect: Expect::One {
            message: "the transcript was not saved",
        },
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::CALLS_LIST,
        sql: concat!(
            "SELECT ",
            call_columns!(),
            ", p.name AS persona_name \
             FROM calls c JOIN personas p ON p.id = c.persona_id \
             WHERE c.user_id = $1::text \
               AND (c.created_at, c.id) < (COALESCE($2::timestamptz, 'infinity'::timestamptz), \
                                           COALESCE($3::text, '')) \
             ORDER BY c.created_at DESC, c.id DESC \
             LIMIT $4::int4"
        ),
        mode: Mode::Read,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::CALLS_GET,
        sql: concat!(
            "SELECT ",
            call_columns!(),
            ", p.name AS persona_name, \
               ccb.twilio_cost_cents, ccb.deepgram_cost_cents, ccb.cerebras_cost_cents, \
               ccb.elevenlabs_cost_cents, ccb.total_cost_cents, ccb.twilio_duration_seconds, \
               ccb.deepgram_audio_seconds, ccb.cerebras_input_tokens, ccb.cerebras_output_tokens, \
               ccb.elevenlabs_characters, \
               cl.turn_count, cl.interrupt_count, cl.avg_response_time_ms, cl.end_reason, \
               cl.failures, cl.response_times_ms, \
               tr.messages AS transcript, c.finalized_at \
             FROM calls c JOIN personas p ON p.id = c.persona_id \
             LEFT JOIN call_cost_breakdowns ccb ON ccb.call_id = c.id \
             LEFT JOIN call_logs cl ON cl.call_id = c.id \
             LEFT JOIN call_transcripts tr ON tr.call_id = c.id \
             WHERE c.user_id = $1::text AND c.id = $2::text"
        ),
        mode: Mode::Read,
        expect: Expect::One {
            message: "call not found",
        },
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::CALLS_FAIL_STUCK,
        sql: "UPDATE calls SET status = 'failed', \
                     error_message = 'the call never progressed: no news from the telephony provider', \
                     end_time = now(), finalized_at = now() \
              WHERE id IN (SELECT id FROM calls \
                            WHERE finalized_at IS NULL AND status IN ('initiating', 'calling') \
                              AND created_at < now() - make_interval(secs => $1::int4) \
                            ORDER BY created_at LIMIT $2::int4 FOR UPDATE SKIP LOCKED) \
              RETURNING id, user_id",
        mode: Mode::Write,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::MEMORY_GET,
        sql: "SELECT p.id AS persona_id, r.memory_summary, r.memory_updated_at \
              FROM personas p \
              LEFT JOIN user_persona_relationships r ON r.persona_id = p.id AND r.user_id = $1::text \
              WHERE p.id = $2::text",
        mode: Mode::Read,
        expect: Expect::One {
            message: "persona not found",
        },
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::MEMORY_CLEAR,
        sql: "UPDATE user_persona_relationships SET memory_summary = NULL, memory_updated_at = now() \
              WHERE user_id = $1::text AND persona_id = $2::text RETURNING persona_id",
        mode: Mode::Write,
        expect: Expect::Any,
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::PREFERENCES_GET,
        sql: "SELECT voicemail_action FROM users WHERE id = $1::text",
        mode: Mode::Read,
        expect: Expect::One {
            message: "user not found",
        },
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
    OpDef {
        spec: &spec::PREFERENCES_SET,
        sql: "UPDATE users SET voicemail_action = $2::text WHERE id = $1::text RETURNING voicemail_action",
        mode: Mode::Write,
        expect: Expect::One {
            message: "user not found",
        },
        statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
    },
];
