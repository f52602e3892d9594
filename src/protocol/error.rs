//! Errors on the wire: the closed set of codes a reply carries, and why a
//! frame could not be decoded.

use super::{MAX_FRAME_BYTES, PROTOCOL_VERSION};
use serde::{Deserialize, Serialize};

/// The closed set of error codes (documented in `ipc-schema/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not valid MessagePack or not a valid request.
    BadRequest,
    /// The method name is not one this primary knows.
    UnknownMethod,
    /// The request is well formed but a field value is invalid.
    InvalidParams,
    /// The task (or other entity) does not exist.
    NotFound,
    /// The request conflicts with the current state (e.g. illegal transition).
    Conflict,
    /// The frame exceeds `MAX_FRAME_BYTES`.
    TooLarge,
    /// The request id was already used for a different request.
    IdempotencyConflict,
    /// The request names an epoch newer than this primary's: it is stale.
    StaleEpoch,
    /// The protocol version is not supported.
    UnsupportedVersion,
    /// No primary can serve the request (shutting down, unresponsive).
    Unavailable,
    /// A bug or an I/O failure inside the primary.
    Internal,
}

pub const ERROR_CODES: &[ErrorCode] = &[
    ErrorCode::BadRequest,
    ErrorCode::UnknownMethod,
    ErrorCode::InvalidParams,
    ErrorCode::NotFound,
    ErrorCode::Conflict,
    ErrorCode::TooLarge,
    ErrorCode::IdempotencyConflict,
    ErrorCode::StaleEpoch,
    ErrorCode::UnsupportedVersion,
    ErrorCode::Unavailable,
    ErrorCode::Internal,
];

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownMethod => "unknown_method",
            ErrorCode::InvalidParams => "invalid_params",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::StaleEpoch => "stale_epoch",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            code,
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("unknown method `{0}`")]
    UnknownMethod(String),
    #[error("protocol version {0} is not supported (this primary speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u32),
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Decoded, but through a form the contract leaves out.
    #[error("malformed message: {0}")]
    Form(#[from] super::wire_form::FormError),
}

impl DecodeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge(_) => ErrorCode::TooLarge,
            DecodeError::UnknownMethod(_) => ErrorCode::UnknownMethod,
            DecodeError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            DecodeError::Malformed(_) | DecodeError::Form(_) => ErrorCode::BadRequest,
        }
    }
}
