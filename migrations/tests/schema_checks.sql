-- Checks that the schema's constraints refuse bad rows and accept good ones.
--
-- Not a migration (the migrator only reads top-level NNN_*.sql files). Run it against a scratch
-- database that has every migration applied:
--   psql -v ON_ERROR_STOP=1 -d <db> -f migrations/tests/schema_checks.sql
-- Everything happens in one transaction that is rolled back, so it leaves no rows behind. Any
-- accepted bad row, wrong error, or refused good row aborts the script with a non-zero exit.

\set QUIET on
-- Only failures (on stderr) and the final line are printed.
\o /dev/null
BEGIN;

-- Runs `stmt` expecting it to fail with `want_state` and (when given) the named constraint.
-- The inner block is a subtransaction, so a failed statement leaves nothing behind.
CREATE FUNCTION pg_temp.expect_refused(stmt text, want_state text, want_constraint text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    got_state text;
    got_constraint text;
BEGIN
    BEGIN
        EXECUTE stmt;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS got_state = RETURNED_SQLSTATE, got_constraint = CONSTRAINT_NAME;
        IF got_state <> want_state
           OR (want_constraint IS NOT NULL AND got_constraint IS DISTINCT FROM want_constraint) THEN
            RAISE EXCEPTION 'wrong refusal for [%]: got % (%), want % (%)',
                stmt, got_state, got_constraint, want_state, want_constraint;
        END IF;
        RETURN;
    END;
    RAISE EXCEPTION 'bad row was accepted: %', stmt;
END;
$$;

CREATE FUNCTION pg_temp.expect(ok boolean, what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION 'expectation failed: %', what;
    END IF;
END;
$$;

-- Fixtures that must be accepted.
INSERT INTO users (id, email, password_hash, phone, role)
VALUES ('usr_a', 'alice@example.com', '$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA', '+15551234567', 'user'),
       ('usr_admin', 'root@example.com', '$2b$12$abcdefghijklmnopqrstuv', NULL, 'admin');
INSERT INTO user_credits (user_id, available_credits) VALUES ('usr_a', 10), ('usr_admin', 0);
INSERT INTO calls (id, user_id, persona_id, phone_number, scenario_template_id)
VALUES ('call_1', 'usr_a', 'brad', '+15551234567', 'tpl_morning_motivation'),
       ('call_2', 'usr_a', 'sarah', '+447700900123', NULL);

-- users ---------------------------------------------------------------------------------------
SELECT pg_temp.expect_refused($$INSERT INTO users (id, email, password_hash, phone) VALUES ('u', 'b@example.com', '$2b$x', '5551234')$$, '23514', 'users_phone_e164');
SELECT pg_temp.expect_refused($$INSERT INTO users (id, email, password_hash, phone) VALUES ('u', 'b@example.com', '$2b$x', '+0155512345')$$, '23514', 'users_phone_e164');
SELECT pg_temp.expect_refused($$INSERT INTO users (id, email, password_hash, phone) VALUES ('u', 'b@example.com', '$2b$x', '+1555123456789012')$$, '23514', 'users_phone_e164');
SELECT pg_temp.expect_refused($$INSERT INTO users (id, email, password_hash) VALUES ('u', 'Bob@Example.com', '$2b$x')$$, '23514', 'users_email_lowercase');
SELECT pg_temp.expect_refused($$INSERT INTO users (id, email, password_hash) VALUES ('u', 'not-an-email', '$2b$x')$$, '23514', 'users_email_shape');
SELECT pg_temp.expect_refused($$INSERT INTO users (id, email, password_hash) VALUES ('u', 'alice@example.com', '$2b$x')$$, '23505', 'idx_users_email');
SELECT pg_temp.expect_refused($$INSERT INTO users (id, email, password_hash) VALUES ('u', 'b@example.com', 'hunter2')$$, '23514', 'users_password_hash_format');
SELECT pg_temp.expect_refused($$INSERT INTO users (id, email, password_hash, role) VALUES ('u', 'b@example.com', '$2b$x', 'root')$$, '23514', 'users_role_valid');

-- updated_at is maintained by the trigger.
UPDATE users SET updated_at = '2000-01-01Z' WHERE id = 'usr_a';
SELECT pg_temp.expect((SELECT updated_at = now() FROM users WHERE id = 'usr_a'), 'set_updated_at() stamps users.updated_at');

-- user_credits ----------------------------------------------------------------------------------
SELECT pg_temp.expect_refused($$UPDATE user_credits SET available_credits = -1 WHERE user_id = 'usr_a'$$, '23514', 'user_credits_available_credits_nonnegative');
SELECT pg_temp.expect_refused($$UPDATE user_credits SET subscription_tier = 'gold' WHERE user_id = 'usr_a'$$, '23514', 'user_credits_subscription_tier_valid');
SELECT pg_temp.expect_refused($$INSERT INTO user_credits (user_id) VALUES ('usr_missing')$$, '23503');

-- credit_transactions ---------------------------------------------------------------------------
SELECT pg_temp.expect_refused($$INSERT INTO credit_transactions (id, user_id, amount, type, call_id, balance_before, balance_after) VALUES ('t', 'usr_a', -5, 'call_deduction', 'call_1', 100, 90)$$, '23514', 'credit_transactions_balance_consistent');
SELECT pg_temp.expect_refused($$INSERT INTO credit_transactions (id, user_id, amount, type, call_id, balance_before, balance_after) VALUES ('t', 'usr_a', -5, 'call_deduction', 'call_1', 3, -2)$$, '23514', 'credit_transactions_balance_after_nonnegative');
SELECT pg_temp.expect_refused($$INSERT INTO credit_transactions (id, user_id, amount, type, payment_intent_id, balance_before, balance_after) VALUES ('t', 'usr_a', -5, 'purchase', 'pi_1', 10, 5)$$, '23514', 'credit_transactions_amount_sign');
SELECT pg_temp.expect_refused($$INSERT INTO credit_transactions (id, user_id, amount, type, call_id, balance_before, balance_after) VALUES ('t', 'usr_a', 5, 'call_deduction', 'call_1', 10, 15)$$, '23514', 'credit_transactions_amount_sign');
SELECT pg_temp.expect_refused($$INSERT INTO credit_transactions (id, user_id, amount, type, balance_before, balance_after) VALUES ('t', 'usr_a', 100, 'purchase', 10, 110)$$, '23514', 'credit_transactions_purchase_has_payment');
SELECT pg_temp.expect_refused($$INSERT INTO credit_transactions (id, user_id, amount, type, balance_before, balance_after) VALUES ('t', 'usr_a', 100, 'gift', 10, 110)$$, '23514', 'credit_transactions_type_valid');

-- The recommended deduction: one statement that moves the balance and writes the ledger row.
-- With 10 credits, charging 4 succeeds ...
WITH debit AS (
    UPDATE user_credits SET available_credits = available_credits - 4
    WHERE user_id = 'usr_a' AND available_credits >= 4
    RETURNING user_id, available_credits
)
INSERT INTO credit_transactions (id, user_id, amount, type, call_id, description, balance_before, balance_after)
SELECT 'txn_1', user_id, -4, 'call_deduction', 'call_1', 'Call with Brad - 4 minutes', available_credits + 4, available_credits
FROM debit;
SELECT pg_temp.expect((SELECT available_credits = 6 FROM user_credits WHERE user_id = 'usr_a'), 'deduction applied');
SELECT pg_temp.expect((SELECT balance_before = 10 AND balance_after = 6 FROM credit_transactions WHERE id = 'txn_1'), 'ledger row written');
-- ... charging the same call again is refused by the once-per-call index ...
SELECT pg_temp.expect_refused($$INSERT INTO credit_transactions (id, user_id, amount, type, call_id, balance_before, balance_after) VALUES ('txn_dup', 'usr_a', -1, 'call_deduction', 'call_1', 6, 5)$$, '23505', 'idx_credit_transactions_call_deduction_once');
-- ... and overdrawing writes nothing at all (zero rows: the gateway's precondition_failed).
WITH debit AS (
    UPDATE user_credits SET available_credits = available_credits - 50
    WHERE user_id = 'usr_a' AND available_credits >= 50
    RETURNING user_id, available_credits
)
INSERT INTO credit_transactions (id, user_id, amount, type, call_id, balance_before, balance_after)
SELECT 'txn_2', user_id, -50, 'call_deduction', 'call_2', available_credits + 50, available_credits FROM debit;
SELECT pg_temp.expect((SELECT available_credits = 6 FROM user_credits WHERE user_id = 'usr_a')
                      AND NOT EXISTS (SELECT 1 FROM credit_transactions WHERE id = 'txn_2'), 'overdraft changed nothing');

-- A Stripe payment is credited once.
INSERT INTO credit_transactions (id, user_id, amount, type, payment_intent_id, balance_before, balance_after)
VALUES ('txn_3', 'usr_a', 100, 'purchase', 'pi_123', 6, 106);
SELECT pg_temp.expect_refused($$INSERT INTO credit_transactions (id, user_id, amount, type, payment_intent_id, balance_before, balance_after) VALUES ('txn_4', 'usr_a', 100, 'purchase', 'pi_123', 106, 206)$$, '23505', 'idx_credit_transactions_purchase_once');

-- Ledger rows cannot be rewritten.
SELECT pg_temp.expect_refused($$UPDATE credit_transactions SET amount = -1, balance_after = 9 WHERE id = 'txn_1'$$, '23514', 'credit_transactions_append_only');
SELECT pg_temp.expect_refused($$UPDATE credit_transactions SET description = 'edited' WHERE id = 'txn_1'$$, '23514', 'credit_transactions_append_only');

-- calls -----------------------------------------------------------------------------------------
SELECT pg_temp.expect_refused($$UPDATE calls SET status = 'ringing' WHERE id = 'call_1'$$, '23514', 'calls_status_valid');
UPDATE calls SET status = 'canceled' WHERE id = 'call_2';
SELECT pg_temp.expect_refused($$UPDATE calls SET end_time = start_time - interval '1 second' WHERE id = 'call_1'$$, '23514', 'calls_end_after_start');
SELECT pg_temp.expect_refused($$INSERT INTO calls (id, user_id, persona_id, phone_number) VALUES ('c', 'usr_a', 'brad', '555-1234')$$, '23514', 'calls_phone_number_e164');
SELECT pg_temp.expect_refused($$INSERT INTO calls (id, user_id, persona_id, phone_number) VALUES ('c', 'usr_missing', 'brad', '+15551234567')$$, '23503', 'calls_user_id_fkey');
SELECT pg_temp.expect_refused($$INSERT INTO calls (id, user_id, persona_id, phone_number) VALUES ('c', 'usr_a', 'nobody', '+15551234567')$$, '23503', 'calls_persona_id_fkey');
SELECT pg_temp.expect_refused($$UPDATE calls SET credits_used = -1 WHERE id = 'call_1'$$, '23514', 'calls_credits_used_nonnegative');
UPDATE calls SET twilio_call_sid = 'CA00000000000000000000000000000001' WHERE id = 'call_1';
SELECT pg_temp.expect_refused($$UPDATE calls SET twilio_call_sid = 'CA00000000000000000000000000000001' WHERE id = 'call_2'$$, '23505', 'idx_calls_twilio_call_sid');
-- A persona with calls cannot be deleted, only retired.
SELECT pg_temp.expect_refused($$DELETE FROM personas WHERE id = 'brad'$$, '23503', 'calls_persona_id_fkey');

-- scheduled_calls -------------------------------------------------------------------------------
INSERT INTO scheduled_calls (id, user_id, persona_id, phone_number, scheduled_time, recurrence_rule, timezone)
VALUES ('sch_1', 'usr_a', 'brad', '+15551234567', '2030-01-02T07:30:00Z', 'weekdays', 'Europe/Berlin');
SELECT pg_temp.expect((SELECT next_run_at = scheduled_time FROM scheduled_calls WHERE id = 'sch_1'), 'next_run_at defaults to scheduled_time');
SELECT pg_temp.expect_refused($$INSERT INTO scheduled_calls (id, user_id, persona_id, phone_number, scheduled_time, timezone) VALUES ('s', 'usr_a', 'brad', '+15551234567', now(), 'Mars/Olympus_Mons')$$, '23514', 'scheduled_calls_timezone_valid');
SELECT pg_temp.expect_refused($$INSERT INTO scheduled_calls (id, user_id, persona_id, phone_number, scheduled_time, timezone) VALUES ('s', 'usr_a', 'brad', '+15551234567', now(), 'XYZ+3')$$, '23514', 'scheduled_calls_timezone_valid');
SELECT pg_temp.expect_refused($$UPDATE scheduled_calls SET timezone = 'Nowhere/City' WHERE id = 'sch_1'$$, '23514', 'scheduled_calls_timezone_valid');
SELECT pg_temp.expect_refused($$UPDATE scheduled_calls SET recurrence_rule = 'hourly' WHERE id = 'sch_1'$$, '23514', 'scheduled_calls_recurrence_rule_valid');
SELECT pg_temp.expect_refused($$UPDATE scheduled_calls SET status = 'paused' WHERE id = 'sch_1'$$, '23514', 'scheduled_calls_status_valid');
SELECT pg_temp.expect_refused($$UPDATE scheduled_calls SET next_run_at = NULL WHERE id = 'sch_1'$$, '23514', 'scheduled_calls_pending_has_next_run');
UPDATE calls SET scheduled_call_id = 'sch_1' WHERE id = 'call_1';
UPDATE scheduled_calls SET call_id = 'call_1', last_run_at = now(), next_run_at = '2030-01-03T06:30:00Z' WHERE id = 'sch_1';

-- call_transcripts ------------------------------------------------------------------------------
INSERT INTO call_transcripts (call_id) VALUES ('call_1');
UPDATE call_transcripts
SET messages = messages || '[{"role": "assistant", "content": "Good morning!", "timestamp": "2030-01-02T07:30:01Z"},
                              {"role": "user", "content": "Morning, Brad.", "timestamp": "2030-01-02T07:30:03Z"}]'::jsonb
WHERE call_id = 'call_1';
SELECT pg_temp.expect((SELECT jsonb_array_length(messages) = 2 FROM call_transcripts WHERE call_id = 'call_1'), 'transcript append');
SELECT pg_temp.expect_refused($$UPDATE call_transcripts SET messages = '{"role": "user"}' WHERE call_id = 'call_1'$$, '23514', 'call_transcripts_messages_array');
SELECT pg_temp.expect_refused($$UPDATE call_transcripts SET messages = '[{"role": "user", "content": "hi"}]' WHERE call_id = 'call_1'$$, '23514', 'call_transcripts_messages_shape');
SELECT pg_temp.expect_refused($$UPDATE call_transcripts SET messages = '[{"role": "bot", "content": "hi", "timestamp": "t"}]' WHERE call_id = 'call_1'$$, '23514', 'call_transcripts_messages_shape');
SELECT pg_temp.expect_refused($$UPDATE call_transcripts SET messages = '[{"role": "user", "content": 42, "timestamp": "t"}]' WHERE call_id = 'call_1'$$, '23514', 'call_transcripts_messages_shape');
SELECT pg_temp.expect_refused($$UPDATE call_transcripts SET messages = '[{"role": "user", "content": ["hi"], "timestamp": "t"}]' WHERE call_id = 'call_1'$$, '23514', 'call_transcripts_messages_shape');
SELECT pg_temp.expect_refused($$UPDATE call_transcripts SET messages = '["hello"]' WHERE call_id = 'call_1'$$, '23514', 'call_transcripts_messages_shape');

-- costs -----------------------------------------------------------------------------------------
INSERT INTO call_cost_breakdowns (id, call_id, twilio_cost_cents, deepgram_cost_cents, cerebras_cost_cents, elevenlabs_cost_cents)
VALUES ('cost_1', 'call_1', 6.5, 2.15, 0.0025, 4.5);
SELECT pg_temp.expect((SELECT total_cost_cents = 13.1525 FROM call_cost_breakdowns WHERE id = 'cost_1'), 'total is the exact sum');
SELECT pg_temp.expect_refused($$INSERT INTO call_cost_breakdowns (id, call_id) VALUES ('cost_2', 'call_1')$$, '23505', 'call_cost_breakdowns_call_key');
SELECT pg_temp.expect_refused($$UPDATE call_cost_breakdowns SET twilio_cost_cents = -0.01 WHERE id = 'cost_1'$$, '23514', 'call_cost_breakdowns_twilio_cost_nonnegative');
SELECT pg_temp.expect_refused($$INSERT INTO call_cost_breakdowns (id, call_id, total_cost_cents) VALUES ('cost_3', 'call_2', 1)$$, '428C9');
INSERT INTO call_cost_events (id, call_id, provider, kind, quantity, unit, cost_cents)
VALUES ('cev_1', 'call_1', 'cerebras', 'llm_output_tokens', 120, 'tokens', 0.0012);
SELECT pg_temp.expect_refused($$INSERT INTO call_cost_events (id, call_id, provider, kind, quantity, unit, cost_cents) VALUES ('cev_2', 'call_1', 'openai', 'llm_output_tokens', 1, 'tokens', 0)$$, '23514', 'call_cost_events_provider_valid');
SELECT pg_temp.expect_refused($$INSERT INTO call_cost_events (id, call_id, provider, kind, quantity, unit, cost_cents) VALUES ('cev_2', 'call_1', 'twilio', 'call_minutes', 1, 'minutes', -1)$$, '23514', 'call_cost_events_cost_nonnegative');
SELECT pg_temp.expect_refused($$INSERT INTO call_cost_events (id, call_id, provider, kind, quantity, unit, cost_cents) VALUES ('cev_2', 'call_1', 'twilio', 'call_minutes', 1, 'hours', 1)$$, '23514', 'call_cost_events_unit_valid');

-- budgets ---------------------------------------------------------------------------------------
SELECT pg_temp.expect_refused($$INSERT INTO user_budget_settings (user_id, warn_at_percent_per_call) VALUES ('usr_a', 0)$$, '23514', 'user_budget_settings_warn_percent_range');
SELECT pg_temp.expect_refused($$INSERT INTO user_budget_settings (user_id, warn_at_percent_per_call) VALUES ('usr_a', 101)$$, '23514', 'user_budget_settings_warn_percent_range');
SELECT pg_temp.expect_refused($$INSERT INTO user_budget_settings (user_id, max_cost_per_call_cents) VALUES ('usr_a', 0)$$, '23514', 'user_budget_settings_max_per_call_positive');
SELECT pg_temp.expect_refused($$INSERT INTO user_budget_settings (user_id, max_cost_per_call_cents, max_monthly_spend_cents) VALUES ('usr_a', 5000, 1000)$$, '23514', 'user_budget_settings_call_within_month');
INSERT INTO user_budget_settings (user_id) VALUES ('usr_a');

-- rate limits, webhooks -------------------------------------------------------------------------
SELECT pg_temp.expect_refused($$INSERT INTO phone_rate_limits (phone_hash) VALUES ('+15551234567')$$, '23514', 'phone_rate_limits_phone_hash_shape');
INSERT INTO phone_rate_limits (phone_hash, call_count) VALUES (repeat('ab', 32), 1);
INSERT INTO processed_webhook_events (provider, event_id, event_type) VALUES ('stripe', 'evt_1', 'payment_intent.succeeded');
INSERT INTO processed_webhook_events (provider, event_id) VALUES ('stripe', 'evt_1') ON CONFLICT DO NOTHING;
SELECT pg_temp.expect((SELECT count(*) = 1 FROM processed_webhook_events), 'webhook recorded once');

-- gateway replay protection ---------------------------------------------------------------------
INSERT INTO gateway_request_nonces (key_id, nonce, expires_at) VALUES ('worker-1', repeat('a', 32), now() + interval '5 minutes');
SELECT pg_temp.expect_refused($$INSERT INTO gateway_request_nonces (key_id, nonce, expires_at) VALUES ('worker-1', repeat('a', 32), now())$$, '23505', 'gateway_request_nonces_pkey');
INSERT INTO gateway_request_nonces (key_id, nonce, expires_at) VALUES ('worker-2', repeat('a', 32), now());
SELECT pg_temp.expect_refused($$INSERT INTO gateway_request_nonces (key_id, nonce, expires_at) VALUES ('worker-1', repeat('n', 129), now())$$, '23514', 'gateway_request_nonces_nonce_length');
SELECT pg_temp.expect_refused($$INSERT INTO gateway_request_nonces (key_id, nonce, expires_at) VALUES ('', 'n', now())$$, '23514', 'gateway_request_nonces_key_id_length');

-- relationships, templates ----------------------------------------------------------------------
INSERT INTO user_persona_relationships (id, user_id, persona_id, relationship_type, is_favorite)
VALUES ('rel_1', 'usr_a', 'brad', 'workout buddy', true);
SELECT pg_temp.expect_refused($$INSERT INTO user_persona_relationships (id, user_id, persona_id) VALUES ('rel_2', 'usr_a', 'brad')$$, '23505', 'user_persona_relationships_user_persona_key');
SELECT pg_temp.expect_refused($$INSERT INTO user_persona_relationships (id, user_id, persona_id, relationship_type) VALUES ('rel_2', 'usr_a', 'alex', repeat('x', 101))$$, '23514', 'user_persona_relationships_type_length');
SELECT pg_temp.expect_refused($$UPDATE call_scenario_templates SET suggested_duration_minutes = 0 WHERE id = 'tpl_morning_motivation'$$, '23514', 'call_scenario_templates_duration_range');

-- audit_log -------------------------------------------------------------------------------------
INSERT INTO audit_log (event_type, user_id, ip, details) VALUES ('login_success', 'usr_a', '203.0.113.7', '{"method": "password"}');
INSERT INTO audit_log (event_type, user_id, details) VALUES ('role_change', 'usr_admin', '{"target": "usr_a", "to": "admin"}');
SELECT pg_temp.expect_refused($$UPDATE audit_log SET event_type = 'login_failure'$$, '23514', 'audit_log_append_only');
SELECT pg_temp.expect_refused($$INSERT INTO audit_log (event_type) VALUES ('Login Success')$$, '23514', 'audit_log_event_type_format');
SELECT pg_temp.expect_refused($$INSERT INTO audit_log (event_type, details) VALUES ('logout', '[]')$$, '23514', 'audit_log_details_object');

-- Deleting an account removes its data but keeps anonymised audit events.
INSERT INTO credit_transactions (id, user_id, amount, type, actor_user_id, balance_before, balance_after)
VALUES ('txn_5', 'usr_admin', 5, 'admin_adjustment', 'usr_a', 0, 5);
DELETE FROM users WHERE id = 'usr_a';
SELECT pg_temp.expect(NOT EXISTS (SELECT 1 FROM calls WHERE user_id = 'usr_a')
                      AND NOT EXISTS (SELECT 1 FROM credit_transactions WHERE user_id = 'usr_a')
                      AND NOT EXISTS (SELECT 1 FROM scheduled_calls WHERE user_id = 'usr_a'),
                      'user data cascades');
SELECT pg_temp.expect((SELECT count(*) = 1 FROM audit_log WHERE user_id IS NULL AND event_type = 'login_success'), 'audit row kept, user link cleared');
SELECT pg_temp.expect((SELECT actor_user_id IS NULL FROM credit_transactions WHERE id = 'txn_5'), 'ledger actor cleared');

ROLLBACK;
\o
\echo 'schema_checks: all checks passed'
