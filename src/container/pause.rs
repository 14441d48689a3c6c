//! `pause` / `resume` through the cgroup freezer.
use super::{Container, Result, Status};

impl Container {
    /// Returns once the kernel reports the cgroup frozen.
    pub fn pause(&self) -> Result<()> {
        let _span = tracing::info_span!("pause", id = %self.id()).entered();
        let _lock = self.dir.lock()?;
        self.require(&[Status::Running], "only a running container can be paused")?;
        self.cgroup_or_err()?.freeze()?;
        Ok(())
    }

    pub fn resume(&self) -> Result<()> {
        let _span = tracing::info_span!("resume", id = %self.id()).entered();
        let _lock = self.dir.lock()?;
        self.require(&[Status::Paused], "only a paused container can be resumed")?;
        // CRIU keeps its network lock after `checkpoint --leave-stopped`.
        super::delete::remove_criu_lock(&self.dir);
        self.cgroup_or_err()?.thaw()?;
        Ok(())
    }
}
