//! The rules of twokey, with no I/O: ARM ids, the operation catalogue, principals, guard policy
//! and the request state machine. Time comes in as an argument; nothing here reads the clock,
//! the database, the network or the environment.

pub mod alerts;
pub mod arm;
pub mod operations;
pub mod policy;
pub mod posture;
pub mod principal;
pub mod request;
