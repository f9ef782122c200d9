-- Billing through Squad (core/src/billing.rs): an organisation's subscription, every payment
-- observe asked Squad for (the idempotency record of each charge), and the billing history.

-- One per organisation that ever paid. `state`: active (paid up to current_period_end), grace
-- (a renewal failed; retried daily until grace_until, still on the plan), ended (back on hobby).
CREATE TABLE subscriptions (
    organisation_id      uuid        PRIMARY KEY REFERENCES organisations (id) ON DELETE CASCADE,
    plan                 text        NOT NULL CHECK (plan IN ('pro', 'team')),
    state                text        NOT NULL CHECK (state IN ('active', 'grace', 'ended')),
    amount               bigint      NOT NULL CHECK (amount > 0),
    current_period_start timestamptz NOT NULL,
    current_period_end   timestamptz NOT NULL,
    cancel_at_period_end boolean     NOT NULL DEFAULT false,
    grace_until          timestamptz,
    -- Squad's token of the saved card, AES-256-GCM under a key derived from SECRET_KEY:
    -- a 12-byte nonce, then the ciphertext and its tag. Never returned, never logged.
    card_token           bytea,
    card_last4           text,
    card_brand           text,
    -- Who receives receipts and notices: the payer of the last checkout.
    email                text        NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX subscriptions_due ON subscriptions (current_period_end)
    WHERE state IN ('active', 'grace');

-- Every transaction observe started with Squad, recorded (committed) before Squad is called:
-- the reference is the idempotency key, so a run cut short between the two asks Squad about
-- the reference instead of charging again.
CREATE TABLE payments (
    reference       text        PRIMARY KEY,
    organisation_id uuid        NOT NULL REFERENCES organisations (id) ON DELETE CASCADE,
    kind            text        NOT NULL CHECK (kind IN ('checkout', 'renewal')),
    plan            text        NOT NULL CHECK (plan IN ('pro', 'team')),
    amount          bigint      NOT NULL CHECK (amount > 0),
    email           text        NOT NULL,
    state           text        NOT NULL CHECK (state IN ('pending', 'succeeded', 'failed')),
    -- A renewal: the end of the period it pays to continue from.
    renews_period_end timestamptz,
    failure         text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX payments_pending ON payments (organisation_id) WHERE state = 'pending';

-- The history an owner sees (GET /billing/events), newest first.
CREATE TABLE billing_events (
    id              uuid        PRIMARY KEY,
    organisation_id uuid        NOT NULL REFERENCES organisations (id) ON DELETE CASCADE,
    kind            text        NOT NULL,
    reference       text,
    plan            text,
    amount          bigint,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX billing_events_by_organisation ON billing_events (organisation_id, created_at DESC, id DESC);
