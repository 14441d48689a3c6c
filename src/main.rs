//! The `ferry` command: parses arguments, calls the library, prints one
//! clear line on error and exits non-zero.
mod cli;

fn main() {
    std::process::exit(cli::main());
}
