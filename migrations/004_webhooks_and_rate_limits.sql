-- 004_webhooks_and_rate_limits: webhook idempotency and per-phone-number call rate limiting.

------------------------------------------------------------------------------------------------
-- processed_webhook_events
------------------------------------------------------------------------------------------------
-- Providers retry webhooks. The handler inserts (provider, event_id) in the same transaction as
-- its effects, with ON CONFLICT DO NOTHING: zero affected rows means "already handled, answer
-- 200 and do nothing".
CREATE TABLE processed_webhook_events (
    -- `stripe`, `twilio`, …; a format check so a new provider needs no migration.
    provider     TEXT NOT NULL
                 CONSTRAINT processed_webhook_events_provider_format CHECK (provider ~ '^[a-z][a-z0-9_]{0,31}$'),
    -- Stripe `evt_…` id, or for Twilio a key derived from CallSid + status.
    event_id     TEXT NOT NULL
                 CONSTRAINT processed_webhook_events_event_id_length CHECK (char_length(event_id) BETWEEN 1 AND 255),
    event_type   TEXT CONSTRAINT processed_webhook_events_event_type_length CHECK (char_length(event_type) <= 255),
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, event_id)
);

COMMENT ON TABLE processed_webhook_events IS 'Webhook deliveries already handled; rows older than the provider retry window can be deleted.';

CREATE INDEX idx_processed_webhook_events_processed ON processed_webhook_events (processed_at);

------------------------------------------------------------------------------------------------
-- phone_rate_limits
------------------------------------------------------------------------------------------------
-- A fixed-window counter per destination number (default policy: 2 calls per hour), so nobody
-- can use the service to ring a stranger's phone repeatedly. The number itself is never stored:
-- the key is a keyed hash (HMAC-SHA256 with a server secret).
CREATE TABLE phone_rate_limits (
    -- Hex or base64 of the HMAC. The CHECKs refuse anything that looks like a raw number, so a
    -- caller that forgot to hash fails loudly instead of leaking phone numbers into the table.
    phone_hash   TEXT PRIMARY KEY
                 CONSTRAINT phone_rate_limits_phone_hash_shape CHECK (
                     char_length(phone_hash) BETWEEN 32 AND 128 AND phone_hash !~ '^\+'),
    call_count   INTEGER NOT NULL DEFAULT 0
                 CONSTRAINT phone_rate_limits_call_count_nonnegative CHECK (call_count >= 0),
    -- Start of the current window (the seed stored epoch milliseconds in a BIGINT).
    window_start TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Country/region of the number, e.g. `US`, for statistics.
    region       TEXT CONSTRAINT phone_rate_limits_region_length CHECK (char_length(region) <= 16),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

COMMENT ON TABLE phone_rate_limits IS 'Per-number call counters keyed by HMAC of the number; stale rows (>7 days) are deleted.';

-- The cleanup job: DELETE … WHERE window_start < now() - interval '7 days'.
CREATE INDEX idx_phone_rate_limits_window_start ON phone_rate_limits (window_start);

CREATE TRIGGER trg_phone_rate_limits_set_updated_at
    BEFORE UPDATE ON phone_rate_limits FOR EACH ROW EXECUTE FUNCTION set_updated_at();
