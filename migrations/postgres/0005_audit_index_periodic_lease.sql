-- Exports by period (`--since` / `--until`, `GET /api/v1/audit?since=&until=`) read a slice of
-- the log by time instead of walking it all: `at` grows with `seq`, so the slice is contiguous.
create index audit_event_at on audit_event (at, seq);

-- Periodic work (the sweep: deadlines, sessions, the daily schedule, reconciling with Azure) runs
-- on one replica at a time: the replica that holds this lease, renewed at each sweep. When it
-- dies, the lease runs out and another replica takes over.
create table periodic_lease (
    name        text primary key,
    owner       text,
    lease_until text not null
);
insert into periodic_lease (name, owner, lease_until) values ('sweep', null, '');
