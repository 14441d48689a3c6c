//! The `ferry` command: parses arguments, calls the library, prints one
//! clear line on error and exits non-zero.
mod cli;

fn main() {
    // Before ferry opens anything: which fds the caller passed (what
    // `--preserve-fds` may hand on).
    ferry::process::fds::record_inherited();
    std::process::exit(cli::main());
}
