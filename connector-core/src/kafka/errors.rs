//! Maps Kafka protocol error codes and transport failures onto [`Error`] kinds: what a retry can
//! fix (leader moved, broker down, timeout), what is wrong with the record itself (too large,
//! corrupt, invalid timestamp), and what stops the task (authorization, unsupported version).

use crate::kafka::wire::error::Error as ApiError;
use crate::kafka::wire::messenger::RequestError;

use crate::Error;

/// True when the broker's answer means "try again later".
pub(crate) fn is_retriable_code(e: ApiError) -> bool {
    matches!(
        e,
        ApiError::UnknownServerError
            | ApiError::UnknownTopicOrPartition
            | ApiError::LeaderNotAvailable
            | ApiError::NotLeaderOrFollower
            | ApiError::RequestTimedOut
            | ApiError::BrokerNotAvailable
            | ApiError::ReplicaNotAvailable
            | ApiError::NetworkException
            | ApiError::CoordinatorLoadInProgress
            | ApiError::CoordinatorNotAvailable
            | ApiError::NotCoordinator
            | ApiError::NotEnoughReplicas
            | ApiError::NotEnoughReplicasAfterAppend
            | ApiError::NotController
            | ApiError::KafkaStorageError
            | ApiError::FencedLeaderEpoch
            | ApiError::UnknownLeaderEpoch
            | ApiError::OffsetNotAvailable
            | ApiError::PreferredLeaderNotAvailable
            | ApiError::EligibleLeadersNotAvailable
            | ApiError::ThrottlingQuotaExceeded
            | ApiError::ConcurrentTransactions
            | ApiError::RebalanceInProgress
            | ApiError::UnstableOffsetCommit
    )
}

/// True when the error is about the record (batch) itself.
pub(crate) fn is_record_error(e: ApiError) -> bool {
    matches!(
        e,
        ApiError::CorruptMessage
            | ApiError::MessageTooLarge
            | ApiError::RecordListTooLarge
            | ApiError::InvalidRecord
            | ApiError::InvalidTimestamp
            | ApiError::InvalidTopicException
    )
}

/// True when the cached leader or topic metadata is probably stale.
pub(crate) fn invalidates_metadata(e: ApiError) -> bool {
    matches!(
        e,
        ApiError::UnknownTopicOrPartition
            | ApiError::LeaderNotAvailable
            | ApiError::NotLeaderOrFollower
            | ApiError::BrokerNotAvailable
            | ApiError::ReplicaNotAvailable
            | ApiError::FencedLeaderEpoch
            | ApiError::UnknownLeaderEpoch
            | ApiError::NotController
            | ApiError::KafkaStorageError
    )
}

/// An [`Error`] for a broker's error code, with `what` describing the request.
pub(crate) fn api_error(e: ApiError, what: impl std::fmt::Display) -> Error {
    let message = format!("{what}: broker answered {e:?}");
    if is_retriable_code(e) {
        Error::retriable(message)
    } else if is_record_error(e) {
        Error::rejected(message)
    } else {
        Error::fatal(message)
    }
}

/// An [`Error`] for a failed request to `broker`. Transport failures are retriable; a request the
/// broker cannot understand at any version we speak is fatal.
pub(crate) fn request_error(e: RequestError, broker: &str) -> Error {
    match e {
        RequestError::NoVersionMatch { api_key } => Error::fatal(format!(
            "Kafka broker {broker} supports no version of {api_key:?} that we speak"
        )),
        other => {
            Error::retriable(format!("request to Kafka broker {broker} failed")).with_source(other)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn error_codes_map_to_what_a_retry_can_do() {
        assert_eq!(
            api_error(ApiError::NotLeaderOrFollower, "produce").kind(),
            ErrorKind::Retriable
        );
        assert_eq!(
            api_error(ApiError::MessageTooLarge, "produce").kind(),
            ErrorKind::RecordRejected
        );
        assert_eq!(
            api_error(ApiError::TopicAuthorizationFailed, "produce").kind(),
            ErrorKind::Fatal
        );
        assert!(invalidates_metadata(ApiError::NotLeaderOrFollower));
        assert!(!invalidates_metadata(ApiError::MessageTooLarge));
    }
}
