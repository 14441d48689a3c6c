//! Post-copy on the destination: restore lazily, run at once, and keep
//! the container only once every page has arrived.
//!
//! Until the lazy-pages daemon has fetched the last page the container
//! cannot live without the source. So it is stopped (`DestHost::abort`)
//! on the source's `Abort`, on any error (the daemon failing included),
//! when the source is gone (its end closed) and when the link is silent
//! for the link timeout the source gave; the host also stops it should
//! this process die. It is this host's once the source has been told
//! that every page arrived.
use std::time::Duration;

use super::session::{out_of_order, Session};
use super::State;
use crate::mode::{self, LazyPagesPlan};
use crate::proto::Msg;
use crate::transport::Channel;
use crate::Error;

/// The link timeouts a source may ask for.
const LINK_TIMEOUT: std::ops::RangeInclusive<u64> = 1_000..=600_000;

impl Session<'_> {
    /// `LazyRestore`: starts the lazy-pages daemon, fetching from the
    /// source's CRIU at the address this connection comes from (never an
    /// address the peer names), then restores with lazy pages.
    pub(super) fn lazy_restore(
        &mut self,
        port: u16,
        link_timeout_ms: u64,
    ) -> Result<crate::host::Restored, Error> {
        if !LINK_TIMEOUT.contains(&link_timeout_ms) {
            return Err(Error::Refused(format!(
                "link timeout {link_timeout_ms} ms is out of range ({} to {} ms)",
                LINK_TIMEOUT.start(),
                LINK_TIMEOUT.end()
            )));
        }
        let peer = self
            .peer
            .ok_or_else(|| Error::Refused("the source's address is unknown".into()))?;
        if port == 0 {
            return Err(Error::Refused("lazy pages on port 0".into()));
        }
        let plan = LazyPagesPlan {
            images_dir: self.dest().images_dir.join(mode::FINAL_DIR),
            address: peer.ip().to_string(),
            port,
            tls: self.shared.cfg.security.paths().cloned(),
        };
        self.host()
            .start_lazy_pages(&plan)
            .map_err(Error::host("starting the lazy-pages daemon"))?;
        self.lazy = Some(Duration::from_millis(link_timeout_ms));
        self.restore()
    }

    /// `Commit` in post-copy: runs the container, answers the source's
    /// queries until every page has arrived.
    pub(super) fn post_copy(&mut self, ch: &mut Channel, link: Duration) -> Result<(), Error> {
        self.host()
            .start()
            .map_err(Error::host("starting the container"))?;
        // Kept only once the source was told every page arrived: a source
        // that never heard it resumes its own copy.
        self.serve_queries(ch, link)?;
        self.shared.set_state(&self.mid, State::Running);
        self.remove_images();
        Ok(())
    }

    fn serve_queries(&mut self, ch: &mut Channel, link: Duration) -> Result<(), Error> {
        ch.set_timeout(Some(link));
        ch.send(&Msg::Running)?;
        loop {
            match ch.recv()? {
                Msg::PagesQuery => {
                    let done = self
                        .host()
                        .lazy_pages_done()
                        .map_err(Error::host("fetching pages from the source"))?;
                    if done {
                        self.shared.set_state(&self.mid, State::Running);
                        let _ = ch.send(&Msg::PagesStatus { done: true });
                        return Ok(());
                    }
                    ch.send(&Msg::PagesStatus { done: false })?;
                }
                Msg::Abort { reason } => return Err(Error::Aborted(reason)),
                m => return Err(out_of_order(&m)),
            }
        }
    }
}
