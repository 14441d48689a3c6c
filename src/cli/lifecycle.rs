//! Commands that change containers.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use ferry::cgroups::Driver;
use ferry::container::{CreateOptions, ExecOptions};
use ferry::Container;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxPids, LinuxResources, Process};

use super::output::warn_all;
use super::tty_relay::{self, Relay};
use super::wait;

#[derive(Debug, Args)]
pub struct IdArg {
    /// Container ID (exact: IDs are never abbreviated).
    pub id: String,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    pub id: String,
    /// Bundle directory holding config.json.
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// Write the init's host pid to this file.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Unix socket that receives the terminal master (process.terminal).
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// chroot instead of pivot_root (for a ramdisk root).
    #[arg(long)]
    pub no_pivot: bool,
    /// Pass N more fds (3 to 2+N) to the container's program.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub preserve_fds: u32,
    /// Keep the caller's session keyring instead of a new one for the
    /// container.
    #[arg(long)]
    pub no_new_keyring: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    /// Return once the container runs instead of waiting for it.
    #[arg(short, long)]
    pub detach: bool,
    /// Keep the container (stopped) after it exits instead of deleting it.
    #[arg(long, conflicts_with = "detach")]
    pub keep: bool,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    pub id: String,
    /// Signal name or number.
    #[arg(default_value = "TERM")]
    pub signal: String,
    /// Signal every process of the container.
    #[arg(short, long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    pub id: String,
    /// Kill the container first if it is still running.
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    pub id: String,
    /// Command and arguments (unless --process is given).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
    /// Do not wait for the process.
    #[arg(short, long)]
    pub detach: bool,
    /// Give the process a terminal (relayed to ferry's own, or handed over
    /// --console-socket).
    #[arg(short, long)]
    pub tty: bool,
    /// Extra environment variables (KEY=VALUE).
    #[arg(short, long)]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// UID[:GID] to run as.
    #[arg(short, long)]
    pub user: Option<String>,
    /// An OCI process.json describing the process.
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Exec into a paused container too (the process starts once it is
    /// resumed).
    #[arg(long)]
    pub ignore_paused: bool,
    /// Pass N more fds (3 to 2+N) to the process.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub preserve_fds: u32,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    pub id: String,
    /// Resources as OCI linux.resources JSON ("-" for stdin).
    #[arg(short, long)]
    pub resources: Option<PathBuf>,
    /// Memory limit in bytes (k, m, g suffixes allowed).
    #[arg(long)]
    pub memory: Option<String>,
    #[arg(long)]
    pub memory_reservation: Option<String>,
    /// Memory plus swap limit (-1 for unlimited).
    #[arg(long)]
    pub memory_swap: Option<String>,
    /// CPU shares (relative weight); runc spells it --cpu-share.
    #[arg(long, alias = "cpu-share")]
    pub cpu_shares: Option<u64>,
    #[arg(long)]
    pub cpu_quota: Option<i64>,
    #[arg(long)]
    pub cpu_period: Option<u64>,
    /// Realtime scheduler period in microseconds (cgroup v1).
    #[arg(long)]
    pub cpu_rt_period: Option<u64>,
    /// Realtime runtime in microseconds per period (cgroup v1).
    #[arg(long)]
    pub cpu_rt_runtime: Option<i64>,
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    #[arg(long)]
    pub cpuset_mems: Option<String>,
    #[arg(long)]
    pub pids_limit: Option<i64>,
    /// Block I/O weight, 10..1000.
    #[arg(long)]
    pub blkio_weight: Option<u16>,
    /// Kernel TCP buffer memory limit in bytes (cgroup v1).
    #[arg(long)]
    pub kernel_memory_tcp: Option<String>,
    /// Refused: the kernel ignores kernel memory limits.
    #[arg(long)]
    pub kernel_memory: Option<String>,
    /// Refused: Intel RDT (resctrl) is not managed by ferry.
    #[arg(long)]
    pub l3_cache_schema: Option<String>,
    /// Refused: Intel RDT (resctrl) is not managed by ferry.
    #[arg(long)]
    pub mem_bw_schema: Option<String>,
}

/// `relay_console`: the caller stays in the foreground and relays a
/// terminal the container has (when there is no console socket).
fn create_options(a: &CreateArgs, relay_console: bool, driver: Driver) -> CreateOptions {
    CreateOptions {
        id: a.id.clone(),
        bundle: a.bundle.clone(),
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone(),
        no_pivot: a.no_pivot,
        relay_console,
        preserve_fds: a.preserve_fds,
        no_new_keyring: a.no_new_keyring,
        cgroup_driver: driver,
    }
}

pub fn create(root: &Path, a: &CreateArgs, driver: Driver) -> anyhow::Result<()> {
    Container::create(root, &create_options(a, false, driver))?;
    Ok(())
}

pub fn start(root: &Path, a: &IdArg) -> anyhow::Result<()> {
    let mut c = Container::load(root, &a.id)?;
    warn_all(&c.start()?);
    Ok(())
}

pub fn run(root: &Path, a: &RunArgs, driver: Driver) -> anyhow::Result<i32> {
    if !a.detach {
        wait::block_signals();
    }
    // Found before anything is created, so a missing terminal leaves nothing.
    let host = if a.detach || a.create.console_socket.is_some() {
        None
    } else {
        relay_target(&a.create.bundle)?
    };
    let created = Container::create(root, &create_options(&a.create, host.is_some(), driver))?;
    let mut c = created.container;
    let discard = |e: anyhow::Error| {
        if let Ok(c) = Container::load(root, &a.create.id) {
            let _ = c.delete(true);
        }
        Err(e)
    };
    let relay = match host.zip(created.console) {
        Some((host, master)) => match Relay::start(host, master) {
            Ok(relay) => Some(relay),
            Err(e) => return discard(e),
        },
        None => None,
    };
    if let Err(e) = c.start() {
        drop(relay);
        return discard(e.into());
    }
    if a.detach {
        return Ok(0);
    }
    let pid = Pid::from_raw(c.state.pid);
    let code = wait_relaying(pid, pid, relay);
    // Like runc, a foreground container is removed when it exits, unless
    // --keep asks to leave it for `state`, `events` or `delete`.
    if !a.keep {
        let c = Container::load(root, c.id())?;
        warn_all(&c.delete(true)?);
    }
    Ok(code)
}

pub fn kill(root: &Path, a: &KillArgs) -> anyhow::Result<()> {
    let signal = ferry::container::parse_signal(&a.signal).with_context(|| {
        format!(
            "unknown signal {:?} (use a name like TERM or a number)",
            a.signal
        )
    })?;
    Container::load(root, &a.id)?.kill(signal, a.all)?;
    Ok(())
}

pub fn delete(root: &Path, a: &DeleteArgs) -> anyhow::Result<()> {
    match Container::load(root, &a.id) {
        // Also removes the bundle a `restore --import` built.
        Ok(c) => warn_all(&c.delete(a.force)?),
        // A creation that died half-way leaves a directory without state.
        Err(ferry::Error::WrongState { id, .. }) if a.force => {
            ferry::container::remove_incomplete(root, &id)?;
        }
        // As runc: forcing the removal of what is already gone succeeds
        // (podman deletes after a checkpoint that removed the container).
        // Only this exact ID is touched, never one that starts with it.
        Err(e) if a.force && e.is_not_found() => ferry::imports::remove(root, &a.id)?,
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

pub fn pause(root: &Path, a: &IdArg) -> anyhow::Result<()> {
    Container::load(root, &a.id)?.pause()?;
    Ok(())
}

pub fn resume(root: &Path, a: &IdArg) -> anyhow::Result<()> {
    Container::load(root, &a.id)?.resume()?;
    Ok(())
}

/// The process to exec: `--process` JSON, or the container's process with
/// the command. `-t`, `-e`, `--cwd` and `-u` apply on top of either (runc
/// ignores them with `--process`; here no flag is accepted and ignored).
fn exec_process(c: &Container, a: &ExecArgs) -> anyhow::Result<Process> {
    let mut p = match &a.process {
        Some(path) => {
            if !a.command.is_empty() {
                bail!("give either --process or a command, not both");
            }
            let text =
                std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
            serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: malformed process JSON: {e}", path.display()))?
        }
        None => {
            if a.command.is_empty() {
                bail!("no command given: ferry exec ID COMMAND [ARG...]");
            }
            let mut p = c.state.config.process().clone().unwrap_or_default();
            p.set_args(Some(a.command.clone()));
            p.set_terminal(Some(false));
            p.set_env(Some(Vec::new()));
            p
        }
    };
    if a.tty {
        p.set_terminal(Some(true));
    }
    if !a.env.is_empty() {
        let mut env = p.env().clone().unwrap_or_default();
        for kv in &a.env {
            if !kv.contains('=') {
                bail!("--env {kv:?}: give KEY=VALUE");
            }
            let key = kv.split('=').next().unwrap_or_default();
            env.retain(|e| e.split('=').next() != Some(key));
            env.push(kv.clone());
        }
        p.set_env(Some(env));
    }
    if let Some(cwd) = &a.cwd {
        if !cwd.is_absolute() {
            bail!("--cwd {}: give an absolute path", cwd.display());
        }
        p.set_cwd(cwd.clone());
    }
    if let Some(user) = &a.user {
        let (uid, gid) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user.as_str(), None),
        };
        let mut u = p.user().clone();
        u.set_uid(
            uid.parse()
                .with_context(|| format!("--user {user}: UID must be a number"))?,
        );
        if let Some(g) = gid {
            u.set_gid(
                g.parse()
                    .with_context(|| format!("--user {user}: GID must be a number"))?,
            );
        }
        p.set_user(u);
    }
    Ok(p)
}

pub fn exec(root: &Path, a: &ExecArgs) -> anyhow::Result<i32> {
    let c = Container::load(root, &a.id)?;
    let process = exec_process(&c, a)?;
    // Found before the process starts, so a missing terminal leaves nothing.
    let relays = process.terminal() == Some(true) && !a.detach && a.console_socket.is_none();
    let host = relays.then(tty_relay::host_terminal).transpose()?;
    if !a.detach {
        wait::block_signals();
    }
    let handle = c
        .exec(&ExecOptions {
            process,
            console_socket: a.console_socket.clone(),
            pid_file: a.pid_file.clone(),
            detach: a.detach,
            relay_console: relays,
            ignore_paused: a.ignore_paused,
            preserve_fds: a.preserve_fds,
        })
        .map_err(|e| match e {
            ferry::Error::WrongState {
                status: ferry::Status::Paused,
                ..
            } => anyhow::anyhow!("{e} (use --ignore-paused to override)"),
            e => e.into(),
        })?;
    if a.detach {
        return Ok(0);
    }
    let relay = match (host, handle.console) {
        (Some(host), Some(master)) => match Relay::start(host, master) {
            Ok(relay) => Some(relay),
            Err(e) => {
                // Nobody could talk to the process: it does not outlive ferry.
                let _ = nix::sys::signal::kill(handle.pid, nix::sys::signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(handle.relay, None);
                return Err(e);
            }
        },
        _ => None,
    };
    Ok(wait_relaying(handle.relay, handle.pid, relay))
}

/// The caller's terminal, when the bundle's process has a terminal for
/// ferry to relay. A bundle that cannot be read is left to `create` to
/// report.
fn relay_target(bundle: &Path) -> anyhow::Result<Option<std::os::fd::OwnedFd>> {
    let terminal = ferry::spec::load(bundle)
        .ok()
        .and_then(|s| s.process().as_ref().and_then(|p| p.terminal()));
    match terminal {
        Some(true) => Ok(Some(tty_relay::host_terminal()?)),
        _ => Ok(None),
    }
}

/// Waits for `child` (see [`wait::wait_forwarding`]) while `relay` copies
/// its terminal, then restores the caller's.
fn wait_relaying(child: Pid, target: Pid, relay: Option<Relay>) -> i32 {
    let Some(relay) = relay else {
        return wait::wait_forwarding(child, target);
    };
    let code = wait::wait_forwarding_resizing(child, target, Some(&|| relay.resize()));
    relay.finish();
    code
}

/// "64m" → 67108864; "-1" stays -1.
fn parse_bytes(s: &str) -> anyhow::Result<i64> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('b') => (&t[..t.len() - 1], 1),
        _ => (t.as_str(), 1),
    };
    let n: i64 = num
        .parse()
        .with_context(|| format!("{s:?} is not a size (bytes, or with k/m/g)"))?;
    Ok(if n < 0 { n } else { n * mult })
}

pub fn update(root: &Path, a: &UpdateArgs) -> anyhow::Result<()> {
    if a.kernel_memory.is_some() {
        bail!("--kernel-memory is not supported: the kernel ignores kernel memory limits (memory.kmem.limit_in_bytes has no effect since Linux 5.16); drop the flag");
    }
    if a.l3_cache_schema.is_some() || a.mem_bw_schema.is_some() {
        bail!("--l3-cache-schema/--mem-bw-schema are not supported: ferry does not manage Intel RDT (resctrl); drop the flag");
    }
    let mut res: LinuxResources = match &a.resources {
        Some(p) => {
            let text = if p.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?
            };
            let parsed = serde_json::from_str(&text).context("malformed resources JSON")?;
            zero_is_unchanged(parsed)
        }
        None => LinuxResources::default(),
    };
    if a.memory.is_some()
        || a.memory_swap.is_some()
        || a.memory_reservation.is_some()
        || a.kernel_memory_tcp.is_some()
    {
        let mut m = res.memory().unwrap_or_default();
        if let Some(v) = &a.memory {
            m.set_limit(Some(parse_bytes(v)?));
        }
        if let Some(v) = &a.memory_swap {
            m.set_swap(Some(parse_bytes(v)?));
        }
        if let Some(v) = &a.memory_reservation {
            m.set_reservation(Some(parse_bytes(v)?));
        }
        if let Some(v) = &a.kernel_memory_tcp {
            m.set_kernel_tcp(Some(parse_bytes(v)?));
        }
        res.set_memory(Some(m));
    }
    if a.cpu_shares.is_some()
        || a.cpu_quota.is_some()
        || a.cpu_period.is_some()
        || a.cpu_rt_period.is_some()
        || a.cpu_rt_runtime.is_some()
        || a.cpuset_cpus.is_some()
        || a.cpuset_mems.is_some()
    {
        let mut cpu = res.cpu().clone().unwrap_or_default();
        if a.cpu_shares.is_some() {
            cpu.set_shares(a.cpu_shares);
        }
        if a.cpu_quota.is_some() {
            cpu.set_quota(a.cpu_quota);
        }
        if a.cpu_period.is_some() {
            cpu.set_period(a.cpu_period);
        }
        if a.cpu_rt_period.is_some() {
            cpu.set_realtime_period(a.cpu_rt_period);
        }
        if a.cpu_rt_runtime.is_some() {
            cpu.set_realtime_runtime(a.cpu_rt_runtime);
        }
        if a.cpuset_cpus.is_some() {
            cpu.set_cpus(a.cpuset_cpus.clone());
        }
        if a.cpuset_mems.is_some() {
            cpu.set_mems(a.cpuset_mems.clone());
        }
        res.set_cpu(Some(cpu));
    }
    if let Some(limit) = a.pids_limit {
        let mut p = LinuxPids::default();
        p.set_limit(limit);
        res.set_pids(Some(p));
    }
    if let Some(w) = a.blkio_weight {
        let mut b = res.block_io().clone().unwrap_or_default();
        b.set_weight(Some(w));
        res.set_block_io(Some(b));
    }
    if res == LinuxResources::default() {
        bail!("nothing to update: give --memory, --cpu-*, --cpuset-*, --pids-limit, --blkio-weight or --resources with a value that is not 0");
    }
    Container::load(root, &a.id)?.update(&res)?;
    Ok(())
}

/// runc's `update -r` format: a 0 (or "") means "leave as it is", so the
/// template runc prints can be filled in partly.
fn zero_is_unchanged(mut r: LinuxResources) -> LinuxResources {
    fn nz<T: Default + PartialEq>(v: Option<T>) -> Option<T> {
        v.filter(|v| *v != T::default())
    }
    if let Some(mut m) = r.memory() {
        m.set_limit(nz(m.limit()));
        m.set_reservation(nz(m.reservation()));
        m.set_swap(nz(m.swap()));
        m.set_kernel(nz(m.kernel()));
        m.set_kernel_tcp(nz(m.kernel_tcp()));
        let empty = m == LinuxMemory::default();
        r.set_memory((!empty).then_some(m));
    }
    if let Some(mut c) = r.cpu().clone() {
        c.set_shares(nz(c.shares()));
        c.set_quota(nz(c.quota()));
        c.set_period(nz(c.period()));
        c.set_realtime_runtime(nz(c.realtime_runtime()));
        c.set_realtime_period(nz(c.realtime_period()));
        c.set_cpus(nz(c.cpus().clone()));
        c.set_mems(nz(c.mems().clone()));
        let empty = c == LinuxCpu::default();
        r.set_cpu((!empty).then_some(c));
    }
    if let Some(mut b) = r.block_io().clone() {
        b.set_weight(nz(b.weight()));
        b.set_leaf_weight(nz(b.leaf_weight()));
        let empty = b == LinuxBlockIo::default();
        r.set_block_io((!empty).then_some(b));
    }
    if r.pids().is_some_and(|p| p.limit() == 0) {
        r.set_pids(None);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn zeros_in_runcs_template_leave_values_unchanged() {
        let r: oci_spec::runtime::LinuxResources = serde_json::from_value(serde_json::json!({
            "memory": {"limit": 0, "reservation": 0, "swap": 0},
            "cpu": {"shares": 0, "quota": 0, "period": 0, "realtimeRuntime": 0,
                    "realtimePeriod": 0, "cpus": "0", "mems": ""},
            "blockIO": {"weight": 0},
            "pids": {"limit": 0}
        }))
        .unwrap();
        let r = super::zero_is_unchanged(r);
        assert!(r.memory().is_none() && r.block_io().is_none() && r.pids().is_none());
        let c = r.cpu().clone().unwrap();
        assert_eq!(c.cpus().as_deref(), Some("0"));
        assert!(c.mems().is_none() && c.shares().is_none() && c.quota().is_none());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1G").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("123").unwrap(), 123);
        assert_eq!(parse_bytes("-1").unwrap(), -1);
        assert!(parse_bytes("lots").is_err());
    }
}
