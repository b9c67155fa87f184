//! Landlock rights: which the ruleset handles on a given kernel ABI, and which a rule grants.
//!
//! Least privilege: a rule never grants execute, rename/link (`refer`), the removal of
//! anything, or the creation of anything but regular files in a directory the user gave
//! write access to (where `vm.snapshot` and `vm.coredump` write their files). Reading a
//! directory needs `read_dir` on top of `read_file`; writing includes truncating (a console
//! file is truncated when a VM opens it), so a read-only rule can neither write nor truncate; `ioctl_dev` is granted only on device nodes (a tap's
//! `/dev/net/tun`, a block device) the VMM may write, where it needs it.

use landlock::{Access as _, AccessFs, AccessNet, BitFlags, Scope, ABI};

use crate::policy::Access;

/// What kind of file a rule names (rules on directories may hold directory rights).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    /// A regular file.
    File,
    /// A character or block device node.
    Device,
    /// A directory (the rule covers everything beneath).
    Directory {
        /// Whether it lies under `/dev`, where device nodes live.
        under_dev: bool,
    },
}

/// The rights a rule grants for `access` on a path of `kind`.
pub fn granted(access: Access, kind: PathKind) -> BitFlags<AccessFs> {
    let mut rights = BitFlags::EMPTY;
    if access.reads() {
        rights |= AccessFs::ReadFile;
        if matches!(kind, PathKind::Directory { .. }) {
            rights |= AccessFs::ReadDir;
        }
    }
    if access.writes() {
        rights |= AccessFs::WriteFile | AccessFs::Truncate;
        if matches!(kind, PathKind::Directory { under_dev: false }) {
            rights |= AccessFs::MakeReg;
        }
    }
    // Device ioctls (a tap's TUNSETIFF) only come with write access: a read-only device,
    // such as an entropy source, is only ever read.
    let device = matches!(
        kind,
        PathKind::Device | PathKind::Directory { under_dev: true }
    );
    if device && access.writes() {
        rights |= AccessFs::IoctlDev;
    }
    rights
}

/// Every file-system right `abi` knows: all of them are handled, so anything not granted
/// is denied.
pub fn handled_fs(abi: ABI) -> BitFlags<AccessFs> {
    AccessFs::from_all(abi)
}

/// The network rights `abi` knows (TCP bind and connect from ABI 4); no port is ever allowed.
pub fn handled_net(abi: ABI) -> BitFlags<AccessNet> {
    AccessNet::from_all(abi)
}

/// The scopes `abi` knows (abstract Unix sockets and signals from ABI 6).
pub fn handled_scopes(abi: ABI) -> BitFlags<Scope> {
    Scope::from_all(abi)
}

/// A ruleset (best effort) that handles every right `abi` knows — files, TCP, scopes — and
/// so denies all of them until rules are added.
pub fn ruleset_handling_all(abi: ABI) -> Result<landlock::Ruleset, landlock::RulesetError> {
    ruleset_handling(abi, handled_fs(abi))
}

/// As [`ruleset_handling_all`], but leaving making socket files (`bind`) allowed: the
/// connector's domain, where nothing else on the file system is.
pub fn ruleset_handling_all_but_sockets(
    abi: ABI,
) -> Result<landlock::Ruleset, landlock::RulesetError> {
    ruleset_handling(abi, handled_fs(abi) & !AccessFs::MakeSock)
}

fn ruleset_handling(
    abi: ABI,
    fs: BitFlags<AccessFs>,
) -> Result<landlock::Ruleset, landlock::RulesetError> {
    use landlock::{CompatLevel, Compatible, RulesetAttr};
    let mut ruleset = landlock::Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(fs)?;
    let net = handled_net(abi);
    if !net.is_empty() {
        ruleset = ruleset.handle_access(net)?;
    }
    let scopes = handled_scopes(abi);
    if !scopes.is_empty() {
        ruleset = ruleset.scope(scopes)?;
    }
    Ok(ruleset)
}

/// The oldest ABI that enforces everything Palisade's policy relies on (file rights with
/// truncate and device ioctl, TCP, scopes).
pub const FULL_POLICY_ABI: ABI = ABI::V6;

/// Names of the rights in `rights`, in Landlock's own spelling (lower case).
pub fn fs_names(rights: BitFlags<AccessFs>) -> Vec<String> {
    rights.iter().map(|r| snake(&format!("{r:?}"))).collect()
}

/// Names of the network rights in `rights`.
pub fn net_names(rights: BitFlags<AccessNet>) -> Vec<String> {
    rights.iter().map(|r| snake(&format!("{r:?}"))).collect()
}

/// Names of the scopes in `scopes`.
pub fn scope_names(scopes: BitFlags<Scope>) -> Vec<String> {
    scopes.iter().map(|r| snake(&format!("{r:?}"))).collect()
}

fn snake(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// What Palisade's policy would enforce on the newest kernel but `abi` cannot: empty on a
/// kernel with [`FULL_POLICY_ABI`] or later.
pub fn not_enforced(abi: ABI) -> Vec<String> {
    let mut missing = Vec::new();
    let fs = handled_fs(FULL_POLICY_ABI) & !handled_fs(abi);
    missing.extend(fs_names(fs).into_iter().map(|n| format!("fs: {n}")));
    let net = handled_net(FULL_POLICY_ABI) & !handled_net(abi);
    missing.extend(net_names(net).into_iter().map(|n| format!("net: {n}")));
    let scopes = handled_scopes(FULL_POLICY_ABI) & !handled_scopes(abi);
    missing.extend(
        scope_names(scopes)
            .into_iter()
            .map(|n| format!("scope: {n}")),
    );
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_never_grant_exec_refer_removal_or_creation_but_files_in_written_dirs() {
        let forbidden = AccessFs::Execute
            | AccessFs::Refer
            | AccessFs::MakeDir
            | AccessFs::MakeSym
            | AccessFs::RemoveFile
            | AccessFs::RemoveDir;
        for access in [Access::Read, Access::Write, Access::ReadWrite] {
            for kind in [
                PathKind::File,
                PathKind::Device,
                PathKind::Directory { under_dev: false },
                PathKind::Directory { under_dev: true },
            ] {
                assert!(
                    (granted(access, kind) & forbidden).is_empty(),
                    "{access:?} on {kind:?}"
                );
                let makes_files = granted(access, kind).contains(AccessFs::MakeReg);
                let written_dir =
                    access.writes() && kind == PathKind::Directory { under_dev: false };
                assert_eq!(makes_files, written_dir, "{access:?} on {kind:?}");
            }
        }
    }

    #[test]
    fn read_only_rules_do_not_write_and_write_only_rules_do_not_read() {
        let f = granted(Access::Read, PathKind::File);
        assert_eq!(f, AccessFs::ReadFile, "no write, no truncate");
        let w = granted(Access::Write, PathKind::File);
        assert_eq!(w, AccessFs::WriteFile | AccessFs::Truncate);
        let d = granted(Access::Read, PathKind::Directory { under_dev: false });
        assert_eq!(d, AccessFs::ReadFile | AccessFs::ReadDir);
        let dw = granted(Access::Write, PathKind::Directory { under_dev: false });
        assert_eq!(
            dw,
            AccessFs::WriteFile | AccessFs::Truncate | AccessFs::MakeReg,
            "writing into a directory lists nothing, and may create files there"
        );
        assert_eq!(granted(Access::Read, PathKind::Device), AccessFs::ReadFile);
        let dev = granted(Access::ReadWrite, PathKind::Device);
        assert_eq!(
            dev,
            AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate | AccessFs::IoctlDev
        );
    }

    #[test]
    fn file_rules_hold_only_file_rights() {
        // Landlock refuses directory-only rights on a file rule.
        let file_rights = AccessFs::Execute
            | AccessFs::WriteFile
            | AccessFs::ReadFile
            | AccessFs::Truncate
            | AccessFs::IoctlDev;
        for access in [Access::Read, Access::Write, Access::ReadWrite] {
            for kind in [PathKind::File, PathKind::Device] {
                assert!(file_rights.contains(granted(access, kind)));
            }
        }
    }

    #[test]
    fn handled_rights_grow_with_the_abi() {
        assert!(!handled_fs(ABI::V1).contains(AccessFs::Refer));
        assert!(handled_fs(ABI::V2).contains(AccessFs::Refer));
        assert!(handled_fs(ABI::V3).contains(AccessFs::Truncate));
        assert!(handled_fs(ABI::V5).contains(AccessFs::IoctlDev));
        assert!(handled_net(ABI::V3).is_empty());
        assert_eq!(
            handled_net(ABI::V4),
            AccessNet::BindTcp | AccessNet::ConnectTcp
        );
        assert!(handled_scopes(ABI::V5).is_empty());
        assert_eq!(
            handled_scopes(ABI::V6),
            Scope::AbstractUnixSocket | Scope::Signal
        );
    }

    #[test]
    fn not_enforced_lists_what_an_old_kernel_lacks() {
        assert!(not_enforced(ABI::V6).is_empty());
        assert!(not_enforced(ABI::V7).is_empty());
        let v3 = not_enforced(ABI::V3);
        assert!(v3.contains(&"fs: ioctl_dev".to_string()), "{v3:?}");
        assert!(v3.contains(&"net: bind_tcp".to_string()));
        assert!(v3.contains(&"scope: signal".to_string()));
        assert!(!v3.contains(&"fs: truncate".to_string()));
        let v1 = not_enforced(ABI::V1);
        assert!(v1.contains(&"fs: refer".to_string()) && v1.contains(&"fs: truncate".to_string()));
    }

    #[test]
    fn names_are_snake_case() {
        assert_eq!(
            fs_names(AccessFs::ReadFile | AccessFs::IoctlDev),
            vec!["read_file", "ioctl_dev"]
        );
        assert_eq!(
            scope_names(Scope::AbstractUnixSocket.into()),
            vec!["abstract_unix_socket"]
        );
    }
}
