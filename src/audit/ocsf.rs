//! OCSF (Open Cybersecurity Schema Framework, schema 1.3.0) events for SIEMs. The mapping
//! (also in the README, "Audit → OCSF"):
//!
//! | twokey action | OCSF class | activity | status |
//! |---|---|---|---|
//! | `auth.signed_in` / `auth.failed` | 3002 Authentication | 1 Logon | Success / Failure |
//! | `token.rejected` | 3002 Authentication | 99 Other (review link rejected) | Failure |
//! | `grant.active` | 3005 User Access Management | 1 Assign Privileges | Success |
//! | `grant.ended` | 3005 User Access Management | 2 Revoke Privileges | Success |
//! | `grant.failed` | 3005 User Access Management | 1 Assign (2 Revoke for the revoke step) | Failure |
//! | `request.created` | 3004 Entity Management | 1 Create | Success |
//! | `review.opened` | 3004 Entity Management | 2 Read | Success |
//! | `decision.*`, `request.cancelled/expired`, `grant.requested`, `policy.loaded` | 3004 Entity Management | 3 Update | Success |
//! | `notification.sent` / `.failed` | 4009 Email Activity | 1 Send | Success / Failure |
//! | `alert.received`, `alert.raised`, anything else | 0 Base Event | 99 Other | Unknown |
//!
//! Why these: the window is a privilege given to and taken from one user on one resource (the
//! Resource Guard): exactly User Access Management's Assign/Revoke Privileges. An access request
//! and its decisions are changes to an object that twokey manages in an identity and access
//! console, which is what Entity Management (IAM category) describes; API Activity (6003) is for
//! calls to a cloud API and would put approvals among ARM noise, and Group/Account classes are
//! about memberships and accounts, which a request is not.

use serde_json::{Map, Value, json};

use crate::store::AuditRow;
use crate::timefmt;

/// The OCSF schema version the events follow.
pub const OCSF_VERSION: &str = "1.3.0";

struct Class {
    uid: i64,
    name: &'static str,
    category_uid: i64,
    category_name: &'static str,
}

const AUTHENTICATION: Class = Class {
    uid: 3002,
    name: "Authentication",
    category_uid: 3,
    category_name: "Identity & Access Management",
};
const ENTITY_MANAGEMENT: Class = Class {
    uid: 3004,
    name: "Entity Management",
    category_uid: 3,
    category_name: "Identity & Access Management",
};
const USER_ACCESS: Class = Class {
    uid: 3005,
    name: "User Access Management",
    category_uid: 3,
    category_name: "Identity & Access Management",
};
const EMAIL_ACTIVITY: Class = Class {
    uid: 4009,
    name: "Email Activity",
    category_uid: 4,
    category_name: "Network Activity",
};
const BASE_EVENT: Class = Class {
    uid: 0,
    name: "Base Event",
    category_uid: 0,
    category_name: "Uncategorized",
};

/// OCSF `severity_id` values used here.
const INFORMATIONAL: i64 = 1;
const LOW: i64 = 2;
const MEDIUM: i64 = 3;
const HIGH: i64 = 4;

fn severity_name(id: i64) -> &'static str {
    match id {
        INFORMATIONAL => "Informational",
        LOW => "Low",
        MEDIUM => "Medium",
        HIGH => "High",
        _ => "Unknown",
    }
}

/// OCSF `status_id`: 0 Unknown, 1 Success, 2 Failure.
fn status_name(id: i64) -> &'static str {
    match id {
        1 => "Success",
        2 => "Failure",
        _ => "Unknown",
    }
}

fn str_of<'a>(d: &'a Value, k: &str) -> Option<&'a str> {
    d.get(k).and_then(Value::as_str)
}

/// Drop `null` members so consumers see only what is known.
fn compact(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, compact(v)))
                .filter(|(_, v)| !matches!(v, Value::Object(m) if m.is_empty()))
                .collect::<Map<String, Value>>(),
        ),
        other => other,
    }
}

/// The OCSF event for one audit row. `raw_data` is the row's JSON Lines form.
pub fn event(row: &AuditRow, details: &Value, raw_data: String) -> Value {
    let actor_user = json!({
        "uid": row.actor_id,
        "email_addr": row.actor_email,
        "uid_alt": row.actor_object_id,
        "type": "User",
        "type_id": 1,
    });
    let is_system = row.actor_id.is_none() && row.actor_email.is_none();
    let actor = if is_system {
        json!({ "app_name": "twokey" })
    } else {
        json!({ "user": actor_user })
    };
    let comment = str_of(details, "comment").or(str_of(details, "justification"));
    let request_entity = || {
        json!({
            "uid": row.request_id,
            "type": "Access request",
            "name": match (str_of(details, "operation"), str_of(details, "vault_id")) {
                (Some(op), Some(v)) => Some(format!("{op} on {v}")),
                _ => None,
            },
            "data": details,
        })
    };
    // (class, activity id, activity name, status id, severity id, class-specific members)
    let (class, activity_id, activity_name, status_id, severity_id, specific) = match row
        .action
        .as_str()
    {
        "auth.signed_in" | "auth.failed" => {
            let ok = row.action == "auth.signed_in";
            (
                AUTHENTICATION,
                1,
                "Logon",
                if ok { 1 } else { 2 },
                if ok { INFORMATIONAL } else { MEDIUM },
                json!({
                    "user": actor_user,
                    "service": { "name": "twokey" },
                    "auth_protocol": str_of(details, "method"),
                    "status_detail": str_of(details, "reason"),
                }),
            )
        }
        "token.rejected" => (
            AUTHENTICATION,
            99,
            "Other",
            2,
            MEDIUM,
            json!({
                "user": { "email_addr": str_of(details, "sent_to"), "type": "User", "type_id": 1 },
                "service": { "name": "twokey review link" },
                "status_detail": str_of(details, "reason"),
            }),
        ),
        "grant.active" | "grant.ended" | "grant.failed" => {
            let revoke = row.action == "grant.ended" || str_of(details, "step") == Some("revoke");
            let failed = row.action == "grant.failed";
            (
                USER_ACCESS,
                if revoke { 2 } else { 1 },
                if revoke {
                    "Revoke Privileges"
                } else {
                    "Assign Privileges"
                },
                if failed { 2 } else { 1 },
                match (failed, revoke) {
                    (true, true) => HIGH,
                    (true, false) => MEDIUM,
                    (false, false) => LOW,
                    (false, true) => INFORMATIONAL,
                },
                json!({
                    "user": {
                        "uid": str_of(details, "principal_object_id"),
                        "type": "User",
                        "type_id": 1,
                    },
                    "privileges": str_of(details, "role_definition_id").map(|r| vec![r]),
                    "resources": str_of(details, "scope").map(|s| vec![json!({
                        "uid": s,
                        "type": "Microsoft.DataProtection/resourceGuards",
                    })]),
                    "status_detail": str_of(details, "reason").or(str_of(details, "error")),
                }),
            )
        }
        "request.created" => (
            ENTITY_MANAGEMENT,
            1,
            "Create",
            1,
            INFORMATIONAL,
            json!({ "entity": request_entity(), "comment": comment }),
        ),
        "review.opened" => (
            ENTITY_MANAGEMENT,
            2,
            "Read",
            1,
            INFORMATIONAL,
            json!({ "entity": request_entity() }),
        ),
        "decision.approved" | "decision.denied" | "request.cancelled" | "request.expired"
        | "grant.requested" => (
            ENTITY_MANAGEMENT,
            3,
            "Update",
            1,
            if row.action == "decision.denied" {
                LOW
            } else {
                INFORMATIONAL
            },
            json!({
                "entity": request_entity(),
                "comment": comment,
                "status_detail": str_of(details, "reason"),
            }),
        ),
        "policy.loaded" => (
            ENTITY_MANAGEMENT,
            3,
            "Update",
            1,
            INFORMATIONAL,
            json!({
                "entity": {
                    "uid": str_of(details, "guard"),
                    "name": str_of(details, "guard"),
                    "type": "Guard policy",
                    "version": str_of(details, "policy_hash"),
                    "data": details.get("policy"),
                },
            }),
        ),
        "notification.sent" | "notification.failed" => {
            let ok = row.action == "notification.sent";
            (
                EMAIL_ACTIVITY,
                1,
                "Send",
                if ok { 1 } else { 2 },
                if ok { INFORMATIONAL } else { LOW },
                json!({
                    "direction_id": 2,
                    "direction": "Outbound",
                    "email": {
                        "to": str_of(details, "to").map(|t| vec![t]),
                        "subject": str_of(details, "subject"),
                        "message_uid": str_of(details, "message_id"),
                    },
                    "status_detail": str_of(details, "error"),
                }),
            )
        }
        _ => (
            BASE_EVENT,
            99,
            "Other",
            0,
            match row.action.as_str() {
                "alert.received" | "alert.raised" => MEDIUM,
                // A change in who can go around MUA: high when a red finding appeared.
                "posture.changed" if details["red_added"].as_i64().unwrap_or(0) > 0 => HIGH,
                "posture.changed" => MEDIUM,
                _ => INFORMATIONAL,
            },
            json!({}),
        ),
    };
    let time_ms = timefmt::parse(&row.at)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .unwrap_or(0);
    let mut ev = json!({
        "class_uid": class.uid,
        "class_name": class.name,
        "category_uid": class.category_uid,
        "category_name": class.category_name,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": class.uid * 100 + activity_id,
        "type_name": format!("{}: {}", class.name, activity_name),
        "time": time_ms,
        "severity_id": severity_id,
        "severity": severity_name(severity_id),
        "status_id": status_id,
        "status": status_name(status_id),
        "message": format!("twokey {}", row.action),
        "metadata": {
            "version": OCSF_VERSION,
            "product": {
                "name": "twokey",
                "vendor_name": "twokey",
                "version": env!("CARGO_PKG_VERSION"),
            },
            "uid": row.hash,
            "sequence": row.seq,
            "event_code": row.action,
            "correlation_uid": row.request_id,
            "log_name": "audit",
            "original_time": row.at,
        },
        "actor": actor,
        "src_endpoint": { "ip": row.actor_ip },
        "http_request": { "user_agent": row.actor_user_agent },
        "raw_data": raw_data,
    });
    if let (Value::Object(ev), Value::Object(specific)) = (&mut ev, specific) {
        for (k, v) in specific {
            ev.insert(k, v);
        }
    }
    compact(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(action: &str, details: &Value) -> AuditRow {
        AuditRow {
            seq: 7,
            at: "2026-12-03T09:00:00.250000Z".into(),
            action: action.into(),
            actor_id: Some("p1".into()),
            actor_email: Some("bob@demo.twokey".into()),
            actor_object_id: None,
            actor_ip: Some("127.0.0.1".into()),
            actor_user_agent: None,
            request_id: Some("r1".into()),
            details: details.to_string(),
            prev_hash: "0".repeat(64),
            hash: "1".repeat(64),
        }
    }

    #[test]
    fn each_family_maps_to_its_class_and_activity() {
        let cases = [
            ("auth.signed_in", 3002, 1, 1),
            ("token.rejected", 3002, 99, 2),
            ("grant.active", 3005, 1, 1),
            ("grant.ended", 3005, 2, 1),
            ("request.created", 3004, 1, 1),
            ("review.opened", 3004, 2, 1),
            ("decision.approved", 3004, 3, 1),
            ("notification.failed", 4009, 1, 2),
            ("alert.received", 0, 99, 0),
        ];
        for (action, class, activity, status) in cases {
            let d = json!({ "scope": "/x", "role_definition_id": "r", "principal_object_id": "o" });
            let e = event(&row(action, &d), &d, "{}".into());
            assert_eq!(e["class_uid"], class, "{action}");
            assert_eq!(e["activity_id"], activity, "{action}");
            assert_eq!(e["type_uid"], class * 100 + activity, "{action}");
            assert_eq!(e["status_id"], status, "{action}");
            assert_eq!(e["time"], 1_796_288_400_250_i64, "{action}");
            assert_eq!(e["metadata"]["product"]["name"], "twokey");
            assert_eq!(e["metadata"]["sequence"], 7);
            assert_eq!(e["raw_data"], "{}");
        }
    }

    #[test]
    fn a_grant_names_the_user_the_role_and_the_guard() {
        let d = json!({ "scope": "/subscriptions/s/resourceGroups/g/providers/Microsoft.DataProtection/resourceGuards/x", "role_definition_id": "f54b", "principal_object_id": "oid-1" });
        let e = event(&row("grant.active", &d), &d, String::new());
        assert_eq!(e["user"]["uid"], "oid-1");
        assert_eq!(e["privileges"][0], "f54b");
        assert!(e["resources"][0]["uid"].as_str().unwrap().ends_with("/x"));
        assert!(e.get("http_request").is_none(), "empty objects are dropped");
    }
}
