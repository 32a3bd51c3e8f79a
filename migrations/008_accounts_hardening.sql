-- 008_accounts_hardening: Stripe subscription state that follows each subscription's own history,
-- not the order webhooks arrive in.
--
-- Stripe does not deliver events in order, and retries arrive late: an `invoice.paid` delivered
-- after `customer.subscription.deleted` used to set the tier back to paid and add a month of
-- credits. Two tables make the effects order-independent:
-- - stripe_subscriptions: per subscription, the latest state known and what it is based on (the
--   billing period of the newest paid invoice, or when it ended). An event changes the user's
--   tier only if it is newer than that state;
-- - subscription_refills: one row per (subscription, billing period) credited, inserted in the
--   same statement as the credits, so a period is refilled once whatever arrives and in whatever
--   order.

------------------------------------------------------------------------------------------------
-- stripe_subscriptions
------------------------------------------------------------------------------------------------
CREATE TABLE stripe_subscriptions (
    -- Stripe `sub_…`.
    subscription_id TEXT PRIMARY KEY
                    CONSTRAINT stripe_subscriptions_subscription_id_length CHECK (
                        char_length(subscription_id) BETWEEN 1 AND 255),
    user_id         TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- `canceled` is final for Stripe (a new subscription gets a new id); only an invoice whose
    -- period starts at or after `ended_at` can make it `active` again.
    status          TEXT NOT NULL
                    CONSTRAINT stripe_subscriptions_status_valid CHECK (status IN ('active', 'canceled')),
    -- The billing period of the newest paid invoice applied (NULL if none was seen).
    period_start    TIMESTAMPTZ,
    period_end      TIMESTAMPTZ,
    -- When the subscription ended (`ended_at` of the deletion event); NULL while active.
    ended_at        TIMESTAMPTZ,
    -- Stripe's `created` of the event that set this state (ties between events of one period).
    state_event_at  TIMESTAMPTZ NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT stripe_subscriptions_period_ordered CHECK (
        period_end IS NULL OR period_start IS NULL OR period_end >= period_start),
    CONSTRAINT stripe_subscriptions_canceled_has_end CHECK (
        (status = 'canceled') = (ended_at IS NOT NULL))
);

COMMENT ON TABLE stripe_subscriptions IS 'Latest known state of each Stripe subscription, so late webhooks cannot roll it back.';

CREATE INDEX idx_stripe_subscriptions_user ON stripe_subscriptions (user_id);

CREATE TRIGGER trg_stripe_subscriptions_set_updated_at
    BEFORE UPDATE ON stripe_subscriptions FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Subscriptions on file before this migration: their state as user_credits records it.
INSERT INTO stripe_subscriptions
    (subscription_id, user_id, status, period_start, period_end, ended_at, state_event_at)
SELECT subscription_stripe_id, user_id,
       CASE WHEN subscription_status IN ('canceled', 'expired') THEN 'canceled' ELSE 'active' END,
       subscription_start_date, subscription_end_date,
       CASE WHEN subscription_status IN ('canceled', 'expired')
            THEN COALESCE(subscription_end_date, updated_at) END,
       updated_at
FROM user_credits
WHERE subscription_stripe_id IS NOT NULL;

------------------------------------------------------------------------------------------------
-- subscription_refills
------------------------------------------------------------------------------------------------
CREATE TABLE subscription_refills (
    subscription_id TEXT NOT NULL
                    CONSTRAINT subscription_refills_subscription_id_length CHECK (
                        char_length(subscription_id) BETWEEN 1 AND 255),
    -- The invoice line's `period.start`: the key of "one refill per period".
    period_start    TIMESTAMPTZ NOT NULL,
    period_end      TIMESTAMPTZ NOT NULL,
    user_id         TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- The ledger row of the refill (NULL for tiers without monthly credits).
    transaction_id  TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (subscription_id, period_start),
    CONSTRAINT subscription_refills_period_ordered CHECK (period_end >= period_start)
);

COMMENT ON TABLE subscription_refills IS 'Billing periods already credited, one row per subscription and period.';

CREATE INDEX idx_subscription_refills_user ON subscription_refills (user_id);
