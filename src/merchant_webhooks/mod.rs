//! Merchant webhooks, out: status events delivered to merchants (signed the Standard Webhooks
//! way, retried on a Svix-like schedule, every attempt recorded), and the network policy that
//! keeps callback URLs from reaching internal addresses. The deliveries themselves are rows of
//! [`crate::store::merchant_webhooks`]. Provider webhooks coming in are
//! `crate::provider_webhooks`.

pub mod delivery;
pub mod schedule;
pub mod signing;
pub mod ssrf;
