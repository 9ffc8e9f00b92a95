//! Webhooks: outbound delivery of status events to merchants (signed the Standard Webhooks
//! way, retried on a Svix-like schedule, every attempt recorded) and the network policy that
//! keeps callback URLs from reaching internal addresses.

pub mod delivery;
pub mod schedule;
pub mod signing;
pub mod ssrf;
