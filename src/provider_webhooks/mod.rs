//! Provider webhooks, in: the ingress verifies a provider's webhook with its adapter and
//! queues it to `provider.webhooks` before the provider gets its 2xx. The HTTP route that
//! receives them is [`crate::http`]'s; the inbox they are stored in is
//! [`crate::store::provider_webhooks`], and [`crate::pipeline::provider_webhooks`] applies them. Merchant webhooks
//! going out are [`crate::merchant_webhooks`].

pub(crate) mod ingress;
