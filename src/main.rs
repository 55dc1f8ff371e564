//! The `twokey` command: parse the CLI, load and validate the config, run one verb.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use twokey::app::{App, shutdown_signal};
use twokey::config::{Config, ConfigErrors, RawConfig};
use twokey::store::Store;

#[derive(Parser)]
#[command(
    name = "twokey",
    version,
    about = "Two-person approval for Azure Backup critical operations"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ConfigArg {
    /// The TOML config file (TWOKEY_… environment variables override it).
    #[arg(long, env = "TWOKEY_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the web pages, the API and the job worker.
    Serve(ConfigArg),
    /// Run a complete offline demo: SQLite, demo people, simulated Azure, an outbox page.
    Demo {
        /// Where the demo keeps its database, key and outbox (default: a new temp dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Address to listen on (loopback only).
        #[arg(long, default_value = "127.0.0.1:8080")]
        bind: String,
    },
    /// Apply database migrations and exit.
    Migrate(ConfigArg),
    /// Check the configuration and print every problem with its key.
    CheckConfig(ConfigArg),
    /// Preflight each Azure guard: token, read the guard, linked vaults, role request rights.
    /// Changes nothing in Azure. Exit status 0 only when nothing is missing.
    CheckAzure {
        #[command(flatten)]
        config: ConfigArg,
        /// The object id used in the PIM dry run (default: the broker's own, from its token).
        #[arg(long)]
        principal: Option<String>,
    },
    /// The posture report: per guard, who can go around MUA and how each covered vault
    /// stands, with each finding's fix. Records the report (a change is audited and mailed to
    /// the guard's watchers). Exit status 0 without red (critical or high) findings, 1 with.
    Posture {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the report as JSON (the same model as the page) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the hash chain (database, or a JSON Lines export with --file); exit 0 only when it
    /// is whole, 1 naming the first bad seq, 3 for a partial chain (a filtered export).
    Verify(VerifyArgs),
    /// Stream the audit log as CSV, JSON Lines or OCSF, to stdout or --output.
    Export(ExportArgs),
    /// Print a signed checkpoint of the chain head as one JSON line (audit.checkpoint_key_file).
    Checkpoint(CheckpointArgs),
}

#[derive(clap::Args)]
struct VerifyArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Verify this JSON Lines export (`-` for stdin) instead of the database.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Also check against this checkpoint (from `twokey audit checkpoint`): the chain must
    /// still hold its seq with its hash, so a truncated tail is caught.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// The checkpoint signer's public key (PEM); default: derived from audit.checkpoint_key_file.
    #[arg(long)]
    public_key: Option<PathBuf>,
    /// Exit 0 for a partial chain (an export you filtered on purpose), not 3.
    #[arg(long)]
    allow_partial: bool,
}

#[derive(clap::Args)]
struct ExportArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    cli: twokey::audit::cli::ExportOptions,
}

#[derive(clap::Args)]
struct CheckpointArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Print the signing key's public key (PEM) instead, for checking checkpoints elsewhere.
    #[arg(long)]
    public_key: bool,
}

fn load(arg: &ConfigArg) -> Result<Config, ConfigErrors> {
    RawConfig::load(RawConfig::default(), arg.config.as_deref())?.validate()
}

fn print_config_errors(e: &ConfigErrors) -> ExitCode {
    eprint!("{e}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    // Before the runtime starts any thread (see `memory::configure`).
    twokey::memory::configure();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("start the async runtime")
        .block_on(async_main())
}

async fn async_main() -> ExitCode {
    twokey::telemetry::init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(arg) => {
            let config = match load(&arg) {
                Ok(c) => c,
                Err(e) => return Ok(print_config_errors(&e)),
            };
            let app = App::build(config).await?;
            tracing::info!(addr = %app.addr(), "twokey listening");
            app.run_until_stopped(shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { data_dir, bind } => {
            let dir = match data_dir {
                Some(d) => d,
                None => std::env::temp_dir().join(format!("twokey-demo-{}", uuid::Uuid::new_v4())),
            };
            std::fs::create_dir_all(&dir)?;
            // Port 0 means "any free port"; links in mails need the real one, so pick it now.
            let bind = match bind.parse::<std::net::SocketAddr>() {
                Ok(a) if a.port() == 0 => std::net::TcpListener::bind(a)?.local_addr()?.to_string(),
                _ => bind,
            };
            let secret = twokey::demo::review_secret(&dir)?;
            let raw = twokey::demo::config(&dir, &bind, secret);
            let config = match raw.validate() {
                Ok(c) => c,
                Err(e) => return Ok(print_config_errors(&e)),
            };
            let app = App::build(config).await?;
            let url = format!("http://{}", app.addr());
            // Written once and not with `println!`: a closed stdout must not stop the demo.
            let banner = format!(
                "twokey demo is running at {url}\n  sign in as a demo person:  {url}/auth/dev\n  mail it would have sent:   {url}/dev/outbox\n  data (SQLite, outbox):     {}\nPress Ctrl-C to stop.\n",
                dir.display()
            );
            {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(banner.as_bytes());
                let _ = out.flush();
            }
            app.run_until_stopped(shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate(arg) => {
            let config = match load(&arg) {
                Ok(c) => c,
                Err(e) => return Ok(print_config_errors(&e)),
            };
            let store = Store::connect(config.database.url.expose(), 1).await?;
            store.migrate().await?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig(arg) => match load(&arg) {
            Ok(c) => {
                println!(
                    "configuration OK: {} guard(s), database {}, sign-in {:?}",
                    c.guards.len(),
                    twokey::secret::redact_url(c.database.url.expose()),
                    c.auth.mode
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Ok(print_config_errors(&e)),
        },
        Command::CheckAzure { config, principal } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(e) => return Ok(print_config_errors(&e)),
            };
            if config.azure.is_none() {
                println!("no guard uses azure-pim or azure-rbac: nothing to check");
                return Ok(ExitCode::SUCCESS);
            }
            let elev = twokey::azure::Elevations::new(config.azure.as_ref())
                .map_err(anyhow::Error::msg)?;
            let rows = twokey::azure::check::run(&elev, &config.guards, principal.as_deref()).await;
            print!("{}", twokey::azure::check::render(&rows));
            let missing = rows.iter().filter(|r| r.ok == Some(false)).count();
            if missing > 0 {
                println!("{missing} check(s) failed: see DETAIL / FIX");
                Ok(ExitCode::FAILURE)
            } else {
                println!("all checks passed");
                Ok(ExitCode::SUCCESS)
            }
        }
        Command::Posture { config, json } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(e) => return Ok(print_config_errors(&e)),
            };
            let store = Store::connect(config.database.url.expose(), 2).await?;
            store.migrate().await?;
            let svc = twokey::service::Service::new(
                store,
                std::sync::Arc::new(config),
                std::sync::Arc::new(twokey::clock::SystemClock),
            )
            .map_err(anyhow::Error::msg)?;
            let run = svc.run_posture("cli").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&run.report)?);
            } else {
                print!("{}", twokey::service::render_posture_text(&run.report));
                for (guard, c) in &run.changed {
                    println!(
                        "{guard}: changed since the last report ({} new, {} gone, {} other severity): audited, watchers mailed",
                        c.added.len(),
                        c.removed.len(),
                        c.changed.len()
                    );
                }
            }
            Ok(if run.report.red_count() > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Audit { command } => audit(command).await,
    }
}

async fn audit(command: AuditCommand) -> anyhow::Result<ExitCode> {
    use twokey::audit::cli;
    match command {
        AuditCommand::Verify(a) => {
            // An export file needs no configuration, unless its checkpoint key comes from it.
            let needs_config =
                a.file.is_none() || (a.checkpoint.is_some() && a.public_key.is_none());
            let config = if needs_config {
                match load(&a.config) {
                    Ok(c) => Some(c),
                    Err(e) => return Ok(print_config_errors(&e)),
                }
            } else {
                None
            };
            let code = cli::verify(
                config.as_ref(),
                a.file.as_deref(),
                a.checkpoint.as_deref(),
                a.public_key.as_deref(),
                a.allow_partial,
            )
            .await?;
            Ok(ExitCode::from(code))
        }
        AuditCommand::Export(a) => {
            let config = match load(&a.config) {
                Ok(c) => c,
                Err(e) => return Ok(print_config_errors(&e)),
            };
            Ok(ExitCode::from(cli::export(&config, &a.cli).await?))
        }
        AuditCommand::Checkpoint(a) => {
            let config = match load(&a.config) {
                Ok(c) => c,
                Err(e) => return Ok(print_config_errors(&e)),
            };
            Ok(ExitCode::from(
                cli::checkpoint(&config, a.public_key).await?,
            ))
        }
    }
}
