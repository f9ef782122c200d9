-- Sentry SDKs (src/routes/sentry.rs): the numeric project id their DSNs require, each key's
-- public DSN key, and the context an occurrence carries beyond observe's own fields.

-- Each ALTER takes its table's ACCESS EXCLUSIVE lock. Queued behind a long reader (an export,
-- a flush of an old instance), it would hold every later query of the table behind it; so it
-- gives up after 10 s instead: the migration fails, nothing of it applies, and the next start
-- tries again.
SET LOCAL lock_timeout = '10s';

-- What an occurrence carries beyond observe's fields (breadcrumbs, contexts, the request, the
-- rest of an exception chain, the SDK), at most 64 KiB of JSON (core/src/ingest.rs). NULL when
-- nothing was sent: most occurrences. A nullable column without a default: no rewrite.
ALTER TABLE errors ADD COLUMN context jsonb;

-- Sentry's DSN parsers accept only digits as the project id. Stable: an identity, never reused.
-- (Both tables below are small: one row per project, per key.)
ALTER TABLE projects ADD COLUMN numeric_id bigint GENERATED ALWAYS AS IDENTITY;
ALTER TABLE projects ADD CONSTRAINT projects_numeric_id UNIQUE (numeric_id);

-- The public part of a DSN: 32 hex digits (the JavaScript SDK's DSN pattern takes only letters,
-- digits and `_` there, and `obs_` keys hold `-`). Like Sentry's public keys it is not a secret:
-- it sits in web pages, it only writes into its project, and revoking the key ends it. Kept in
-- clear so key lists can show the DSN at any time. Existing keys get one here; new keys get one
-- from observe (core/src/auth.rs).
ALTER TABLE api_keys ADD COLUMN dsn_key text NOT NULL
    DEFAULT replace(gen_random_uuid()::text, '-', '');
ALTER TABLE api_keys ALTER COLUMN dsn_key DROP DEFAULT;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_dsn_key UNIQUE (dsn_key);
