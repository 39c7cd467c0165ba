//! The `recgw` binary: everything lives in the library; see `recgw --help`.

fn main() -> std::process::ExitCode {
    recgw::cli::main()
}
