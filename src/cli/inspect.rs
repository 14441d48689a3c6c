//! `ferry inspect ARCHIVE|IMAGE_DIR`: what a checkpoint holds, decoded from
//! the CRIU images (and the archive's metadata when given an archive).
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use ferry::archive::{self, Limits};
use ferry::images::{ImageDir, ProcessReport, Summary};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InspectFormat {
    Tree,
    Json,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A checkpoint archive (tar, optionally zstd or gzip compressed; ferry's
    /// or podman's layout), an unpacked or imported archive, or a directory
    /// of CRIU images.
    pub path: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "tree")]
    pub format: InspectFormat,
    /// Also show each process's environment.
    #[arg(long)]
    pub env: bool,
    /// Show the dumped memory of this process (a hexdump), or with
    /// --search/--search-regex where a pattern occurs in it.
    #[arg(long, value_name = "PID")]
    pub memory: Option<u32>,
    /// With --memory: the addresses where this text occurs.
    #[arg(long, requires = "memory", conflicts_with = "search_regex")]
    pub search: Option<String>,
    /// With --memory: the addresses where this regular expression matches.
    #[arg(long, value_name = "RE", requires = "memory")]
    pub search_regex: Option<String>,
    /// What changed from PATH to this checkpoint (processes, their
    /// command lines, memory and open files, mounts).
    #[arg(long, value_name = "OTHER", conflicts_with = "memory")]
    pub diff: Option<PathBuf>,
    /// Bytes of memory shown on each side of a match.
    #[arg(long, value_name = "N", default_value_t = 0, requires = "memory")]
    pub context: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    #[serde(skip_serializing_if = "Option::is_none")]
    archive: Option<archive::ArchiveInfo>,
    #[serde(flatten)]
    images: Summary,
}

/// The CRIU images behind `path` (an archive is unpacked into a scratch
/// directory, kept until the returned guard drops).
fn open_images(
    path: &std::path::Path,
) -> anyhow::Result<(
    PathBuf,
    Option<archive::ArchiveInfo>,
    Option<tempfile::TempDir>,
)> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot inspect {}", path.display()))?;
    if meta.is_dir() {
        if path
            .join(archive::IMAGES_DIR)
            .join("inventory.img")
            .is_file()
        {
            // An unpacked or imported archive.
            let info = archive::describe_dir(path, &Limits::default())
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            return Ok((info.images_dir.clone(), Some(info), None));
        }
        return Ok((path.to_path_buf(), None, None));
    }
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let tmp = tempfile::Builder::new().prefix("ferry-inspect").tempdir()?;
    let dest = tmp.path().join("archive");
    let info = archive::unpack_for_inspect(file, &dest, &Limits::default())
        .map_err(|e| anyhow::anyhow!("cannot read archive {}: {e}", path.display()))?;
    Ok((info.images_dir.clone(), Some(info), Some(tmp)))
}

pub fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    let (dir, info, _scratch) = open_images(&args.path)?;
    if let Some(other) = &args.diff {
        return diff(args, &dir, other);
    }
    if let Some(pid) = args.memory {
        return memory(args, &dir, pid);
    }
    let images = ImageDir::open(&dir)
        .and_then(|d| d.summary(args.env))
        .map_err(|e| anyhow::anyhow!("cannot decode the CRIU images: {e}"))?;
    let mut report = Report {
        archive: info,
        images,
    };
    if let Some(a) = &report.archive {
        // Dump statistics at the archive's top level (podman's layout).
        if report.images.dump_stats.is_none() {
            report.images.dump_stats = a.dump_stats.clone();
        }
        if report.images.criu_version.is_none() {
            report.images.criu_version = a.metadata.as_ref().map(|m| m.criu_version.clone());
        }
    }
    let text = match args.format {
        InspectFormat::Json => serde_json::to_string_pretty(&report)? + "\n",
        InspectFormat::Tree => render_tree(&report, &args.path),
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        // A reader that stopped early (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("cannot write the report"),
    }
}

/// `--diff OTHER`: what changed from `args.path` (images in `dir`) to
/// OTHER.
fn diff(args: &InspectArgs, dir: &std::path::Path, other: &std::path::Path) -> anyhow::Result<()> {
    let (other_dir, _, _scratch) = open_images(other)?;
    let summary = |d: &std::path::Path| {
        ImageDir::open(d)
            .and_then(|i| i.summary(false))
            .map_err(|e| anyhow::anyhow!("cannot decode the CRIU images: {e}"))
    };
    let d = ferry::images::diff::diff(&summary(dir)?, &summary(&other_dir)?);
    let text = match args.format {
        InspectFormat::Json => serde_json::to_string_pretty(&d)? + "\n",
        InspectFormat::Tree => render_diff(&d, &args.path, other),
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("cannot write the report"),
    }
}

fn render_diff(
    d: &ferry::images::diff::SummaryDiff,
    a: &std::path::Path,
    b: &std::path::Path,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{} -> {}", a.display(), b.display());
    if d.is_empty() {
        let _ = writeln!(s, "no change in processes, open files, memory or mounts");
        return s;
    }
    for p in &d.processes_added {
        let _ = writeln!(s, "+ process {} {}", p.pid, p.comm);
    }
    for p in &d.processes_removed {
        let _ = writeln!(s, "- process {} {}", p.pid, p.comm);
    }
    for p in &d.processes_changed {
        let _ = writeln!(s, "~ process {} {}", p.process.pid, p.process.comm);
        if let Some(c) = &p.comm {
            let _ = writeln!(s, "    name: {} -> {}", c.from, c.to);
        }
        if let Some(c) = &p.cmdline {
            let show =
                |v: &Option<Vec<String>>| v.as_ref().map(|a| a.join(" ")).unwrap_or_default();
            let _ = writeln!(s, "    cmdline: {} -> {}", show(&c.from), show(&c.to));
        }
        if let Some(c) = &p.dumped_bytes {
            let _ = writeln!(s, "    memory dumped: {} -> {}", human(c.from), human(c.to));
        }
        for f in &p.files_opened {
            let _ = writeln!(s, "    + fd {} {}", f.fd, f.description);
        }
        for f in &p.files_closed {
            let _ = writeln!(s, "    - fd {} {}", f.fd, f.description);
        }
    }
    for m in &d.mounts_added {
        let _ = writeln!(s, "+ mount {} ({})", m.mountpoint, m.fstype);
    }
    for m in &d.mounts_removed {
        let _ = writeln!(s, "- mount {} ({})", m.mountpoint, m.fstype);
    }
    s
}

/// Most matches listed.
const MAX_MATCHES: usize = 10_000;

/// `--memory PID`: a hexdump of the process's dumped memory, or the
/// matches of `--search`/`--search-regex` with `--context` bytes around.
fn memory(args: &InspectArgs, dir: &std::path::Path, pid: u32) -> anyhow::Result<()> {
    use ferry::images::Pattern;
    let images =
        ImageDir::open(dir).map_err(|e| anyhow::anyhow!("cannot decode the CRIU images: {e}"))?;
    if !images
        .process_tree()
        .map_err(|e| anyhow::anyhow!("cannot decode the CRIU images: {e}"))?
        .iter()
        .any(|p| p.pid == pid)
    {
        anyhow::bail!(
            "process {pid} is not in this checkpoint (`ferry inspect` lists its processes)"
        );
    }
    let pattern = match (&args.search, &args.search_regex) {
        (Some(t), _) => Some(Pattern::Text(t.as_bytes().to_vec())),
        (None, Some(re)) => Some(Pattern::Regex(
            regex::bytes::RegexBuilder::new(re)
                .size_limit(1 << 20)
                .build()
                .with_context(|| format!("--search-regex {re:?}"))?,
        )),
        (None, None) => None,
    };
    if args.context > ferry::images::MAX_MATCH_BYTES {
        anyhow::bail!(
            "--context {}: at most {} bytes",
            args.context,
            ferry::images::MAX_MATCH_BYTES
        );
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = match pattern {
        Some(p) => {
            let found = images
                .search_memory(pid, &p, args.context, MAX_MATCHES)
                .map_err(|e| anyhow::anyhow!("cannot read the memory of {pid}: {e}"))?;
            match args.format {
                InspectFormat::Json => {
                    serde_json::to_writer_pretty(&mut out, &found)?;
                    writeln!(out)
                }
                InspectFormat::Tree => found.iter().try_for_each(|m| {
                    writeln!(
                        out,
                        "{:#014x}  {}[{}]{}",
                        m.address,
                        printable(&m.before),
                        printable(&m.matched),
                        printable(&m.after)
                    )
                }),
            }
        }
        None => {
            let mut result = Ok(());
            images
                .dump_memory(pid, |base, bytes| {
                    result = hexdump(&mut out, base, bytes);
                    result.is_ok()
                })
                .map_err(|e| anyhow::anyhow!("cannot read the memory of {pid}: {e}"))?;
            result
        }
    };
    match written.and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("cannot write the memory"),
    }
}

/// Bytes as text, with `.` for what does not print.
fn printable(b: &[u8]) -> String {
    b.iter()
        .map(|&c| {
            if (0x20..0x7f).contains(&c) {
                c as char
            } else {
                '.'
            }
        })
        .collect()
}

/// `xxd`-style lines: address, 16 bytes in hex, the same as text.
fn hexdump(out: &mut impl std::io::Write, base: u64, bytes: &[u8]) -> std::io::Result<()> {
    for (i, line) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(
            out,
            "{:016x}  {:<47}  |{}|",
            base + 16 * i as u64,
            hex.join(" "),
            printable(line)
        )?;
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn render_tree(r: &Report, path: &std::path::Path) -> String {
    let mut s = String::new();
    let img = &r.images;
    let _ = writeln!(s, "{}", path.display());
    if let Some(a) = &r.archive {
        render_archive(&mut s, a);
    }
    render_criu(&mut s, img);
    render_namespaces(&mut s, &img.namespaces);
    render_mounts(&mut s, img);
    render_processes(&mut s, img);
    s
}

/// The archive's layout, metadata and size.
fn render_archive(s: &mut String, a: &archive::ArchiveInfo) {
    let _ = writeln!(s, "├── archive: {} ({})", a.layout, a.compression);
    if let Some(m) = &a.metadata {
        let _ = writeln!(s, "│   ├── container: {}", m.container_id);
        let _ = writeln!(s, "│   ├── checkpointed: {}", m.checkpoint_time);
        let _ = writeln!(
            s,
            "│   ├── ferry {} / CRIU {} / kernel {} / {}",
            m.ferry_version, m.criu_version, m.kernel, m.architecture
        );
        let _ = writeln!(s, "│   └── rootfs: {}", m.rootfs.name());
    }
    if let Some(c) = &a.container {
        let _ = writeln!(s, "│   ├── engine container: {} ({})", c.name, c.id);
    }
    let _ = writeln!(
        s,
        "│   └── size: {} in {} entries{}",
        human(a.bytes),
        a.entries,
        a.rootfs_diff_bytes
            .map(|b| format!(", rootfs diff {}", human(b)))
            .unwrap_or_default()
    );
}

/// The CRIU version and the dump statistics.
fn render_criu(s: &mut String, img: &Summary) {
    let _ = writeln!(
        s,
        "├── CRIU: {} (image format {})",
        img.criu_version.as_deref().unwrap_or("version unknown"),
        img.image_version
    );
    if let Some(st) = &img.dump_stats {
        let _ = writeln!(
            s,
            "├── dump statistics: freezing {} µs, frozen {} µs, memdump {} µs, memwrite {} µs, pages scanned {}, written {}",
            st.freezing_time_us,
            st.frozen_time_us,
            st.memdump_time_us,
            st.memwrite_time_us,
            st.pages_scanned,
            st.pages_written
        );
    }
}

/// The namespaces CRIU dumped (none: the host's were used).
fn render_namespaces(s: &mut String, ns: &ferry::images::Namespaces) {
    if !ns.namespaces.is_empty() {
        let list: Vec<String> = ns
            .namespaces
            .iter()
            .filter(|n| n.dumped)
            .map(|n| format!("{}:{}", n.kind, n.id))
            .collect();
        let _ = writeln!(
            s,
            "├── namespaces dumped: {}{}",
            if list.is_empty() {
                "none (host namespaces)".to_string()
            } else {
                list.join(" ")
            },
            ns.hostname
                .as_ref()
                .map(|h| format!(" (hostname {h})"))
                .unwrap_or_default()
        );
    }
}

/// The root task's mounts, by mount point.
fn render_mounts(s: &mut String, img: &Summary) {
    if !img.mounts.is_empty() {
        let _ = writeln!(s, "├── mounts ({})", img.mounts.len());
        let mut mounts: Vec<_> = img.mounts.iter().collect();
        mounts.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
        for (i, m) in mounts.iter().enumerate() {
            let last = i + 1 == mounts.len();
            let _ = writeln!(
                s,
                "│   {} {} {} {}{}",
                if last { "└──" } else { "├──" },
                m.mountpoint,
                m.fstype,
                m.source,
                m.external
                    .as_ref()
                    .map(|k| format!(" (external {k})"))
                    .unwrap_or_default()
            );
        }
    }
}

/// The process tree, from each process whose parent was not dumped.
fn render_processes(s: &mut String, img: &Summary) {
    let _ = writeln!(s, "└── processes");
    let roots: Vec<&ProcessReport> = img
        .processes
        .iter()
        .filter(|p| {
            !img.processes
                .iter()
                .any(|q| q.process.pid == p.process.ppid)
        })
        .collect();
    for (i, p) in roots.iter().enumerate() {
        render_process(s, img, p, "    ", i + 1 == roots.len());
    }
}

fn render_process(s: &mut String, img: &Summary, p: &ProcessReport, prefix: &str, last: bool) {
    let branch = if last { "└── " } else { "├── " };
    let cmd = match &p.cmdline {
        Some(c) if !c.is_empty() => c.join(" "),
        _ => format!("[{}]", p.process.comm),
    };
    let mem = p
        .memory
        .map(|m| format!(", {} dumped", human(m.dumped_bytes)))
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "{prefix}{branch}{} {} ({:?}{mem})",
        p.process.pid, cmd, p.process.state
    );
    let child_prefix = format!("{prefix}{}", if last { "    " } else { "│   " });
    let children: Vec<&ProcessReport> = img
        .processes
        .iter()
        .filter(|c| c.process.ppid == p.process.pid && c.process.pid != p.process.pid)
        .collect();
    let mut details: Vec<String> = Vec::new();
    if let Some(exe) = &p.paths.exe {
        details.push(format!("exe: {exe}"));
    }
    if let Some(cwd) = &p.paths.cwd {
        details.push(format!("cwd: {cwd}"));
    }
    for f in &p.files {
        let what = if f.kind.is_socket() { "socket" } else { "fd" };
        details.push(format!("{what} {}: {}", f.fd, f.description));
    }
    if let Some(env) = &p.env {
        for e in env {
            details.push(format!("env: {e}"));
        }
    }
    let n = details.len();
    for (i, d) in details.into_iter().enumerate() {
        let b = if i + 1 == n && children.is_empty() {
            "└── "
        } else {
            "├── "
        };
        let _ = writeln!(s, "{child_prefix}{b}{d}");
    }
    for (i, c) in children.iter().enumerate() {
        render_process(s, img, c, &child_prefix, i + 1 == children.len());
    }
}
