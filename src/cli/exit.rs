//! Exit codes of every command. Connecting so that a failure names the setting, the target
//! (never a password) and the cause, once, is [`crate::app::connect`]'s (re-exported here).
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | an operation failed |
//! | 2 | usage error (clap's own code too) |
//! | 3 | `reconcile`: mismatches found |
//! | 4 | the thing named does not exist |
//! | 5 | the database or the broker could not be reached |

pub use crate::app::connect::{broker, database, database_url, Unreachable};
use std::process::ExitCode;

/// Exit code: an operation failed.
pub const FAILURE: u8 = 1;
/// Exit code: a usage error (a bad option or combination of options).
pub const USAGE: u8 = 2;
/// Exit code: the refund, dead letter or webhook named does not exist.
pub const NOT_FOUND: u8 = 4;
/// Exit code: PostgreSQL or RabbitMQ could not be reached (or refused us).
pub const UNREACHABLE: u8 = 5;

/// `ExitCode` for "not found".
pub fn not_found() -> ExitCode {
    ExitCode::from(NOT_FOUND)
}

/// `ExitCode` for a usage error.
pub fn usage() -> ExitCode {
    ExitCode::from(USAGE)
}

/// The exit code for an error that ended a command: [`UNREACHABLE`] when the database or
/// broker could not be reached, else [`FAILURE`].
pub fn code_for(error: &anyhow::Error) -> ExitCode {
    if error.chain().any(|e| e.is::<Unreachable>()) {
        ExitCode::from(UNREACHABLE)
    } else {
        ExitCode::from(FAILURE)
    }
}

/// The error and its causes on one line, each cause once: libraries often repeat their
/// source's text in their own (`pool timed out: pool timed out`), which `{:#}` would print
/// twice.
pub fn message(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_printed_once() {
        let e = anyhow::Error::msg("pool timed out").context("database: pool timed out");
        let e = e.context("connecting");
        assert_eq!(message(&e), "connecting: database: pool timed out");
        assert_eq!(code_for(&e), ExitCode::from(FAILURE));
        let e = anyhow::Error::from(Unreachable("x".into())).context("step");
        assert_eq!(code_for(&e), ExitCode::from(UNREACHABLE));
    }
}
