//! Errors of the protocol server in the AWS JSON 1.1 shape: an exception name
//! (`__type`), a message and an HTTP status. `KmsError` maps here by variant.

use serde_json::json;

use crate::kms::{Existing, KmsError, Missing};

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    /// The AWS exception name (`__type`).
    pub(crate) kind: &'static str,
    /// For people; never holds a secret.
    pub(crate) message: String,
    /// The HTTP status.
    pub(crate) status: u16,
    /// An alias the message names by ARN, as AWS's does (`with_arns`).
    alias: Option<(AliasIssue, String)>,
}

/// What an error about an alias says (AWS names the alias by its ARN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AliasIssue {
    /// "An alias with the name ARN already exists".
    Exists,
    /// "Alias ARN is not found."
    NotFound,
}

impl ApiError {
    pub(crate) fn new(kind: &'static str, status: u16, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            status,
            alias: None,
        }
    }

    /// The message in AWS's words for an alias that exists or is missing,
    /// naming it by its ARN (`arn_prefix` from `LocalKeyStore::arn_prefix`).
    pub(crate) fn with_arns(mut self, arn_prefix: &str) -> Self {
        if let Some((issue, name)) = self.alias.take() {
            let arn = crate::kms::model::alias_arn(arn_prefix, &name);
            self.message = match issue {
                AliasIssue::Exists => format!("An alias with the name {arn} already exists"),
                AliasIssue::NotFound => format!("Alias {arn} is not found."),
            };
        }
        self
    }

    /// A 400 ValidationException.
    pub(crate) fn validation(message: impl Into<String>) -> Self {
        Self::new("ValidationException", 400, message)
    }

    /// The JSON body.
    pub(crate) fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&json!({ "__type": self.kind, "message": self.message }))
            .unwrap_or_default()
    }
}

impl From<KmsError> for ApiError {
    fn from(e: KmsError) -> Self {
        let message = e.to_string();
        let (kind, status) = match &e {
            KmsError::Validation {
                code: Some(code), ..
            } => (code.aws_exception(), 400),
            KmsError::NotFound { .. }
            | KmsError::Disabled { .. }
            | KmsError::InvalidState { .. }
            | KmsError::InvalidCiphertext { .. }
            | KmsError::IncorrectKey { .. }
            | KmsError::AccessDenied { .. }
            | KmsError::OwnerOnly { .. }
            | KmsError::Validation { .. }
            | KmsError::AlreadyExists { .. } => (e.aws_code(), 400),
            // The keystore's own troubles are the service's, not the caller's.
            _ => ("KMSInternalException", 500),
        };
        if status == 500 {
            log::error!("{}: {message}", e.aws_code());
        }
        let alias = match &e {
            KmsError::AlreadyExists {
                what: Existing::Alias { name },
            } => Some((AliasIssue::Exists, name.clone())),
            KmsError::NotFound {
                what: Missing::Alias { name },
            } => Some((AliasIssue::NotFound, name.clone())),
            _ => None,
        };
        Self {
            kind,
            message,
            status,
            alias,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::{Missing, ValidationCode};

    #[test]
    fn kms_errors_keep_their_aws_names() {
        let e = ApiError::from(KmsError::Disabled { key_id: "k".into() });
        assert_eq!((e.kind, e.status), ("DisabledException", 400));
        let e = ApiError::from(KmsError::not_found(Missing::Key { key_id: "k".into() }));
        assert_eq!((e.kind, e.status), ("NotFoundException", 400));
        let e = ApiError::from(KmsError::invalid_with(
            ValidationCode::InvalidImportToken,
            "x".into(),
        ));
        assert_eq!(e.kind, "InvalidImportTokenException");
        let e = ApiError::from(KmsError::io("disk full".into()));
        assert_eq!((e.kind, e.status), ("KMSInternalException", 500));
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["__type"], "KMSInternalException");
        assert_eq!(v["message"], "disk full");
    }
}
