-- 002_calls: scenario templates, calls, schedules, per-call logs and transcripts.

------------------------------------------------------------------------------------------------
-- call_scenario_templates
------------------------------------------------------------------------------------------------
CREATE TABLE call_scenario_templates (
    id                         TEXT PRIMARY KEY
                               CONSTRAINT call_scenario_templates_id_length CHECK (char_length(id) BETWEEN 1 AND 100),
    name                       TEXT NOT NULL
                               CONSTRAINT call_scenario_templates_name_length CHECK (char_length(btrim(name)) BETWEEN 1 AND 255),
    description                TEXT,
    category                   TEXT CONSTRAINT call_scenario_templates_category_length CHECK (
                                   char_length(category) BETWEEN 1 AND 100),
    -- The persona that suits the scenario best; users may still pick another one.
    persona_id                 TEXT REFERENCES personas (id) ON DELETE SET NULL,
    -- Appended to the persona's prompt for this call only.
    system_prompt_addition     TEXT NOT NULL
                               CONSTRAINT call_scenario_templates_prompt_present CHECK (
                                   char_length(btrim(system_prompt_addition)) BETWEEN 1 AND 8000),
    -- First sentence the AI speaks when the callee answers.
    opening_line               TEXT CONSTRAINT call_scenario_templates_opening_line_length CHECK (
                                   char_length(opening_line) <= 500),
    -- Minutes, because one credit is one started minute of call time.
    suggested_duration_minutes INTEGER NOT NULL DEFAULT 5
                               CONSTRAINT call_scenario_templates_duration_range CHECK (
                                   suggested_duration_minutes BETWEEN 1 AND 60),
    sort_order                 INTEGER NOT NULL DEFAULT 0,
    is_active                  BOOLEAN NOT NULL DEFAULT true,
    created_at                 TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at                 TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT call_scenario_templates_name_key UNIQUE (name)
);

COMMENT ON TABLE call_scenario_templates IS 'Pre-built conversation scenarios (morning motivation, interview practice, …).';

CREATE INDEX idx_call_scenario_templates_active ON call_scenario_templates (category, sort_order)
    WHERE is_active;
CREATE INDEX idx_call_scenario_templates_persona ON call_scenario_templates (persona_id)
    WHERE persona_id IS NOT NULL;

CREATE TRIGGER trg_call_scenario_templates_set_updated_at
    BEFORE UPDATE ON call_scenario_templates FOR EACH ROW EXECUTE FUNCTION set_updated_at();

------------------------------------------------------------------------------------------------
-- calls
------------------------------------------------------------------------------------------------
CREATE TABLE calls (
    id                   TEXT PRIMARY KEY
                         CONSTRAINT calls_id_length CHECK (char_length(id) BETWEEN 1 AND 255),
    user_id              TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- RESTRICT: a persona with call history is retired (is_active = false), not deleted.
    persona_id           TEXT NOT NULL REFERENCES personas (id) ON DELETE RESTRICT,
    phone_number         TEXT NOT NULL
                         CONSTRAINT calls_phone_number_e164 CHECK (phone_number ~ '^\+[1-9][0-9]{6,14}$'),
    twilio_call_sid      TEXT CONSTRAINT calls_twilio_call_sid_length CHECK (
                             char_length(twilio_call_sid) BETWEEN 1 AND 64),
    -- initiating → calling → connected → in_progress → completed, or a failure outcome.
    -- `canceled` covers a call the user aborted before Twilio dialled.
    status               TEXT NOT NULL DEFAULT 'initiating'
                         CONSTRAINT calls_status_valid CHECK (status IN (
                             'initiating', 'calling', 'connected', 'in_progress',
                             'completed', 'failed', 'no_answer', 'busy', 'canceled')),
    -- What the call is for: a scenario and free-form instructions for this one call. Both are
    -- copied from the schedule when a scheduled call fires, so the call stays self-describing.
    scenario_template_id TEXT REFERENCES call_scenario_templates (id) ON DELETE SET NULL,
    custom_instructions  TEXT CONSTRAINT calls_custom_instructions_length CHECK (
                             char_length(custom_instructions) <= 2000),
    -- Set when a schedule created this call; the constraint is added below, once
    -- scheduled_calls exists.
    scheduled_call_id    TEXT,
    payment_method       TEXT CONSTRAINT calls_payment_method_valid CHECK (
                             payment_method IN ('stripe', 'credit', 'subscription')),
    payment_intent_id    TEXT,
    payment_status       TEXT CONSTRAINT calls_payment_status_valid CHECK (
                             payment_status IN ('pending', 'paid', 'failed', 'credit_used', 'refunded')),
    estimated_cost_cents INTEGER CONSTRAINT calls_estimated_cost_nonnegative CHECK (estimated_cost_cents >= 0),
    actual_cost_cents    INTEGER CONSTRAINT calls_actual_cost_nonnegative CHECK (actual_cost_cents >= 0),
    credits_used         INTEGER CONSTRAINT calls_credits_used_nonnegative CHECK (credits_used >= 0),
    start_time           TIMESTAMPTZ NOT NULL DEFAULT now(),
    end_time             TIMESTAMPTZ,
    duration_seconds     INTEGER CONSTRAINT calls_duration_nonnegative CHECK (duration_seconds >= 0),
    error_message        TEXT,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT calls_end_after_start CHECK (end_time IS NULL OR end_time >= start_time)
);

COMMENT ON TABLE calls IS 'One row per outbound call, from creation to its final status and cost.';

-- Call history, "calls today" counting and cursor pagination: WHERE user_id = $1 ORDER BY
-- created_at DESC, id DESC. Replaces the old single-column idx_calls_user_id.
CREATE INDEX idx_calls_user_created ON calls (user_id, created_at DESC, id DESC);
CREATE INDEX idx_calls_persona_created ON calls (persona_id, created_at DESC);
-- Admin analytics over a time range (today's volume, last 7/30 days).
CREATE INDEX idx_calls_created ON calls (created_at DESC);
-- Twilio status callbacks find the call by CallSid; a SID belongs to one call.
CREATE UNIQUE INDEX idx_calls_twilio_call_sid ON calls (twilio_call_sid) WHERE twilio_call_sid IS NOT NULL;
-- Only unfinished calls are ever looked up by status (the stuck-call sweeper), and they are few.
CREATE INDEX idx_calls_unfinished ON calls (status, created_at)
    WHERE status IN ('initiating', 'calling', 'connected', 'in_progress');
CREATE INDEX idx_calls_scheduled_call ON calls (scheduled_call_id) WHERE scheduled_call_id IS NOT NULL;
CREATE INDEX idx_calls_scenario_template ON calls (scenario_template_id) WHERE scenario_template_id IS NOT NULL;

CREATE TRIGGER trg_calls_set_updated_at
    BEFORE UPDATE ON calls FOR EACH ROW EXECUTE FUNCTION set_updated_at();

------------------------------------------------------------------------------------------------
-- scheduled_calls
------------------------------------------------------------------------------------------------
CREATE TABLE scheduled_calls (
    id                   TEXT PRIMARY KEY
                         CONSTRAINT scheduled_calls_id_length CHECK (char_length(id) BETWEEN 1 AND 255),
    user_id              TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    persona_id           TEXT NOT NULL REFERENCES personas (id) ON DELETE RESTRICT,
    phone_number         TEXT NOT NULL
                         CONSTRAINT scheduled_calls_phone_number_e164 CHECK (phone_number ~ '^\+[1-9][0-9]{6,14}$'),
    -- The first occurrence; for a recurring schedule its local time of day is the anchor.
    scheduled_time       TIMESTAMPTZ NOT NULL,
    -- scheduled → executing → executed | failed; or canceled by the user. A recurring schedule
    -- returns to `scheduled` with next_run_at advanced after each run.
    status               TEXT NOT NULL DEFAULT 'scheduled'
                         CONSTRAINT scheduled_calls_status_valid CHECK (status IN (
                             'scheduled', 'executing', 'executed', 'failed', 'canceled')),
    -- NULL = one-off. Extending the list is a constraint swap in a later migration.
    recurrence_rule      TEXT CONSTRAINT scheduled_calls_recurrence_rule_valid CHECK (
                             recurrence_rule IN ('daily', 'weekdays', 'weekly')),
    -- IANA zone in which the recurrence is computed ("weekdays at 07:30 in Europe/Berlin"
    -- stays 07:30 across daylight-saving changes). Validated by the trigger below.
    timezone             TEXT NOT NULL DEFAULT 'UTC',
    -- When the scheduler should fire next; defaults to scheduled_time on insert.
    next_run_at          TIMESTAMPTZ,
    last_run_at          TIMESTAMPTZ,
    scenario_template_id TEXT REFERENCES call_scenario_templates (id) ON DELETE SET NULL,
    custom_instructions  TEXT CONSTRAINT scheduled_calls_custom_instructions_length CHECK (
                             char_length(custom_instructions) <= 2000),
    executed_at          TIMESTAMPTZ,
    -- The call most recently created by this schedule (all of them: calls.scheduled_call_id).
    call_id              TEXT REFERENCES calls (id) ON DELETE SET NULL,
    -- Why the last run failed, without personal data.
    last_error           TEXT,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT scheduled_calls_pending_has_next_run CHECK (status <> 'scheduled' OR next_run_at IS NOT NULL)
);

COMMENT ON TABLE scheduled_calls IS 'Future and recurring calls, picked up by the scheduler when next_run_at is due.';

-- The scheduler's query: WHERE status = 'scheduled' AND next_run_at <= now() ORDER BY next_run_at.
CREATE INDEX idx_scheduled_calls_due ON scheduled_calls (next_run_at) WHERE status = 'scheduled';
CREATE INDEX idx_scheduled_calls_user_id ON scheduled_calls (user_id, next_run_at);
CREATE INDEX idx_scheduled_calls_call ON scheduled_calls (call_id) WHERE call_id IS NOT NULL;
CREATE INDEX idx_scheduled_calls_persona ON scheduled_calls (persona_id);
CREATE INDEX idx_scheduled_calls_scenario_template ON scheduled_calls (scenario_template_id)
    WHERE scenario_template_id IS NOT NULL;

-- Defaults next_run_at and refuses time zones Postgres does not know by their IANA name.
-- `AT TIME ZONE` alone would also accept POSIX strings such as 'XYZ+3', which the scheduler
-- could not interpret, so the name is looked up in the zone catalogue. That lookup reads the
-- whole tz database (~25 ms), so it runs only when the zone is set or changed, never on the
-- scheduler's status updates.
CREATE FUNCTION scheduled_calls_prepare() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' AND NEW.next_run_at IS NULL AND NEW.status = 'scheduled' THEN
        NEW.next_run_at := NEW.scheduled_time;
    END IF;
    IF TG_OP = 'INSERT' OR NEW.timezone IS DISTINCT FROM OLD.timezone THEN
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_timezone_names WHERE name = NEW.timezone) THEN
            RAISE EXCEPTION 'unknown time zone'
                USING ERRCODE = 'check_violation', CONSTRAINT = 'scheduled_calls_timezone_valid',
                      TABLE = 'scheduled_calls', COLUMN = 'timezone';
        END IF;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER trg_scheduled_calls_prepare
    BEFORE INSERT OR UPDATE ON scheduled_calls FOR EACH ROW EXECUTE FUNCTION scheduled_calls_prepare();
CREATE TRIGGER trg_scheduled_calls_set_updated_at
    BEFORE UPDATE ON scheduled_calls FOR EACH ROW EXECUTE FUNCTION set_updated_at();

ALTER TABLE calls
    ADD CONSTRAINT calls_scheduled_call_id_fkey
    FOREIGN KEY (scheduled_call_id) REFERENCES scheduled_calls (id) ON DELETE SET NULL;

------------------------------------------------------------------------------------------------
-- call_logs
------------------------------------------------------------------------------------------------
CREATE TABLE call_logs (
    id                   TEXT PRIMARY KEY
                         CONSTRAINT call_logs_id_length CHECK (char_length(id) BETWEEN 1 AND 100),
    -- One log per call. Nullable only so logs of calls made outside the calls table (tests,
    -- imports) still fit.
    call_id              TEXT REFERENCES calls (id) ON DELETE CASCADE,
    user_id              TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- The old schema said NOT NULL and ON DELETE SET NULL at once; RESTRICT is what works.
    persona_id           TEXT NOT NULL REFERENCES personas (id) ON DELETE RESTRICT,
    twilio_call_sid      TEXT,
    phone_number         TEXT CONSTRAINT call_logs_phone_number_e164 CHECK (phone_number ~ '^\+[1-9][0-9]{6,14}$'),
    duration_seconds     INTEGER NOT NULL DEFAULT 0
                         CONSTRAINT call_logs_duration_nonnegative CHECK (duration_seconds >= 0),
    status               TEXT NOT NULL DEFAULT 'initiated'
                         CONSTRAINT call_logs_status_valid CHECK (status IN (
                             'initiated', 'connected', 'completed', 'failed', 'no_answer', 'busy', 'canceled')),
    error_message        TEXT,
    -- Whole cents, rounded per service; call_cost_breakdowns holds the exact figures.
    cost_stt             INTEGER NOT NULL DEFAULT 0 CONSTRAINT call_logs_cost_stt_nonnegative CHECK (cost_stt >= 0),
    cost_llm             INTEGER NOT NULL DEFAULT 0 CONSTRAINT call_logs_cost_llm_nonnegative CHECK (cost_llm >= 0),
    cost_tts             INTEGER NOT NULL DEFAULT 0 CONSTRAINT call_logs_cost_tts_nonnegative CHECK (cost_tts >= 0),
    cost_twilio          INTEGER NOT NULL DEFAULT 0 CONSTRAINT call_logs_cost_twilio_nonnegative CHECK (cost_twilio >= 0),
    cost_total           INTEGER NOT NULL DEFAULT 0 CONSTRAINT call_logs_cost_total_nonnegative CHECK (cost_total >= 0),
    turn_count           INTEGER NOT NULL DEFAULT 0 CONSTRAINT call_logs_turn_count_nonnegative CHECK (turn_count >= 0),
    interrupt_count      INTEGER NOT NULL DEFAULT 0
                         CONSTRAINT call_logs_interrupt_count_nonnegative CHECK (interrupt_count >= 0),
    avg_response_time_ms INTEGER CONSTRAINT call_logs_avg_response_nonnegative CHECK (avg_response_time_ms >= 0),
    started_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    ended_at             TIMESTAMPTZ,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT call_logs_end_after_start CHECK (ended_at IS NULL OR ended_at >= started_at),
    CONSTRAINT call_logs_call_key UNIQUE (call_id)
);

COMMENT ON TABLE call_logs IS 'Per-call conversation metrics (turns, interruptions, latency) and rounded costs.';

-- Index names are prefixed with the table: the old schema reused idx_calls_* here, which
-- cannot work (index names share one namespace per schema).
-- (user_id, started_at) also serves every plain "WHERE user_id = $1" lookup.
CREATE INDEX idx_call_logs_user_started ON call_logs (user_id, started_at DESC);
CREATE INDEX idx_call_logs_persona ON call_logs (persona_id);
CREATE INDEX idx_call_logs_user_persona ON call_logs (user_id, persona_id);
CREATE INDEX idx_call_logs_started_at ON call_logs (started_at DESC);
CREATE INDEX idx_call_logs_status ON call_logs (status);

CREATE TRIGGER trg_call_logs_set_updated_at
    BEFORE UPDATE ON call_logs FOR EACH ROW EXECUTE FUNCTION set_updated_at();

------------------------------------------------------------------------------------------------
-- call_transcripts
------------------------------------------------------------------------------------------------
CREATE TABLE call_transcripts (
    call_id    TEXT PRIMARY KEY REFERENCES calls (id) ON DELETE CASCADE,
    -- [{"role": "user"|"assistant"|"system", "content": "…", "timestamp": "RFC 3339"}, …]
    -- Appended to with `messages = messages || $new::jsonb`. The second CHECK rejects any
    -- element that is not an object with those three members of the right type. It must be
    -- lax mode: there a missing member is an empty match (so the element is flagged), while
    -- strict mode would turn it into "unknown" and let the element through.
    messages   JSONB NOT NULL DEFAULT '[]'
               CONSTRAINT call_transcripts_messages_array CHECK (jsonb_typeof(messages) = 'array')
               CONSTRAINT call_transcripts_messages_shape CHECK (NOT jsonb_path_exists(messages,
                   'lax $[*] ? (!(@.type() == "object"
                                     && exists(@.role) && (@.role == "user" || @.role == "assistant" || @.role == "system")
                                     && exists(@.content) && @.content.type() == "string"
                                     && exists(@.timestamp) && @.timestamp.type() == "string"))')),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

COMMENT ON TABLE call_transcripts IS 'The conversation of a call as a JSON array of {role, content, timestamp}.';

CREATE TRIGGER trg_call_transcripts_set_updated_at
    BEFORE UPDATE ON call_transcripts FOR EACH ROW EXECUTE FUNCTION set_updated_at();
