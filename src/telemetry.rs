//! Logging: `tracing` to stderr, JSON when `TWOKEY_LOG_FORMAT=json` (or stderr is not a
//! terminal), human-readable otherwise; the filter comes from `RUST_LOG` (default `info`).
//! Never log tokens, cookies or secrets: request spans carry the route template, not the URI.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let json = match std::env::var("TWOKEY_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("pretty") => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
