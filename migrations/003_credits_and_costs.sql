-- 003_credits_and_costs: balances, the credit ledger, provider costs and spending limits.
--
-- Money rules enforced here rather than trusted to callers: a balance never goes negative, every
-- ledger row is arithmetically consistent and cannot be rewritten, a Stripe payment is credited
-- at most once and a call is charged at most once.

------------------------------------------------------------------------------------------------
-- user_credits
------------------------------------------------------------------------------------------------
CREATE TABLE user_credits (
    user_id                   TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    -- 1 credit = 1 started minute of call time. The CHECK is what makes a conditional
    -- deduction safe: an UPDATE that would overdraw fails instead of going below zero.
    available_credits         INTEGER NOT NULL DEFAULT 0
                              CONSTRAINT user_credits_available_credits_nonnegative CHECK (available_credits >= 0),
    subscription_tier         TEXT NOT NULL DEFAULT 'free'
                              CONSTRAINT user_credits_subscription_tier_valid CHECK (
                                  subscription_tier IN ('free', 'basic', 'premium', 'unlimited')),
    -- NULL while the user never subscribed.
    subscription_status       TEXT CONSTRAINT user_credits_subscription_status_valid CHECK (
                                  subscription_status IN ('active', 'past_due', 'canceled', 'expired')),
    subscription_stripe_id    TEXT,
    subscription_start_date   TIMESTAMPTZ,
    subscription_end_date     TIMESTAMPTZ,
    monthly_credit_allowance  INTEGER NOT NULL DEFAULT 0
                              CONSTRAINT user_credits_monthly_allowance_nonnegative CHECK (monthly_credit_allowance >= 0),
    -- NULL = no daily limit (premium and unlimited tiers).
    max_calls_per_day         INTEGER DEFAULT 3
                              CONSTRAINT user_credits_max_calls_per_day_positive CHECK (max_calls_per_day > 0),
    -- The free tier allows 5 minutes; the old default of 600 s contradicted its own tier table.
    max_call_duration_seconds INTEGER NOT NULL DEFAULT 300
                              CONSTRAINT user_credits_max_call_duration_range CHECK (
                                  max_call_duration_seconds BETWEEN 1 AND 14400),
    created_at                TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at                TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT user_credits_subscription_dates_ordered CHECK (
        subscription_end_date IS NULL OR subscription_start_date IS NULL
        OR subscription_end_date >= subscription_start_date)
);

COMMENT ON TABLE user_credits IS 'Balance, subscription and call limits of a user (one row per user).';

-- Stripe subscription webhooks find the account by subscription id.
CREATE UNIQUE INDEX idx_user_credits_subscription_stripe ON user_credits (subscription_stripe_id)
    WHERE subscription_stripe_id IS NOT NULL;
-- Admin view "users with low credits".
CREATE INDEX idx_user_credits_available ON user_credits (available_credits);

CREATE TRIGGER trg_user_credits_set_updated_at
    BEFORE UPDATE ON user_credits FOR EACH ROW EXECUTE FUNCTION set_updated_at();

------------------------------------------------------------------------------------------------
-- credit_transactions (the ledger)
------------------------------------------------------------------------------------------------
CREATE TABLE credit_transactions (
    id                TEXT PRIMARY KEY
                      CONSTRAINT credit_transactions_id_length CHECK (char_length(id) BETWEEN 1 AND 255),
    user_id           TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- Positive adds credits, negative removes them; the sign must match the type (below).
    amount            INTEGER NOT NULL,
    type              TEXT NOT NULL
                      CONSTRAINT credit_transactions_type_valid CHECK (type IN (
                          'purchase', 'subscription_refill', 'call_deduction', 'refund',
                          'admin_adjustment', 'signup_bonus')),
    call_id           TEXT REFERENCES calls (id) ON DELETE SET NULL,
    -- Stripe PaymentIntent of a purchase; also the idempotency key of the credit grant.
    payment_intent_id TEXT,
    -- The admin who made an adjustment (NULL for automatic entries).
    actor_user_id     TEXT REFERENCES users (id) ON DELETE SET NULL,
    description       TEXT CONSTRAINT credit_transactions_description_length CHECK (char_length(description) <= 500),
    balance_before    INTEGER NOT NULL
                      CONSTRAINT credit_transactions_balance_before_nonnegative CHECK (balance_before >= 0),
    balance_after     INTEGER NOT NULL
                      CONSTRAINT credit_transactions_balance_after_nonnegative CHECK (balance_after >= 0),
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT credit_transactions_balance_consistent CHECK (balance_after = balance_before + amount),
    CONSTRAINT credit_transactions_amount_sign CHECK (
        CASE type
            WHEN 'call_deduction' THEN amount < 0
            WHEN 'admin_adjustment' THEN amount <> 0
            ELSE amount > 0
        END),
    CONSTRAINT credit_transactions_purchase_has_payment CHECK (
        type <> 'purchase' OR payment_intent_id IS NOT NULL)
);

COMMENT ON TABLE credit_transactions IS
    'Append-only ledger of every credit change; balance_after = balance_before + amount.';

-- Transaction history with keyset pagination:
-- WHERE user_id = $1 AND (created_at, id) < ($2, $3) ORDER BY created_at DESC, id DESC.
CREATE INDEX idx_credit_transactions_user_created ON credit_transactions (user_id, created_at DESC, id DESC);
CREATE INDEX idx_credit_transactions_type ON credit_transactions (type, created_at DESC);
CREATE INDEX idx_credit_transactions_created ON credit_transactions (created_at DESC);
CREATE INDEX idx_credit_transactions_call ON credit_transactions (call_id) WHERE call_id IS NOT NULL;
CREATE INDEX idx_credit_transactions_actor ON credit_transactions (actor_user_id) WHERE actor_user_id IS NOT NULL;
-- Idempotency: a webhook delivered twice cannot credit a payment twice, and a call cannot be
-- charged twice. A retried writer gets a unique violation (`conflict`) instead of a second row.
CREATE UNIQUE INDEX idx_credit_transactions_purchase_once ON credit_transactions (payment_intent_id)
    WHERE type = 'purchase';
CREATE UNIQUE INDEX idx_credit_transactions_call_deduction_once ON credit_transactions (call_id)
    WHERE type = 'call_deduction';

-- Ledger rows are facts. Deleting them goes with the account (ON DELETE CASCADE); the only
-- update allowed is a foreign key nulling call_id or actor_user_id when that row is deleted.
CREATE FUNCTION credit_transactions_forbid_rewrite() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.id, NEW.user_id, NEW.amount, NEW.type, NEW.payment_intent_id, NEW.description,
        NEW.balance_before, NEW.balance_after, NEW.created_at)
       IS NOT DISTINCT FROM
       (OLD.id, OLD.user_id, OLD.amount, OLD.type, OLD.payment_intent_id, OLD.description,
        OLD.balance_before, OLD.balance_after, OLD.created_at)
       AND (NEW.call_id IS NOT DISTINCT FROM OLD.call_id OR NEW.call_id IS NULL)
       AND (NEW.actor_user_id IS NOT DISTINCT FROM OLD.actor_user_id OR NEW.actor_user_id IS NULL) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'credit_transactions rows are append-only'
        USING ERRCODE = 'check_violation', CONSTRAINT = 'credit_transactions_append_only',
              TABLE = 'credit_transactions';
END;
$$;

CREATE TRIGGER trg_credit_transactions_forbid_rewrite
    BEFORE UPDATE ON credit_transactions FOR EACH ROW EXECUTE FUNCTION credit_transactions_forbid_rewrite();

------------------------------------------------------------------------------------------------
-- call_cost_breakdowns
------------------------------------------------------------------------------------------------
-- Provider costs are in cents with 4 decimals: a short LLM exchange costs thousandths of a
-- cent, which the old NUMERIC(10,2) rounded to zero.
CREATE TABLE call_cost_breakdowns (
    id                      TEXT PRIMARY KEY
                            CONSTRAINT call_cost_breakdowns_id_length CHECK (char_length(id) BETWEEN 1 AND 255),
    call_id                 TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    twilio_cost_cents       NUMERIC(12, 4) NOT NULL DEFAULT 0
                            CONSTRAINT call_cost_breakdowns_twilio_cost_nonnegative CHECK (twilio_cost_cents >= 0),
    deepgram_cost_cents     NUMERIC(12, 4) NOT NULL DEFAULT 0
                            CONSTRAINT call_cost_breakdowns_deepgram_cost_nonnegative CHECK (deepgram_cost_cents >= 0),
    cerebras_cost_cents     NUMERIC(12, 4) NOT NULL DEFAULT 0
                            CONSTRAINT call_cost_breakdowns_cerebras_cost_nonnegative CHECK (cerebras_cost_cents >= 0),
    elevenlabs_cost_cents   NUMERIC(12, 4) NOT NULL DEFAULT 0
                            CONSTRAINT call_cost_breakdowns_elevenlabs_cost_nonnegative CHECK (elevenlabs_cost_cents >= 0),
    twilio_duration_seconds INTEGER NOT NULL DEFAULT 0
                            CONSTRAINT call_cost_breakdowns_twilio_duration_nonnegative CHECK (twilio_duration_seconds >= 0),
    deepgram_audio_seconds  NUMERIC(12, 2) NOT NULL DEFAULT 0
                            CONSTRAINT call_cost_breakdowns_deepgram_audio_nonnegative CHECK (deepgram_audio_seconds >= 0),
    cerebras_input_tokens   INTEGER NOT NULL DEFAULT 0
                            CONSTRAINT call_cost_breakdowns_cerebras_input_nonnegative CHECK (cerebras_input_tokens >= 0),
    cerebras_output_tokens  INTEGER NOT NULL DEFAULT 0
                            CONSTRAINT call_cost_breakdowns_cerebras_output_nonnegative CHECK (cerebras_output_tokens >= 0),
    elevenlabs_characters   INTEGER NOT NULL DEFAULT 0
                            CONSTRAINT call_cost_breakdowns_elevenlabs_chars_nonnegative CHECK (elevenlabs_characters >= 0),
    -- Derived, so it can never disagree with its parts. Writers must not set it.
    total_cost_cents        NUMERIC(14, 4) GENERATED ALWAYS AS (
                                twilio_cost_cents + deepgram_cost_cents + cerebras_cost_cents + elevenlabs_cost_cents
                            ) STORED,
    created_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The voice pipeline updates the running totals during the call.
    updated_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- One breakdown per call; the unique index also serves lookups by call.
    CONSTRAINT call_cost_breakdowns_call_key UNIQUE (call_id)
);

COMMENT ON TABLE call_cost_breakdowns IS 'Running and final provider costs of one call (cents, 4 decimals).';

CREATE INDEX idx_call_cost_breakdowns_created ON call_cost_breakdowns (created_at DESC);

CREATE TRIGGER trg_call_cost_breakdowns_set_updated_at
    BEFORE UPDATE ON call_cost_breakdowns FOR EACH ROW EXECUTE FUNCTION set_updated_at();

------------------------------------------------------------------------------------------------
-- call_cost_events
------------------------------------------------------------------------------------------------
CREATE TABLE call_cost_events (
    -- Generated by the writer, so a retried event is absorbed by ON CONFLICT (id) DO NOTHING.
    id          TEXT PRIMARY KEY
                CONSTRAINT call_cost_events_id_length CHECK (char_length(id) BETWEEN 1 AND 255),
    call_id     TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    provider    TEXT NOT NULL
                CONSTRAINT call_cost_events_provider_valid CHECK (
                    provider IN ('twilio', 'deepgram', 'cerebras', 'elevenlabs')),
    -- What was consumed, e.g. `call_minutes`, `stt_audio`, `llm_input_tokens`,
    -- `llm_output_tokens`, `tts_characters`.
    kind        TEXT NOT NULL
                CONSTRAINT call_cost_events_kind_format CHECK (kind ~ '^[a-z][a-z0-9_]{0,63}$'),
    quantity    NUMERIC(18, 6) NOT NULL
                CONSTRAINT call_cost_events_quantity_nonnegative CHECK (quantity >= 0),
    unit        TEXT NOT NULL
                CONSTRAINT call_cost_events_unit_valid CHECK (
                    unit IN ('seconds', 'minutes', 'tokens', 'characters', 'requests')),
    -- Six decimals: one LLM turn can cost a thousandth of a cent.
    cost_cents  NUMERIC(14, 6) NOT NULL
                CONSTRAINT call_cost_events_cost_nonnegative CHECK (cost_cents >= 0),
    occurred_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    metadata    JSONB NOT NULL DEFAULT '{}'
                CONSTRAINT call_cost_events_metadata_object CHECK (jsonb_typeof(metadata) = 'object')
);

COMMENT ON TABLE call_cost_events IS 'Granular usage/cost events of a call, one per provider charge.';

CREATE INDEX idx_call_cost_events_call ON call_cost_events (call_id, occurred_at);
CREATE INDEX idx_call_cost_events_provider ON call_cost_events (provider, occurred_at DESC);

------------------------------------------------------------------------------------------------
-- user_budget_settings
------------------------------------------------------------------------------------------------
CREATE TABLE user_budget_settings (
    user_id                  TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    max_cost_per_call_cents  INTEGER NOT NULL DEFAULT 1000
                             CONSTRAINT user_budget_settings_max_per_call_positive CHECK (max_cost_per_call_cents > 0),
    max_monthly_spend_cents  INTEGER NOT NULL DEFAULT 10000
                             CONSTRAINT user_budget_settings_max_monthly_positive CHECK (max_monthly_spend_cents > 0),
    -- Warn when a call reaches this share of max_cost_per_call_cents.
    warn_at_percent_per_call INTEGER NOT NULL DEFAULT 75
                             CONSTRAINT user_budget_settings_warn_percent_range CHECK (
                                 warn_at_percent_per_call BETWEEN 1 AND 100),
    -- End the call when the per-call limit is reached.
    enable_auto_cutoff       BOOLEAN NOT NULL DEFAULT true,
    created_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- A single call may not be allowed to spend more than the whole month.
    CONSTRAINT user_budget_settings_call_within_month CHECK (max_cost_per_call_cents <= max_monthly_spend_cents)
);

COMMENT ON TABLE user_budget_settings IS 'Per-user spending limits; absent row = the column defaults apply.';

CREATE TRIGGER trg_user_budget_settings_set_updated_at
    BEFORE UPDATE ON user_budget_settings FOR EACH ROW EXECUTE FUNCTION set_updated_at();
