//! Provider sandbox (placeholder until the simulator lands).
#![allow(missing_docs, dead_code, clippy::all)]
use std::time::Duration;
pub struct SandboxConfig {
    pub va_api_key: String,
    pub latency: Duration,
    pub error_rate: f64,
    pub timeout_rate: f64,
    pub hang: Duration,
    pub completion_delay: Duration,
    pub default_payment_amount: rust_decimal::Decimal,
    pub zone: chrono_tz::Tz,
}
impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            va_api_key: String::new(),
            latency: Duration::ZERO,
            error_rate: 0.0,
            timeout_rate: 0.0,
            hang: Duration::ZERO,
            completion_delay: Duration::ZERO,
            default_payment_amount: rust_decimal::Decimal::ZERO,
            zone: chrono_tz::UTC,
        }
    }
}
#[derive(Clone)]
pub struct Sandbox;
impl Sandbox {
    pub fn new(_c: SandboxConfig) -> Self {
        Sandbox
    }
    pub async fn spawn(
        &self,
        _port: u16,
        _s: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
        Err(std::io::Error::other("placeholder"))
    }
}
