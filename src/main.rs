//! The `recgw` binary: everything lives in the library; see `recgw --help`.

/// mimalloc instead of glibc's allocator: a request makes a few dozen small allocations on
/// several threads, and glibc's malloc and free took about 15% of the serving CPU in the
/// profile of a local-hit load (`bench/EXPERIMENT.md`); mimalloc's thread-local free lists
/// make them a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    recgw::cli::main()
}
