-- 007_calls_runtime: what placing, running and finalising calls needs.
--
-- - call statuses move only forward: call_status_rank() is the order, shared with the Rust
--   domain (callmeback_domain::calls::CallStatus::rank; a gateway test compares the two);
-- - a `voicemail` outcome;
-- - an idempotency key per user on calls (a retried POST /api/calls places one call);
-- - `finalized_at`: the exactly-once marker of call finalisation;
-- - recurring schedules on chosen weekdays at a local time of day;
-- - the persona's memory of earlier calls, per relationship;
-- - the user's choice for answering machines.

------------------------------------------------------------------------------------------------
-- Status order
------------------------------------------------------------------------------------------------
CREATE FUNCTION call_status_rank(status TEXT) RETURNS INTEGER
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE status
        WHEN 'initiating' THEN 0
        WHEN 'calling' THEN 1
        WHEN 'connected' THEN 2
        WHEN 'in_progress' THEN 3
        WHEN 'completed' THEN 4
        WHEN 'failed' THEN 4
        WHEN 'no_answer' THEN 4
        WHEN 'busy' THEN 4
        WHEN 'canceled' THEN 4
        WHEN 'voicemail' THEN 4
    END
$$;

COMMENT ON FUNCTION call_status_rank(TEXT) IS
    'Position of a call status in its life; statuses only move to a higher rank, final ones share the top rank.';

------------------------------------------------------------------------------------------------
-- calls
------------------------------------------------------------------------------------------------
ALTER TABLE calls DROP CONSTRAINT calls_status_valid;
ALTER TABLE calls ADD CONSTRAINT calls_status_valid CHECK (status IN (
    'initiating', 'calling', 'connected', 'in_progress',
    'completed', 'failed', 'no_answer', 'busy', 'canceled', 'voicemail'));

ALTER TABLE calls
    -- Client-chosen key of the request that created the call (Idempotency-Key header).
    ADD COLUMN idempotency_key TEXT
        CONSTRAINT calls_idempotency_key_length CHECK (char_length(idempotency_key) BETWEEN 1 AND 255),
    -- When the callee picked up (telephony time starts here).
    ADD COLUMN answered_at TIMESTAMPTZ,
    -- Answering-machine detection's verdict (`human`, `machine_end_beep`, …), when one came.
    ADD COLUMN answered_by TEXT
        CONSTRAINT calls_answered_by_length CHECK (char_length(answered_by) BETWEEN 1 AND 32),
    -- Set once, in the same transaction that records the call's outcome: a second finalisation
    -- finds it set and changes nothing.
    ADD COLUMN finalized_at TIMESTAMPTZ;

CREATE UNIQUE INDEX idx_calls_user_idempotency_key ON calls (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The stuck-call sweeper looks for unfinished calls by age.
DROP INDEX idx_calls_unfinished;
CREATE INDEX idx_calls_unfinished ON calls (status, created_at) WHERE finalized_at IS NULL;

------------------------------------------------------------------------------------------------
-- call_logs
------------------------------------------------------------------------------------------------
ALTER TABLE call_logs DROP CONSTRAINT call_logs_status_valid;
ALTER TABLE call_logs ADD CONSTRAINT call_logs_status_valid CHECK (status IN (
    'initiated', 'connected', 'completed', 'failed', 'no_answer', 'busy', 'canceled', 'voicemail'));

ALTER TABLE call_logs
    -- Why the call ended (`caller_hung_up`, `limit_reached:credits`, `provider_failed:llm`, …).
    ADD COLUMN end_reason TEXT
        CONSTRAINT call_logs_end_reason_format CHECK (end_reason ~ '^[a-z][a-z_:]{0,63}$'),
    -- Provider failures during the call: [{"provider", "kind", "at"}].
    ADD COLUMN failures JSONB NOT NULL DEFAULT '[]'
        CONSTRAINT call_logs_failures_array CHECK (jsonb_typeof(failures) = 'array'),
    -- Per-reply latency (caller's turn end → first reply audio), milliseconds.
    ADD COLUMN response_times_ms JSONB NOT NULL DEFAULT '[]'
        CONSTRAINT call_logs_response_times_array CHECK (jsonb_typeof(response_times_ms) = 'array');

------------------------------------------------------------------------------------------------
-- scheduled_calls
------------------------------------------------------------------------------------------------
ALTER TABLE scheduled_calls
    -- The local time of day of a recurring schedule (its anchor across daylight-saving changes).
    ADD COLUMN local_time TIME,
    -- Weekdays of a `weekly` schedule: bit 0 = Monday … bit 6 = Sunday.
    ADD COLUMN recurrence_days SMALLINT
        CONSTRAINT scheduled_calls_recurrence_days_range CHECK (recurrence_days BETWEEN 1 AND 127),
    -- When the scheduler claimed the current run (a run stuck in `executing` is found by it).
    ADD COLUMN claimed_at TIMESTAMPTZ,
    ADD CONSTRAINT scheduled_calls_recurring_has_local_time CHECK (
        recurrence_rule IS NULL OR local_time IS NOT NULL),
    ADD CONSTRAINT scheduled_calls_weekly_has_days CHECK (
        recurrence_rule IS DISTINCT FROM 'weekly' OR recurrence_days IS NOT NULL);

CREATE INDEX idx_scheduled_calls_executing ON scheduled_calls (claimed_at) WHERE status = 'executing';

------------------------------------------------------------------------------------------------
-- user_persona_relationships: the persona's memory
------------------------------------------------------------------------------------------------
ALTER TABLE user_persona_relationships
    -- A few sentences the persona wrote after the last call, given to it at the next one.
    -- Never payment or phone details (the writer redacts them).
    ADD COLUMN memory_summary TEXT
        CONSTRAINT user_persona_relationships_memory_length CHECK (char_length(memory_summary) <= 1000),
    ADD COLUMN memory_updated_at TIMESTAMPTZ;

------------------------------------------------------------------------------------------------
-- users: what the persona does when a machine answers
------------------------------------------------------------------------------------------------
ALTER TABLE users
    ADD COLUMN voicemail_action TEXT NOT NULL DEFAULT 'leave_message'
        CONSTRAINT users_voicemail_action_valid CHECK (voicemail_action IN ('leave_message', 'hang_up'));
