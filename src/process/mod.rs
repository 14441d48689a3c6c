//! Turning a forked or cloned child into the configured process: the
//! security-critical steps between entering the container and exec, in the
//! one order both the container's init and `exec` use.
//!
//! This code runs in the child; failures are [`Failure`]s that travel to
//! the parent over the sync channel.
pub mod caps;
pub mod fds;
pub mod keyring;
pub mod program;
pub mod setup;
pub mod tty;
mod user;

pub use crate::sync::Failure;
pub use program::{environment, resolve_program, Program};
pub use setup::{enter, finish, Keyring, Ready};

pub type Result<T> = std::result::Result<T, Failure>;
