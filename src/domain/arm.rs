//! Strict Azure Resource Manager ids for the resources twokey acts on:
//! backup vaults ([`VaultId`]), Resource Guards ([`ResourceGuardId`]) and
//! configured sets of vaults ([`VaultPattern`]).
//!
//! This module owns the *shape* of those ids: which segments exist, which
//! characters each may hold, how they are compared and how they are written
//! back out. Every id that enters twokey (API body, config file, database
//! row) goes through these parsers, so anything that is not exactly a vault
//! or guard id is refused here rather than being passed on to ARM, where a
//! child path such as `.../vaults/v1/backupFabrics/...` would silently name a
//! different resource.
//!
//! It must never do I/O: a parsed id says nothing about whether the resource
//! exists or who may touch it.
//!
//! Comparison follows ARM: keyword segments, resource group names and
//! resource names are ASCII-case-insensitive, so `Eq`, `Hash` and pattern
//! matching ignore ASCII case, while `Display` keeps the caller's casing of
//! the resource group and name (ARM returns names in varying case, so the
//! casing is only cosmetic) and writes keywords in their canonical form.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest id accepted, in bytes. Real vault ids are far shorter; the cap
/// keeps hostile input from costing anything to reject.
pub const MAX_ID_LEN: usize = 1024;

// Field names used in `ArmIdError::field`. Kept as constants so the tests and
// callers that map errors to form fields agree on the spelling.
const F_VAULT_ID: &str = "vault_id";
const F_GUARD_ID: &str = "resource_guard_id";
const F_PATTERN: &str = "vault_pattern";
const F_SUBSCRIPTION: &str = "subscription";
const F_RESOURCE_GROUP: &str = "resource_group";
const F_PROVIDER: &str = "provider";
const F_VAULT_KIND: &str = "vault_kind";
const F_RESOURCE_TYPE: &str = "resource_type";
const F_NAME: &str = "name";

const NS_RECOVERY_SERVICES: &str = "Microsoft.RecoveryServices";
const NS_DATA_PROTECTION: &str = "Microsoft.DataProtection";
const TYPE_RSV: &str = "vaults";
const TYPE_BV: &str = "backupVaults";
const TYPE_GUARD: &str = "resourceGuards";

/// The two kinds of vault that Azure Backup MUA can protect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VaultKind {
    /// A Recovery Services vault: `Microsoft.RecoveryServices/vaults`.
    RecoveryServices,
    /// A Backup vault (Data Protection): `Microsoft.DataProtection/backupVaults`.
    Backup,
}

impl VaultKind {
    /// Both kinds, in a stable order (for iteration in tests and listings).
    pub const ALL: [VaultKind; 2] = [VaultKind::RecoveryServices, VaultKind::Backup];

    /// The ARM provider namespace, in canonical casing.
    pub fn provider(self) -> &'static str {
        match self {
            VaultKind::RecoveryServices => NS_RECOVERY_SERVICES,
            VaultKind::Backup => NS_DATA_PROTECTION,
        }
    }

    /// The ARM resource type under [`provider`](Self::provider), in canonical casing.
    pub fn resource_type(self) -> &'static str {
        match self {
            VaultKind::RecoveryServices => TYPE_RSV,
            VaultKind::Backup => TYPE_BV,
        }
    }

    /// The name Azure's portal and docs use for this kind of vault.
    pub fn label(self) -> &'static str {
        match self {
            VaultKind::RecoveryServices => "Recovery Services vault",
            VaultKind::Backup => "Backup vault",
        }
    }

    /// Maps the provider and type segments of an id to a kind, telling a wrong
    /// provider ("provider") apart from a right provider with the wrong
    /// resource type ("vault_kind") so the error points at the part to fix.
    fn from_segments(namespace: &str, resource_type: &str) -> Result<Self, ArmIdError> {
        let kind = if namespace.eq_ignore_ascii_case(NS_RECOVERY_SERVICES) {
            VaultKind::RecoveryServices
        } else if namespace.eq_ignore_ascii_case(NS_DATA_PROTECTION) {
            VaultKind::Backup
        } else {
            return Err(ArmIdError::new(
                F_PROVIDER,
                format!(
                    "provider namespace must be {NS_RECOVERY_SERVICES} or {NS_DATA_PROTECTION}, got {}",
                    quoted(namespace)
                ),
            ));
        };
        if resource_type.eq_ignore_ascii_case(kind.resource_type()) {
            return Ok(kind);
        }
        // A guard id is the most likely mix-up for Microsoft.DataProtection, so say so.
        let hint = if kind == VaultKind::Backup && resource_type.eq_ignore_ascii_case(TYPE_GUARD) {
            " (that is a Resource Guard, not a vault)"
        } else {
            ""
        };
        Err(ArmIdError::new(
            F_VAULT_KIND,
            format!(
                "resource type under {} must be {}, got {}{hint}",
                kind.provider(),
                kind.resource_type(),
                quoted(resource_type)
            ),
        ))
    }
}

/// Why an ARM id (or pattern) was refused.
///
/// `field` names the part at fault so callers can point at it: `"vault_id"`,
/// `"resource_guard_id"` or `"vault_pattern"` for the overall shape, otherwise
/// `"subscription"`, `"resource_group"`, `"provider"`, `"vault_kind"` (vaults),
/// `"resource_type"` (guards) or `"name"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ArmIdError {
    /// The id part at fault (see the type docs for the possible values).
    pub field: &'static str,
    /// Human-readable reason. It never echoes the whole input, only the
    /// offending segment or character in escaped (`{:?}`) form, so it is safe
    /// to log or show.
    pub message: String,
}

impl ArmIdError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        ArmIdError {
            field,
            message: message.into(),
        }
    }
}

/// Quotes a segment for an error message. Segments reaching here are already
/// free of whitespace and control characters, but they are attacker-supplied,
/// so escape and truncate them anyway.
fn quoted(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() > MAX {
        let head: String = s.chars().take(MAX).collect();
        format!("{head:?}…")
    } else {
        format!("{s:?}")
    }
}

// ---------------------------------------------------------------------------
// Shape: splitting `/subscriptions/{sub}/resourceGroups/{rg}/providers/{ns}/{type}/{name}`
// ---------------------------------------------------------------------------

/// The variable segments of a resource id, borrowed from the input.
struct Parts<'a> {
    subscription: &'a str,
    resource_group: &'a str,
    namespace: &'a str,
    resource_type: &'a str,
    name: &'a str,
}

const SHAPE: &str = "/subscriptions/{subscription}/resourceGroups/{resource group}/providers/{namespace}/{type}/{name}";

/// Checks everything about an id that does not depend on which resource it
/// names, and splits it into its variable segments. `whole` is the field
/// reported for shape errors.
fn split<'a>(s: &'a str, whole: &'static str) -> Result<Parts<'a>, ArmIdError> {
    let shape_err = |msg: String| ArmIdError::new(whole, msg);

    if s.is_empty() {
        return Err(shape_err("is empty".into()));
    }
    if s.len() > MAX_ID_LEN {
        return Err(shape_err(format!("is longer than {MAX_ID_LEN} bytes")));
    }
    if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(shape_err(format!(
            "must not contain whitespace or control characters (found {c:?})"
        )));
    }
    // A query or fragment would mean the caller pasted a URL, not an id; and
    // percent-encoding would let one id be spelled many ways, defeating the
    // exact comparisons the approval flow relies on.
    if s.contains(['?', '#']) {
        return Err(shape_err(
            "must not contain a query string or fragment ('?' or '#')".into(),
        ));
    }
    if s.contains('%') {
        return Err(shape_err(
            "must not be percent-encoded; give the plain id".into(),
        ));
    }

    const PREFIX: &str = "/subscriptions/";
    let rest = match s.get(..PREFIX.len()) {
        Some(p) if p.eq_ignore_ascii_case(PREFIX) => &s[PREFIX.len()..],
        _ => {
            return Err(shape_err(format!(
                "must start with /subscriptions/ ({SHAPE})"
            )));
        }
    };

    let segs: Vec<&str> = rest.split('/').collect();
    if segs.iter().any(|seg| seg.is_empty()) {
        let what = if s.ends_with('/') {
            "must not end with '/'"
        } else {
            "must not contain empty segments ('//')"
        };
        return Err(shape_err(what.into()));
    }
    if segs.iter().any(|seg| *seg == "." || *seg == "..") {
        return Err(shape_err("must not contain '.' or '..' segments".into()));
    }
    if segs.len() < 7 {
        return Err(shape_err(format!("has too few segments; expected {SHAPE}")));
    }
    if segs.len() > 7 {
        // Typically a child resource (protected item, backup instance, proxy)
        // pasted where the vault itself was meant.
        return Err(shape_err(format!(
            "has extra segments after the resource name (starting at {}); child resources are not accepted, expected {SHAPE}",
            quoted(segs[7])
        )));
    }
    if !segs[1].eq_ignore_ascii_case("resourceGroups") {
        return Err(shape_err(format!(
            "expected 'resourceGroups' after the subscription, got {}",
            quoted(segs[1])
        )));
    }
    if !segs[3].eq_ignore_ascii_case("providers") {
        return Err(shape_err(format!(
            "expected 'providers' after the resource group, got {}",
            quoted(segs[3])
        )));
    }
    Ok(Parts {
        subscription: segs[0],
        resource_group: segs[2],
        namespace: segs[4],
        resource_type: segs[5],
        name: segs[6],
    })
}

// ---------------------------------------------------------------------------
// Per-segment rules
// ---------------------------------------------------------------------------

/// Character and length rules for one variable segment. Used both for exact
/// values and for the literal parts of a pattern glob.
struct SegmentRule {
    field: &'static str,
    /// Length bounds, counted in characters (resource groups may be Unicode).
    min: usize,
    max: usize,
    allowed: fn(char) -> bool,
    allowed_desc: &'static str,
    first: fn(char) -> bool,
    first_desc: &'static str,
    last: fn(char) -> bool,
    last_desc: &'static str,
}

fn any_char(_: char) -> bool {
    true
}
fn ascii_letter(c: char) -> bool {
    c.is_ascii_alphabetic()
}
fn ascii_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}
fn ascii_alnum_hyphen(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-'
}
fn guard_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}
fn rg_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '(' | ')')
}
fn rg_last(c: char) -> bool {
    c != '.'
}
fn guid_char(c: char) -> bool {
    c.is_ascii_hexdigit() || c == '-'
}

/// Subscription: a GUID in 8-4-4-4-12 form. The layout itself is checked by
/// [`parse_subscription`]; this rule only serves pattern globs.
static SUBSCRIPTION_RULE: SegmentRule = SegmentRule {
    field: F_SUBSCRIPTION,
    min: 36,
    max: 36,
    allowed: guid_char,
    allowed_desc: "hex digits and '-' (a GUID)",
    first: any_char,
    first_desc: "",
    last: any_char,
    last_desc: "",
};

/// Resource group (ARM's documented rule): 1–90 characters of Unicode letters
/// and digits, `_`, `-`, `.`, `(`, `)`; must not end with `.`.
static RESOURCE_GROUP_RULE: SegmentRule = SegmentRule {
    field: F_RESOURCE_GROUP,
    min: 1,
    max: 90,
    allowed: rg_char,
    allowed_desc: "letters, digits, '_', '-', '.', '(' and ')'",
    first: any_char,
    first_desc: "",
    last: rg_last,
    last_desc: "must not end with '.'",
};

/// Recovery Services vault name: 2–50 ASCII letters, digits and hyphens,
/// starting with a letter (Azure's naming table gives no rule for the last
/// character). We deliberately do not add a "no trailing hyphen" rule here:
/// being stricter than Azure would lock twokey out of real vaults, whereas
/// being looser only lets through ids that ARM will answer with 404.
static RSV_NAME_RULE: SegmentRule = SegmentRule {
    field: F_NAME,
    min: 2,
    max: 50,
    allowed: ascii_alnum_hyphen,
    allowed_desc: "ASCII letters, digits and '-'",
    first: ascii_letter,
    first_desc: "must start with a letter",
    last: any_char,
    last_desc: "",
};

/// Backup vault name: 2–50 ASCII letters, digits and hyphens, starting with a
/// letter and not ending with a hyphen.
static BV_NAME_RULE: SegmentRule = SegmentRule {
    field: F_NAME,
    min: 2,
    max: 50,
    allowed: ascii_alnum_hyphen,
    allowed_desc: "ASCII letters, digits and '-'",
    first: ascii_letter,
    first_desc: "must start with a letter",
    last: ascii_alnum,
    last_desc: "must not end with '-'",
};

/// Resource Guard name. Azure does not publish a naming rule for
/// `Microsoft.DataProtection/resourceGuards`; we chose 1–64 ASCII letters,
/// digits, hyphens and underscores, which covers every name seen in Azure's
/// examples and docs and excludes anything that could alter the URL.
static GUARD_NAME_RULE: SegmentRule = SegmentRule {
    field: F_NAME,
    min: 1,
    max: 64,
    allowed: guard_char,
    allowed_desc: "ASCII letters, digits, '-' and '_'",
    first: any_char,
    first_desc: "",
    last: any_char,
    last_desc: "",
};

fn name_rule(kind: VaultKind) -> &'static SegmentRule {
    match kind {
        VaultKind::RecoveryServices => &RSV_NAME_RULE,
        VaultKind::Backup => &BV_NAME_RULE,
    }
}

impl SegmentRule {
    /// Checks a complete segment value.
    fn check(&self, value: &str) -> Result<(), ArmIdError> {
        let len = value.chars().count();
        if len < self.min || len > self.max {
            let bounds = if self.min == self.max {
                format!("exactly {}", self.min)
            } else {
                format!("{}–{}", self.min, self.max)
            };
            return Err(ArmIdError::new(
                self.field,
                format!("must be {bounds} characters long, got {len}"),
            ));
        }
        self.check_chars(value)?;
        self.check_ends(value, value)
    }

    fn check_chars(&self, value: &str) -> Result<(), ArmIdError> {
        match value.chars().find(|&c| !(self.allowed)(c)) {
            Some(c) => Err(ArmIdError::new(
                self.field,
                format!("{c:?} is not allowed; use {}", self.allowed_desc),
            )),
            None => Ok(()),
        }
    }

    /// Checks the first character of `head` and the last of `tail` (the same
    /// string for an exact value; the literal prefix and suffix of a glob).
    fn check_ends(&self, head: &str, tail: &str) -> Result<(), ArmIdError> {
        if let Some(c) = head.chars().next()
            && !(self.first)(c)
        {
            return Err(ArmIdError::new(self.field, self.first_desc));
        }
        if let Some(c) = tail.chars().next_back()
            && !(self.last)(c)
        {
            return Err(ArmIdError::new(self.field, self.last_desc));
        }
        Ok(())
    }
}

/// Validates a subscription GUID and returns it lowercased (ARM ids are
/// returned in either case; lowercase is the one stored form).
fn parse_subscription(s: &str) -> Result<String, ArmIdError> {
    let bytes = s.as_bytes();
    let well_formed = bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    if !well_formed {
        return Err(ArmIdError::new(
            F_SUBSCRIPTION,
            format!(
                "must be a GUID like 00000000-0000-0000-0000-000000000000, got {}",
                quoted(s)
            ),
        ));
    }
    Ok(s.to_ascii_lowercase())
}

/// Writes the bytes of `s` ASCII-lowercased into `state`, with its length
/// first, so that hashing agrees with `str::eq_ignore_ascii_case`.
fn hash_ascii_ci<H: Hasher>(s: &str, state: &mut H) {
    state.write_usize(s.len());
    for b in s.bytes() {
        state.write_u8(b.to_ascii_lowercase());
    }
}

/// Implements `Serialize` (as the `Display` string), `Deserialize` (through
/// `parse`, so invalid ids are refused at the boundary) and `FromStr`.
macro_rules! string_serde {
    ($ty:ty) => {
        impl FromStr for $ty {
            type Err = ArmIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <$ty>::parse(s)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = String::deserialize(deserializer)?;
                <$ty>::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

// ---------------------------------------------------------------------------
// VaultId
// ---------------------------------------------------------------------------

/// The ARM id of a Recovery Services vault or a Backup vault.
///
/// Construct it with [`VaultId::parse`] (or `FromStr` / serde). Equality and
/// hashing ignore ASCII case in the resource group and name, as ARM does.
#[derive(Debug, Clone)]
pub struct VaultId {
    /// Lowercase GUID.
    subscription: String,
    /// As given (casing preserved for display).
    resource_group: String,
    kind: VaultKind,
    /// As given (casing preserved for display).
    name: String,
}

impl VaultId {
    /// Parses a vault id strictly (see the module docs and [`ArmIdError`]).
    pub fn parse(s: &str) -> Result<Self, ArmIdError> {
        let parts = split(s, F_VAULT_ID)?;
        let subscription = parse_subscription(parts.subscription)?;
        RESOURCE_GROUP_RULE.check(parts.resource_group)?;
        let kind = VaultKind::from_segments(parts.namespace, parts.resource_type)?;
        name_rule(kind).check(parts.name)?;
        Ok(VaultId {
            subscription,
            resource_group: parts.resource_group.to_owned(),
            kind,
            name: parts.name.to_owned(),
        })
    }

    /// The subscription GUID, lowercase.
    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    /// The resource group name, in the casing it was given.
    pub fn resource_group(&self) -> &str {
        &self.resource_group
    }

    /// Which kind of vault this is.
    pub fn kind(&self) -> VaultKind {
        self.kind
    }

    /// The vault name, in the casing it was given.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl PartialEq for VaultId {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.subscription == other.subscription
            && self
                .resource_group
                .eq_ignore_ascii_case(&other.resource_group)
            && self.name.eq_ignore_ascii_case(&other.name)
    }
}

impl Eq for VaultId {}

impl Hash for VaultId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.kind.hash(state);
        self.subscription.hash(state);
        hash_ascii_ci(&self.resource_group, state);
        hash_ascii_ci(&self.name, state);
    }
}

impl fmt::Display for VaultId {
    /// The canonical form: lowercase subscription, canonical keywords,
    /// resource group and name as given.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "/subscriptions/{}/resourceGroups/{}/providers/{}/{}/{}",
            self.subscription,
            self.resource_group,
            self.kind.provider(),
            self.kind.resource_type(),
            self.name
        )
    }
}

string_serde!(VaultId);

// ---------------------------------------------------------------------------
// ResourceGuardId
// ---------------------------------------------------------------------------

/// The ARM id of a Resource Guard
/// (`/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.DataProtection/resourceGuards/{name}`).
///
/// Same rules and comparison semantics as [`VaultId`]; the name follows the
/// rule documented on the private `GUARD_NAME_RULE`: 1–64 ASCII letters,
/// digits, hyphens and underscores. Shape errors use the field
/// `"resource_guard_id"`, and a wrong resource type uses `"resource_type"`.
#[derive(Debug, Clone)]
pub struct ResourceGuardId {
    subscription: String,
    resource_group: String,
    name: String,
}

impl ResourceGuardId {
    /// Parses a Resource Guard id strictly.
    pub fn parse(s: &str) -> Result<Self, ArmIdError> {
        let parts = split(s, F_GUARD_ID)?;
        let subscription = parse_subscription(parts.subscription)?;
        RESOURCE_GROUP_RULE.check(parts.resource_group)?;
        if !parts.namespace.eq_ignore_ascii_case(NS_DATA_PROTECTION) {
            return Err(ArmIdError::new(
                F_PROVIDER,
                format!(
                    "provider namespace must be {NS_DATA_PROTECTION}, got {}",
                    quoted(parts.namespace)
                ),
            ));
        }
        if !parts.resource_type.eq_ignore_ascii_case(TYPE_GUARD) {
            return Err(ArmIdError::new(
                F_RESOURCE_TYPE,
                format!(
                    "resource type must be {TYPE_GUARD}, got {}",
                    quoted(parts.resource_type)
                ),
            ));
        }
        GUARD_NAME_RULE.check(parts.name)?;
        Ok(ResourceGuardId {
            subscription,
            resource_group: parts.resource_group.to_owned(),
            name: parts.name.to_owned(),
        })
    }

    /// The subscription GUID, lowercase. The guard's subscription (and its
    /// tenant) may differ from the vault's.
    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    /// The resource group name, in the casing it was given.
    pub fn resource_group(&self) -> &str {
        &self.resource_group
    }

    /// The guard name, in the casing it was given.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl PartialEq for ResourceGuardId {
    fn eq(&self, other: &Self) -> bool {
        self.subscription == other.subscription
            && self
                .resource_group
                .eq_ignore_ascii_case(&other.resource_group)
            && self.name.eq_ignore_ascii_case(&other.name)
    }
}

impl Eq for ResourceGuardId {}

impl Hash for ResourceGuardId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.subscription.hash(state);
        hash_ascii_ci(&self.resource_group, state);
        hash_ascii_ci(&self.name, state);
    }
}

impl fmt::Display for ResourceGuardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "/subscriptions/{}/resourceGroups/{}/providers/{NS_DATA_PROTECTION}/{TYPE_GUARD}/{}",
            self.subscription, self.resource_group, self.name
        )
    }
}

string_serde!(ResourceGuardId);

// ---------------------------------------------------------------------------
// VaultPattern
// ---------------------------------------------------------------------------

/// One variable segment of a [`VaultPattern`].
#[derive(Debug, Clone)]
enum SegPattern {
    /// A literal value (compared ignoring ASCII case).
    Exact(String),
    /// `prefix*suffix`; a bare `*` has both empty and matches any value.
    Glob { prefix: String, suffix: String },
}

impl SegPattern {
    /// Parses one segment against `rule`. `exact` validates a literal value
    /// completely (and may normalise it, e.g. lowercase a subscription).
    fn parse(
        raw: &str,
        rule: &SegmentRule,
        exact: impl Fn(&str) -> Result<String, ArmIdError>,
    ) -> Result<Self, ArmIdError> {
        let Some((prefix, suffix)) = raw.split_once('*') else {
            return exact(raw).map(SegPattern::Exact);
        };
        if suffix.contains('*') {
            return Err(ArmIdError::new(
                rule.field,
                "may contain at most one '*' (as the whole segment, or as a prefix or suffix glob)",
            ));
        }
        rule.check_chars(prefix)?;
        rule.check_chars(suffix)?;
        // Only check the ends that are literal: `*-prod` says nothing about
        // the first character of the names it matches.
        rule.check_ends(prefix, suffix)?;
        if prefix.chars().count() + suffix.chars().count() > rule.max {
            return Err(ArmIdError::new(
                rule.field,
                format!(
                    "literal text around '*' is longer than the {} characters a value may have",
                    rule.max
                ),
            ));
        }
        Ok(SegPattern::Glob {
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
        })
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            SegPattern::Exact(v) => v.eq_ignore_ascii_case(value),
            SegPattern::Glob { prefix, suffix } => {
                let (v, p, s) = (value.as_bytes(), prefix.as_bytes(), suffix.as_bytes());
                // Byte-wise ASCII folding is exact for UTF-8: non-ASCII bytes
                // must match verbatim, so a matching prefix/suffix always ends
                // on a character boundary.
                v.len() >= p.len() + s.len()
                    && v[..p.len()].eq_ignore_ascii_case(p)
                    && v[v.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        }
    }

    fn exact(&self) -> Option<&str> {
        match self {
            SegPattern::Exact(v) => Some(v),
            SegPattern::Glob { .. } => None,
        }
    }
}

impl fmt::Display for SegPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SegPattern::Exact(v) => f.write_str(v),
            SegPattern::Glob { prefix, suffix } => write!(f, "{prefix}*{suffix}"),
        }
    }
}

/// A configured set of vaults of one kind, written as a vault id in which the
/// subscription, resource group and name may use one `*` each:
///
/// - `*` alone matches any value of that segment;
/// - `vault-prod-*` / `*-prod` / `vault-*-prod` match by literal prefix and/or
///   suffix (ASCII-case-insensitive).
///
/// Provider and resource type must be literal, so a pattern always selects a
/// single [`VaultKind`] and never matches the other kind. Literal text is held
/// to the same character rules as a real id, so a typo fails at config load
/// instead of silently matching nothing.
#[derive(Debug, Clone)]
pub struct VaultPattern {
    subscription: SegPattern,
    resource_group: SegPattern,
    kind: VaultKind,
    name: SegPattern,
}

impl VaultPattern {
    /// Parses a pattern. Shape errors use the field `"vault_pattern"`.
    pub fn parse(s: &str) -> Result<Self, ArmIdError> {
        let parts = split(s, F_PATTERN)?;
        let subscription =
            SegPattern::parse(parts.subscription, &SUBSCRIPTION_RULE, parse_subscription)?;
        // Store subscription globs lowercase, like exact subscriptions.
        let subscription = match subscription {
            SegPattern::Glob { prefix, suffix } => SegPattern::Glob {
                prefix: prefix.to_ascii_lowercase(),
                suffix: suffix.to_ascii_lowercase(),
            },
            exact => exact,
        };
        let resource_group = SegPattern::parse(parts.resource_group, &RESOURCE_GROUP_RULE, |v| {
            RESOURCE_GROUP_RULE.check(v).map(|()| v.to_owned())
        })?;
        if parts.namespace.contains('*') || parts.resource_type.contains('*') {
            let field = if parts.namespace.contains('*') {
                F_PROVIDER
            } else {
                F_VAULT_KIND
            };
            return Err(ArmIdError::new(
                field,
                "provider and resource type must be literal; '*' is only allowed in the subscription, resource group and name",
            ));
        }
        let kind = VaultKind::from_segments(parts.namespace, parts.resource_type)?;
        let rule = name_rule(kind);
        let name = SegPattern::parse(parts.name, rule, |v| rule.check(v).map(|()| v.to_owned()))?;
        Ok(VaultPattern {
            subscription,
            resource_group,
            kind,
            name,
        })
    }

    /// Whether `id` is one of the vaults this pattern selects.
    pub fn matches(&self, id: &VaultId) -> bool {
        self.kind == id.kind
            && self.subscription.matches(&id.subscription)
            && self.resource_group.matches(&id.resource_group)
            && self.name.matches(&id.name)
    }

    /// The kind of vault this pattern selects.
    pub fn kind(&self) -> VaultKind {
        self.kind
    }

    /// The subscription and resource group, when neither has a wildcard (so the vaults it
    /// selects can be listed from that resource group).
    pub fn exact_resource_group(&self) -> Option<(&str, &str)> {
        Some((self.subscription.exact()?, self.resource_group.exact()?))
    }

    /// The single vault this pattern names, when it has no wildcard.
    pub fn is_exact(&self) -> Option<VaultId> {
        Some(VaultId {
            subscription: self.subscription.exact()?.to_owned(),
            resource_group: self.resource_group.exact()?.to_owned(),
            kind: self.kind,
            name: self.name.exact()?.to_owned(),
        })
    }
}

impl PartialEq for VaultPattern {
    /// Two patterns are equal when they are written the same way up to ASCII
    /// case (which is also when they select the same vaults).
    fn eq(&self, other: &Self) -> bool {
        self.to_string().eq_ignore_ascii_case(&other.to_string())
    }
}

impl Eq for VaultPattern {}

impl fmt::Display for VaultPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "/subscriptions/{}/resourceGroups/{}/providers/{}/{}/{}",
            self.subscription,
            self.resource_group,
            self.kind.provider(),
            self.kind.resource_type(),
            self.name
        )
    }
}

string_serde!(VaultPattern);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    const SUB: &str = "0b352192-dcac-4cc7-992e-a96190ccc68c";
    const RSV: &str = "/subscriptions/0b352192-dcac-4cc7-992e-a96190ccc68c/resourceGroups/rg-Backup/providers/Microsoft.RecoveryServices/vaults/Vault-Prod-01";
    const BV: &str = "/subscriptions/0b352192-dcac-4cc7-992e-a96190ccc68c/resourceGroups/rg-backup/providers/Microsoft.DataProtection/backupVaults/bv-prod-01";
    const GUARD: &str = "/subscriptions/0b352192-dcac-4cc7-992e-a96190ccc68c/resourceGroups/sec/providers/Microsoft.DataProtection/resourceGuards/rg-guard-weu";

    fn field_of(s: &str) -> &'static str {
        VaultId::parse(s).expect_err(s).field
    }

    fn vid(s: &str) -> VaultId {
        VaultId::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn pat(s: &str) -> VaultPattern {
        VaultPattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn recovery_services_round_trips() {
        let id = vid(RSV);
        assert_eq!(id.kind(), VaultKind::RecoveryServices);
        assert_eq!(id.subscription(), SUB);
        assert_eq!(id.resource_group(), "rg-Backup");
        assert_eq!(id.name(), "Vault-Prod-01");
        assert_eq!(id.to_string(), RSV);
        assert_eq!(vid(&id.to_string()), id);
    }

    #[test]
    fn backup_vault_round_trips() {
        let id = vid(BV);
        assert_eq!(id.kind(), VaultKind::Backup);
        assert_eq!(id.name(), "bv-prod-01");
        assert_eq!(id.to_string(), BV);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{BV}\""));
        assert_eq!(serde_json::from_str::<VaultId>(&json).unwrap(), id);
        assert_eq!(BV.parse::<VaultId>().unwrap(), id);
    }

    #[test]
    fn serde_rejects_invalid_ids() {
        let bad =
            "\"/subscriptions/x/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults/v1\"";
        let err = serde_json::from_str::<VaultId>(bad).unwrap_err();
        assert!(err.to_string().contains("subscription"), "{err}");
    }

    #[test]
    fn vault_kind_serde_and_labels() {
        assert_eq!(
            serde_json::to_string(&VaultKind::RecoveryServices).unwrap(),
            "\"recovery_services\""
        );
        assert_eq!(
            serde_json::to_string(&VaultKind::Backup).unwrap(),
            "\"backup\""
        );
        assert_eq!(VaultKind::Backup.label(), "Backup vault");
        assert_eq!(
            VaultKind::RecoveryServices.label(),
            "Recovery Services vault"
        );
    }

    #[test]
    fn keywords_are_case_insensitive_and_canonicalised() {
        let messy = "/SUBSCRIPTIONS/0B352192-DCAC-4CC7-992E-A96190CCC68C/resourcegroups/rg-Backup/PROVIDERS/microsoft.recoveryservices/VAULTS/Vault-Prod-01";
        let id = vid(messy);
        assert_eq!(id.to_string(), RSV);
        assert_eq!(id, vid(RSV));

        let messy_bv = "/subscriptions/0b352192-dcac-4cc7-992e-a96190ccc68c/ResourceGroups/rg-backup/providers/MICROSOFT.DATAPROTECTION/backupvaults/bv-prod-01";
        assert_eq!(vid(messy_bv).to_string(), BV);
    }

    #[test]
    fn names_compare_case_insensitively_but_display_keeps_case() {
        let a = vid(RSV);
        let b = vid(&RSV
            .replace("rg-Backup", "RG-BACKUP")
            .replace("Vault-Prod-01", "vault-prod-01"));
        assert_eq!(a, b);
        let set: HashSet<VaultId> = [a.clone(), b.clone()].into_iter().collect();
        assert_eq!(set.len(), 1, "hash must agree with eq");
        assert!(b.to_string().contains("RG-BACKUP/"));
        assert!(b.to_string().ends_with("/vault-prod-01"));
        // Same name, different kind: different vault.
        let other_kind = vid(&BV
            .replace("bv-prod-01", "Vault-Prod-01")
            .replace("rg-backup", "rg-Backup"));
        assert_ne!(a, other_kind);
    }

    #[test]
    fn each_field_error_names_that_field() {
        let cases = [
            (RSV.replace(SUB, "not-a-guid"), "subscription"),
            (
                RSV.replace(SUB, "0b352192dcac4cc7992ea96190ccc68c"),
                "subscription",
            ),
            (
                RSV.replace(SUB, "0b352192-dcac-4cc7-992e-a96190ccc68g"),
                "subscription",
            ),
            (RSV.replace("rg-Backup", "rg!"), "resource_group"),
            (RSV.replace("rg-Backup", "rg."), "resource_group"),
            (RSV.replace("rg-Backup", &"r".repeat(91)), "resource_group"),
            (
                RSV.replace("Microsoft.RecoveryServices", "Microsoft.Compute"),
                "provider",
            ),
            (RSV.replace("/vaults/", "/backupVaults/"), "vault_kind"),
            (BV.replace("/backupVaults/", "/vaults/"), "vault_kind"),
            (
                BV.replace("/backupVaults/", "/resourceGuards/"),
                "vault_kind",
            ),
            (RSV.replace("Vault-Prod-01", "1vault"), "name"),
            (RSV.replace("Vault-Prod-01", "v"), "name"),
            (
                RSV.replace("Vault-Prod-01", &format!("v{}", "a".repeat(50))),
                "name",
            ),
            (RSV.replace("Vault-Prod-01", "vault_prod"), "name"),
            (RSV.replace("Vault-Prod-01", "vault*"), "name"),
            (BV.replace("bv-prod-01", "bv-prod-"), "name"),
            (RSV.replace("/subscriptions/", "/subscription/"), "vault_id"),
            (
                RSV.replace("/resourceGroups/", "/resourceGroup/"),
                "vault_id",
            ),
            (RSV.replace("/providers/", "/provider/"), "vault_id"),
        ];
        for (input, field) in cases {
            let err = VaultId::parse(&input).expect_err(&input);
            assert_eq!(err.field, field, "{input}: {err}");
            assert!(!err.message.is_empty());
        }
    }

    #[test]
    fn rsv_name_may_end_with_hyphen_but_backup_vault_may_not() {
        assert!(VaultId::parse(&RSV.replace("Vault-Prod-01", "vault-")).is_ok());
        assert_eq!(field_of(&BV.replace("bv-prod-01", "bv-")), "name");
    }

    #[test]
    fn unicode_resource_groups_are_accepted() {
        let id = vid(&RSV.replace("rg-Backup", "Sicherung-Größe_(1).v2"));
        assert_eq!(id.resource_group(), "Sicherung-Größe_(1).v2");
        assert_eq!(vid(&id.to_string()), id);
    }

    #[test]
    fn malformed_shapes_are_rejected() {
        let protected_item = format!(
            "{RSV}/backupFabrics/Azure/protectionContainers/IaasVMContainer;iaasvmcontainerv2;app;vm01/protectedItems/VM;iaasvmcontainerv2;app;vm01"
        );
        let cases = [
            format!("{RSV}/"),
            RSV.replace("/resourceGroups/", "//resourceGroups/"),
            RSV.replacen("/subscriptions/", "/subscriptions//", 1),
            format!("{BV}/backupInstances/bi1"),
            protected_item,
            format!("{RSV}/.."),
            RSV.replace("rg-Backup", "rg-Backup/../rg-other"),
            RSV.replace("rg-Backup", ".."),
            RSV.replace("Vault-Prod-01", "Vault%2DProd"),
            RSV.replace("rg-Backup", "rg%2fother"),
            format!("{RSV}?api-version=2024-04-01"),
            format!("{RSV}#frag"),
            format!(" {RSV}"),
            format!("{RSV}\n"),
            RSV.replace("rg-Backup", "rg Backup"),
            RSV.replace("rg-Backup", "rg\u{0}Backup"),
            RSV.replace("rg-Backup", "rg\u{a0}Backup"),
            RSV.replace("rg-Backup", "rg\u{202e}Backup"),
            format!("https://management.azure.com{RSV}"),
            "subscriptions/0b352192-dcac-4cc7-992e-a96190ccc68c/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults/v1".into(),
            "/subscriptions/0b352192-dcac-4cc7-992e-a96190ccc68c/resourceGroups/rg".into(),
            String::new(),
            "/".into(),
        ];
        for input in cases {
            assert!(VaultId::parse(&input).is_err(), "accepted {input:?}");
        }
        // Shape problems are reported against the id as a whole.
        for input in [
            format!("{RSV}/"),
            format!("{RSV}/backupFabrics/Azure"),
            RSV.replace("/providers/", "//providers/"),
            format!("{RSV}/.."),
            RSV.replace("Vault-Prod-01", "Vault%2DProd"),
            format!("{RSV}?x=1"),
            format!("{RSV} "),
        ] {
            assert_eq!(field_of(&input), "vault_id", "{input:?}");
        }
    }

    #[test]
    fn overlong_input_is_rejected() {
        let long = format!("{RSV}{}", "a".repeat(MAX_ID_LEN));
        let err = VaultId::parse(&long).unwrap_err();
        assert_eq!(err.field, "vault_id");
        assert!(err.message.contains("1024"), "{err}");
        let err = VaultPattern::parse(&long).unwrap_err();
        assert_eq!(err.field, "vault_pattern");
    }

    #[test]
    fn errors_do_not_echo_the_whole_input() {
        let secretish = format!("{RSV}/{}", "x".repeat(500));
        let err = VaultId::parse(&secretish).unwrap_err();
        assert!(err.message.len() < 300, "{}", err.message.len());
    }

    #[test]
    fn resource_guard_ids() {
        let g = ResourceGuardId::parse(GUARD).unwrap();
        assert_eq!(g.subscription(), SUB);
        assert_eq!(g.resource_group(), "sec");
        assert_eq!(g.name(), "rg-guard-weu");
        assert_eq!(g.to_string(), GUARD);
        let messy = GUARD
            .replace("resourceGuards", "RESOURCEGUARDS")
            .replace("Microsoft.DataProtection", "microsoft.dataprotection")
            .replace("rg-guard-weu", "RG-GUARD-WEU");
        let m = ResourceGuardId::parse(&messy).unwrap();
        assert_eq!(m, g);
        assert!(m.to_string().starts_with("/subscriptions/0b352192"));
        assert!(
            m.to_string()
                .contains("/Microsoft.DataProtection/resourceGuards/RG-GUARD-WEU")
        );
        let json = serde_json::to_string(&g).unwrap();
        assert_eq!(serde_json::from_str::<ResourceGuardId>(&json).unwrap(), g);
        assert!(ResourceGuardId::parse(&GUARD.replace("rg-guard-weu", "guard_1")).is_ok());

        let bad = [
            (
                GUARD.replace("resourceGuards", "backupVaults"),
                "resource_type",
            ),
            (
                GUARD.replace("Microsoft.DataProtection", "Microsoft.RecoveryServices"),
                "provider",
            ),
            (GUARD.replace("rg-guard-weu", "guard.1"), "name"),
            (GUARD.replace("rg-guard-weu", &"g".repeat(65)), "name"),
            (GUARD.replace(SUB, "nope"), "subscription"),
            (
                format!("{GUARD}/deleteResourceGuardProxyRequests/default"),
                "resource_guard_id",
            ),
        ];
        for (input, field) in bad {
            let err = ResourceGuardId::parse(&input).expect_err(&input);
            assert_eq!(err.field, field, "{input}: {err}");
        }
        // A guard id is not a vault id and vice versa.
        assert_eq!(field_of(GUARD), "vault_kind");
        assert!(ResourceGuardId::parse(BV).is_err());
    }

    #[test]
    fn exact_pattern_matches_only_that_vault() {
        let p = pat(RSV);
        assert_eq!(p.is_exact(), Some(vid(RSV)));
        assert!(p.matches(&vid(RSV)));
        assert!(!p.matches(&vid(&RSV.replace("Vault-Prod-01", "Vault-Prod-02"))));
        assert_eq!(p.to_string(), RSV);
    }

    #[test]
    fn star_segments_match_any_value() {
        let p = pat(&format!(
            "/subscriptions/{SUB}/resourceGroups/rg-backup/providers/Microsoft.RecoveryServices/vaults/*"
        ));
        assert_eq!(p.kind(), VaultKind::RecoveryServices);
        assert_eq!(p.is_exact(), None);
        assert!(p.matches(&vid(RSV)));
        assert!(!p.matches(&vid(&RSV.replace("rg-Backup", "rg-other"))));

        let all = pat(
            "/subscriptions/*/resourceGroups/*/providers/Microsoft.DataProtection/backupVaults/*",
        );
        assert!(all.matches(&vid(BV)));
        assert!(!all.matches(&vid(RSV)), "a different kind never matches");
    }

    #[test]
    fn prefix_and_suffix_globs() {
        let prefix = pat(&format!(
            "/subscriptions/{SUB}/resourceGroups/*/providers/Microsoft.RecoveryServices/vaults/vault-prod-*"
        ));
        assert!(prefix.matches(&vid(RSV)), "case-insensitive prefix");
        assert!(!prefix.matches(&vid(&RSV.replace("Vault-Prod-01", "vault-dev-01"))));
        assert!(
            prefix.matches(&vid(&RSV.replace("Vault-Prod-01", "vault-prod-"))),
            "empty remainder"
        );

        let suffix = pat(&format!(
            "/subscriptions/{SUB}/resourceGroups/*-BACKUP/providers/Microsoft.RecoveryServices/vaults/*-01"
        ));
        assert!(suffix.matches(&vid(RSV)));
        assert!(!suffix.matches(&vid(&RSV.replace("Vault-Prod-01", "Vault-Prod-02"))));

        let both = pat(&format!(
            "/subscriptions/{SUB}/resourceGroups/rg-*/providers/Microsoft.RecoveryServices/vaults/vault-*-01"
        ));
        assert!(both.matches(&vid(RSV)));
        // Prefix and suffix must not overlap: "vault-01" is too short for "vault-*-01".
        assert!(!both.matches(&vid(&RSV.replace("Vault-Prod-01", "vault-01"))));

        let sub_prefix = pat(
            "/subscriptions/0B352192-*/resourceGroups/*/providers/Microsoft.RecoveryServices/vaults/*",
        );
        assert!(sub_prefix.matches(&vid(RSV)));
        assert!(
            sub_prefix
                .to_string()
                .starts_with("/subscriptions/0b352192-*/")
        );
    }

    #[test]
    fn pattern_keywords_canonicalised_and_case_insensitive() {
        let p = pat(&format!(
            "/SUBSCRIPTIONS/{}/RESOURCEGROUPS/RG-BACKUP/PROVIDERS/microsoft.recoveryservices/VAULTS/VAULT-*",
            SUB.to_uppercase()
        ));
        assert_eq!(
            p.to_string(),
            format!(
                "/subscriptions/{SUB}/resourceGroups/RG-BACKUP/providers/Microsoft.RecoveryServices/vaults/VAULT-*"
            )
        );
        assert!(p.matches(&vid(RSV)));
        assert_eq!(
            p,
            pat(&p
                .to_string()
                .to_lowercase()
                .replace("resourcegroups", "resourceGroups"))
        );
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<VaultPattern>(&json).unwrap(), p);
    }

    #[test]
    fn invalid_patterns_name_the_field() {
        let base =
            "/subscriptions/*/resourceGroups/*/providers/Microsoft.RecoveryServices/vaults/*";
        let cases = [
            (
                base.replace("Microsoft.RecoveryServices", "Microsoft.*"),
                "provider",
            ),
            (base.replace("/vaults/", "/vault*/"), "vault_kind"),
            (base.replace("/vaults/", "/backupVaults/"), "vault_kind"),
            (
                base.replace("resourceGroups/*", "resourceGroups/a*b*"),
                "resource_group",
            ),
            (
                base.replace("resourceGroups/*", "resourceGroups/rg.*."),
                "resource_group",
            ),
            (base.replace("vaults/*", "vaults/1*"), "name"),
            (base.replace("vaults/*", "vaults/**"), "name"),
            (base.replace("vaults/*", "vaults/v_*"), "name"),
            (
                base.replace("subscriptions/*", "subscriptions/xyz*"),
                "subscription",
            ),
            (
                base.replace("subscriptions/*", "subscriptions/0b352192"),
                "subscription",
            ),
            (format!("{base}/"), "vault_pattern"),
            (format!("{base}/backupFabrics/*"), "vault_pattern"),
            (base.replace("/resourceGroups/", "/*/"), "vault_pattern"),
        ];
        for (input, field) in cases {
            let err = VaultPattern::parse(&input).expect_err(&input);
            assert_eq!(err.field, field, "{input}: {err}");
        }
        // Backup vault names may not end with '-', so neither may a suffix.
        let err = VaultPattern::parse(
            "/subscriptions/*/resourceGroups/*/providers/Microsoft.DataProtection/backupVaults/*-",
        )
        .unwrap_err();
        assert_eq!(err.field, "name");
    }

    // --- property tests -----------------------------------------------------

    /// Flips the ASCII case of `s` according to the bits of `mask`.
    fn recase(s: &str, mask: u64) -> String {
        s.chars()
            .enumerate()
            .map(|(i, c)| {
                if (mask >> (i % 64)) & 1 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect()
    }

    fn arb_guid() -> impl Strategy<Value = String> {
        "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    }

    fn arb_rg() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_().éßΩ中\\-]{0,89}[a-zA-Z0-9_()éΩ中\\-]"
    }

    fn arb_name(kind: VaultKind) -> BoxedStrategy<String> {
        match kind {
            VaultKind::RecoveryServices => "[a-zA-Z][a-zA-Z0-9\\-]{1,49}".boxed(),
            VaultKind::Backup => "[a-zA-Z][a-zA-Z0-9\\-]{0,48}[a-zA-Z0-9]".boxed(),
        }
    }

    /// (input string with random keyword casing, sub, rg, kind, name)
    fn arb_vault_input() -> impl Strategy<Value = (String, String, String, VaultKind, String)> {
        (prop::sample::select(VaultKind::ALL.to_vec()), any::<u64>()).prop_flat_map(
            |(kind, mask)| {
                (arb_guid(), arb_rg(), arb_name(kind)).prop_map(move |(sub, rg, name)| {
                    let input = format!(
                        "/{}/{sub}/{}/{rg}/{}/{}/{}/{name}",
                        recase("subscriptions", mask),
                        recase("resourceGroups", mask.rotate_left(13)),
                        recase("providers", mask.rotate_left(27)),
                        recase(kind.provider(), mask.rotate_left(36)),
                        recase(kind.resource_type(), mask.rotate_left(50)),
                    );
                    (input, sub, rg, kind, name)
                })
            },
        )
    }

    proptest! {
        #[test]
        fn prop_valid_ids_round_trip((input, sub, rg, kind, name) in arb_vault_input()) {
            let id = VaultId::parse(&input).map_err(|e| TestCaseError::fail(format!("{input}: {e}")))?;
            prop_assert_eq!(id.kind(), kind);
            prop_assert_eq!(id.subscription(), sub.to_ascii_lowercase());
            prop_assert_eq!(id.resource_group(), rg.as_str());
            prop_assert_eq!(id.name(), name.as_str());
            let canon = id.to_string();
            let again = VaultId::parse(&canon).unwrap();
            prop_assert_eq!(&again, &id);
            prop_assert_eq!(again.to_string(), canon.clone());
            let json = serde_json::to_string(&id).unwrap();
            prop_assert_eq!(serde_json::from_str::<VaultId>(&json).unwrap(), id.clone());
            // Every valid id is also a valid exact pattern naming itself.
            let p = VaultPattern::parse(&canon).unwrap();
            prop_assert!(p.matches(&id));
            prop_assert_eq!(p.is_exact(), Some(id));
        }

        #[test]
        fn prop_parse_never_panics(s in any::<String>()) {
            let _ = VaultId::parse(&s);
            let _ = ResourceGuardId::parse(&s);
            let _ = VaultPattern::parse(&s);
        }

        #[test]
        fn prop_near_misses_never_panic(s in "/(subscriptions|SUBSCRIPTIONS)?(/[a-zA-Z0-9.%*()_é;:#? \\-]{0,14}){0,10}/?") {
            // Whatever is accepted must re-parse from its display to the same thing.
            if let Ok(id) = VaultId::parse(&s) {
                prop_assert_eq!(VaultId::parse(&id.to_string()).unwrap(), id);
            }
            if let Ok(p) = VaultPattern::parse(&s) {
                prop_assert_eq!(VaultPattern::parse(&p.to_string()).unwrap(), p);
            }
            let _ = ResourceGuardId::parse(&s);
        }

        #[test]
        fn prop_mutated_ids_never_panic_and_stay_consistent(
            (input, ..) in arb_vault_input(),
            pos in any::<prop::sample::Index>(),
            c in any::<char>(),
            delete in any::<bool>(),
        ) {
            let mut chars: Vec<char> = input.chars().collect();
            let i = pos.index(chars.len());
            if delete { chars.remove(i); } else { chars.insert(i, c); }
            let s: String = chars.into_iter().collect();
            if let Ok(id) = VaultId::parse(&s) {
                prop_assert_eq!(VaultId::parse(&id.to_string()).unwrap(), id);
            }
        }
    }
}
