//! Refusals a peer acts on, by kind: the coordinator sends the kind in the status's metadata
//! (`KIND_KEY`) beside its message, and the worker reads the kind, never the message's text
//! (which is for people and may change).

use tonic::Status;
use tonic::metadata::MetadataValue;

/// The metadata key that carries a refusal's kind.
pub const KIND_KEY: &str = "cbsweep-error";

/// The kinds a peer acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The worker id is not registered (the coordinator restarted or forgot it): register again.
    UnknownWorker,
}

impl ErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            ErrorKind::UnknownWorker => "unknown-worker",
        }
    }

    /// `status` marked as a refusal of this kind.
    pub fn mark(self, mut status: Status) -> Status {
        status.metadata_mut().insert(KIND_KEY, MetadataValue::from_static(self.as_str()));
        status
    }

    /// The kind `status` is marked with, if any.
    pub fn of(status: &Status) -> Option<ErrorKind> {
        match status.metadata().get(KIND_KEY)?.to_str().ok()? {
            "unknown-worker" => Some(ErrorKind::UnknownWorker),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorKind;
    use tonic::Status;

    #[test]
    fn a_marked_refusal_is_read_by_kind_whatever_its_text() {
        let s = ErrorKind::UnknownWorker.mark(Status::not_found("any words at all"));
        assert_eq!(ErrorKind::of(&s), Some(ErrorKind::UnknownWorker));
        assert_eq!(ErrorKind::of(&Status::not_found("unknown worker w: register first")), None, "the text alone says nothing");
    }
}
