//! Black-box tests of the app over HTTP, each run on SQLite and on PostgreSQL.

mod audit;
mod helpers;
mod hostile;
mod jobs;
mod lifecycle;
mod review;
mod separation;
