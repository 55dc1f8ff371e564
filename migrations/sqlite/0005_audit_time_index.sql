-- Exports by period (`--since` / `--until`, `GET /api/v1/audit?since=&until=`) read a slice of
-- the log by time instead of walking it all: `at` grows with `seq`, so the slice is contiguous.
create index audit_event_at on audit_event (at, seq);
