-- Alerts. Keep in step with ../postgres/0003_alerts.sql.

-- Azure Monitor alerts taken in by POST /hooks/azure-monitor/{hook}: one row per alert id and
-- monitor condition, so Azure's retries (and a second action group pointing at twokey) are
-- taken in once. Also what the "destructive request after a backup failure" rule and the
-- daily digest read.
create table alert_received (
    alert_key   text primary key,   -- SHA-256 hex of lower(alertId) \n monitorCondition
    hook        text not null,      -- the configured hook it came through
    alert_id    text not null,
    condition   text not null,      -- Fired | Resolved
    kind        text not null,      -- backup_failure | activity | backup_security | other
    summary     text not null,      -- one line: what happened
    vault_id    text,               -- the vault it is about, lower case, when one could be found
    guards      text not null,      -- JSON array of the guards whose watchers were told
    received_at text not null
);
create index alert_received_vault on alert_received (vault_id, kind, received_at);
create index alert_received_at on alert_received (received_at);
