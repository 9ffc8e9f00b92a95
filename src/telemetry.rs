//! Logging: `tracing` with pretty output for people or JSON (`LOG_FORMAT=json`) for log
//! pipelines; `RUST_LOG` filters.

use tracing_subscriber::EnvFilter;

/// Default filter for services: our info logs, libraries' warnings.
pub const SERVICE_FILTER: &str = "info,sqlx=warn,lapin=warn,hyper=warn";

/// Installs the global subscriber (once; later calls are no-ops). `RUST_LOG` overrides
/// `default_filter`.
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    // Colours only for a person at a terminal: a log file or a collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
