//! A network namespace made before the tree that will live in it: a
//! restore whose CRIU runs inside the container's namespace fills it (the
//! veth, `lo` up) first, then starts CRIU in it.
//!
//! A thread of this process makes it (`unshare` of a network namespace
//! changes only the calling thread) and stays parked in it while ferry
//! fills it, so that the calls that address a namespace by process id
//! (`/proc/<id>/ns/net`) reach it through the thread's id. The namespace
//! file keeps it alive after the thread ends.
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::thread::JoinHandle;

pub struct NewNetns {
    /// Taken by [`NewNetns::into_file`].
    file: Option<OwnedFd>,
    tid: i32,
    /// Dropping it ends the holder thread.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl NewNetns {
    pub fn create() -> io::Result<NewNetns> {
        let (tx, rx) = mpsc::channel::<io::Result<(i32, OwnedFd)>>();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("netns-holder".into())
            .spawn(move || {
                let made = (|| {
                    // SAFETY: plain syscalls; unshare changes only this
                    // thread, which never leaves the new namespace.
                    unsafe {
                        if libc::unshare(libc::CLONE_NEWNET) != 0 {
                            return Err(io::Error::last_os_error());
                        }
                        let fd = libc::open(
                            c"/proc/thread-self/ns/net".as_ptr(),
                            libc::O_RDONLY | libc::O_CLOEXEC,
                        );
                        if fd < 0 {
                            return Err(io::Error::last_os_error());
                        }
                        Ok((libc::gettid(), OwnedFd::from_raw_fd(fd)))
                    }
                })();
                let ok = made.is_ok();
                let _ = tx.send(made);
                if ok {
                    // Parked until the owner is done with the thread id.
                    let _ = stopped.recv();
                }
            })?;
        let (tid, file) = rx
            .recv()
            .map_err(|_| io::Error::other("the namespace thread ended"))??;
        Ok(NewNetns {
            file: Some(file),
            tid,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// An id under `/proc` whose `ns/net` is this namespace, while `self`
    /// lives: for the calls that take a process id.
    pub fn pid(&self) -> i32 {
        self.tid
    }

    /// The namespace file (for `setns`); the holder thread ends.
    pub fn into_file(mut self) -> OwnedFd {
        self.end_thread();
        self.file.take().expect("taken only here")
    }

    fn end_thread(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for NewNetns {
    fn drop(&mut self) {
        self.end_thread();
    }
}
