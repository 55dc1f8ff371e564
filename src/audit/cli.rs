//! The `twokey audit …` verbs (export, verify, checkpoint), kept here so `main.rs` stays a
//! table of commands. Each returns the process exit status.

use std::fs::File;
use std::io::{BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use futures::StreamExt;

use super::checkpoint::{Checkpoint, PublicKey};
use super::export::{self, FilterInput, Format};
use super::verify::{self, FileError};
use crate::config::Config;
use crate::store::Store;
use crate::timefmt;

/// `twokey audit export` options.
#[derive(clap::Args, Debug, Clone)]
pub struct ExportOptions {
    /// csv (spreadsheets), jsonl (every chain field; verifiable), ocsf (SIEMs).
    #[arg(long, default_value = "jsonl", value_parser = ["csv", "jsonl", "ocsf"])]
    pub format: String,
    /// Events at or after this time (RFC 3339, or a date meaning its midnight UTC).
    #[arg(long)]
    pub since: Option<String>,
    /// Events before this time (exclusive).
    #[arg(long)]
    pub until: Option<String>,
    /// Events of this request only.
    #[arg(long)]
    pub request: Option<String>,
    /// Events by this actor: an email (any case) or a principal id.
    #[arg(long)]
    pub actor: Option<String>,
    /// Events with this action (repeat, or separate with commas, for several).
    #[arg(long = "action")]
    pub actions: Vec<String>,
    /// Write here instead of stdout (a regular file is written as FILE.partial and renamed
    /// when complete; an existing device or FIFO is written in place, never replaced).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

/// `twokey audit export`.
pub async fn export(config: &Config, o: &ExportOptions) -> anyhow::Result<u8> {
    let format = Format::parse(&o.format).expect("clap checked the format");
    let q = match (FilterInput {
        since: o.since.clone(),
        until: o.until.clone(),
        request: o.request.clone(),
        actor: o.actor.clone(),
        actions: o.actions.clone(),
    })
    .to_query()
    {
        Ok(q) => q,
        Err(e) => {
            eprintln!("error: --{e}");
            return Ok(2);
        }
    };
    let store = Store::connect(config.database.url.expose(), 2).await?;
    let bar = if std::io::stderr().is_terminal() {
        let total = store.count_audit_matching(&q).await?;
        let bar = indicatif::ProgressBar::new(u64::try_from(total).unwrap_or(0));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {human_pos}/{human_len} events  {per_sec}  eta {eta}",
            )
            .expect("static template"),
        );
        Some(bar)
    } else {
        None
    };
    // A regular file is written as FILE.partial and renamed when complete; anything else that
    // exists already (/dev/null, a FIFO, a terminal) is written in place, never replaced.
    let partial = o.output.as_ref().and_then(|p| {
        let special = std::fs::metadata(p).is_ok_and(|m| !m.file_type().is_file());
        (!special).then(|| {
            let mut s = p.clone().into_os_string();
            s.push(".partial");
            PathBuf::from(s)
        })
    });
    let direct = o.output.as_ref().filter(|_| partial.is_none());
    let mut out: Box<dyn Write> = match partial.as_ref().or(direct) {
        Some(p) => Box::new(BufWriter::with_capacity(
            256 * 1024,
            File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(BufWriter::with_capacity(
            256 * 1024,
            std::io::stdout().lock(),
        )),
    };
    let mut rows = 0u64;
    let mut chunks = export::stream(&store, &q, format);
    let result: anyhow::Result<()> = async {
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            out.write_all(&chunk.bytes)?;
            rows += chunk.rows as u64;
            if let Some(b) = &bar {
                b.inc(chunk.rows as u64);
            }
        }
        out.flush()?;
        Ok(())
    }
    .await;
    drop(out);
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if let Err(e) = result {
        if let Some(p) = &partial {
            let _ = std::fs::remove_file(p);
        }
        // A reader that went away (`| head`) is not a failure of the export.
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
        {
            return Ok(0);
        }
        return Err(e);
    }
    if let (Some(p), Some(out)) = (&partial, &o.output) {
        std::fs::rename(p, out).with_context(|| format!("renaming to {}", out.display()))?;
    }
    if let Some(out) = &o.output {
        eprintln!("exported {rows} events to {}", out.display());
    }
    Ok(0)
}

fn load_checkpoint(
    config: Option<&Config>,
    path: &Path,
    public_key: Option<&Path>,
) -> Result<Checkpoint, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let cp = Checkpoint::parse(&text)?;
    let key = match (
        public_key,
        config.and_then(|c| c.audit.checkpoint_key.as_ref()),
    ) {
        (Some(p), _) => PublicKey::from_pem_file(p)?,
        (None, Some(k)) => k.public(),
        (None, None) => {
            return Err(
                "--checkpoint needs the signer's key: --public-key FILE or audit.checkpoint_key_file"
                    .into(),
            );
        }
    };
    cp.verify(&key)?;
    Ok(cp)
}

/// `twokey audit verify`: 0 whole, 1 broken (or a bad checkpoint), 3 partial.
pub async fn verify(
    config: Option<&Config>,
    file: Option<&Path>,
    checkpoint: Option<&Path>,
    public_key: Option<&Path>,
    allow_partial: bool,
) -> anyhow::Result<u8> {
    let cp = match checkpoint {
        Some(path) => match load_checkpoint(config, path, public_key) {
            Ok(cp) => Some(cp),
            Err(e) => {
                println!("checkpoint REJECTED: {e}");
                return Ok(1);
            }
        },
        None => None,
    };
    let (walk, what) = match file {
        Some(path) => {
            let reader: Box<dyn std::io::BufRead> = if path == Path::new("-") {
                Box::new(std::io::stdin().lock())
            } else {
                let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
                Box::new(BufReader::with_capacity(1 << 20, f))
            };
            match verify::verify_jsonl(reader, cp.as_ref()) {
                Ok(w) => (w, format!("file {}", path.display())),
                Err(e @ FileError::BadLine { .. }) => {
                    println!("audit export BROKEN: {e}");
                    return Ok(1);
                }
                Err(e) => return Err(e.into()),
            }
        }
        None => {
            let config = config.expect("the database needs the configuration");
            let store = Store::connect(config.database.url.expose(), 2).await?;
            (
                verify::verify_store(&store, cp.as_ref()).await?,
                "database".to_string(),
            )
        }
    };
    let (line, code) = verify::report(&walk, &what, cp.as_ref(), allow_partial);
    println!("{line}");
    Ok(code)
}

/// `twokey audit checkpoint`: verify the chain, then sign its head. Refuses to sign a broken
/// chain (that would vouch for the tampering).
pub async fn checkpoint(config: &Config, public_key: bool) -> anyhow::Result<u8> {
    let Some(key) = &config.audit.checkpoint_key else {
        eprintln!(
            "error: audit.checkpoint_key_file is not set (a PKCS#8 PEM Ed25519 key: openssl genpkey -algorithm ed25519 -out checkpoint.pem)"
        );
        return Ok(2);
    };
    if public_key {
        print!("{}", key.public().to_pem());
        return Ok(0);
    }
    let store = Store::connect(config.database.url.expose(), 2).await?;
    let last_seq = match verify::verify_store(&store, None).await? {
        Ok(super::Outcome::Whole { last_seq, .. }) => last_seq,
        Ok(other) => anyhow::bail!("unexpected outcome for the database: {other:?}"),
        Err(e) => {
            eprintln!(
                "refusing to sign: audit chain BROKEN at seq {}: {e}",
                e.seq()
            );
            return Ok(1);
        }
    };
    let hash = match last_seq {
        0 => super::GENESIS.to_string(),
        n => {
            store
                .audit_row(n)
                .await?
                .context("the verified head row vanished")?
                .hash
        }
    };
    let now = timefmt::fmt(time::OffsetDateTime::now_utc());
    let cp = key.sign(last_seq, &hash, &now);
    println!("{}", serde_json::to_string(&cp)?);
    Ok(0)
}
