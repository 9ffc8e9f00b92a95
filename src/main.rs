//! The `refund-worker` binary: parses the command line and hands over to the library.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match refund_worker::cli::main().await {
        Ok(code) => code,
        Err(e) => {
            // `{:#}` prints the cause chain on one line; causes never carry secrets.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
