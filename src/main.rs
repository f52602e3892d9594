//! `grove`: see the library crate and ARCHITECTURE.md.

fn main() {
    std::process::exit(grove::cli::main());
}
