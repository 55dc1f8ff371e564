-- OpenID Connect sign-in. Keep in step with ../postgres/0002_oidc_login.sql.

-- A sign-in in progress: created by GET /auth/login, consumed (deleted) by the one
-- GET /auth/callback that carries its `state` from the same browser session.
create table oidc_login (
    state_hash    text primary key,     -- SHA-256 of `state`; the value itself is not stored
    session_hash  text not null,        -- the (anonymous) session that started the sign-in
    nonce         text not null,
    pkce_verifier text not null,
    next_path     text not null,
    created_at    text not null,
    expires_at    text not null
);
create index oidc_login_expires on oidc_login (expires_at);

-- Why a session's groups are not what the person may expect (e.g. a groups overage), shown
-- on GET /api/v1/session. NULL when there is nothing to say.
alter table session add column notice text;
