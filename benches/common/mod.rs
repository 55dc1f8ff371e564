//! What the benches share: a throw-away PostgreSQL database, the verdict words, the load average.

use std::process::Command;

/// A PostgreSQL database made for one bench run on `TWOKEY_BENCH_PG_URL` (default the local
/// server) and dropped at the end, also on a panic.
pub struct PgDb {
    admin: String,
    name: String,
    /// The database's URL.
    pub url: String,
}

impl PgDb {
    pub async fn create() -> Self {
        let admin = std::env::var("TWOKEY_BENCH_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("twokey_bench_{}", uuid::Uuid::new_v4().simple());
        let store = twokey::store::Store::connect(&admin, 1)
            .await
            .expect("PostgreSQL for the bench");
        store
            .execute_raw_for_tests(&format!("create database {name}"))
            .await
            .expect("create the bench database");
        store.close().await;
        let mut url = url::Url::parse(&admin).expect("TWOKEY_BENCH_PG_URL is a URL");
        url.set_path(&format!("/{name}"));
        Self {
            admin,
            name,
            url: url.to_string(),
        }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([&self.admin, "-X", "-q", "-c"])
            .arg(format!(
                "drop database if exists {} with (force)",
                self.name
            ))
            .status();
    }
}

pub fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "OVER THE LIMIT" }
}

/// Print the load average: other work on the machine skews the times above.
pub fn print_load_average() {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nload average at the end (other work on the machine skews times): {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}
