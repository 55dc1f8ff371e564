"""Rebuild operations.json from the Azure REST API specs: python3 distill.py SPECS_DIR"""
import json, os, sys

SPECS = sys.argv[1] if len(sys.argv) > 1 else "../../../shared/azure/specs"
AUTH = "authorization/resource-manager/Microsoft.Authorization/stable/"


def resolve(schema, doc, depth=0):
    if depth > 8:
        return {}
    if "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/definitions/"), ref
        r = dict(resolve(doc["definitions"][ref.split("/")[-1]], doc, depth + 1))
        if "readOnly" in schema:
            r["readOnly"] = schema["readOnly"]
        return r
    out = {k: schema[k] for k in ("type", "enum", "format", "readOnly", "required") if k in schema}
    if "properties" in schema:
        out["type"] = out.get("type", "object")
        out["properties"] = {k: resolve(v, doc, depth + 1) for k, v in schema["properties"].items()}
    if "items" in schema:
        out["items"] = resolve(schema["items"], doc, depth + 1)
    return out


ops = []

# The `$filter` forms each list operation documents in its parameter description (the
# fake refuses others; `{id}` stands for a GUID).
FILTERS = {
    "roleAssignments": ["atScope()", "principalId eq '{id}'"],
    "roleAssignmentScheduleInstances": ["atScope()", "principalId eq '{id}'", "asTarget()"],
    "roleAssignmentSchedules": ["atScope()", "principalId eq '{id}'", "asTarget()"],
    "roleEligibilitySchedules": ["atScope()", "principalId eq '{id}'", "asTarget()"],
}


def param(p, doc, f):
    """A parameter, with a local or a relative-file $ref resolved."""
    if "$ref" not in p:
        return p
    ref_file, _, frag = p["$ref"].partition("#")
    d = doc if not ref_file else json.load(open(os.path.normpath(os.path.join(SPECS, os.path.dirname(f), ref_file))))
    for part in frag.strip("/").split("/"):
        d = d[part]
    return d


def add(f, path, method):
    doc = json.load(open(os.path.join(SPECS, f)))
    op = doc["paths"][path][method]
    entry = {"spec_file": f, "api_version": doc["info"]["version"], "method": method.upper(),
             "path": path, "responses": sorted(op["responses"].keys())}
    query = []
    for p in op.get("parameters", []):
        p = param(p, doc, f)
        if p.get("in") == "body":
            entry["body"] = resolve(p["schema"], doc)
            entry["body_required"] = p.get("required", False)
        if p.get("in") == "query":
            query.append(p["name"])
    entry["query"] = sorted(query)
    last = path.rstrip("/").split("/")[-1]
    if "$filter" in query and last in FILTERS:
        entry["filters"] = FILTERS[last]
    ops.append(entry)


# Two spec files are not in the ../shared snapshot; their (body-less GET) operations were
# read from Azure/azure-rest-api-specs through a code index and are carried by hand:
#   authorization/.../stable/2020-10-01/RoleEligibilitySchedule.json (commit 04c2cb7b)
#   authorization/.../stable/2022-04-01/authorization-RoleDefinitionsCalls.json (commit 007a51db)
HAND_CARRIED = [
    {"spec_file": AUTH + "2020-10-01/RoleEligibilitySchedule.json", "api_version": "2020-10-01", "method": "GET",
     "path": "/{scope}/providers/Microsoft.Authorization/roleEligibilitySchedules", "responses": ["200", "default"],
     "query": ["$filter", "api-version"], "filters": FILTERS["roleEligibilitySchedules"],
     "carried": "by hand from Azure/azure-rest-api-specs @ 04c2cb7bb78946cf2fce656ee0ccff69bec99f5b"},
    {"spec_file": AUTH + "2022-04-01/authorization-RoleDefinitionsCalls.json", "api_version": "2022-04-01", "method": "GET",
     "path": "/{scope}/providers/Microsoft.Authorization/roleDefinitions/{roleDefinitionId}", "responses": ["200", "default"],
     "query": ["api-version"],
     "carried": "by hand from Azure/azure-rest-api-specs @ 007a51db374076edb902fd44eb8299eea6336335"},
]


rasr = AUTH + "2020-10-01/RoleAssignmentScheduleRequest.json"
req = "/{scope}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/{roleAssignmentScheduleRequestName}"
add(rasr, req, "put")
add(rasr, req, "get")
add(rasr, req + "/validate", "post")
add(AUTH + "2020-10-01/RoleAssignmentScheduleInstance.json",
    "/{scope}/providers/Microsoft.Authorization/roleAssignmentScheduleInstances", "get")
ra = AUTH + "2022-04-01/authorization-RoleAssignmentsCalls.json"
for m in ("get", "put", "delete"):
    add(ra, "/{scope}/providers/Microsoft.Authorization/roleAssignments/{roleAssignmentName}", m)
add(ra, "/{scope}/providers/Microsoft.Authorization/roleAssignments", "get")
dp = "dataprotection/resource-manager/Microsoft.DataProtection/stable/2024-04-01/dataprotection.json"
add(dp, "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.DataProtection/resourceGuards/{resourceGuardsName}", "get")
add(dp, "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.DataProtection/backupVaults/{vaultName}/backupResourceGuardProxies", "get")
add("recoveryservicesbackup/resource-manager/Microsoft.RecoveryServices/stable/2024-04-01/bms.json",
    "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.RecoveryServices/vaults/{vaultName}/backupResourceGuardProxies", "get")
add("recoveryservices/resource-manager/Microsoft.RecoveryServices/stable/2024-04-01/vaults.json",
    "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.RecoveryServices/vaults", "get")
# The posture report: schedules, vaults (soft delete, immutability).
add(AUTH + "2020-10-01/RoleAssignmentSchedule.json",
    "/{scope}/providers/Microsoft.Authorization/roleAssignmentSchedules", "get")
add("recoveryservices/resource-manager/Microsoft.RecoveryServices/stable/2024-04-01/vaults.json",
    "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.RecoveryServices/vaults/{vaultName}", "get")
add(dp, "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.DataProtection/backupVaults/{vaultName}", "get")
add(dp, "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.DataProtection/backupVaults", "get")
ops.extend(HAND_CARRIED)
note = ("Distilled by tests/azure_spec/distill.py from the Azure REST API specs (Azure/azure-rest-api-specs main @ a977c730, "
        "2024-07-08, MIT licensed): for each operation twokey calls, the method, path template, api-version (the spec file's "
        "info.version), response codes, and the request body schema with $refs inlined. Spec files: "
        + ", ".join(sorted({o["spec_file"] for o in ops}))
        + ". Query parameters are the spec's; `filters` are the $filter forms its descriptions document. "
        + "Entries marked `carried` come from spec files outside the ../shared snapshot, copied by hand. "
        + "The fake ARM server in tests/api/fake_arm.rs checks every request against this file.")
json.dump({"_note": note, "operations": ops}, open(os.path.join(os.path.dirname(__file__) or ".", "operations.json"), "w"), indent=1)
