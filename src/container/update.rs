//! `update`: change cgroup resources of a live container.
use oci_spec::runtime::LinuxResources;

use super::{Container, Result, Status};

impl Container {
    /// Applies `resources` and records them in the container's config.
    pub fn update(&mut self, resources: &LinuxResources) -> Result<()> {
        let _lock = self.dir.lock()?;
        self.require(
            &[Status::Created, Status::Running, Status::Paused],
            "only a live container can be updated",
        )?;
        self.cgroup_or_err()?.apply(resources)?;
        let mut linux = self.state.config.linux().clone().unwrap_or_default();
        let merged = merge(linux.resources().clone().unwrap_or_default(), resources);
        linux.set_resources(Some(merged));
        self.state.config.set_linux(Some(linux));
        self.dir.save(&self.state)?;
        Ok(())
    }
}

/// `new` over `old`, section by section (memory, cpu, pids).
fn merge(mut old: LinuxResources, new: &LinuxResources) -> LinuxResources {
    if new.memory().is_some() {
        old.set_memory(*new.memory());
    }
    if new.cpu().is_some() {
        old.set_cpu(new.cpu().clone());
    }
    if new.pids().is_some() {
        old.set_pids(*new.pids());
    }
    old
}
