//! Webhooks: outbound delivery of status events to merchants (signed the Standard Webhooks
//! way, retried on a Svix-like schedule, every attempt recorded) and the network policy that
//! keeps callback URLs from reaching internal addresses; and the HTTP ingress of inbound
//! provider webhooks (verified, then queued to `provider.webhooks`).

pub mod delivery;
pub mod ingress;
pub mod schedule;
pub mod signing;
pub mod ssrf;
