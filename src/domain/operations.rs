//! The catalogue of critical Azure Backup operations that twokey brokers.
//!
//! This module owns the fixed list of operations a requester can ask for, per
//! vault kind: the stable API key, the Azure strings that identify the
//! operation to a Resource Guard, the plain-language consequence shown to
//! approvers, and the default number of approvals. The Azure strings come
//! from `CONTRACTS.md` §1.3 / §4 and must not be invented here: where that
//! file has no string, the field is `None`.
//!
//! It must never do I/O or hold state: the catalogue is a `static` slice, so
//! the same key always means the same operation in every process and in every
//! audit record.
//!
//! Background for the texts below:
//! - **Soft delete**: while it is on, deleted backup data is kept (14 days by
//!   default) and can be recovered. Disabling it makes later deletes immediate
//!   and permanent. "Always on" soft delete cannot be disabled at all.
//! - **Immutability**: when enabled but *unlocked*, recovery points cannot be
//!   deleted early, but the setting itself can be turned off again (that is
//!   the MUA-protected operation). Once *locked*, it can never be turned off
//!   or reduced, by anyone, including Microsoft support.

use serde::Serialize;

use super::arm::VaultKind;
// Short aliases keep the catalogue table below readable.
use super::arm::VaultKind::{Backup as BV, RecoveryServices as RSV};

/// What the approval of any one operation really grants, to be shown next to
/// every request and approval.
///
/// Azure authorizes a protected call by checking the caller's role on the
/// Resource Guard (CONTRACTS.md §1.4), not on a vault or an operation; twokey
/// cannot narrow that.
pub const GUARD_SCOPE_NOTE: &str = "Azure checks the requester's role on the Resource Guard, not on a single vault or operation. While an approved window is active, the requester can perform any operation the guard protects, on every vault linked to that guard, not only the operation and vault that were approved. Link fewer vaults to a guard to narrow this.";

/// Plain explanation of soft delete, for help text next to soft-delete and
/// delete operations.
pub const SOFT_DELETE_NOTE: &str = "Soft delete keeps deleted backup data (14 days by default) so it can be recovered. While it is off, a delete is immediate and permanent. Soft delete set to \"always on\" cannot be disabled.";

/// Plain explanation of immutability, for help text next to the
/// disable-immutability operations.
pub const IMMUTABILITY_NOTE: &str = "Immutability stops recovery points from being deleted or shortened before they expire. Enabled-but-unlocked immutability can be turned off again. Locked immutability can never be turned off or reduced, by anyone, including Microsoft support.";

/// One critical operation that a requester can ask twokey to approve.
#[derive(Debug, Clone, Serialize)]
pub struct Operation {
    /// Stable API key: `rsv.` or `bv.` followed by snake_case. Stored in
    /// requests and audit records, so it must never change meaning.
    pub key: &'static str,
    /// The kind of vault the operation applies to.
    pub vault_kind: VaultKind,
    /// Short title for lists and buttons.
    pub title: &'static str,
    /// What happens to the backups and whether it can be undone, in one to
    /// three sentences an approver can read in passing.
    pub consequence: &'static str,
    /// Whether the effect can be fully undone afterwards with nothing lost.
    /// `false` also for operations that remove a safety net (soft delete,
    /// MUA itself, immutability): the switch can be flipped back, but data
    /// deleted while it was off cannot.
    pub reversible: bool,
    /// How many distinct approvers a request needs unless config overrides
    /// it: 2 for irreversible operations, 1 otherwise.
    pub default_required_approvals: u8,
    /// MUA always protects it: Azure refuses to put it in a guard's
    /// exclusion list (CONTRACTS.md §1.3, "(M)").
    pub mandatory: bool,
    /// The `vaultCriticalOperation` string (CONTRACTS.md §1.3), as used in a
    /// guard's `resourceGuardOperations` and `vaultCriticalOperationExclusionList`.
    /// `None` for deleting a vault (Azure does not guard it) and where the
    /// contracts give no string.
    pub critical_operation: Option<&'static str>,
    /// The Resource Guard request type (`…/resourceGuards/{g}/<this>/default`)
    /// where CONTRACTS.md names one. Informational: the broker must take the
    /// actual request id from the vault's proxy (`defaultResourceRequest`,
    /// CONTRACTS.md §1.2), never build it from this.
    pub request_type: Option<&'static str>,
    /// Extra red-flag text for dangerous operations, shown prominently.
    pub warning: Option<&'static str>,
}

impl Operation {
    /// Whether Azure's Resource Guard checks this operation at all (false only
    /// for deleting a vault, which twokey gates on its own).
    pub fn guard_protected(&self) -> bool {
        self.critical_operation.is_some() || self.request_type.is_some()
    }

    /// Further `vaultCriticalOperation` strings that Azure also uses for this
    /// operation. Only the Recovery Services encryption change has one
    /// (CONTRACTS.md §1.3 lists two strings for it).
    pub fn critical_operation_aliases(&self) -> &'static [&'static str] {
        match self.key {
            "rsv.modify_encryption_settings" => &[
                "Microsoft.RecoveryServices/vaults/backupEncryptionConfigs/backupResourceEncryptionConfig/write",
            ],
            _ => &[],
        }
    }

    /// Whether a `vaultCriticalOperation` value read from a vault's proxy
    /// (`resourceGuardOperationDetails[]`) denotes this operation.
    ///
    /// Per CONTRACTS.md §1.2, live responses carry the vault operation string
    /// while the spec examples carry the request type
    /// (`Microsoft.DataProtection/resourceGuards/<requestType>`), so both are
    /// accepted, ignoring ASCII case as ARM does. Request types are shared
    /// between the two vault kinds (e.g. `deleteResourceGuardProxyRequests`),
    /// so callers must also check [`Operation::vault_kind`] against the vault.
    pub fn matches_vault_critical_operation(&self, value: &str) -> bool {
        let value = value.trim();
        let by_operation = self
            .critical_operation
            .into_iter()
            .chain(self.critical_operation_aliases().iter().copied())
            .any(|op| op.eq_ignore_ascii_case(value));
        let by_request_type = self.request_type.is_some_and(|rt| {
            const PREFIX: &str = "Microsoft.DataProtection/resourceGuards/";
            value
                .get(..PREFIX.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(PREFIX))
                && value[PREFIX.len()..].eq_ignore_ascii_case(rt)
        });
        by_operation || by_request_type
    }
}

/// All critical operations, Recovery Services vault first, then Backup vault.
pub fn catalogue() -> &'static [Operation] {
    CATALOGUE
}

/// The operation with this exact key, if any.
pub fn find(key: &str) -> Option<&'static Operation> {
    CATALOGUE.iter().find(|op| op.key == key)
}

/// The operations that apply to one kind of vault, in catalogue order.
pub fn for_kind(kind: VaultKind) -> impl Iterator<Item = &'static Operation> {
    CATALOGUE.iter().filter(move |op| op.vault_kind == kind)
}

// Approval defaults: 2 for anything that destroys data or a lock, or removes
// a safety net; 1 for changes that can be put back with nothing lost.
const IRREVERSIBLE: u8 = 2;
const REVERSIBLE: u8 = 1;

// Shared texts: the same thing explained the same way on both vault kinds.
const DISABLE_SOFT_DELETE_WARNING: &str = "Disabling soft delete is a common first step of ransomware attacks on backups: once it is off, deleting backups cannot be undone. Approve only with a clear, verified reason.";
const DISABLE_IMMUTABILITY_CONSEQUENCE: &str = "Turns off immutability that is enabled but not locked, so recovery points can again be deleted or shortened before they expire. MUA only covers turning unlocked immutability off: locked immutability can never be turned off or reduced, by anyone, including Microsoft support.";
const DISABLE_IMMUTABILITY_WARNING: &str = "Immutability is what stops even an administrator, or an attacker holding admin rights, from deleting recovery points early.";
const DISABLE_MUA_WARNING: &str = "This switches off the two-person rule for this vault. Approve only for a planned change, such as moving the vault to another Resource Guard.";
const RESTORE_WARNING: &str = "Check the restore target: restoring into an unexpected subscription or storage account is a way to copy data out.";
const ENCRYPTION_WARNING: &str = "If the new key is later deleted or access to it is lost, the backup data it protects can no longer be read.";
const DELETE_VAULT_WARNING: &str = "Azure's Resource Guard does not protect vault deletion; twokey asks for approval anyway. Make sure none of this vault's backups are still needed.";

static CATALOGUE: &[Operation] = &[
    // ----- Recovery Services vaults (CONTRACTS.md §1.3 "RSV" rows, §4.1) -----
    Operation {
        key: "rsv.stop_protection_retain_data",
        vault_kind: RSV,
        title: "Stop backup and keep backup data",
        consequence: "New backups of the item stop. Recovery points already taken are kept (and still billed) and can be restored. Protection can be resumed later.",
        reversible: true,
        default_required_approvals: REVERSIBLE,
        mandatory: false,
        // The "#stopProtectionWithRetainData" form is az CLI's; §1.3 writes the
        // prefix as "…", expanded here from the other protectedItems rows.
        critical_operation: Some(
            "Microsoft.RecoveryServices/vaults/backupFabrics/protectionContainers/protectedItems/write#stopProtectionWithRetainData",
        ),
        // §1.3 marks this request type unverified; §4.1's stop-protection body
        // uses updateProtectedItemRequests (it is a protected-item PUT).
        request_type: Some("updateProtectedItemRequests"),
        warning: Some(
            "Nothing new is backed up until protection is resumed, so later changes to the item cannot be restored.",
        ),
    },
    Operation {
        key: "rsv.delete_protected_item",
        vault_kind: RSV,
        title: "Stop backup and delete backup data",
        consequence: "Stops backups of the item and deletes all its recovery points. With soft delete on, the data is kept for the soft-delete period (14 days by default) and can be undeleted; with soft delete off, it is gone immediately and permanently.",
        reversible: false,
        default_required_approvals: IRREVERSIBLE,
        mandatory: false,
        critical_operation: Some(
            "Microsoft.RecoveryServices/vaults/backupFabrics/protectionContainers/protectedItems/delete",
        ),
        request_type: Some("deleteProtectedItemRequests"),
        warning: Some(
            "If soft delete is off on this vault, this deletion cannot be undone by anyone.",
        ),
    },
    // Soft delete can be switched back on, so strictly the setting is
    // reversible. We still mark it irreversible with 2 approvals: its only
    // effect is to make every later delete permanent, which is exactly the
    // first step of an attack on backups, and whatever is deleted while it is
    // off cannot be brought back by re-enabling it.
    Operation {
        key: "rsv.disable_soft_delete",
        vault_kind: RSV,
        title: "Disable soft delete and security features",
        consequence: "While soft delete is on, deleted backup data is kept (14 days by default) and can be recovered. Turning it off makes any later delete immediate and permanent; it can also turn off the security features for on-premises (MARS, DPM, MABS) backups. \"Always on\" soft delete cannot be disabled.",
        reversible: false,
        default_required_approvals: IRREVERSIBLE,
        mandatory: true,
        critical_operation: Some("Microsoft.RecoveryServices/vaults/backupconfig/write"),
        request_type: Some("disableSoftDeleteRequests"),
        warning: Some(DISABLE_SOFT_DELETE_WARNING),
    },
    Operation {
        key: "rsv.modify_protection",
        vault_kind: RSV,
        title: "Change an item's backup policy (reduce retention)",
        consequence: "Moves a protected item to another policy. If the new policy keeps recovery points for less time or backs up less often, older recovery points can expire sooner; switching back does not bring back points that have already expired.",
        reversible: true,
        default_required_approvals: REVERSIBLE,
        mandatory: false,
        critical_operation: Some(
            "Microsoft.RecoveryServices/vaults/backupFabrics/protectionContainers/protectedItems/write",
        ),
        request_type: Some("updateProtectedItemRequests"),
        warning: None,
    },
    Operation {
        key: "rsv.modify_policy",
        vault_kind: RSV,
        title: "Modify a backup policy (reduce retention)",
        consequence: "Changes a backup policy for every item that uses it. Shorter retention makes existing recovery points expire sooner; points that have already expired do not come back if the policy is changed again.",
        reversible: true,
        default_required_approvals: REVERSIBLE,
        mandatory: false,
        critical_operation: Some("Microsoft.RecoveryServices/vaults/backupPolicies/write"),
        request_type: Some("updateProtectionPolicyRequests"),
        warning: Some("Applies to every item on this policy, not only one."),
    },
    Operation {
        key: "rsv.get_security_pin",
        vault_kind: RSV,
        title: "Get a security PIN for on-premises backups",
        consequence: "Issues a short-lived security PIN. On-premises backups (MARS agent, DPM, MABS) ask for it before critical changes such as changing the encryption passphrase or deleting backup data. Getting the PIN changes nothing by itself.",
        reversible: true,
        default_required_approvals: REVERSIBLE,
        mandatory: false,
        critical_operation: Some("Microsoft.RecoveryServices/vaults/backupSecurityPIN/action"),
        request_type: Some("getBackupSecurityPINRequests"),
        warning: Some(
            "Whoever holds the PIN can make those changes while it is valid; treat it like a password.",
        ),
    },
    Operation {
        key: "rsv.disable_immutability",
        vault_kind: RSV,
        title: "Disable immutability",
        consequence: DISABLE_IMMUTABILITY_CONSEQUENCE,
        reversible: false,
        default_required_approvals: IRREVERSIBLE,
        mandatory: false,
        critical_operation: Some("Microsoft.RecoveryServices/vaults/write#reduceImmutabilityState"),
        // §1.3: "from proxy (UNVERIFIED name)".
        request_type: None,
        warning: Some(DISABLE_IMMUTABILITY_WARNING),
    },
    Operation {
        key: "rsv.modify_encryption_settings",
        vault_kind: RSV,
        title: "Change encryption settings",
        consequence: "Changes how backup data is encrypted, for example the customer-managed key or the identity used to reach it. A wrong key or identity makes backups and restores fail. It can be changed back while the previous key is still available.",
        reversible: true,
        default_required_approvals: REVERSIBLE,
        mandatory: false,
        // Azure also uses ".../backupEncryptionConfigs/backupResourceEncryptionConfig/write"
        // for this; see `critical_operation_aliases`.
        critical_operation: Some(
            "Microsoft.RecoveryServices/vaults/write#modifyEncryptionSettings",
        ),
        request_type: Some("modifyEncryptionSettings"),
        warning: Some(ENCRYPTION_WARNING),
    },
    Operation {
        key: "rsv.restore",
        vault_kind: RSV,
        title: "Restore from a recovery point",
        consequence: "Restores data from a recovery point. Backups are not deleted, but a restore can copy protected data to a place the requester chooses, or replace current data with an older copy when restoring to the original location.",
        reversible: true,
        default_required_approvals: REVERSIBLE,
        mandatory: false,
        critical_operation: Some(
            "Microsoft.RecoveryServices/vaults/backupFabrics/protectionContainers/protectedItems/recoveryPoints/restore/action",
        ),
        request_type: None,
        warning: Some(RESTORE_WARNING),
    },
    Operation {
        key: "rsv.delete_hybrid_container",
        vault_kind: RSV,
        title: "Remove an on-premises backup server",
        consequence: "Removes an on-premises server (MARS agent, DPM or MABS) from the vault, together with the backup data stored for it. Deleted data is kept for 14 days only if the security features for on-premises backups are on; otherwise it is gone for good.",
        reversible: false,
        default_required_approvals: IRREVERSIBLE,
        mandatory: false,
        critical_operation: Some(
            "Microsoft.RecoveryServices/vaults/backupFabrics/protectionContainers/delete",
        ),
        request_type: None,
        warning: Some("All backups of that server are affected, not a single item."),
    },
    // Re-linking the guard is possible, so like soft delete this is marked
    // irreversible for the same reason: it removes a safety net, and nothing
    // done on the vault while it is unlinked needs or gets a second person.
    Operation {
        key: "rsv.disable_mua",
        vault_kind: RSV,
        title: "Remove MUA protection (unlink the Resource Guard)",
        consequence: "Removes the link between the vault and its Resource Guard. From then on every critical operation on this vault, including deleting backup data, needs no second person. The guard can be linked again later, but nothing done in between was checked.",
        reversible: false,
        default_required_approvals: IRREVERSIBLE,
        mandatory: true,
        critical_operation: Some(
            "Microsoft.RecoveryServices/vaults/backupResourceGuardProxies/delete",
        ),
        request_type: Some("deleteResourceGuardProxyRequests"),
        warning: Some(DISABLE_MUA_WARNING),
    },
    Operation {
        key: "rsv.delete_vault",
        vault_kind: RSV,
        title: "Delete the vault",
        consequence: "Deletes the Recovery Services vault itself. Azure refuses while it still holds backup items, including soft-deleted ones, so all backup data must be deleted first. Deleting the vault is final and cannot be undone.",
        reversible: false,
        default_required_approvals: IRREVERSIBLE,
        mandatory: false,
        critical_operation: None,
        request_type: None,
        warning: Some(DELETE_VAULT_WARNING),
    },
    // ----- Backup vaults (CONTRACTS.md §1.3 "BV" rows, §4.2) -----
    Operation {
        key: "bv.stop_protection_retain_forever",
        vault_kind: BV,
        title: "Stop backup and keep backup data forever",
        consequence: "New backups of the instance stop. All existing recovery points are kept indefinitely (and billed) until someone deletes them. Protection can be resumed later.",
        reversible: true,
        default_required_approvals: REVERSIBLE,
        mandatory: false,
        critical_operation: Some(
            "Microsoft.DataProtection/backupVaults/backupInstances/stopProtection/action",
        ),
        request_type: Some("dppDisableStopProtectionRequests"),
        warning: Some("Nothing new is backed up until protection is resumed."),
    },
    Operation {
        key: "bv.suspend_backups",
        vault_kind: BV,
        title: "Stop backup and keep data per policy",
        consequence: "New backups of the instance stop, and existing recovery points keep expiring on the policy's schedule, so there is less to restore from as time passes. Backups can be resumed later.",
        reversible: true,
        default_required_approvals: REVERSIBLE,
        mandatory: false,
        critical_operation: Some(
            "Microsoft.DataProtection/backupVaults/backupInstances/suspendBackups/action",
        ),
        request_type: Some("dppDisableSuspendBackupsRequests"),
        warning: Some(
            "Recovery points that expire in the meantime are gone; resuming does not bring them back.",
        ),
    },
    Operation {
        key: "bv.delete_backup_instance",
        vault_kind: BV,
        title: "Stop backup and delete backup data",
        consequence: "Stops backups of the instance and deletes all its recovery points. With soft delete on, the data is kept for the soft-delete period (14 days by default) and can be recovered; with soft delete off, it is gone immediately and permanently.",
        reversible: false,
        default_required_approvals: IRREVERSIBLE,
        mandatory: false,
        critical_operation: Some("Microsoft.DataProtection/backupVaults/backupInstances/delete"),
        request_type: Some("deleteBackupInstanceRequests"),
        warning: Some(
            "If soft delete is off on this vault, this deletion cannot be undone by anyone.",
        ),
    },
    // Same reasoning as rsv.disable_soft_delete for "irreversible".
    Operation {
        key: "bv.disable_soft_delete",
        vault_kind: BV,
        title: "Disable soft delete",
        consequence: "While soft delete is on, deleted backup data is kept (14 days by default) and can be recovered. Turning it off makes any later delete immediate and permanent. \"Always on\" soft delete cannot be disabled.",
        reversible: false,
        default_required_approvals: IRREVERSIBLE,
        mandatory: true,
        // CONTRACTS.md §1.3 gives no vaultCriticalOperation string for this
        // ("via vault PATCH"), only the request type; do not invent one.
        critical_operation: None,
        request_type: Some("dppReduceSoftDeleteSecurityRequests"),
        warning: Some(DISABLE_SOFT_DELETE_WARNING),
    },
    Operation {
        key: "bv.disable_immutability",
        vault_kind: BV,
        title: "Disable immutability",
        consequence: DISABLE_IMMUTABILITY_CONSEQUENCE,
        reversible: false,
        default_required_approvals: IRREVERSIBLE,
        mandatory: false,
        critical_operation: Some(
            "Microsoft.DataProtection/backupVaults/write#reduceImmutabilityState",
        ),
        request_type: Some("dppReduceImmutabilityStateRequests"),
        warning: Some(DISABLE_IMMUTABILITY_WARNING),
    },
    Operation {
        key: "bv.modify_encryption_settings",
        vault_kind: BV,
        title: "Change encryption settings",
        consequence: "Changes how backup data is encrypted, for example the customer-managed key or the identity used to reach it. A wrong key or identity makes backups and restores fail. It can be changed back while the previous key is still available.",
        reversible: true,
        default_required_approvals: REVERSIBLE,
        mandatory: false,
        critical_operation: Some(
            "Microsoft.DataProtection/backupVaults/write#modifyEncryptionSettings",
        ),
        request_type: Some("dppModifyEncryptionSettingsRequests"),
        warning: Some(ENCRYPTION_WARNING),
    },
    Operation {
        key: "bv.modify_protection",
        vault_kind: BV,
        title: "Change a backup instance's policy (reduce retention)",
        consequence: "Changes the policy of a backup instance. If the new policy keeps recovery points for less time or backs up less often, older recovery points can expire sooner; switching back does not bring back points that have already expired.",
        reversible: true,
        default_required_approvals: REVERSIBLE,
        mandatory: false,
        critical_operation: Some("Microsoft.DataProtection/backupVaults/backupInstances/write"),
        request_type: None,
        warning: None,
    },
    Operation {
        key: "bv.restore",
        vault_kind: BV,
        title: "Restore from a recovery point",
        consequence: "Restores data from a recovery point. Backups are not deleted, but a restore can copy protected data to a place the requester chooses, or replace current data with an older copy when restoring to the original location.",
        reversible: true,
        default_required_approvals: REVERSIBLE,
        mandatory: false,
        critical_operation: Some(
            "Microsoft.DataProtection/backupVaults/backupInstances/restore/action",
        ),
        request_type: None,
        warning: Some(RESTORE_WARNING),
    },
    // Same reasoning as rsv.disable_mua for "irreversible".
    Operation {
        key: "bv.disable_mua",
        vault_kind: BV,
        title: "Remove MUA protection (unlink the Resource Guard)",
        consequence: "Removes the link between the vault and its Resource Guard. From then on every critical operation on this vault, including deleting backup data, needs no second person. The guard can be linked again later, but nothing done in between was checked.",
        reversible: false,
        default_required_approvals: IRREVERSIBLE,
        mandatory: true,
        critical_operation: Some(
            "Microsoft.DataProtection/backupVaults/backupResourceGuardProxies/delete",
        ),
        request_type: Some("deleteResourceGuardProxyRequests"),
        warning: Some(DISABLE_MUA_WARNING),
    },
    Operation {
        key: "bv.delete_vault",
        vault_kind: BV,
        title: "Delete the vault",
        consequence: "Deletes the Backup vault itself. Azure refuses while it still holds backup instances, so all backup data must be deleted first. Deleting the vault is final and cannot be undone.",
        reversible: false,
        default_required_approvals: IRREVERSIBLE,
        mandatory: false,
        critical_operation: None,
        request_type: None,
        warning: Some(DELETE_VAULT_WARNING),
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Operations for which CONTRACTS.md §1.3 gives only a request type.
    const WITHOUT_CRITICAL_OPERATION_STRING: &[&str] = &["bv.disable_soft_delete"];

    fn is_delete_vault(op: &Operation) -> bool {
        op.key.ends_with(".delete_vault")
    }

    fn prefix(kind: VaultKind) -> &'static str {
        match kind {
            VaultKind::RecoveryServices => "rsv.",
            VaultKind::Backup => "bv.",
        }
    }

    #[test]
    fn keys_are_unique_and_well_formed() {
        let mut seen = HashSet::new();
        for op in catalogue() {
            assert!(seen.insert(op.key), "duplicate key {}", op.key);
            let rest = op
                .key
                .strip_prefix(prefix(op.vault_kind))
                .unwrap_or_else(|| {
                    panic!("{} has the wrong prefix for {:?}", op.key, op.vault_kind)
                });
            assert!(!rest.is_empty());
            assert!(
                rest.starts_with(|c: char| c.is_ascii_lowercase()),
                "{}",
                op.key
            );
            assert!(!rest.ends_with('_') && !rest.contains("__"), "{}", op.key);
            assert!(
                rest.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}",
                op.key
            );
        }
    }

    #[test]
    fn approvals_follow_reversibility() {
        for op in catalogue() {
            assert!(op.default_required_approvals >= 1, "{}", op.key);
            if !op.reversible {
                assert!(op.default_required_approvals >= 2, "{}", op.key);
                assert!(
                    op.warning.is_some(),
                    "irreversible {} needs a warning",
                    op.key
                );
            } else {
                assert_eq!(op.default_required_approvals, 1, "{}", op.key);
            }
        }
    }

    #[test]
    fn dangerous_operations_are_irreversible() {
        for key in [
            "rsv.delete_protected_item",
            "rsv.delete_vault",
            "rsv.disable_soft_delete",
            "rsv.disable_immutability",
            "rsv.delete_hybrid_container",
            "bv.delete_backup_instance",
            "bv.delete_vault",
            "bv.disable_soft_delete",
            "bv.disable_immutability",
        ] {
            let op = find(key).unwrap();
            assert!(
                !op.reversible && op.default_required_approvals >= 2,
                "{key}"
            );
        }
        for key in [
            "rsv.stop_protection_retain_data",
            "rsv.modify_protection",
            "rsv.modify_policy",
            "bv.stop_protection_retain_forever",
            "bv.suspend_backups",
            "bv.modify_protection",
        ] {
            let op = find(key).unwrap();
            assert!(op.reversible && op.default_required_approvals == 1, "{key}");
        }
    }

    #[test]
    fn every_guarded_operation_has_a_critical_operation_string() {
        for op in catalogue() {
            if is_delete_vault(op) {
                assert!(!op.guard_protected(), "{}", op.key);
                assert!(!op.mandatory, "{}", op.key);
                continue;
            }
            assert!(op.guard_protected(), "{}", op.key);
            if WITHOUT_CRITICAL_OPERATION_STRING.contains(&op.key) {
                assert!(
                    op.critical_operation.is_none() && op.request_type.is_some(),
                    "{}",
                    op.key
                );
            } else {
                assert!(
                    op.critical_operation.is_some(),
                    "{} lacks critical_operation",
                    op.key
                );
            }
        }
    }

    #[test]
    fn azure_strings_are_well_formed() {
        for op in catalogue() {
            let provider = op.vault_kind.provider();
            for s in op
                .critical_operation
                .iter()
                .chain(op.critical_operation_aliases())
            {
                assert!(s.starts_with(&format!("{provider}/")), "{}: {s}", op.key);
                assert!(
                    !s.contains('…') && !s.contains(char::is_whitespace),
                    "{}: {s}",
                    op.key
                );
            }
            if let Some(rt) = op.request_type {
                assert!(
                    !rt.is_empty() && rt.chars().all(|c| c.is_ascii_alphanumeric()),
                    "{}: {rt}",
                    op.key
                );
            }
            if op.mandatory {
                assert!(op.request_type.is_some(), "{}", op.key);
            }
        }
        // No two operations claim the same vault critical operation.
        let mut seen = HashSet::new();
        for op in catalogue() {
            if let Some(s) = op.critical_operation {
                assert!(seen.insert(s), "{s} used twice");
            }
        }
    }

    #[test]
    fn mandatory_operations_match_contracts() {
        let mandatory: HashSet<_> = catalogue()
            .iter()
            .filter(|op| op.mandatory)
            .map(|op| op.key)
            .collect();
        let expected: HashSet<_> = [
            "rsv.disable_soft_delete",
            "rsv.disable_mua",
            "bv.disable_soft_delete",
            "bv.disable_mua",
        ]
        .into_iter()
        .collect();
        assert_eq!(mandatory, expected);
    }

    #[test]
    fn find_works() {
        let op = find("rsv.disable_soft_delete").unwrap();
        assert_eq!(op.vault_kind, VaultKind::RecoveryServices);
        assert_eq!(
            op.critical_operation,
            Some("Microsoft.RecoveryServices/vaults/backupconfig/write")
        );
        assert_eq!(op.request_type, Some("disableSoftDeleteRequests"));
        assert_eq!(
            find("bv.delete_backup_instance").unwrap().vault_kind,
            VaultKind::Backup
        );
        assert!(find("rsv.nope").is_none());
        assert!(find("RSV.DISABLE_SOFT_DELETE").is_none(), "keys are exact");
        assert!(find("").is_none());
        for op in catalogue() {
            assert!(std::ptr::eq(find(op.key).unwrap(), op));
        }
    }

    #[test]
    fn for_kind_returns_only_that_kind() {
        let mut total = 0;
        for kind in VaultKind::ALL {
            let ops: Vec<_> = for_kind(kind).collect();
            assert!(!ops.is_empty());
            assert!(ops.iter().all(|op| op.vault_kind == kind));
            total += ops.len();
        }
        assert_eq!(total, catalogue().len());
    }

    #[test]
    fn texts_are_present_and_short() {
        for op in catalogue() {
            assert!(
                !op.title.trim().is_empty() && op.title.len() <= 80,
                "{}",
                op.key
            );
            let n = op.consequence.chars().count();
            assert!(n > 0 && n <= 400, "{}: consequence is {n} chars", op.key);
            if let Some(w) = op.warning {
                assert!(
                    !w.trim().is_empty() && w.chars().count() <= 400,
                    "{}",
                    op.key
                );
            }
        }
        for note in [GUARD_SCOPE_NOTE, SOFT_DELETE_NOTE, IMMUTABILITY_NOTE] {
            assert!(note.chars().count() <= 400);
        }
    }

    #[test]
    fn both_kinds_have_delete_vault_and_disable_mua() {
        for kind in VaultKind::ALL {
            let p = prefix(kind);
            for suffix in ["delete_vault", "disable_mua"] {
                let key = format!("{p}{suffix}");
                let op = find(&key).unwrap_or_else(|| panic!("missing {key}"));
                assert_eq!(op.vault_kind, kind);
            }
        }
    }

    #[test]
    fn texts_say_what_the_brief_requires() {
        for kind in VaultKind::ALL {
            let p = prefix(kind);
            let imm = find(&format!("{p}disable_immutability"))
                .unwrap()
                .consequence;
            assert!(
                imm.contains("unlocked") && imm.contains("locked immutability can never"),
                "{imm}"
            );
            assert!(imm.contains("Microsoft support"));
            let sd = find(&format!("{p}disable_soft_delete"))
                .unwrap()
                .consequence;
            assert!(
                sd.contains("14 days") && sd.contains("permanent") && sd.contains("Always on"),
                "{sd}"
            );
            let dv = find(&format!("{p}delete_vault")).unwrap().consequence;
            assert!(dv.contains("deleted first") && dv.contains("final"), "{dv}");
        }
        assert!(GUARD_SCOPE_NOTE.contains("every vault linked to that guard"));
    }

    #[test]
    fn matches_vault_critical_operation_accepts_both_forms() {
        let op = find("rsv.disable_soft_delete").unwrap();
        assert!(op.matches_vault_critical_operation(
            "Microsoft.RecoveryServices/vaults/backupconfig/write"
        ));
        assert!(op.matches_vault_critical_operation(
            "microsoft.recoveryservices/VAULTS/backupconfig/write"
        ));
        assert!(op.matches_vault_critical_operation(
            "Microsoft.DataProtection/resourceGuards/disableSoftDeleteRequests"
        ));
        assert!(!op.matches_vault_critical_operation("disableSoftDeleteRequests"));
        assert!(!op.matches_vault_critical_operation(
            "Microsoft.RecoveryServices/vaults/backupPolicies/write"
        ));

        let enc = find("rsv.modify_encryption_settings").unwrap();
        assert!(enc.matches_vault_critical_operation(
            "Microsoft.RecoveryServices/vaults/backupEncryptionConfigs/backupResourceEncryptionConfig/write"
        ));

        let bv_sd = find("bv.disable_soft_delete").unwrap();
        assert!(bv_sd.matches_vault_critical_operation(
            "Microsoft.DataProtection/resourceGuards/dppReduceSoftDeleteSecurityRequests"
        ));

        let vault = find("rsv.delete_vault").unwrap();
        assert!(!vault.matches_vault_critical_operation(""));
        assert!(
            !vault.matches_vault_critical_operation("Microsoft.RecoveryServices/vaults/delete")
        );
    }

    #[test]
    fn serializes_for_the_api() {
        let v = serde_json::to_value(find("bv.disable_immutability").unwrap()).unwrap();
        assert_eq!(v["key"], "bv.disable_immutability");
        assert_eq!(v["vault_kind"], "backup");
        assert_eq!(v["default_required_approvals"], 2);
        assert_eq!(v["reversible"], false);
        assert_eq!(v["request_type"], "dppReduceImmutabilityStateRequests");
        let d = serde_json::to_value(find("rsv.delete_vault").unwrap()).unwrap();
        assert!(d["critical_operation"].is_null());
        assert_eq!(d["vault_kind"], "recovery_services");
    }
}
