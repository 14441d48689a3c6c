//! `start`: let a created container's init exec the user program.
use std::io::Read;
use std::os::fd::AsFd;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::stat::Mode;

use super::{io, sys, Container, Error, Result, Status};
use crate::hooks::{self, Kind};
use crate::state::{EXEC_DONE, EXEC_FIFO};

impl Container {
    /// Starts the user program. Returns poststart hook failures, which are
    /// warnings per the OCI spec.
    pub fn start(&mut self) -> Result<Vec<hooks::Error>> {
        let _span = tracing::info_span!("start", id = %self.id()).entered();
        let _lock = self.dir.lock()?;
        self.require(
            &[Status::Created],
            "only a created container can be started",
        )?;
        // Open our end of exec.done first so the init's exec cannot be missed.
        let done = nix::fcntl::open(
            &self.dir.file(EXEC_DONE),
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys("open exec.done"))?;
        fcntl(&done, FcntlArg::F_SETFL(OFlag::empty())).map_err(sys("exec.done"))?;
        let fifo = nix::fcntl::open(
            &self.dir.file(EXEC_FIFO),
            OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            nix::errno::Errno::ENXIO => Error::NotWaiting,
            e => sys("open exec.fifo")(e),
        })?;
        nix::unistd::write(&fifo, &[0]).map_err(sys("signalling the init"))?;
        drop(fifo);
        // The init runs startContainer hooks, then execs (closing exec.done)
        // or writes why it could not.
        if let Some(limit) = hooks::bound(
            self.state.config.hooks().as_ref(),
            Kind::StartContainer,
            super::create::INIT_TIMEOUT,
        ) {
            let mut fds = [nix::poll::PollFd::new(
                done.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let deadline = std::time::Instant::now() + limit;
            let ready = loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let ms = u16::try_from(left.as_millis().min(1000)).unwrap_or(1000);
                match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    Ok(0) if !left.is_zero() => continue,
                    r => break r.map_err(sys("waiting for the user program to start"))?,
                }
            };
            if ready == 0 {
                return Err(Error::ExecTimeout { waited: limit });
            }
        }
        let mut report = String::new();
        let mut done = std::fs::File::from(done);
        done.read_to_string(&mut report)
            .map_err(io("waiting for the user program to start"))?;
        let _ = std::fs::remove_file(self.dir.file(EXEC_FIFO));
        let _ = std::fs::remove_file(self.dir.file(EXEC_DONE));
        self.state.started = true;
        self.dir.save(&self.state)?;
        if !report.is_empty() {
            return Err(Error::Init(report));
        }
        Ok(hooks::run_all(
            self.state.config.hooks().as_ref(),
            Kind::Poststart,
            &self.oci_state_json(),
        ))
    }
}
