//! Black-box tests of the app over HTTP, each run on SQLite and on PostgreSQL.

mod alerts;
mod audit;
mod audit_export;
mod azure;
mod azure_crash;
mod batches;
mod cli;
mod fake_arm;
mod group_commit;
mod helpers;
mod hostile;
mod jobs;
mod lifecycle;
mod mail;
mod oidc;
mod pages;
mod posture;
mod production;
mod review;
mod separation;
