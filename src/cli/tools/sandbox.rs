//! `refund-worker sandbox`: serves the provider simulator until ctrl-c.

use refund_sandbox::{Sandbox, SandboxConfig};
use std::time::Duration;

/// Flags of `sandbox`.
#[derive(Debug, clap::Args)]
pub(crate) struct SandboxArgs {
    /// Address to listen on (0.0.0.0 in containers).
    #[arg(long, env = "SANDBOX_BIND", default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
    /// Port (0 = any free port).
    #[arg(long, env = "SANDBOX_PORT", default_value_t = 8090)]
    port: u16,
    /// Bearer token the simulated VA Services API expects.
    #[arg(
        long,
        env = "SANDBOX_VA_API_KEY",
        default_value = "sandbox-va-key",
        hide_env_values = true
    )]
    va_api_key: String,
    /// Latency added to every provider API response, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// With --latency-ms as the median: a log-normal spread whose 99th percentile is this,
    /// in milliseconds (e.g. --latency-ms 300 --latency-p99-ms 2000).
    #[arg(long)]
    latency_p99_ms: Option<u64>,
    /// Share (0 to 1) of provider calls answered with HTTP 500.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Share (0 to 1) of refund requests accepted but answered only after --hang-ms.
    #[arg(long, default_value_t = 0.0)]
    timeout_rate: f64,
    /// How long a "timeout after accept" hangs, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    hang_ms: u64,
    /// Time from acceptance to completion of a refund, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    completion_delay_ms: u64,
    /// refund-worker's HTTP address (e.g. http://127.0.0.1:8080): providers then send their
    /// signed notifications to `<url>/webhooks/<provider>`.
    #[arg(long, env = "SANDBOX_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// Share (0 to 1) of notifications sent twice.
    #[arg(long, default_value_t = 0.0)]
    webhook_duplicate_rate: f64,
    /// Share (0 to 1) of notifications first sent with a corrupted signature.
    #[arg(long, default_value_t = 0.0)]
    webhook_bad_signature_rate: f64,
    /// Share (0 to 1) of notifications held back so later ones overtake them.
    #[arg(long, default_value_t = 0.0)]
    webhook_reorder_rate: f64,
    /// Serve only the endpoints the providers' docs define (no VA Services "Refund
    /// Details" at our guessed path): what refund-worker meets at a real provider.
    #[arg(long)]
    strict: bool,
}

/// Runs the sandbox until ctrl-c or SIGTERM.
pub(super) async fn run(args: SandboxArgs) -> anyhow::Result<()> {
    for (name, rate) in [
        ("--error-rate", args.error_rate),
        ("--timeout-rate", args.timeout_rate),
        ("--webhook-duplicate-rate", args.webhook_duplicate_rate),
        (
            "--webhook-bad-signature-rate",
            args.webhook_bad_signature_rate,
        ),
        ("--webhook-reorder-rate", args.webhook_reorder_rate),
    ] {
        anyhow::ensure!(
            (0.0..=1.0).contains(&rate),
            "{name} must be between 0 and 1, got {rate}"
        );
    }
    let config = SandboxConfig {
        va_api_key: args.va_api_key,
        latency: Duration::from_millis(args.latency_ms),
        latency_p99: args.latency_p99_ms.map(Duration::from_millis),
        error_rate: args.error_rate,
        timeout_rate: args.timeout_rate,
        hang: Duration::from_millis(args.hang_ms),
        completion_delay: Duration::from_millis(args.completion_delay_ms),
        webhook_url: args.webhook_url.map(|u| u.trim_end_matches('/').to_owned()),
        webhook_duplicate_rate: args.webhook_duplicate_rate,
        webhook_bad_signature_rate: args.webhook_bad_signature_rate,
        webhook_reorder_rate: args.webhook_reorder_rate,
        strict: args.strict,
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::new(config.clone());
    let (addr, handle) = sandbox
        .spawn_on((args.bind, args.port).into(), crate::cli::wait_for_signal())
        .await?;
    println!(
        "provider sandbox listening on http://{addr} (VA Services, BPN, Binance Pay, BVNK){}",
        if config.strict {
            ", strict: documented endpoints only"
        } else {
            ""
        }
    );
    println!("  point refund-worker at it with (sandbox credentials, not secrets):");
    for (key, value) in config.provider_env(addr) {
        println!("    export {key}={}", shell_quote(&value));
    }
    match &config.webhook_url {
        Some(url) => println!("  notifications go to {url}/webhooks/<provider>"),
        None => println!("  notifications are off (--webhook-url to send them)"),
    }
    println!("  ledger: curl http://{addr}/sandbox/ledger");
    handle.await?;
    Ok(())
}

/// One shell word for `value`, pasteable as printed: single-quoted, and a multi-line value
/// (the Binance Pay public key) on one line with `\n` escapes, which refund-worker reads.
fn shell_quote(value: &str) -> String {
    let one_line = value.trim_end().replace('\n', "\\n");
    format!("'{}'", one_line.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn printed_settings_are_one_shell_word_each() {
        assert_eq!(
            shell_quote("http://127.0.0.1:8090"),
            "'http://127.0.0.1:8090'"
        );
        let pem = "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n";
        assert_eq!(
            shell_quote(pem),
            "'-----BEGIN PUBLIC KEY-----\\nMIIB\\n-----END PUBLIC KEY-----'"
        );
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
