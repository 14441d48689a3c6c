//! Seccomp filters from `linux.seccomp` (libseccomp compiles them), with
//! runc's semantics: rules whose action is the default are skipped, syscall
//! names this libseccomp does not know are skipped, several conditions on
//! one argument become one rule each (OR), otherwise a rule's conditions
//! all apply (AND); no_new_privs is left to `process.noNewPrivileges`.
use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompArg};

/// A field's name as the OCI config spells it (`SCMP_ACT_ERRNO`, ...).
fn spelled<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn action(name: &str, errno: Option<u32>) -> Result<ScmpAction, String> {
    let errno = errno.map(|e| e as i32).unwrap_or(libc::EPERM);
    match name {
        "SCMP_ACT_ERRNO" => Ok(ScmpAction::Errno(errno)),
        "SCMP_ACT_TRACE" => Ok(ScmpAction::Trace(errno as u16)),
        "SCMP_ACT_NOTIFY" => Err(
            "seccomp action SCMP_ACT_NOTIFY needs a listener (linux.seccomp.listenerPath), which ferry does not support".into(),
        ),
        n => ScmpAction::from_str(n, None).map_err(|e| format!("seccomp action {n:?}: {e}")),
    }
}

fn condition(a: &LinuxSeccompArg) -> Result<ScmpArgCompare, String> {
    let op = spelled(&a.op());
    let index = a.index() as u32;
    let cmp = match op.as_str() {
        "SCMP_CMP_NE" => ScmpCompareOp::NotEqual,
        "SCMP_CMP_LT" => ScmpCompareOp::Less,
        "SCMP_CMP_LE" => ScmpCompareOp::LessOrEqual,
        "SCMP_CMP_EQ" => ScmpCompareOp::Equal,
        "SCMP_CMP_GE" => ScmpCompareOp::GreaterEqual,
        "SCMP_CMP_GT" => ScmpCompareOp::Greater,
        // OCI: value is the mask, valueTwo the value compared with.
        "SCMP_CMP_MASKED_EQ" => {
            return Ok(ScmpArgCompare::new(
                index,
                ScmpCompareOp::MaskedEqual(a.value()),
                a.value_two().unwrap_or(0),
            ))
        }
        other => return Err(format!("seccomp operator {other:?} is not known")),
    };
    Ok(ScmpArgCompare::new(index, cmp, a.value()))
}

/// Compiles the filter (without loading it): every error a config can
/// cause shows up here, so `create` can report it before anything runs.
pub fn build(s: &LinuxSeccomp) -> Result<ScmpFilterContext, String> {
    if s.listener_path().is_some() {
        return Err("linux.seccomp.listenerPath is not supported by ferry".into());
    }
    if s.flags().as_ref().is_some_and(|f| !f.is_empty()) {
        return Err("linux.seccomp.flags are not supported by ferry; remove them".into());
    }
    let default = action(&spelled(&s.default_action()), s.default_errno_ret())?;
    let err = |what: &str, e: libseccomp::error::SeccompError| format!("seccomp: {what}: {e}");
    let mut ctx = ScmpFilterContext::new(default).map_err(|e| err("new filter", e))?;
    // Loading must not turn on no_new_privs behind the config's back.
    ctx.set_ctl_nnp(false)
        .map_err(|e| err("no_new_privs attribute", e))?;
    for arch in s.architectures().clone().unwrap_or_default() {
        let name = spelled(&arch);
        let a: ScmpArch = name
            .parse()
            .map_err(|e| format!("seccomp architecture {name:?}: {e}"))?;
        ctx.add_arch(a)
            .map_err(|e| err(&format!("architecture {name}"), e))?;
    }
    for sc in s.syscalls().clone().unwrap_or_default() {
        let act = action(&spelled(&sc.action()), sc.errno_ret())?;
        if act == default {
            continue;
        }
        let args = sc.args().clone().unwrap_or_default();
        let conds = args.iter().map(condition).collect::<Result<Vec<_>, _>>()?;
        let mut seen = std::collections::HashSet::new();
        let one_per_condition = args.iter().any(|a| !seen.insert(a.index()));
        for name in sc.names() {
            let Ok(nr) = ScmpSyscall::from_name(name) else {
                tracing::debug!(syscall = %name, "seccomp: syscall unknown here, rule skipped");
                continue;
            };
            let what = || format!("rule for {name}");
            if conds.is_empty() {
                ctx.add_rule(act, nr).map_err(|e| err(&what(), e))?;
            } else if one_per_condition {
                for c in &conds {
                    ctx.add_rule_conditional(act, nr, std::slice::from_ref(c))
                        .map_err(|e| err(&what(), e))?;
                }
            } else {
                ctx.add_rule_conditional(act, nr, &conds)
                    .map_err(|e| err(&what(), e))?;
            }
        }
    }
    Ok(ctx)
}

/// Compiles and loads the filter into the calling thread.
pub fn load(s: &LinuxSeccomp) -> Result<(), String> {
    build(s)?
        .load()
        .map_err(|e| format!("seccomp: loading the filter: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn profiles_compile_and_bad_ones_are_named() {
        build(&parse(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38,
                "architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86","SCMP_ARCH_X32"],
                "syscalls":[
                  {"names":["read","write","no_such_syscall_here"],"action":"SCMP_ACT_ALLOW"},
                  {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]},
                  {"names":["clone"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]},
                  {"names":["socket"],"action":"SCMP_ACT_ERRNO","errnoRet":1,"args":[{"index":0,"value":40,"op":"SCMP_CMP_EQ"},{"index":0,"value":16,"op":"SCMP_CMP_EQ"}]},
                  {"names":["bpf"],"action":"SCMP_ACT_ERRNO"}
                ]}"#,
        ))
        .unwrap();
        let err = build(&parse(
            r#"{"defaultAction":"SCMP_ACT_NOTIFY","syscalls":[]}"#,
        ))
        .err()
        .unwrap();
        assert!(err.contains("SCMP_ACT_NOTIFY"), "{err}");
        let err = build(&parse(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/run/x.sock"}"#,
        ))
        .err()
        .unwrap();
        assert!(err.contains("listenerPath"), "{err}");
    }

    #[test]
    fn a_loaded_filter_denies_with_the_configured_errno() {
        // In a forked child: the filter must not reach the test process.
        // SAFETY: the child only loads a filter, calls getppid and exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let s = parse(
                    r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                        {"names":["getppid"],"action":"SCMP_ACT_ERRNO","errnoRet":42}]}"#,
                );
                let code = match load(&s) {
                    // SAFETY: raw syscall without arguments.
                    Ok(()) => match unsafe { libc::syscall(libc::SYS_getppid) } {
                        -1 => std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
                        _ => 1,
                    },
                    Err(_) => 2,
                };
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 42));
            }
        }
    }
}
