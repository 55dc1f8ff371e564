//! A fake Azure Resource Manager and Entra token endpoint, as a small axum server on a
//! loopback port. It checks every ARM request against the operations carried from the Azure
//! specs (`tests/azure_spec/operations.json`: path, api-version, body fields, required fields,
//! enum values, read-only fields), records every call, keeps PIM schedule requests and
//! instances and plain role assignments in memory, serves the token endpoint (client
//! credentials with a secret or a federated assertion) and the managed-identity endpoint, and
//! injects faults on demand: an HTTP status with `Retry-After`, an ARM error, an answer that
//! comes too late, a connection reset, a long-running operation that needs several polls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub const HOME_TENANT: &str = "7a3e0000-0000-4000-8000-00000000aaaa";
pub const GUARD_TENANT: &str = "9b1d0000-0000-4000-8000-00000000bbbb";
pub const CLIENT_ID: &str = "c1e00000-0000-4000-8000-0000000000c1";
pub const CLIENT_SECRET: &str = "fake-client-secret-value-1234567890";
pub const FEDERATED_TOKEN: &str =
    "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6dHdva2V5OnR3b2tleSJ9.c2ln";
/// The broker's own service principal object id (the `oid` in the tokens it gets).
pub const BROKER_OID: &str = "b40c0000-0000-4000-8000-0000000000b4";

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
    /// The tenant of the bearer token, when it was one the fake issued.
    pub tenant: Option<String>,
    pub aux_tenants: Vec<String>,
    pub at: Instant,
    pub at_utc: OffsetDateTime,
}

impl Call {
    pub fn is(&self, method: &str, path_contains: &str) -> bool {
        self.method == method && self.path.contains(path_contains)
    }
}

/// One recorded token request.
#[derive(Debug, Clone)]
pub struct TokenCall {
    pub tenant: String,
    /// `client_secret`, `client_assertion` or `managed_identity`.
    pub kind: String,
    pub client_id: String,
    pub scope: String,
}

#[derive(Debug, Clone)]
pub enum FaultKind {
    /// Answer with this status (and `Retry-After`), doing nothing.
    Status(u16, Option<u64>),
    /// Answer with an ARM error body, doing nothing.
    Error(u16, &'static str, String),
    /// Do the work, then answer only after this long (the client times out first).
    LateAnswer(Duration),
    /// Do the work as a long-running operation that needs this many polls.
    Lro(u32),
    /// Answer an `AdminRemove` as done but keep the assignment (a removal that did not stick).
    AcceptButKeep,
}

#[derive(Debug, Clone)]
struct Fault {
    method: &'static str,
    path_contains: String,
    body_contains: Option<String>,
    kind: FaultKind,
    times: usize,
}

/// A PIM schedule instance (an active assignment).
#[derive(Debug, Clone)]
pub struct Instance {
    pub id: String,
    pub scope: String,
    pub principal_id: String,
    pub role_definition_id: String,
    pub start: OffsetDateTime,
    pub end: Option<OffsetDateTime>,
    pub schedule_id: String,
}

#[derive(Default)]
struct Lro {
    remaining: u32,
    request_key: String,
}

#[derive(Default)]
pub struct FakeState {
    pub calls: Vec<Call>,
    pub token_calls: Vec<TokenCall>,
    pub violations: Vec<String>,
    pub requests: HashMap<String, Value>,
    pub instances: Vec<Instance>,
    pub role_assignments: HashMap<String, Value>,
    /// Every instance ever created (kept after removal), to count grants.
    pub created_instances: Vec<Instance>,
    faults: Vec<Fault>,
    resets: usize,
    tokens: HashMap<String, (String, Instant)>,
    token_lifetime: u64,
    token_counter: u64,
    lros: HashMap<String, Lro>,
    pending: HashMap<String, Instance>,
    denied: Vec<String>,
    guards: HashMap<String, Value>,
    links: HashMap<String, String>,
    /// Management groups above each subscription (lowercase), nearest first.
    management_groups: HashMap<String, Vec<String>>,
    /// Role definitions by GUID (lowercase); the built-ins are there from the start.
    definitions: HashMap<String, Value>,
    /// PIM assignment and eligibility schedules.
    schedules: Vec<Value>,
    eligibility: Vec<Value>,
    /// Vault resources by id (lowercase).
    vaults: HashMap<String, Value>,
    /// The directory behind Microsoft Graph's `getByIds`, by object id (lowercase).
    pub directory: HashMap<String, Value>,
    /// The audience each token was issued for.
    token_audience: HashMap<String, String>,
}

/// The built-in roles the posture tests meet, with their permissions as Azure publishes them
/// (Contributor's notActions shortened to the ones that matter here).
fn builtin_definitions() -> HashMap<String, Value> {
    let def = |guid: &str, name: &str, actions: &[&str], not: &[&str]| {
        (
            guid.to_string(),
            json!({
                "id": format!("/providers/Microsoft.Authorization/roleDefinitions/{guid}"),
                "name": guid, "type": "Microsoft.Authorization/roleDefinitions",
                "properties": { "roleName": name, "type": "BuiltInRole", "description": name,
                    "assignableScopes": ["/"],
                    "permissions": [{ "actions": actions, "notActions": not, "dataActions": [], "notDataActions": [] }] }
            }),
        )
    };
    [
        def("8e3af657-a8ff-443c-a75c-2fe8c4bcb635", "Owner", &["*"], &[]),
        def(
            "b24988ac-6180-42a0-ab88-20f7382dd24c",
            "Contributor",
            &["*"],
            &[
                "Microsoft.Authorization/*/Delete",
                "Microsoft.Authorization/*/Write",
                "Microsoft.Authorization/elevateAccess/Action",
            ],
        ),
        def(
            "acdd72a7-3385-48ef-bd42-f606fba81ae7",
            "Reader",
            &["*/read"],
            &[],
        ),
        def(
            "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9",
            "User Access Administrator",
            &["*/read", "Microsoft.Authorization/*", "Microsoft.Support/*"],
            &[],
        ),
        def(
            "c2a970b4-16a7-4a51-8c84-8a8ea6ee0bb8",
            "Backup MUA Admin",
            &[
                "Microsoft.Authorization/*/read",
                "Microsoft.DataProtection/resourceGuards/*",
                "Microsoft.Resources/subscriptions/resourceGroups/read",
            ],
            &[],
        ),
        def(
            "f54b6d04-23c6-443e-b462-9c16ab7b4a52",
            "Backup MUA Operator",
            &[
                "Microsoft.Authorization/*/read",
                "Microsoft.DataProtection/resourceGuards/read",
                "Microsoft.DataProtection/resourceGuards/*/action",
            ],
            &[],
        ),
        def(
            "5e467623-bb1f-42f4-a55d-6e525e11384b",
            "Backup Contributor",
            &[
                "Microsoft.Authorization/*/read",
                "Microsoft.RecoveryServices/Vaults/*",
                "Microsoft.DataProtection/backupVaults/*",
            ],
            &["Microsoft.RecoveryServices/Vaults/delete"],
        ),
    ]
    .into_iter()
    .collect()
}

/// Whether an assignment at `at` applies at `scope` (at or above it), with the management
/// groups above each subscription.
fn at_or_above(at: &str, scope: &str, mgs: &HashMap<String, Vec<String>>) -> bool {
    let at = at.trim_end_matches('/').to_ascii_lowercase();
    let scope = scope.trim_end_matches('/').to_ascii_lowercase();
    if at.is_empty() || at == scope || scope.starts_with(&format!("{at}/")) {
        return true;
    }
    let sub = scope
        .trim_start_matches("/subscriptions/")
        .split('/')
        .next()
        .unwrap_or("");
    mgs.get(sub).is_some_and(|l| l.contains(&at))
}

/// The fake, running until dropped.
pub struct FakeArm {
    pub base: String,
    pub state: Arc<Mutex<FakeState>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeArm {
    fn drop(&mut self) {
        self._task.abort();
    }
}

struct Shared {
    state: Arc<Mutex<FakeState>>,
    spec: Vec<SpecOp>,
    base: String,
}

struct SpecOp {
    method: String,
    path: Vec<String>,
    api_version: String,
    body: Option<Value>,
    body_required: bool,
    /// The query parameters the spec declares.
    query: Vec<String>,
    /// The `$filter` forms it documents (`{id}` = a GUID).
    filters: Vec<String>,
}

/// Whether `value` is one of the documented `$filter` forms.
fn filter_ok(forms: &[String], value: &str) -> bool {
    forms.iter().any(|f| match f.split_once("{id}") {
        None => f == value,
        Some((pre, post)) => value
            .strip_prefix(pre)
            .and_then(|r| r.strip_suffix(post))
            .is_some_and(|id| uuid::Uuid::parse_str(id).is_ok()),
    })
}

fn load_spec() -> Vec<SpecOp> {
    let text = include_str!("../azure_spec/operations.json");
    let doc: Value = serde_json::from_str(text).expect("operations.json");
    doc["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| SpecOp {
            method: o["method"].as_str().unwrap().to_string(),
            path: o["path"]
                .as_str()
                .unwrap()
                .trim_start_matches('/')
                .split('/')
                .map(str::to_string)
                .collect(),
            api_version: o["api_version"].as_str().unwrap().to_string(),
            body: o.get("body").cloned(),
            body_required: o["body_required"].as_bool().unwrap_or(false),
            query: o["query"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|q| q.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            filters: o["filters"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|q| q.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

/// Match path segments against a template; `{scope}` takes one or more segments.
fn path_matches(tpl: &[String], segs: &[&str]) -> bool {
    match tpl.first() {
        None => segs.is_empty(),
        Some(t) if t == "{scope}" => (1..=segs.len()).any(|n| path_matches(&tpl[1..], &segs[n..])),
        Some(t) if t.starts_with('{') => !segs.is_empty() && path_matches(&tpl[1..], &segs[1..]),
        Some(t) => {
            !segs.is_empty()
                && t.eq_ignore_ascii_case(segs[0])
                && path_matches(&tpl[1..], &segs[1..])
        }
    }
}

/// Check `v` against a distilled schema; every problem goes to `errs`.
fn check_schema(schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    let ty = schema["type"]
        .as_str()
        .or(if schema.get("properties").is_some() {
            Some("object")
        } else {
            None
        });
    match ty {
        Some("object") => {
            let Some(obj) = v.as_object() else {
                errs.push(format!("{at}: expected an object"));
                return;
            };
            let props = schema["properties"].as_object();
            for (k, val) in obj {
                match props.and_then(|p| p.get(k)) {
                    None => errs.push(format!("{at}.{k}: not a field of the spec")),
                    Some(s) => {
                        if s["readOnly"] == json!(true) {
                            errs.push(format!("{at}.{k}: read-only in the spec, must not be sent"));
                        }
                        check_schema(s, val, &format!("{at}.{k}"), errs);
                    }
                }
            }
            if let Some(req) = schema["required"].as_array() {
                for r in req.iter().filter_map(|r| r.as_str()) {
                    if !obj.contains_key(r) {
                        errs.push(format!("{at}.{r}: required by the spec, missing"));
                    }
                }
            }
        }
        Some("string") => {
            let Some(s) = v.as_str() else {
                errs.push(format!("{at}: expected a string, got {v}"));
                return;
            };
            if let Some(en) = schema["enum"].as_array()
                && !en.iter().any(|e| e == s)
            {
                errs.push(format!(
                    "{at}: `{s}` is not one of the spec's values {en:?}"
                ));
            }
            if schema["format"] == "date-time" && OffsetDateTime::parse(s, &Rfc3339).is_err() {
                errs.push(format!("{at}: `{s}` is not an RFC 3339 date-time"));
            }
        }
        Some("boolean") if !v.is_boolean() => errs.push(format!("{at}: expected a boolean")),
        Some("integer" | "number") if !v.is_number() => {
            errs.push(format!("{at}: expected a number"))
        }
        Some("array") => match v.as_array() {
            Some(items) => {
                for (i, it) in items.iter().enumerate() {
                    check_schema(&schema["items"], it, &format!("{at}[{i}]"), errs);
                }
            }
            None => errs.push(format!("{at}: expected an array")),
        },
        _ => {}
    }
}

fn arm_error(status: u16, code: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [("x-ms-request-id", "fake-request-id")],
        axum::Json(json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap()
}

/// `PT30M`, `PT2H`, `PT1H30M` → duration.
fn parse_iso_duration(s: &str) -> Option<time::Duration> {
    let rest = s.strip_prefix("PT")?;
    let mut total = time::Duration::ZERO;
    let mut num = String::new();
    for c in rest.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num.parse().ok()?;
        num.clear();
        total += match c {
            'H' => time::Duration::hours(n),
            'M' => time::Duration::minutes(n),
            'S' => time::Duration::seconds(n),
            _ => return None,
        };
    }
    num.is_empty().then_some(total)
}

fn same_role(a: &str, b: &str) -> bool {
    a.rsplit('/')
        .next()
        .unwrap_or("")
        .eq_ignore_ascii_case(b.rsplit('/').next().unwrap_or(""))
}

impl FakeArm {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let base = format!("http://127.0.0.1:{port}");
        let state = Arc::new(Mutex::new(FakeState {
            token_lifetime: 3599,
            definitions: builtin_definitions(),
            ..Default::default()
        }));
        let shared = Arc::new(Shared {
            state: state.clone(),
            spec: load_spec(),
            base: base.clone(),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared)
            .layer(axum::middleware::map_response(
                |mut r: Response| async move {
                    // One request per connection, so a reset fault hits the next request.
                    r.headers_mut()
                        .insert("connection", HeaderValue::from_static("close"));
                    r
                },
            ));
        let listener = ResettingListener {
            inner: listener,
            state: state.clone(),
        };
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            base,
            state,
            _task: task,
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    pub fn calls(&self) -> Vec<Call> {
        self.st().calls.clone()
    }
    pub fn calls_to(&self, method: &str, path_contains: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.is(method, path_contains))
            .collect()
    }
    pub fn token_calls(&self) -> Vec<TokenCall> {
        self.st().token_calls.clone()
    }
    /// Requests that did not match the spec. Tests assert this is empty.
    pub fn violations(&self) -> Vec<String> {
        self.st().violations.clone()
    }
    pub fn instances(&self) -> Vec<Instance> {
        self.st().instances.clone()
    }
    pub fn created_instances(&self) -> Vec<Instance> {
        self.st().created_instances.clone()
    }
    pub fn role_assignments(&self) -> Vec<Value> {
        self.st().role_assignments.values().cloned().collect()
    }
    /// How long tokens from now on live (`expires_in`).
    pub fn set_token_lifetime(&self, secs: u64) {
        self.st().token_lifetime = secs;
    }
    /// Inject a fault for the next `times` matching requests.
    pub fn fault(
        &self,
        method: &'static str,
        path_contains: &str,
        body_contains: Option<&str>,
        kind: FaultKind,
        times: usize,
    ) {
        self.st().faults.push(Fault {
            method,
            path_contains: path_contains.to_string(),
            body_contains: body_contains.map(str::to_string),
            kind,
            times,
        });
    }
    /// Reset the next `n` connections before reading them.
    pub fn reset_connections(&self, n: usize) {
        self.st().resets += n;
    }
    /// Answer 403 AuthorizationFailed to requests whose path contains `path_contains`.
    pub fn deny(&self, path_contains: &str) {
        self.st().denied.push(path_contains.to_string());
    }
    pub fn pending_resets(&self) -> usize {
        self.st().resets
    }
    /// Stop answering 403.
    pub fn allow_all(&self) {
        self.st().denied.clear();
    }
    /// An assignment made outside twokey.
    pub fn seed_instance(
        &self,
        scope: &str,
        principal: &str,
        role_guid: &str,
        start: OffsetDateTime,
        end: Option<OffsetDateTime>,
    ) {
        let inst = Instance {
            id: format!(
                "{scope}/providers/Microsoft.Authorization/roleAssignmentScheduleInstances/{}",
                uuid::Uuid::new_v4()
            ),
            scope: scope.to_string(),
            principal_id: principal.to_string(),
            role_definition_id: format!(
                "/providers/Microsoft.Authorization/roleDefinitions/{role_guid}"
            ),
            start,
            end,
            schedule_id: uuid::Uuid::new_v4().to_string(),
        };
        self.st().instances.push(inst);
    }
    /// A role assignment made outside twokey, at any scope (`/` for the root).
    pub fn seed_role_assignment(&self, scope: &str, principal: &str, kind: &str, role_guid: &str) {
        let name = uuid::Uuid::new_v4().to_string();
        let id = format!(
            "{}/providers/Microsoft.Authorization/roleAssignments/{name}",
            scope.trim_end_matches('/')
        );
        let a = json!({"id": id, "name": name, "type": "Microsoft.Authorization/roleAssignments", "properties": {
            "scope": scope, "principalId": principal, "principalType": kind,
            "roleDefinitionId": format!("/subscriptions/{}/providers/Microsoft.Authorization/roleDefinitions/{role_guid}",
                scope.trim_start_matches("/subscriptions/").split('/').next().filter(|s| uuid::Uuid::parse_str(s).is_ok()).unwrap_or("11111111-2222-3333-4444-555555555555")),
            "createdOn": fmt_time(OffsetDateTime::now_utc()),
        }});
        self.st()
            .role_assignments
            .insert(id.to_ascii_lowercase(), a);
    }
    /// Remove every assignment of `principal`.
    pub fn remove_role_assignments_of(&self, principal: &str) {
        self.st()
            .role_assignments
            .retain(|_, a| a["properties"]["principalId"] != principal);
    }
    /// A custom role definition.
    pub fn add_custom_role(&self, guid: &str, name: &str, actions: &[&str], not_actions: &[&str]) {
        self.st().definitions.insert(guid.to_ascii_lowercase(), json!({
            "id": format!("/providers/Microsoft.Authorization/roleDefinitions/{guid}"), "name": guid,
            "type": "Microsoft.Authorization/roleDefinitions",
            "properties": { "roleName": name, "type": "CustomRole", "assignableScopes": ["/"],
                "permissions": [{ "actions": actions, "notActions": not_actions }] }
        }));
    }
    /// Management groups above a subscription, nearest first (ids like
    /// `/providers/Microsoft.Management/managementGroups/corp`).
    pub fn set_management_groups(&self, subscription: &str, groups: &[&str]) {
        self.st().management_groups.insert(
            subscription.to_ascii_lowercase(),
            groups.iter().map(|g| g.to_ascii_lowercase()).collect(),
        );
    }
    /// A PIM schedule: an assignment (`eligible = false`) or an eligibility.
    pub fn seed_schedule(
        &self,
        eligible: bool,
        scope: &str,
        principal: &str,
        role_guid: &str,
        end: Option<&str>,
    ) {
        let v = json!({"id": format!("{scope}/providers/Microsoft.Authorization/x/{}", uuid::Uuid::new_v4()), "properties": {
            "scope": scope, "principalId": principal, "principalType": "User",
            "roleDefinitionId": format!("/providers/Microsoft.Authorization/roleDefinitions/{role_guid}"),
            "status": "Provisioned", "memberType": "Direct", "endDateTime": end,
            "assignmentType": if eligible { Value::Null } else { json!("Activated") },
        }});
        let mut st = self.st();
        if eligible {
            st.eligibility.push(v);
        } else {
            st.schedules.push(v);
        }
    }
    /// A vault with its security settings (Recovery Services `softDeleteState` or Backup
    /// vault `state`, and immutability `Disabled|Unlocked|Locked`).
    pub fn set_vault(&self, vault_id: &str, soft_delete: &str, immutability: Option<&str>) {
        let rsv = vault_id
            .to_ascii_lowercase()
            .contains("microsoft.recoveryservices");
        let mut security = if rsv {
            json!({ "softDeleteSettings": { "softDeleteState": soft_delete, "softDeleteRetentionPeriodInDays": 14 } })
        } else {
            json!({ "softDeleteSettings": { "state": soft_delete, "retentionDurationInDays": 14 } })
        };
        if let Some(i) = immutability {
            security["immutabilitySettings"] = json!({ "state": i });
        }
        let v = json!({ "id": vault_id, "name": vault_id.rsplit('/').next(), "location": "westeurope",
            "properties": { "securitySettings": security } });
        self.st().vaults.insert(vault_id.to_ascii_lowercase(), v);
    }
    /// Link a vault to a guard (or unlink it with `None`).
    pub fn link(&self, vault_id: &str, guard_id: Option<&str>) {
        let mut st = self.st();
        match guard_id {
            Some(g) => st
                .links
                .insert(vault_id.to_ascii_lowercase(), g.to_string()),
            None => st.links.remove(&vault_id.to_ascii_lowercase()),
        };
    }
    /// The guard's `vaultCriticalOperationExclusionList`.
    pub fn set_exclusions(&self, guard_id: &str, ops: &[&str]) {
        if let Some(g) = self.st().guards.get_mut(&guard_id.to_ascii_lowercase()) {
            g["properties"]["vaultCriticalOperationExclusionList"] = json!(ops);
        }
    }
    /// A person, group or app in the directory behind Graph.
    pub fn add_directory_object(&self, id: &str, kind: &str, name: &str, upn: Option<&str>) {
        let mut o = json!({ "@odata.type": format!("#microsoft.graph.{kind}"), "id": id, "displayName": name });
        if let Some(u) = upn {
            o["userPrincipalName"] = json!(u);
        }
        self.st().directory.insert(id.to_ascii_lowercase(), o);
    }

    /// A Resource Guard that exists, and the vaults linked to it.
    pub fn add_guard(&self, guard_id: &str, linked_vaults: &[&str]) {
        let mut st = self.st();
        st.guards.insert(guard_id.to_ascii_lowercase(), json!({
            "id": guard_id, "name": guard_id.rsplit('/').next(), "type": "Microsoft.DataProtection/resourceGuards",
            "location": "westeurope", "properties": { "provisioningState": "Succeeded" }
        }));
        for v in linked_vaults {
            st.links
                .insert(v.to_ascii_lowercase(), guard_id.to_string());
        }
    }
}

/// Drops (with a TCP reset) as many accepted connections as asked for.
struct ResettingListener {
    inner: tokio::net::TcpListener,
    state: Arc<Mutex<FakeState>>,
}

impl axum::serve::Listener for ResettingListener {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.inner.accept().await else {
                continue;
            };
            let reset = {
                let mut st = self.state.lock().unwrap();
                if st.resets > 0 {
                    st.resets -= 1;
                    true
                } else {
                    false
                }
            };
            if reset {
                #[allow(deprecated)]
                let _ = stream.set_linger(Some(Duration::ZERO));
                drop(stream);
                continue;
            }
            return (stream, addr);
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

async fn handle(
    State(sh): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let q: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    if method == Method::POST && path.ends_with("/oauth2/v2.0/token") {
        return token(&sh, &path, &body);
    }
    if path == "/metadata/identity/oauth2/token" {
        return imds(&sh, &headers, &q);
    }
    let body_json: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or(json!("<not json>"))
    };
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let aux: Vec<String> = headers
        .get("x-ms-authorization-auxiliary")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .filter_map(|p| p.trim().strip_prefix("Bearer ").map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let graph = path.starts_with("/graph/");
    let (tenant, aux_tenants, token_ok) = {
        let st = sh.state.lock().unwrap();
        let t = bearer.as_ref().and_then(|b| st.tokens.get(b)).cloned();
        // A token is good for the audience it was issued for only: ARM or Graph.
        let want = if graph {
            format!("{}/graph", sh.base)
        } else {
            sh.base.clone()
        };
        let aud_ok = bearer
            .as_ref()
            .and_then(|b| st.token_audience.get(b))
            .is_none_or(|a| *a == want);
        let ok = aud_ok && t.as_ref().is_some_and(|(_, exp)| Instant::now() < *exp);
        let aux_tenants = aux
            .iter()
            .filter_map(|a| st.tokens.get(a).map(|(t, _)| t.clone()))
            .collect();
        (t.map(|(t, _)| t), aux_tenants, ok)
    };
    {
        let mut st = sh.state.lock().unwrap();
        st.calls.push(Call {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            body: body_json.clone(),
            tenant: tenant.clone(),
            aux_tenants,
            at: Instant::now(),
            at_utc: OffsetDateTime::now_utc(),
        });
    }
    if let Some(op) = path.strip_prefix("/operationStatus/") {
        return operation_status(&sh, op);
    }
    if !token_ok {
        return arm_error(
            401,
            "InvalidAuthenticationToken",
            "The access token is missing, invalid or expired.",
        );
    }
    if graph {
        return graph_call(&sh, &method, &path, &body_json);
    }
    // The spec: operation, api-version, body.
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let Some(op) = sh
        .spec
        .iter()
        .find(|o| o.method == method.as_str() && path_matches(&o.path, &segs))
    else {
        let v = format!("{method} {path}: no such operation in the carried spec");
        sh.state.lock().unwrap().violations.push(v.clone());
        return arm_error(404, "NoSuchOperation", &v);
    };
    let mut errs = Vec::new();
    for k in q.keys() {
        if !op.query.iter().any(|d| d == k) {
            errs.push(format!("query parameter `{k}` is not in the spec"));
        }
    }
    if let Some(f) = q.get("$filter")
        && !filter_ok(&op.filters, f)
    {
        errs.push(format!(
            "$filter `{f}` is not one of the documented forms {:?}",
            op.filters
        ));
    }
    if q.get("api-version") != Some(&op.api_version) {
        errs.push(format!(
            "api-version {:?}, the spec says {}",
            q.get("api-version"),
            op.api_version
        ));
    }
    match (&op.body, body_json.is_null()) {
        (Some(schema), false) => check_schema(schema, &body_json, "body", &mut errs),
        (Some(_), true) if op.body_required => {
            errs.push("body: required by the spec, missing".into())
        }
        (None, false) => errs.push("body: the spec takes none".into()),
        _ => {}
    }
    if !errs.is_empty() {
        let v = format!("{method} {path}: {}", errs.join("; "));
        sh.state.lock().unwrap().violations.push(v.clone());
        return arm_error(400, "InvalidRequestContent", &v);
    }
    // Faults.
    let body_text = body_json.to_string();
    let fault = {
        let mut st = sh.state.lock().unwrap();
        let pos = st.faults.iter().position(|f| {
            f.times > 0
                && f.method == method.as_str()
                && path.contains(&f.path_contains)
                && f.body_contains
                    .as_ref()
                    .is_none_or(|b| body_text.contains(b))
        });
        pos.map(|i| {
            st.faults[i].times -= 1;
            st.faults[i].kind.clone()
        })
    };
    let mut late = None;
    let mut lro = None;
    let mut keep = false;
    match fault {
        Some(FaultKind::Status(s, retry_after)) => {
            let mut r = arm_error(
                s,
                if s == 429 {
                    "TooManyRequests"
                } else {
                    "InternalServerError"
                },
                "injected fault",
            );
            if let Some(ra) = retry_after {
                r.headers_mut().insert(
                    "retry-after",
                    HeaderValue::from_str(&ra.to_string()).unwrap(),
                );
            }
            return r;
        }
        Some(FaultKind::Error(s, code, msg)) => return arm_error(s, code, &msg),
        Some(FaultKind::LateAnswer(d)) => late = Some(d),
        Some(FaultKind::Lro(n)) => lro = Some(n),
        Some(FaultKind::AcceptButKeep) => keep = true,
        None => {}
    }
    if sh
        .state
        .lock()
        .unwrap()
        .denied
        .iter()
        .any(|d| path.contains(d.as_str()))
    {
        return arm_error(
            403,
            "AuthorizationFailed",
            &format!(
                "The client '{CLIENT_ID}' with object id '{BROKER_OID}' does not have authorization to perform action over scope '{path}' or the scope is invalid."
            ),
        );
    }
    let resp = route(&sh, &method, &path, &q, &body_json, lro, keep);
    if let Some(d) = late {
        tokio::time::sleep(d).await;
    }
    resp
}

fn token(sh: &Shared, path: &str, body: &[u8]) -> Response {
    let tenant = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("")
        .to_string();
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let get = |k: &str| form.get(k).cloned().unwrap_or_default();
    let kind = if form.contains_key("client_secret") {
        "client_secret"
    } else {
        "client_assertion"
    };
    let mut st = sh.state.lock().unwrap();
    st.token_calls.push(TokenCall {
        tenant: tenant.clone(),
        kind: kind.into(),
        client_id: get("client_id"),
        scope: get("scope"),
    });
    let bad = |d: &str| {
        (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "invalid_client", "error_description": d, "error_codes": [7000215]}))).into_response()
    };
    if get("grant_type") != "client_credentials" {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "unsupported_grant_type"})),
        )
            .into_response();
    }
    let audience = get("scope").trim_end_matches("/.default").to_string();
    if audience != sh.base && audience != format!("{}/graph", sh.base) {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "invalid_scope", "error_description": format!("AADSTS70011: scope {} is not valid", get("scope"))}))).into_response();
    }
    if get("client_id") != CLIENT_ID || ![HOME_TENANT, GUARD_TENANT].contains(&tenant.as_str()) {
        return bad("AADSTS700016: Application not found in the directory.");
    }
    let ok = match kind {
        "client_secret" => get("client_secret") == CLIENT_SECRET,
        _ => {
            get("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
                && get("client_assertion") == FEDERATED_TOKEN
        }
    };
    if !ok {
        return bad("AADSTS7000215: Invalid client secret provided.");
    }
    st.token_counter += 1;
    let tok = format!(
        "{}.{}.sig",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&json!({"oid": BROKER_OID, "tid": tenant, "appid": CLIENT_ID, "n": st.token_counter}))
    );
    let life = st.token_lifetime;
    st.token_audience.insert(tok.clone(), audience);
    st.tokens.insert(
        tok.clone(),
        (tenant, Instant::now() + Duration::from_secs(life)),
    );
    axum::Json(json!({"token_type": "Bearer", "expires_in": life, "ext_expires_in": life, "access_token": tok})).into_response()
}

/// Microsoft Graph's `POST /v1.0/directoryObjects/getByIds` (the endpoint lives under
/// `/graph` here): checks the body as Graph documents it and answers from the directory.
fn graph_call(sh: &Shared, method: &Method, path: &str, body: &Value) -> Response {
    let graph_error = |status: u16, code: &str, message: &str| {
        (
            StatusCode::from_u16(status).unwrap(),
            axum::Json(json!({ "error": { "code": code, "message": message } })),
        )
            .into_response()
    };
    let mut st = sh.state.lock().unwrap();
    if method != Method::POST || path != "/graph/v1.0/directoryObjects/getByIds" {
        let v = format!("{method} {path}: not a Graph call twokey makes");
        st.violations.push(v.clone());
        return graph_error(400, "BadRequest", &v);
    }
    let ids = body["ids"].as_array();
    let ok_ids = ids.is_some_and(|a| {
        !a.is_empty()
            && a.len() <= 1000
            && a.iter()
                .all(|i| i.as_str().is_some_and(|s| uuid::Uuid::parse_str(s).is_ok()))
    });
    let ok_types = body["types"].as_array().is_none_or(|t| {
        t.iter().all(|x| {
            matches!(
                x.as_str(),
                Some("user" | "group" | "servicePrincipal" | "device" | "application")
            )
        })
    });
    let ok_keys = body
        .as_object()
        .is_some_and(|o| o.keys().all(|k| k == "ids" || k == "types"));
    if !(ok_ids && ok_types && ok_keys) {
        let v = format!("POST {path}: body {body} is not as Graph documents it");
        st.violations.push(v.clone());
        return graph_error(400, "Request_BadRequest", &v);
    }
    if st.denied.iter().any(|d| path.contains(d.as_str())) {
        return graph_error(
            403,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        );
    }
    let value: Vec<Value> = ids
        .unwrap()
        .iter()
        .filter_map(|i| st.directory.get(&i.as_str().unwrap().to_ascii_lowercase()))
        .cloned()
        .collect();
    axum::Json(json!({ "value": value })).into_response()
}

fn imds(sh: &Shared, headers: &HeaderMap, q: &HashMap<String, String>) -> Response {
    let mut st = sh.state.lock().unwrap();
    st.token_calls.push(TokenCall {
        tenant: HOME_TENANT.into(),
        kind: "managed_identity".into(),
        client_id: q.get("client_id").cloned().unwrap_or_default(),
        scope: q.get("resource").cloned().unwrap_or_default(),
    });
    if headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true")
        || q.get("api-version").map(String::as_str) != Some("2018-02-01")
    {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_request"})),
        )
            .into_response();
    }
    st.token_counter += 1;
    let tok = format!(
        "{}.{}.sig",
        b64(&json!({"alg": "none"})),
        b64(&json!({"oid": BROKER_OID, "tid": HOME_TENANT, "n": st.token_counter}))
    );
    let life = st.token_lifetime;
    st.tokens.insert(
        tok.clone(),
        (
            HOME_TENANT.into(),
            Instant::now() + Duration::from_secs(life),
        ),
    );
    // The metadata service sends numbers as strings.
    axum::Json(json!({"access_token": tok, "refresh_token": "", "expires_in": life.to_string(), "expires_on": (OffsetDateTime::now_utc().unix_timestamp() + life as i64).to_string(), "resource": q.get("resource"), "token_type": "Bearer"})).into_response()
}

fn operation_status(sh: &Shared, op: &str) -> Response {
    let mut st = sh.state.lock().unwrap();
    let Some(l) = st.lros.get_mut(op) else {
        return arm_error(404, "NotFound", "no such operation");
    };
    if l.remaining > 1 {
        l.remaining -= 1;
        return (
            [("retry-after", "1")],
            axum::Json(json!({"id": op, "name": op, "status": "InProgress"})),
        )
            .into_response();
    }
    let key = l.request_key.clone();
    st.lros.remove(op);
    if let Some(inst) = st.pending.remove(&key) {
        st.instances.push(inst.clone());
        st.created_instances.push(inst);
        if let Some(r) = st.requests.get_mut(&key) {
            r["properties"]["status"] = json!("Provisioned");
        }
    }
    axum::Json(json!({"id": op, "name": op, "status": "Succeeded"})).into_response()
}

fn route(
    sh: &Shared,
    method: &Method,
    path: &str,
    q: &HashMap<String, String>,
    body: &Value,
    lro: Option<u32>,
    keep: bool,
) -> Response {
    let lower = path.to_ascii_lowercase();
    let (scope, rest) = match lower.find("/providers/microsoft.authorization/") {
        Some(i) => (
            &path[..i],
            &path[i + "/providers/Microsoft.Authorization/".len()..],
        ),
        None => (path, ""),
    };
    let mut st = sh.state.lock().unwrap();
    let parts: Vec<&str> = rest.split('/').collect();
    match (method.as_str(), parts.as_slice()) {
        ("PUT", ["roleAssignmentScheduleRequests", name]) => {
            let key = path.to_ascii_lowercase();
            let p = &body["properties"];
            let principal = p["principalId"].as_str().unwrap_or_default().to_string();
            let role = p["roleDefinitionId"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let active = st.instances.iter().position(|i| {
                i.scope.eq_ignore_ascii_case(scope)
                    && i.principal_id == principal
                    && same_role(&i.role_definition_id, &role)
            });
            let mut resp = json!({
                "id": path, "name": name, "type": "Microsoft.Authorization/RoleAssignmentScheduleRequests",
                "properties": p.clone(),
            });
            resp["properties"]["scope"] = json!(scope);
            resp["properties"]["principalType"] = json!("User");
            resp["properties"]["createdOn"] = json!(fmt_time(OffsetDateTime::now_utc()));
            match p["requestType"].as_str() {
                Some("AdminAssign") => {
                    if active.is_some() {
                        return arm_error(
                            400,
                            "RoleAssignmentExists",
                            "The Role assignment already exists.",
                        );
                    }
                    let start = p["scheduleInfo"]["startDateTime"]
                        .as_str()
                        .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
                        .unwrap_or_else(OffsetDateTime::now_utc);
                    let end = p["scheduleInfo"]["expiration"]["duration"]
                        .as_str()
                        .and_then(parse_iso_duration)
                        .map(|d| start + d);
                    let schedule_id = uuid::Uuid::new_v4().to_string();
                    let inst = Instance {
                        id: format!(
                            "{scope}/providers/Microsoft.Authorization/roleAssignmentScheduleInstances/{}",
                            uuid::Uuid::new_v4()
                        ),
                        scope: scope.to_string(),
                        principal_id: principal,
                        role_definition_id: role,
                        start,
                        end,
                        schedule_id: format!(
                            "{scope}/providers/Microsoft.Authorization/roleAssignmentSchedules/{schedule_id}"
                        ),
                    };
                    resp["properties"]["targetRoleAssignmentScheduleId"] = json!(inst.schedule_id);
                    if let Some(polls) = lro {
                        resp["properties"]["status"] = json!("PendingProvisioning");
                        let op = uuid::Uuid::new_v4().to_string();
                        st.lros.insert(
                            op.clone(),
                            Lro {
                                remaining: polls,
                                request_key: key.clone(),
                            },
                        );
                        st.pending.insert(key.clone(), inst);
                        st.requests.insert(key, resp.clone());
                        return (
                            StatusCode::CREATED,
                            [
                                (
                                    "azure-asyncoperation",
                                    format!("{}/operationStatus/{op}", sh.base),
                                ),
                                ("retry-after", "1".into()),
                            ],
                            axum::Json(resp),
                        )
                            .into_response();
                    }
                    resp["properties"]["status"] = json!("Provisioned");
                    st.instances.push(inst.clone());
                    st.created_instances.push(inst);
                }
                Some("AdminRemove") => {
                    let Some(i) = active else {
                        return arm_error(
                            400,
                            "RoleAssignmentDoesNotExist",
                            "The Role assignment does not exist.",
                        );
                    };
                    if !keep {
                        st.instances.remove(i);
                    }
                    resp["properties"]["status"] = json!("Revoked");
                }
                other => {
                    return arm_error(
                        400,
                        "InvalidRequestType",
                        &format!("fake does not do {other:?}"),
                    );
                }
            }
            st.requests.insert(key, resp.clone());
            (StatusCode::CREATED, axum::Json(resp)).into_response()
        }
        ("GET", ["roleAssignmentScheduleRequests", _]) => {
            match st.requests.get(&path.to_ascii_lowercase()) {
                Some(r) => axum::Json(r.clone()).into_response(),
                None => arm_error(404, "RoleAssignmentScheduleRequestNotFound", "not found"),
            }
        }
        ("POST", ["roleAssignmentScheduleRequests", _, "validate"]) => {
            let p = &body["properties"];
            let principal = p["principalId"].as_str().unwrap_or_default();
            let role = p["roleDefinitionId"].as_str().unwrap_or_default();
            let active = st.instances.iter().any(|i| {
                i.scope.eq_ignore_ascii_case(scope)
                    && i.principal_id == principal
                    && same_role(&i.role_definition_id, role)
            });
            if p["requestType"] == "AdminRemove" && !active {
                return arm_error(
                    400,
                    "RoleAssignmentDoesNotExist",
                    "The Role assignment does not exist.",
                );
            }
            axum::Json(json!({"id": path, "properties": p})).into_response()
        }
        ("GET", ["roleAssignmentScheduleInstances"]) => {
            let filter = q.get("$filter").cloned().unwrap_or_default();
            let want = filter
                .strip_prefix("principalId eq '")
                .and_then(|f| f.strip_suffix('\''))
                .map(str::to_string);
            let value: Vec<Value> = st
                .instances
                .iter()
                .filter(|i| i.scope.eq_ignore_ascii_case(scope))
                .filter(|i| want.as_ref().is_none_or(|w| &i.principal_id == w))
                .map(|i| json!({
                    "id": i.id, "name": i.id.rsplit('/').next(), "type": "Microsoft.Authorization/RoleAssignmentScheduleInstances",
                    "properties": {
                        "scope": i.scope, "roleDefinitionId": i.role_definition_id, "principalId": i.principal_id, "principalType": "User",
                        "roleAssignmentScheduleId": i.schedule_id, "status": "Provisioned",
                        "startDateTime": fmt_time(i.start), "endDateTime": i.end.map(fmt_time),
                        "assignmentType": "Assigned", "memberType": "Direct",
                    }
                }))
                .collect();
            axum::Json(json!({ "value": value })).into_response()
        }
        ("PUT", ["roleAssignments", name]) => {
            let key = path.to_ascii_lowercase();
            let p = &body["properties"];
            if let Some(existing) = st.role_assignments.get(&key) {
                return axum::Json(existing.clone()).into_response();
            }
            let principal = p["principalId"].as_str().unwrap_or_default();
            let role = p["roleDefinitionId"].as_str().unwrap_or_default();
            if st.role_assignments.values().any(|a| {
                a["properties"]["scope"]
                    .as_str()
                    .is_some_and(|s| s.eq_ignore_ascii_case(scope))
                    && a["properties"]["principalId"] == principal
                    && a["properties"]["roleDefinitionId"]
                        .as_str()
                        .is_some_and(|r| same_role(r, role))
            }) {
                return arm_error(
                    409,
                    "RoleAssignmentExists",
                    "The role assignment already exists.",
                );
            }
            let mut a = json!({"id": path, "name": name, "type": "Microsoft.Authorization/roleAssignments", "properties": p.clone()});
            a["properties"]["scope"] = json!(scope);
            a["properties"]["createdOn"] = json!(fmt_time(OffsetDateTime::now_utc()));
            st.role_assignments.insert(key, a.clone());
            (StatusCode::CREATED, axum::Json(a)).into_response()
        }
        ("GET", ["roleAssignments", _]) => {
            match st.role_assignments.get(&path.to_ascii_lowercase()) {
                Some(a) => axum::Json(a.clone()).into_response(),
                None => arm_error(
                    404,
                    "RoleAssignmentNotFound",
                    "The role assignment does not exist.",
                ),
            }
        }
        ("DELETE", ["roleAssignments", _]) => {
            match st.role_assignments.remove(&path.to_ascii_lowercase()) {
                Some(a) => axum::Json(a).into_response(),
                None => StatusCode::NO_CONTENT.into_response(),
            }
        }
        ("GET", ["roleAssignments"]) => {
            let at_scope = q.get("$filter").map(String::as_str) == Some("atScope()");
            let value: Vec<Value> = st
                .role_assignments
                .values()
                .filter(|a| {
                    a["properties"]["scope"].as_str().is_some_and(|s| {
                        if at_scope {
                            at_or_above(s, scope, &st.management_groups)
                        } else {
                            s.eq_ignore_ascii_case(scope)
                        }
                    })
                })
                .cloned()
                .collect();
            axum::Json(json!({ "value": value })).into_response()
        }
        ("GET", [kind @ ("roleAssignmentSchedules" | "roleEligibilitySchedules")]) => {
            let list = if *kind == "roleAssignmentSchedules" {
                &st.schedules
            } else {
                &st.eligibility
            };
            let value: Vec<Value> = list
                .iter()
                .filter(|a| {
                    a["properties"]["scope"]
                        .as_str()
                        .is_some_and(|s| at_or_above(s, scope, &st.management_groups))
                })
                .cloned()
                .collect();
            axum::Json(json!({ "value": value })).into_response()
        }
        ("GET", ["roleDefinitions", guid]) => {
            match st.definitions.get(&guid.to_ascii_lowercase()) {
                Some(d) => {
                    let mut d = d.clone();
                    d["id"] = json!(path);
                    axum::Json(d).into_response()
                }
                None => arm_error(
                    404,
                    "RoleDefinitionDoesNotExist",
                    "The specified role definition does not exist.",
                ),
            }
        }
        ("GET", _) if lower.contains("/providers/microsoft.dataprotection/resourceguards/") => {
            match st.guards.get(&lower) {
                Some(g) => axum::Json(g.clone()).into_response(),
                None => arm_error(404, "ResourceNotFound", "The Resource was not found."),
            }
        }
        ("GET", _) if lower.ends_with("/backupresourceguardproxies") => {
            let vault = &lower[..lower.len() - "/backupresourceguardproxies".len()];
            let name = if lower.contains("microsoft.recoveryservices") {
                "VaultProxy"
            } else {
                "DppResourceGuardProxy"
            };
            let value: Vec<Value> = st.links.get(vault).map(|g| json!({"id": format!("{path}/{name}"), "name": name, "properties": {"resourceGuardResourceId": g}})).into_iter().collect();
            axum::Json(json!({ "value": value })).into_response()
        }
        ("GET", _)
            if lower.contains("/providers/microsoft.recoveryservices/vaults/")
                || lower.contains("/providers/microsoft.dataprotection/backupvaults/") =>
        {
            match st.vaults.get(&lower) {
                Some(v) => axum::Json(v.clone()).into_response(),
                None => arm_error(404, "ResourceNotFound", "The Resource was not found."),
            }
        }
        ("GET", _) => axum::Json(json!({ "value": [] })).into_response(),
        _ => arm_error(400, "FakeDoesNotKnow", &format!("{method} {path}")),
    }
}
