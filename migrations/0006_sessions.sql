-- Sessions (issue 10, items 6-7). A session is one sign-in: its refresh tokens are the family
-- that `refresh_tokens.family_id` names, its access tokens carry its id (`sid`) and are checked
-- against this row on every request, so ending it ends them at once. `authenticated_at` is the
-- real authentication, which refreshes keep ("recent sign-in"); `expires_at` the absolute end
-- (auth.session_max_days after the sign-in, however often it is refreshed).
CREATE TABLE sessions (
    id               uuid        PRIMARY KEY,
    user_id          uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    organisation_id  uuid        NOT NULL REFERENCES organisations (id) ON DELETE CASCADE,
    authenticated_at timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    revoked_at       timestamptz
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expires ON sessions (expires_at);

-- The families that exist already become sessions: signed in when their first token was made,
-- ending 90 days (the default lifetime) after that, revoked if every token of theirs is.
INSERT INTO sessions (id, user_id, organisation_id, authenticated_at, created_at, expires_at, revoked_at)
SELECT family_id,
       (array_agg(user_id ORDER BY created_at))[1],
       (array_agg(organisation_id ORDER BY created_at))[1],
       min(created_at),
       min(created_at),
       min(created_at) + interval '90 days',
       CASE WHEN bool_and(revoked_at IS NOT NULL) THEN max(revoked_at) END
FROM refresh_tokens
GROUP BY family_id;

ALTER TABLE refresh_tokens
    ADD CONSTRAINT refresh_tokens_session FOREIGN KEY (family_id) REFERENCES sessions (id) ON DELETE CASCADE;

-- When the account's credentials last changed hands or value (password set or reset, account
-- taken over by the owner of its address). An emailed token made before it no longer works
-- (ASP.NET Identity's security stamp): confirming an email change re-checks the account.
ALTER TABLE users ADD COLUMN credentials_changed_at timestamptz NOT NULL DEFAULT '-infinity';
ALTER TABLE users ALTER COLUMN credentials_changed_at SET DEFAULT now();
