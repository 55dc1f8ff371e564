-- The posture report (README "Posture"). Keep in step with ../sqlite/0004_posture.sql.

-- The last report of each guard: what the page shows and what the next run is compared with
-- (findings by their stable id). One row per guard, replaced by each run in the transaction
-- that writes its posture.changed event and the watchers' mail.
create table posture_report (
    guard          text primary key,
    run_at         text not null,
    report         text not null,      -- JSON: the guard's report, findings included
    names_resolved integer not null,   -- 1 when Microsoft Graph gave names, 0 for ids only
    names_note     text                -- why names are missing, when they are
);
