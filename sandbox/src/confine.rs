//! The last steps before `execve`: seccomp and landlock, built from `rules.rs`.
//!
//! The filter is compiled in the parent (so an unknown syscall name fails the launch there,
//! with a message) and loaded in the child just before exec.

use std::path::PathBuf;

use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};

use crate::error::{Error, Result};
use crate::rules::{SysRule, SECCOMP};

/// Builds the seccomp filter of [`SECCOMP`]: default allow, listed calls refused.
pub fn seccomp_filter() -> Result<ScmpFilterContext> {
    let err = |what: String| move |e: libseccomp::error::SeccompError| Error::Setup(format!("{what}: {e}"));
    let mut ctx = ScmpFilterContext::new(ScmpAction::Allow).map_err(err("creating the seccomp filter".into()))?;
    // We set no_new_privs ourselves, after the uid drop; libseccomp must not reorder that.
    ctx.set_ctl_nnp(false).map_err(err("seccomp nnp attribute".into()))?;
    ctx.set_act_badarch(ScmpAction::KillProcess).map_err(err("seccomp bad-arch action".into()))?;
    let eperm = ScmpAction::Errno(libc::EPERM);
    for (name, rule) in SECCOMP {
        let sc = ScmpSyscall::from_name(name).map_err(err(format!("unknown syscall {name} in rules::SECCOMP")))?;
        let add = |ctx: &mut ScmpFilterContext, action: ScmpAction, cmps: &[ScmpArgCompare]| {
            if cmps.is_empty() {
                ctx.add_rule(action, sc).map(|_| ())
            } else {
                ctx.add_rule_conditional(action, sc, cmps).map(|_| ())
            }
            .map_err(err(format!("seccomp rule for {name}")))
        };
        match *rule {
            SysRule::Deny => add(&mut ctx, eperm, &[])?,
            SysRule::NoSys => add(&mut ctx, ScmpAction::Errno(libc::ENOSYS), &[])?,
            SysRule::DenyIfAnyBit { arg, bits } => {
                for &bit in bits {
                    add(&mut ctx, eperm, &[ScmpArgCompare::new(arg, ScmpCompareOp::MaskedEqual(bit), bit)])?;
                }
            }
            SysRule::DenyIfMasked { arg, mask, values } => {
                for &v in values {
                    add(&mut ctx, eperm, &[ScmpArgCompare::new(arg, ScmpCompareOp::MaskedEqual(mask), v)])?;
                }
            }
            SysRule::DenyUnless { arg, allowed } => {
                add(&mut ctx, eperm, &[ScmpArgCompare::new(arg, ScmpCompareOp::NotEqual, allowed)])?;
            }
        }
    }
    Ok(ctx)
}

/// Paths the agent may write under (landlock). Everything else is read/execute only, on
/// top of the read-only mounts.
#[derive(Debug, Clone, Default)]
pub struct LandlockPlan {
    pub writable: Vec<PathBuf>,
}

/// Applies landlock where the kernel has it (best effort: an older kernel gets what it
/// supports, a kernel without landlock gets nothing and the mounts alone hold).
pub fn apply_landlock(plan: &LandlockPlan) -> std::result::Result<(), String> {
    use landlock::{path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, Scope, ABI};
    let abi = ABI::V6;
    Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.scope(Scope::from_all(abi)))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(["/"], AccessFs::from_read(abi))))
        .and_then(|r| r.add_rules(path_beneath_rules(&plan.writable, AccessFs::from_all(abi))))
        .and_then(|r| r.restrict_self())
        .map(|_| ())
        .map_err(|e| format!("landlock: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn filter_builds() {
        super::seccomp_filter().unwrap();
    }
}
