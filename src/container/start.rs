//! `start`: let a created container's init exec the user program.
use std::io::Read;
use std::os::fd::AsRawFd;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::stat::Mode;

use super::{io, sys, Container, Error, Result, Status};
use crate::hooks::{self, Kind};
use crate::state::{EXEC_DONE, EXEC_FIFO};

impl Container {
    /// Starts the user program. Returns poststart hook failures, which are
    /// warnings per the OCI spec.
    pub fn start(&mut self) -> Result<Vec<hooks::Error>> {
        let _lock = self.dir.lock()?;
        self.require(
            &[Status::Created],
            "only a created container can be started (`ferry run` creates and starts)",
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
            nix::errno::Errno::ENXIO => {
                Error::Init("the init is not waiting for start any more".into())
            }
            e => sys("open exec.fifo")(e),
        })?;
        nix::unistd::write(&fifo, &[0]).map_err(sys("signalling the init"))?;
        drop(fifo);
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
        let _ = done.as_raw_fd();
        Ok(hooks::run_all(
            self.state.config.hooks().as_ref(),
            Kind::Poststart,
            &self.oci_state_json(),
        ))
    }
}
