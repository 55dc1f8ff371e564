//! twokey: a two-person approval broker for Azure Backup's multi-user authorization.
//!
//! A requester asks to perform one critical operation on one vault; separate approvers decide;
//! on approval twokey grants a time-boxed role on the vault's Resource Guard and takes it away
//! again; every step lands in a hash-chained audit log. Dependencies point one way:
//! `http` → `service` → (`domain`, `store`, `audit`, `notify`, `azure`) → `domain`.

pub mod app;
/// The append-only, hash-chained audit log.
pub mod audit;
/// Sessions, the dev sign-in and signed review links.
pub mod auth;
/// Azure: ARM client, credentials, elevation backends, preflight.
pub mod azure;
/// Coalescing concurrent calls into batches (sessions, decisions).
pub mod batch;
/// Time as a dependency (real or manual).
pub mod clock;
/// Configuration: file, environment, secrets, validation.
pub mod config;
/// `twokey demo`: the one-command offline experience.
pub mod demo;
/// The rules, with no I/O.
pub mod domain;
/// The axum router, API and pages.
pub mod http;
/// The job worker (outbox).
pub mod jobs;
/// Giving freed memory back to the system after a burst.
pub mod memory;
/// Prometheus metrics.
pub mod metrics;
/// What mails say and how they leave.
pub mod notify;
/// The redacting secret type and constant-time compares.
pub mod secret;
/// Use cases: one transaction per transition.
pub mod service;
/// SQL, for SQLite and PostgreSQL. The only module that imports sqlx.
pub mod store;
/// Logging setup.
pub mod telemetry;
/// The one textual form of a time.
pub mod timefmt;
