//! The `refund-worker` binary: parses the command line and hands over to the library.

/// jemalloc instead of the system allocator: the worker allocates and frees many small
/// buffers per message (frames, JSON, rows), and glibc's malloc spent about a fifth of the
/// worker's CPU on them under load, much of it consolidating free chunks. jemalloc cut the
/// worker's CPU per refund by about a tenth for 4 to 5 MiB more peak RSS; mimalloc saved as
/// much but took the peak past 64 MiB (BENCHMARKS.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match refund_worker::cli::main().await {
        Ok(code) => code,
        Err(e) => {
            // The cause chain on one line, each cause once; causes never carry secrets.
            eprintln!("error: {}", refund_worker::cli::exit::message(&e));
            refund_worker::cli::exit::code_for(&e)
        }
    }
}
