//! Audit export: the filter (`--since/--until/--request/--actor/--action`), the three formats
//! (CSV, JSON Lines, OCSF) and a stream of encoded chunks that the CLI writes to a file and the
//! API sends as a chunked body. Rows are read, encoded and handed on one batch at a time, so
//! memory does not grow with the size of the log.

use futures::{Stream, StreamExt};
use serde_json::Value;
use time::OffsetDateTime;
use time::macros::format_description;

use super::{Action, ocsf};
use crate::store::{AuditQuery, AuditRow, Store, StoreError};
use crate::timefmt;

/// An export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
    Ocsf,
}

impl Format {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "csv" => Some(Self::Csv),
            "jsonl" => Some(Self::Jsonl),
            "ocsf" => Some(Self::Ocsf),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Csv => "text/csv; charset=utf-8; header=present",
            Self::Jsonl | Self::Ocsf => "application/x-ndjson",
        }
    }

    pub fn file_extension(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Jsonl => "jsonl",
            Self::Ocsf => "ocsf.jsonl",
        }
    }
}

/// A filter value that is not acceptable, with the name of its parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FilterError {
    pub field: &'static str,
    pub message: String,
}

fn bad(field: &'static str, message: impl Into<String>) -> FilterError {
    FilterError {
        field,
        message: message.into(),
    }
}

/// Parse a time filter: RFC 3339 (`2026-12-03T10:00:00Z`, any offset) or a date
/// (`2026-12-03`, meaning its midnight UTC).
pub fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    if let Ok(t) = timefmt::parse(s) {
        return Ok(t);
    }
    time::Date::parse(s, format_description!("[year]-[month]-[day]"))
        .map(|d| d.midnight().assume_utc())
        .map_err(|_| {
            format!("`{s}` is not an RFC 3339 time (2026-12-03T10:00:00Z) or a date (2026-12-03)")
        })
}

/// The raw filter values from a command line or a query string.
#[derive(Debug, Clone, Default)]
pub struct FilterInput {
    pub since: Option<String>,
    pub until: Option<String>,
    pub request: Option<String>,
    pub actor: Option<String>,
    pub actions: Vec<String>,
}

impl FilterInput {
    /// Check every value and build the store query. `since` is inclusive, `until` exclusive.
    pub fn to_query(&self) -> Result<AuditQuery, FilterError> {
        let time =
            |field: &'static str, v: &Option<String>| -> Result<Option<String>, FilterError> {
                match v.as_deref().map(str::trim) {
                    None | Some("") => Ok(None),
                    Some(s) => parse_time(s)
                        .map(|t| Some(timefmt::fmt(t)))
                        .map_err(|m| bad(field, m)),
                }
            };
        let since = time("since", &self.since)?;
        let until = time("until", &self.until)?;
        if let (Some(s), Some(u)) = (&since, &until)
            && s >= u
        {
            return Err(bad("until", "must be later than since"));
        }
        let non_empty = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
        };
        let request_id = non_empty(&self.request);
        if let Some(r) = &request_id
            && (r.len() > 64 || !r.chars().all(|c| c.is_ascii_hexdigit() || c == '-'))
        {
            return Err(bad("request", "is not a request id"));
        }
        let actor = non_empty(&self.actor);
        if actor.as_ref().is_some_and(|a| a.len() > 320) {
            return Err(bad("actor", "is too long for an email or an id"));
        }
        let mut actions = Vec::new();
        for a in self
            .actions
            .iter()
            .flat_map(|a| a.split(','))
            .map(str::trim)
        {
            if a.is_empty() {
                continue;
            }
            if Action::parse(a).is_none() {
                return Err(bad(
                    "action",
                    format!(
                        "`{}` is not an audit action",
                        a.chars().take(40).collect::<String>()
                    ),
                ));
            }
            if !actions.iter().any(|x| x == a) {
                actions.push(a.to_string());
            }
        }
        Ok(AuditQuery {
            since,
            until,
            request_id,
            actor,
            actions,
        })
    }
}

/// The CSV columns, in order (a contract: add new ones at the end only).
pub const CSV_COLUMNS: &[&str] = &[
    "seq",
    "at",
    "action",
    "actor_id",
    "actor_email",
    "actor_object_id",
    "actor_ip",
    "actor_user_agent",
    "request_id",
    "guard",
    "vault_id",
    "operation",
    "justification",
    "ticket",
    "comment",
    "reason",
    "details",
    "prev_hash",
    "hash",
];

/// The `details` keys copied into their own CSV columns (when present), for filtering in a
/// spreadsheet. `details` itself is always there in full.
const CSV_DETAIL_COLUMNS: &[&str] = &[
    "guard",
    "vault_id",
    "operation",
    "justification",
    "ticket",
    "comment",
    "reason",
];

/// Append one CSV cell (RFC 4180: quoted when it holds `"`, `,`, CR or LF; `"` doubled).
///
/// SECURITY: a cell a spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`,
/// tab or CR) gets a leading `'`, so a justification like `=HYPERLINK(…)` stays text.
pub fn csv_cell(out: &mut Vec<u8>, v: &str) {
    let formula = matches!(
        v.as_bytes().first(),
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r')
    );
    let quote = v.contains([',', '"', '\n', '\r']);
    if quote {
        out.push(b'"');
    }
    if formula {
        out.push(b'\'');
    }
    if quote {
        for b in v.bytes() {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(v.as_bytes());
    }
}

/// Turns audit rows into bytes of one format.
#[derive(Debug, Clone)]
pub struct Encoder {
    format: Format,
}

impl Encoder {
    pub fn new(format: Format) -> Self {
        Self { format }
    }

    /// What comes before the first row (the CSV header line).
    pub fn header(&self) -> Vec<u8> {
        match self.format {
            Format::Csv => {
                let mut out = CSV_COLUMNS.join(",").into_bytes();
                out.extend_from_slice(b"\r\n");
                out
            }
            Format::Jsonl | Format::Ocsf => Vec::new(),
        }
    }

    /// Append one row.
    pub fn encode(&self, row: &AuditRow, out: &mut Vec<u8>) {
        match self.format {
            Format::Jsonl => {
                jsonl_line(row, out);
                out.push(b'\n');
            }
            Format::Csv => csv_row(row, out),
            Format::Ocsf => {
                let mut raw = Vec::with_capacity(1024);
                jsonl_line(row, &mut raw);
                let raw = String::from_utf8(raw).expect("JSON is UTF-8");
                let details = parse_details(&row.details);
                let event = ocsf::event(row, &details, raw);
                serde_json::to_writer(&mut *out, &event).expect("writing to a Vec cannot fail");
                out.push(b'\n');
            }
        }
    }
}

fn parse_details(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()))
}

/// One event as a JSON Lines object (without the newline): every chain field, with `details`
/// as an object, so `twokey audit verify --file` (or jq and sha256sum) can recompute the hash.
pub fn jsonl_line(row: &AuditRow, out: &mut Vec<u8>) {
    fn s(out: &mut Vec<u8>, v: &str) {
        serde_json::to_writer(&mut *out, v).expect("writing to a Vec cannot fail");
    }
    fn o(out: &mut Vec<u8>, v: &Option<String>) {
        match v {
            Some(v) => s(out, v),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.extend_from_slice(b"{\"seq\":");
    out.extend_from_slice(row.seq.to_string().as_bytes());
    out.extend_from_slice(b",\"at\":");
    s(out, &row.at);
    out.extend_from_slice(b",\"action\":");
    s(out, &row.action);
    out.extend_from_slice(b",\"actor\":{\"id\":");
    o(out, &row.actor_id);
    out.extend_from_slice(b",\"email\":");
    o(out, &row.actor_email);
    out.extend_from_slice(b",\"object_id\":");
    o(out, &row.actor_object_id);
    out.extend_from_slice(b",\"ip\":");
    o(out, &row.actor_ip);
    out.extend_from_slice(b",\"user_agent\":");
    o(out, &row.actor_user_agent);
    out.extend_from_slice(b"},\"request_id\":");
    o(out, &row.request_id);
    out.extend_from_slice(b",\"details\":");
    // The stored text is canonical JSON (compact, one line) as `record` wrote it; it goes out
    // as it is. Anything else (a row edited by hand) is re-encoded so the line stays one valid
    // JSON object: as the parsed value, or as a string when it is not JSON at all.
    let d = row.details.as_str();
    if !d.contains(['\n', '\r']) && serde_json::from_str::<serde::de::IgnoredAny>(d).is_ok() {
        out.extend_from_slice(d.as_bytes());
    } else {
        serde_json::to_writer(&mut *out, &parse_details(d)).expect("writing to a Vec cannot fail");
    }
    out.extend_from_slice(b",\"prev_hash\":");
    s(out, &row.prev_hash);
    out.extend_from_slice(b",\"hash\":");
    s(out, &row.hash);
    out.push(b'}');
}

fn csv_row(row: &AuditRow, out: &mut Vec<u8>) {
    let details = parse_details(&row.details);
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let mut cells: Vec<String> = vec![
        row.seq.to_string(),
        row.at.clone(),
        row.action.clone(),
        opt(&row.actor_id),
        opt(&row.actor_email),
        opt(&row.actor_object_id),
        opt(&row.actor_ip),
        opt(&row.actor_user_agent),
        opt(&row.request_id),
    ];
    for k in CSV_DETAIL_COLUMNS {
        cells.push(match details.get(k) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
        });
    }
    cells.push(match &details {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    });
    cells.push(row.prev_hash.clone());
    cells.push(row.hash.clone());
    for (i, c) in cells.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        csv_cell(out, c);
    }
    out.extend_from_slice(b"\r\n");
}

/// A piece of an export: encoded bytes and how many events they hold.
#[derive(Debug)]
pub struct Chunk {
    pub bytes: Vec<u8>,
    pub rows: usize,
}

/// The export of `q` in `format`, as a stream of chunks (the CSV header first).
pub fn stream(
    store: &Store,
    q: &AuditQuery,
    format: Format,
) -> impl Stream<Item = Result<Chunk, StoreError>> + Send + 'static {
    let enc = Encoder::new(format);
    let header = enc.header();
    let head = futures::stream::iter((!header.is_empty()).then_some(Ok(Chunk {
        bytes: header,
        rows: 0,
    })));
    let body = store.audit_batches(q).map(move |batch| {
        batch.map(|rows| {
            let mut bytes = Vec::with_capacity(rows.len() * 768);
            for r in &rows {
                enc.encode(r, &mut bytes);
            }
            Chunk {
                bytes,
                rows: rows.len(),
            }
        })
    });
    head.chain(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(v: &str) -> String {
        let mut out = Vec::new();
        csv_cell(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn csv_cells_are_quoted_as_rfc_4180_says() {
        assert_eq!(cell("plain"), "plain");
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(cell("two\nlines"), "\"two\nlines\"");
        assert_eq!(cell(""), "");
    }

    #[test]
    fn csv_cells_that_look_like_formulas_are_neutralised() {
        assert_eq!(cell("=1+1"), "'=1+1");
        assert_eq!(cell("+1"), "'+1");
        assert_eq!(cell("-1"), "'-1");
        assert_eq!(cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(cell("\tx"), "'\tx");
        assert_eq!(
            cell("=HYPERLINK(\"http://evil.example\",\"x\")"),
            "\"'=HYPERLINK(\"\"http://evil.example\"\",\"\"x\"\")\""
        );
        assert_eq!(cell("a=b"), "a=b");
    }

    #[test]
    fn time_filters_take_rfc_3339_or_a_date() {
        let q = FilterInput {
            since: Some("2026-12-03T10:00:00+01:00".into()),
            until: Some("2026-12-04".into()),
            ..Default::default()
        }
        .to_query()
        .unwrap();
        assert_eq!(q.since.as_deref(), Some("2026-12-03T09:00:00.000000Z"));
        assert_eq!(q.until.as_deref(), Some("2026-12-04T00:00:00.000000Z"));
        let e = FilterInput {
            since: Some("yesterday".into()),
            ..Default::default()
        }
        .to_query()
        .unwrap_err();
        assert_eq!(e.field, "since");
        let e = FilterInput {
            since: Some("2026-12-04".into()),
            until: Some("2026-12-03".into()),
            ..Default::default()
        }
        .to_query()
        .unwrap_err();
        assert_eq!(e.field, "until");
    }

    #[test]
    fn actions_must_be_known_and_may_be_repeated_or_comma_separated() {
        let q = FilterInput {
            actions: vec!["grant.active,grant.ended".into(), "grant.active".into()],
            ..Default::default()
        }
        .to_query()
        .unwrap();
        assert_eq!(q.actions, ["grant.active", "grant.ended"]);
        assert_eq!(
            FilterInput {
                actions: vec!["grant.stolen".into()],
                ..Default::default()
            }
            .to_query()
            .unwrap_err()
            .field,
            "action"
        );
    }
}
