//! `refund-worker sandbox`: serves the provider simulator until ctrl-c.

use crate::sandbox::{Sandbox, SandboxConfig};
use std::time::Duration;

/// Flags of `sandbox`.
#[derive(Debug, clap::Args)]
pub struct SandboxArgs {
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
}

/// Runs the sandbox until ctrl-c or SIGTERM.
pub async fn run(args: SandboxArgs) -> anyhow::Result<()> {
    for (name, rate) in [
        ("--error-rate", args.error_rate),
        ("--timeout-rate", args.timeout_rate),
    ] {
        anyhow::ensure!(
            (0.0..=1.0).contains(&rate),
            "{name} must be between 0 and 1, got {rate}"
        );
    }
    let sandbox = Sandbox::new(SandboxConfig {
        va_api_key: args.va_api_key,
        latency: Duration::from_millis(args.latency_ms),
        error_rate: args.error_rate,
        timeout_rate: args.timeout_rate,
        hang: Duration::from_millis(args.hang_ms),
        completion_delay: Duration::from_millis(args.completion_delay_ms),
        ..SandboxConfig::default()
    });
    let (addr, handle) = sandbox
        .spawn_on((args.bind, args.port).into(), super::wait_for_signal())
        .await?;
    println!("provider sandbox listening on http://{addr}");
    println!("  VA Services: PROVIDER_VA_SERVICES_BASE_URL=http://{addr} PROVIDER_VA_SERVICES_API_KEY=<--va-api-key>");
    println!("  ledger:      curl http://{addr}/sandbox/ledger");
    handle.await?;
    Ok(())
}
