//! Who somebody is, as far as the rules care: a stable principal id, an email, an optional Azure
//! object id, and the groups and roles their sign-in carried. Pure data; no I/O.

use serde::{Deserialize, Serialize};

/// A signed-in person (or API client) as the policy sees them at one moment.
///
/// Groups and roles come from the sign-in (claims, or the dev people in `twokey demo`) and are
/// evaluated at the moment of each decision, never cached from request time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// twokey's own id for this principal (UUIDv7 text), stable per (issuer, subject).
    pub id: String,
    pub email: String,
    pub name: String,
    /// Entra ID object id (`oid`); needed for any grant on Azure.
    pub azure_object_id: Option<String>,
    pub groups: Vec<String>,
}

impl Principal {
    /// The email in the form used for every identity comparison.
    pub fn email_normalized(&self) -> String {
        normalize_email(&self.email)
    }

    /// True when `self` and `other` are, by any of the identifiers we hold, the same person.
    ///
    /// SECURITY: separation of duties compares principal id, Azure object id *and* the
    /// normalized email, so a second account for the same mailbox (`Alice@…`, `alice+x@…`) or
    /// the same Entra object under another sign-in cannot approve its own request.
    pub fn is_same_person(&self, other: &PrincipalRef) -> bool {
        if self.id == other.id {
            return true;
        }
        if let (Some(a), Some(b)) = (&self.azure_object_id, &other.azure_object_id)
            && a.eq_ignore_ascii_case(b)
        {
            return true;
        }
        self.email_normalized() == normalize_email(&other.email)
    }

    pub fn to_ref(&self) -> PrincipalRef {
        PrincipalRef {
            id: self.id.clone(),
            email: self.email.clone(),
            name: self.name.clone(),
            azure_object_id: self.azure_object_id.clone(),
        }
    }
}

/// The identifying part of a principal, as stored on a request or a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipalRef {
    pub id: String,
    pub email: String,
    pub name: String,
    pub azure_object_id: Option<String>,
}

/// Normalize an email address for identity comparison: trim, lowercase, and drop a `+tag`
/// from the local part (`Alice+x@Demo.Twokey` → `alice@demo.twokey`).
///
/// SECURITY: sub-addressing delivers to the same mailbox, so it is the same person; without
/// this, `alice+x@` could approve `alice@`'s request.
pub fn normalize_email(email: &str) -> String {
    let email = email.trim().to_lowercase();
    match email.rsplit_once('@') {
        Some((local, domain)) => {
            let local = local.split('+').next().unwrap_or(local);
            format!("{local}@{domain}")
        }
        None => email,
    }
}

/// A plausible email address: one `@`, non-empty parts, a dot in the domain, no spaces or
/// control characters, at most 254 bytes. Not RFC 5322; enough to refuse junk at the boundary.
pub fn is_plausible_email(email: &str) -> bool {
    if email.len() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: &str, email: &str, oid: Option<&str>) -> Principal {
        Principal {
            id: id.into(),
            email: email.into(),
            name: "x".into(),
            azure_object_id: oid.map(Into::into),
            groups: vec![],
        }
    }

    #[test]
    fn normalization_folds_case_and_plus_tags() {
        assert_eq!(normalize_email(" Alice@Demo.Twokey "), "alice@demo.twokey");
        assert_eq!(normalize_email("alice+x@demo.twokey"), "alice@demo.twokey");
        assert_eq!(
            normalize_email("alice+x+y@demo.twokey"),
            "alice@demo.twokey"
        );
        assert_ne!(normalize_email("alicex@demo.twokey"), "alice@demo.twokey");
    }

    #[test]
    fn same_person_by_any_identifier() {
        let alice = p("1", "alice@demo.twokey", Some("OID-A"));
        assert!(alice.is_same_person(&p("1", "other@x.y", None).to_ref()));
        assert!(alice.is_same_person(&p("2", "Alice+x@Demo.Twokey", None).to_ref()));
        assert!(alice.is_same_person(&p("3", "z@x.y", Some("oid-a")).to_ref()));
        assert!(!alice.is_same_person(&p("4", "bob@demo.twokey", Some("OID-B")).to_ref()));
    }

    #[test]
    fn plausible_emails() {
        assert!(is_plausible_email("bob@demo.twokey"));
        for bad in [
            "", "bob", "bob@", "@x.y", "a b@x.y", "a@b@c.d", "a@nodot", "a@.x", "a@x.",
        ] {
            assert!(!is_plausible_email(bad), "{bad}");
        }
    }
}
