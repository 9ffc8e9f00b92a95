//! The worker's AMQP connections: the frame size each proposes, and messages larger than
//! one frame.

use crate::helpers::*;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use refund_worker::broker::{self, PUBLISHING_FRAME_MAX};
use std::time::Duration;

#[tokio::test]
async fn only_publishing_connections_propose_a_small_frame_and_the_url_can_set_another() {
    let publishing = broker::connect_publishing(&amqp_url(), "frame-publishing")
        .await
        .unwrap();
    assert_eq!(publishing.configuration().frame_max(), PUBLISHING_FRAME_MAX);
    let consuming = broker::connect(&amqp_url(), "frame-consuming")
        .await
        .unwrap();
    // The broker's own (128 KiB unless the server is configured otherwise).
    assert!(consuming.configuration().frame_max() > PUBLISHING_FRAME_MAX);
    publishing.close(200, "done".into()).await.unwrap();
    consuming.close(200, "done".into()).await.unwrap();

    let url = amqp_url();
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}frame_max=32768");
    let publishing = broker::connect_publishing(&url, "frame-url").await.unwrap();
    let consuming = broker::connect(&url, "frame-url").await.unwrap();
    assert_eq!(publishing.configuration().frame_max(), 32768);
    assert_eq!(consuming.configuration().frame_max(), 32768);
    publishing.close(200, "done".into()).await.unwrap();
    consuming.close(200, "done".into()).await.unwrap();
}

/// Publishes `body` with `headers` on `publishing` and takes it from a queue on
/// `consuming`.
async fn round_trip(
    publishing: &lapin::Connection,
    consuming: &lapin::Connection,
    body: &[u8],
    headers: FieldTable,
) -> lapin::message::Delivery {
    let out = publishing.create_channel().await.unwrap();
    let queue = out
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let name = queue.name().clone();
    out.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = out
        .basic_publish(
            "".into(),
            name.clone(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack(), "the broker did not confirm: {confirm:?}");

    let input = consuming.create_channel().await.unwrap();
    let mut consumer = input
        .basic_consume(
            name,
            "frame-test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("the message arrives")
        .expect("the consumer is open")
        .expect("the consuming connection took the message");
    delivery.ack(BasicAckOptions::default()).await.unwrap();
    delivery
}

#[tokio::test]
async fn a_consuming_connection_takes_a_message_whose_headers_exceed_the_small_frame() {
    // Upstream publishers use the broker's frame size: a header table over
    // PUBLISHING_FRAME_MAX must not break the connection that consumes it.
    let publishing = broker::connect(&amqp_url(), "frame-upstream")
        .await
        .unwrap();
    let consuming = broker::connect(&amqp_url(), "frame-consume").await.unwrap();
    let mut headers = FieldTable::default();
    let big = "h".repeat(PUBLISHING_FRAME_MAX as usize * 5 / 2);
    headers.insert(
        "x-upstream-baggage".into(),
        AMQPValue::LongString(big.clone().into()),
    );
    let delivery = round_trip(&publishing, &consuming, b"{}", headers).await;
    let kept = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-upstream-baggage").cloned());
    assert_eq!(kept, Some(AMQPValue::LongString(big.into())));
    assert!(consuming.status().connected());
    let _ = publishing.close(200, "done".into()).await;
    let _ = consuming.close(200, "done".into()).await;
}

#[tokio::test]
async fn a_body_larger_than_a_frame_from_a_publishing_connection_arrives_whole() {
    let publishing = broker::connect_publishing(&amqp_url(), "frame-publish")
        .await
        .unwrap();
    let consuming = broker::connect(&amqp_url(), "frame-consume").await.unwrap();
    // Twelve and a half frames, none of them a repeat of another.
    let body: Vec<u8> = (0..PUBLISHING_FRAME_MAX as usize * 25 / 2)
        .map(|i| (i % 251) as u8)
        .collect();
    let delivery = round_trip(&publishing, &consuming, &body, FieldTable::default()).await;
    assert_eq!(delivery.data.len(), body.len());
    assert!(delivery.data == body, "the message arrived changed");
    let _ = publishing.close(200, "done".into()).await;
    let _ = consuming.close(200, "done".into()).await;
}
