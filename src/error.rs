//! The one place that decides whether an infrastructure error is worth retrying.
//!
//! Broker errors are always transient for us (the loops reconnect); database errors are
//! split here.
//!
//! Loops (consumers, the dispatcher, the relay) all ask [`is_retryable`]: a retryable error
//! means "the database or broker is unavailable right now, keep the message and try again
//! after a backoff"; a final one means "this input will never work" and is dead-lettered or
//! failed instead of being retried forever.

/// Whether a database error is transient (connection lost, pool exhausted, serialization
/// conflict, server shutting down) rather than a fault of the data.
pub(crate) fn sqlx_is_retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            // 40001 serialization_failure, 40P01 deadlock, 57P01..03 admin shutdown /
            // crash shutdown / cannot connect now, 08xxx connection exceptions,
            // 53300 too_many_connections.
            let code = db.code().unwrap_or_default();
            matches!(
                code.as_ref(),
                "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "53300"
            ) || code.starts_with("08")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_timeouts_are_retryable_and_row_errors_are_not() {
        assert!(sqlx_is_retryable(&sqlx::Error::PoolTimedOut));
        assert!(!sqlx_is_retryable(&sqlx::Error::RowNotFound));
        assert!(!sqlx_is_retryable(&sqlx::Error::ColumnNotFound("x".into())));
    }
}
