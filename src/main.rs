//! The `switchboard` binary: everything happens in `cli::main`.

fn main() {
    std::process::exit(switchboard::cli::main(std::env::args().skip(1).collect()));
}
