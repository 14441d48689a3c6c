//! Migration modes, how one is chosen, and the CRIU requests each makes.
//!
//! * **stop-copy**: freeze, dump with memory pages streamed straight into
//!   the destination's CRIU page server, ship the other images, restore.
//!   Works wherever CRIU works.
//! * **pre-copy**: iterative pre-dumps (`track_mem`, each iteration's
//!   images pointing at the previous one as parent) while the container
//!   runs, then a final dump that only sends what changed since. Needs
//!   soft-dirty memory tracking (`mem_track`) on the source.
//! * **post-copy**: dump without memory (`lazy_pages`), restore at once,
//!   pages fetched on demand from the source. Needs userfaultfd
//!   (`lazy_pages`) on both sides, the operator's consent, and is never
//!   chosen by `auto` (see `source::postcopy` for the failure outcomes).
//!
//! The plan types ([`DumpPlan`], [`PageServerPlan`], [`RestorePlan`],
//! [`LazyPagesPlan`]) are what a host maps onto its CRIU client; their
//! fields are named after the `criu_opts` fields they set.
use serde::{Deserialize, Serialize};

use crate::info::Features;

mod plans;
mod precopy;

pub use plans::*;
pub use precopy::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    StopCopy,
    PreCopy,
    PostCopy,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::StopCopy => "stop-copy",
            Mode::PreCopy => "pre-copy",
            Mode::PostCopy => "post-copy",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the user asked for (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModeRequest {
    #[default]
    Auto,
    StopCopy,
    PreCopy,
    PostCopy,
}

impl std::str::FromStr for ModeRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => ModeRequest::Auto,
            "stop-copy" => ModeRequest::StopCopy,
            "pre-copy" => ModeRequest::PreCopy,
            "post-copy" => ModeRequest::PostCopy,
            _ => {
                return Err(format!(
                    "unknown mode {s:?} (auto, stop-copy, pre-copy or post-copy)"
                ))
            }
        })
    }
}

/// A mode that was not used, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotUsed {
    pub mode: Mode,
    pub reason: String,
}

/// The chosen mode, why, and why not the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeChoice {
    pub mode: Mode,
    pub reason: String,
    pub not_used: Vec<NotUsed>,
}

/// Why pre-copy cannot run with these features and this source host's
/// implementation (`implemented`: the modes it can drive), if it cannot.
pub fn precopy_unavailable(src: &Features, implemented: &[Mode]) -> Option<String> {
    if !src.mem_track {
        return Some(
            "the source kernel has no soft-dirty memory tracking (CRIU feature mem_track; \
             CONFIG_MEM_SOFT_DIRTY), which pre-dumps need"
                .to_string(),
        );
    }
    (!implemented.contains(&Mode::PreCopy)).then(|| {
        "the source kernel tracks dirty memory, but this runtime's source host does not \
         implement pre-dump iterations yet"
            .to_string()
    })
}

/// Why post-copy cannot run with these features and this source host's
/// implementation, if it cannot. A host reports `lazy_pages` only where a
/// lazy dump was measured to work, not merely where CRIU names the feature.
pub fn postcopy_unavailable(
    src: &Features,
    dst: &Features,
    implemented: &[Mode],
) -> Option<String> {
    if !src.lazy_pages || !dst.lazy_pages {
        let side = match (src.lazy_pages, dst.lazy_pages) {
            (false, false) => "neither host",
            (false, true) => "the source",
            _ => "the destination",
        };
        let verb = if side == "neither host" {
            "can serve"
        } else {
            "cannot serve"
        };
        return Some(format!(
            "{side} {verb} lazy pages (CRIU's lazy_pages feature with a lazy dump that              works; `ferry check` there shows what was measured)"
        ));
    }
    (!implemented.contains(&Mode::PostCopy))
        .then(|| "this runtime's source host does not drive post-copy".to_string())
}

/// Why `auto` never picks post-copy.
pub const POSTCOPY_NOT_AUTO: &str = "never chosen by auto: until the last page arrives the \
     container depends on both hosts, and a failure then resumes it here, losing its work on the \
     destination (ask for it with --mode post-copy --accept-postcopy-risk)";

/// Why post-copy needs the operator's explicit consent.
pub const POSTCOPY_RISK: &str = "post-copy needs --accept-postcopy-risk: the container runs on \
     the destination before its memory has arrived, and if the link or either host fails before \
     the last page does, the destination's copy is stopped and the container resumes here from \
     the switchover, losing everything it did on the destination";

/// Chooses the mode among those both hosts' kernels support *and* the
/// source host implements (`implemented`, from `SourceHost::modes`).
/// `Auto` picks pre-copy where possible, else stop-copy, and never
/// post-copy (see [`POSTCOPY_NOT_AUTO`]). An explicit mode that cannot run
/// is an error with the reason: it is never silently replaced.
pub fn choose_mode(
    req: ModeRequest,
    src: &Features,
    dst: &Features,
    implemented: &[Mode],
) -> Result<ModeChoice, String> {
    let pre = precopy_unavailable(src, implemented);
    let post = postcopy_unavailable(src, dst, implemented);
    let explicit = |mode: Mode, why: Option<String>| match why {
        Some(reason) => Err(format!("{mode} migration is not possible: {reason}")),
        None => Ok(ModeChoice {
            mode,
            reason: "requested".into(),
            not_used: Vec::new(),
        }),
    };
    match req {
        ModeRequest::StopCopy => explicit(Mode::StopCopy, None),
        ModeRequest::PreCopy => explicit(Mode::PreCopy, pre),
        ModeRequest::PostCopy => explicit(Mode::PostCopy, post),
        ModeRequest::Auto => {
            let not_used = vec![NotUsed {
                mode: Mode::PostCopy,
                reason: post.unwrap_or_else(|| POSTCOPY_NOT_AUTO.to_string()),
            }];
            let mut not_used = not_used;
            match pre {
                None => Ok(ModeChoice {
                    mode: Mode::PreCopy,
                    reason: "auto: the source tracks dirty memory, so memory is copied while \
                             the container runs and only the last changes during the freeze"
                        .into(),
                    not_used: {
                        not_used.push(NotUsed {
                            mode: Mode::StopCopy,
                            reason: "pre-copy is available and shortens the downtime".into(),
                        });
                        not_used
                    },
                }),
                Some(reason) => {
                    not_used.insert(
                        0,
                        NotUsed {
                            mode: Mode::PreCopy,
                            reason,
                        },
                    );
                    Ok(ModeChoice {
                        mode: Mode::StopCopy,
                        reason: "auto: the only mode this pair of hosts and runtime supports"
                            .into(),
                        not_used,
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
