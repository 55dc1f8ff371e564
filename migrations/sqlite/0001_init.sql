-- twokey schema, SQLite flavour. Keep in step with ../postgres/0001_init.sql: same tables,
-- same columns, same meaning. Times are UTC text in one fixed-width RFC 3339 form
-- (YYYY-MM-DDTHH:MM:SS.ffffffZ) so that text order is time order on both backends.
-- Ids are UUIDv7 text.

create table principal (
    principal_id     text primary key,
    issuer           text not null,
    subject          text not null,
    email            text not null,
    email_normalized text not null,
    name             text not null,
    azure_object_id  text,
    created_at       text not null,
    updated_at       text not null,
    unique (issuer, subject)
);

create table request (
    request_id          text primary key,
    guard               text not null,
    policy_hash         text not null,
    vault_id            text not null,
    operation           text not null,
    requester_id        text not null references principal (principal_id),
    requester_email     text not null,
    requester_name      text not null,
    requester_object_id text,
    justification       text not null,
    ticket              text,
    duration_minutes    integer not null,
    required_approvals  integer not null,
    state               text not null,
    created_at          text not null,
    deadline            text not null,
    decided_at          text,
    active_from         text,
    active_until        text,
    end_requested_at    text,
    end_requested_by    text,
    ended_at            text,
    end_reason          text,
    failure_message     text
);
create index request_state_deadline on request (state, deadline);
create index request_requester on request (requester_id, created_at);

create table decision (
    decision_id        text primary key,
    request_id         text not null references request (request_id),
    approver_id        text not null references principal (principal_id),
    approver_email     text not null,
    approver_name      text not null,
    approver_object_id text,
    verdict            text not null,
    comment            text,
    matched            text not null,   -- JSON array of the approver entries matched at decision time
    channel            text not null,   -- api | review_link
    at                 text not null,
    unique (request_id, approver_id)
);

create table review_token (
    jti           text primary key,
    request_id    text not null references request (request_id),
    approver_email text not null,
    kid           text not null,
    issued_at     text not null,
    expires_at    text not null,
    used_at       text
);

-- The elevation: one row per request that reached `approved`.
create table grant_record (
    request_id          text primary key references request (request_id),
    backend             text not null,
    scope               text not null,   -- the Resource Guard id
    role_definition_id  text not null,
    principal_object_id text,
    state               text not null,   -- requested | active | ended | failed
    requested_at        text not null,
    active_from         text,
    active_until        text,
    ended_at            text,
    detail              text
);

-- What the simulated backend "sent to Azure": one row per call, keyed by the derived GUID
-- so that a retried job repeats the same call instead of making a second one.
create table simulated_call (
    call_id    text primary key,
    request_id text not null,
    step       text not null,
    body       text not null,
    at         text not null
);

-- The outbox: every side effect is a job written in the transaction of its event.
create table job (
    job_id       text primary key,
    kind         text not null,
    request_id   text,
    payload      text not null,
    dedupe_key   text unique,
    state        text not null,         -- queued | done | failed
    attempts     integer not null default 0,
    max_attempts integer not null,
    run_at       text not null,
    lease_owner  text,
    lease_until  text,
    last_error   text,
    created_at   text not null,
    finished_at  text
);
create index job_due on job (state, run_at);

-- Mail written by notification jobs (also the demo's /dev/outbox listing).
create table notification (
    notification_id text primary key,   -- = the job id, so a retry writes the same message
    request_id      text,
    kind            text not null,
    recipient       text not null,
    subject         text not null,
    message_id      text not null,
    path            text,
    body            text not null,  -- the text part, for the outbox page
    sent_at         text not null
);

create table session (
    session_hash  text primary key,     -- SHA-256 of the cookie value; the value itself is never stored
    principal_id  text references principal (principal_id),
    csrf_token    text not null,
    groups        text not null default '[]',
    created_at    text not null,
    last_seen_at  text not null,
    expires_at    text not null
);

create table audit_event (
    seq              integer primary key,
    at               text not null,
    action           text not null,
    actor_id         text,
    actor_email      text,
    actor_object_id  text,
    actor_ip         text,
    actor_user_agent text,
    request_id       text,
    details          text not null,
    prev_hash        text not null,
    hash             text not null
);
create index audit_event_request on audit_event (request_id, seq);

-- The head of the audit chain. Every writing transaction updates this row first, which
-- serializes writers (one gap-free chain, and no lost update between two approvals).
create table audit_head (
    id   integer primary key check (id = 1),
    seq  integer not null,
    hash text not null
);
insert into audit_head (id, seq, hash)
values (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

create table guard_policy (
    guard       text primary key,
    policy_hash text not null,
    loaded_at   text not null
);
