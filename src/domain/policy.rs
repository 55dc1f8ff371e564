//! Guard policy: which vaults a guard covers, who may approve, how many approvals it takes, and
//! how long a window may last. Pure: built from config, evaluated against a [`Principal`] at the
//! moment of each decision. No I/O, no clock.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::arm::{ResourceGuardId, VaultId, VaultPattern};
use super::operations::Operation;
use super::principal::{Principal, normalize_email};

/// Backup MUA Operator: the role Azure's MUA checks on the guard to allow a protected
/// operation (CONTRACTS.md §2). Reader only lets one link a vault.
pub const BACKUP_MUA_OPERATOR_ROLE: &str = "f54b6d04-23c6-443e-b462-9c16ab7b4a52";

/// One entry of a guard's `approvers` (or `requesters`, `auditors`, `admins`) list.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    /// `user:<email>` (or a bare email): compared by normalized email.
    User(String),
    /// `oid:<object id>`: compared with the principal's Azure object id.
    Oid(String),
    /// `group:<group id or name>`: compared with the principal's groups (or app roles).
    Group(String),
}

impl Subject {
    /// Parse `user:<email>`, `oid:<object id>`, `group:<id or name>`, or a bare email.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let (kind, value) = match raw.split_once(':') {
            Some((k, v)) => (k, v.trim()),
            None => ("user", raw),
        };
        if value.is_empty() {
            return Err(format!("`{raw}` has an empty value"));
        }
        match kind {
            "user" => {
                if !super::principal::is_plausible_email(value) {
                    return Err(format!("`{value}` is not an email address"));
                }
                Ok(Self::User(normalize_email(value)))
            }
            "oid" => {
                if uuid::Uuid::parse_str(value).is_err() {
                    return Err(format!("`{value}` is not an object id (a GUID)"));
                }
                Ok(Self::Oid(value.to_ascii_lowercase()))
            }
            "group" => Ok(Self::Group(value.to_string())),
            other => Err(format!(
                "unknown kind `{other}`: use user:<email>, oid:<object id> or group:<name>"
            )),
        }
    }

    /// Whether this entry designates `p` right now.
    pub fn matches(&self, p: &Principal) -> bool {
        match self {
            Self::User(email) => p.email_normalized() == *email,
            Self::Oid(oid) => p
                .azure_object_id
                .as_deref()
                .is_some_and(|o| o.eq_ignore_ascii_case(oid)),
            // Group ids are GUIDs (case-insensitive); app role names are compared the same way.
            Self::Group(g) => p.groups.iter().any(|pg| pg.eq_ignore_ascii_case(g)),
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User(e) => write!(f, "user:{e}"),
            Self::Oid(o) => write!(f, "oid:{o}"),
            Self::Group(g) => write!(f, "group:{g}"),
        }
    }
}

impl Serialize for Subject {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// How a guard's approved window is put in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ElevationBackend {
    AzurePim,
    AzureRbac,
    Simulated,
}

impl ElevationBackend {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "azure-pim" => Some(Self::AzurePim),
            "azure-rbac" => Some(Self::AzureRbac),
            "simulated" => Some(Self::Simulated),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AzurePim => "azure-pim",
            Self::AzureRbac => "azure-rbac",
            Self::Simulated => "simulated",
        }
    }
    /// Whether a grant needs the requester's Azure object id.
    pub fn needs_object_id(self) -> bool {
        !matches!(self, Self::Simulated)
    }
}

/// Whether an approver must be signed in as the person the review link was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApproverSignIn {
    /// Default: a forwarded mail decides nothing.
    Required,
    /// The signed link alone is enough (for approvers without an account in the issuer).
    LinkOnly,
}

/// A guard's whole policy, validated. Built only by config validation.
#[derive(Debug, Clone, Serialize)]
pub struct GuardPolicy {
    pub name: String,
    pub resource_guard_id: ResourceGuardId,
    pub vaults: Vec<VaultPattern>,
    pub approvers: Vec<Subject>,
    /// Who may ask; `None` means anyone who can sign in.
    pub requesters: Option<Vec<Subject>>,
    pub watchers: Vec<String>,
    pub required_approvals: u32,
    /// Approvals must come through different approver entries (e.g. one peer, one from security).
    pub distinct_groups: bool,
    /// Per-operation approval counts that replace the catalogue's default for this guard.
    pub operation_approvals: BTreeMap<String, u32>,
    pub max_duration_minutes: u32,
    pub default_duration_minutes: u32,
    pub pending_deadline_minutes: u32,
    pub elevation: ElevationBackend,
    pub role_definition_id: String,
    pub approver_sign_in: ApproverSignIn,
}

impl GuardPolicy {
    /// Whether one of the guard's vault patterns covers `vault`.
    pub fn covers(&self, vault: &VaultId) -> bool {
        self.vaults.iter().any(|p| p.matches(vault))
    }

    /// The approver entries that designate `p` now (empty: not an approver).
    pub fn approver_entries_for(&self, p: &Principal) -> Vec<String> {
        self.approvers
            .iter()
            .filter(|s| s.matches(p))
            .map(ToString::to_string)
            .collect()
    }

    pub fn may_request(&self, p: &Principal) -> bool {
        match &self.requesters {
            None => true,
            Some(list) => list.iter().any(|s| s.matches(p)),
        }
    }

    /// Approvals needed for `op` under this guard: the guard's own count or the operation's
    /// default, whichever is higher, unless the guard names the operation explicitly.
    ///
    /// SECURITY: irreversible operations default to 2 approvals even on a 1-approval guard; only
    /// an explicit per-operation entry in the guard config lowers that, never below 1.
    pub fn required_for(&self, op: &Operation) -> u32 {
        match self.operation_approvals.get(op.key) {
            Some(n) => (*n).max(1),
            None => self
                .required_approvals
                .max(u32::from(op.default_required_approvals))
                .max(1),
        }
    }

    /// A stable fingerprint of everything that decides who may approve what. Pending requests
    /// made under another fingerprint are voided (`policy_changed`).
    pub fn hash(&self) -> String {
        // serde_json without `preserve_order` writes struct fields in declaration order and
        // maps in key order, which is stable for a given build and config.
        let json = serde_json::to_vec(self).expect("policy serializes");
        hex::encode(Sha256::digest(&json))
    }

    /// Approver emails that can be mailed directly (user entries).
    pub fn approver_user_emails(&self) -> Vec<String> {
        self.approvers
            .iter()
            .filter_map(|s| match s {
                Subject::User(e) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Count approvals that satisfy the policy.
///
/// Each element of `approvals` is the list of approver entries one (distinct) approver matched
/// when they decided. Without `distinct_groups` every approver counts once. With it, the count
/// is the size of a maximum matching between approvers and entries, so two people who are both
/// only in `group:peers` count once, while a person in both groups can fill either slot.
pub fn count_approvals(approvals: &[Vec<String>], distinct_groups: bool) -> usize {
    if !distinct_groups {
        return approvals.iter().filter(|a| !a.is_empty()).count();
    }
    // Kuhn's augmenting paths; lists are tiny (a handful of approvers and entries).
    let mut owner: BTreeMap<&str, usize> = BTreeMap::new();
    fn try_assign<'a>(
        i: usize,
        approvals: &'a [Vec<String>],
        owner: &mut BTreeMap<&'a str, usize>,
        seen: &mut Vec<&'a str>,
    ) -> bool {
        for e in &approvals[i] {
            if seen.contains(&e.as_str()) {
                continue;
            }
            seen.push(e);
            let free = match owner.get(e.as_str()) {
                None => true,
                Some(&j) => try_assign(j, approvals, owner, seen),
            };
            if free {
                owner.insert(e, i);
                return true;
            }
        }
        false
    }
    let mut count = 0;
    for i in 0..approvals.len() {
        let mut seen = Vec::new();
        if try_assign(i, approvals, &mut owner, &mut seen) {
            count += 1;
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn subjects_parse_and_match() {
        let p = Principal {
            id: "1".into(),
            email: "Bob+x@Demo.Twokey".into(),
            name: "Bob".into(),
            azure_object_id: Some("11111111-1111-1111-1111-111111111111".into()),
            groups: vec!["Backup-Approvers".into()],
        };
        assert!(Subject::parse("bob@demo.twokey").unwrap().matches(&p));
        assert!(Subject::parse("user:BOB@demo.twokey").unwrap().matches(&p));
        assert!(
            Subject::parse("oid:11111111-1111-1111-1111-111111111111")
                .unwrap()
                .matches(&p)
        );
        assert!(
            Subject::parse("group:backup-approvers")
                .unwrap()
                .matches(&p)
        );
        assert!(!Subject::parse("group:security").unwrap().matches(&p));
        assert!(Subject::parse("oid:not-a-guid").is_err());
        assert!(Subject::parse("role:x").is_err());
        assert!(Subject::parse("user:").is_err());
        assert!(Subject::parse("user:nobody").is_err());
    }

    #[test]
    fn plain_count_is_number_of_approvers() {
        assert_eq!(count_approvals(&[v(&["user:a"]), v(&["user:b"])], false), 2);
        assert_eq!(count_approvals(&[v(&[])], false), 0);
    }

    #[test]
    fn distinct_groups_need_different_entries() {
        let two_peers = [v(&["group:peers"]), v(&["group:peers"])];
        assert_eq!(count_approvals(&two_peers, true), 1);
        let peer_and_sec = [v(&["group:peers"]), v(&["group:security"])];
        assert_eq!(count_approvals(&peer_and_sec, true), 2);
        // The first approver is in both; the matching must give them the slot the second lacks.
        let both_first = [v(&["group:peers", "group:security"]), v(&["group:peers"])];
        assert_eq!(count_approvals(&both_first, true), 2);
    }

    proptest::proptest! {
        #[test]
        fn distinct_count_never_exceeds_either_side(
            lists in proptest::collection::vec(proptest::collection::vec(0u8..4, 0..4), 0..6)
        ) {
            let approvals: Vec<Vec<String>> = lists.iter()
                .map(|l| l.iter().map(|n| format!("group:g{n}")).collect()).collect();
            let mut entries: Vec<&String> = approvals.iter().flatten().collect();
            entries.sort(); entries.dedup();
            let c = count_approvals(&approvals, true);
            proptest::prop_assert!(c <= entries.len());
            proptest::prop_assert!(c <= approvals.len());
            proptest::prop_assert!(c <= count_approvals(&approvals, false));
        }
    }
}
