//! Logging: `tracing` with pretty output for people or JSON (`LOG_FORMAT=json`) for log
//! pipelines; `RUST_LOG` filters.

use tracing_subscriber::EnvFilter;

/// Default filter for services and commands: our info logs, libraries' warnings. lapin is
/// off: every failure of its I/O loop reaches our code as an error, which is reported once
/// with the setting and the target; lapin's own ERROR lines said the same again, in Rust
/// `Debug` text.
pub const SERVICE_FILTER: &str = "info,sqlx=warn,lapin=off,hyper=warn";

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTo {
    /// Standard output: the long-running services (`run`, `sandbox`), whose output is logs.
    Stdout,
    /// Standard error: commands whose standard output is their result (`bench --json`,
    /// `refunds show`, `dlq list`...), so a log line never corrupts it.
    Stderr,
}

/// Installs the global subscriber (once; later calls are no-ops). `RUST_LOG` overrides
/// `default_filter`.
pub fn init(default_filter: &str, to: LogTo) {
    init_as(default_filter, to, None);
}

/// [`init`], with JSON output chosen by the caller (`run --log-format`) where it is `Some`,
/// else by `LOG_FORMAT`.
pub fn init_as(default_filter: &str, to: LogTo, json: Option<bool>) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = json.unwrap_or_else(|| {
        std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"))
    });
    // Colours only for a person at a terminal: a log file or a collector gets plain text.
    let ansi = match to {
        LogTo::Stdout => std::io::IsTerminal::is_terminal(&std::io::stdout()),
        LogTo::Stderr => std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(move || -> Box<dyn std::io::Write> {
            match to {
                LogTo::Stdout => Box::new(std::io::stdout()),
                LogTo::Stderr => Box::new(std::io::stderr()),
            }
        });
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
