//! Why an ACP request fails, and the one place that turns it into a
//! JSON-RPC error object.

use agent_client_protocol_schema::v1 as schema;
use schema::ErrorCode;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AcpError {
    #[error("parse error: {0}")]
    Parse(serde_json::Error),
    #[error("line exceeds the {} MiB limit", super::framing::MAX_LINE >> 20)]
    LineTooLong,
    #[error(
        "not a JSON-RPC 2.0 message: a request has an id and a method, a notification a method, a response an id and a result or error"
    )]
    NotJsonRpc,
    #[error("a request's id must be a string, an integer or null")]
    BadRequestId,
    #[error("method not found: {0}")]
    MethodNotFound(String),
    #[error("invalid params for {method}: {source}")]
    Params {
        method: &'static str,
        source: serde_json::Error,
    },
    #[error("unknown session {0}")]
    UnknownSession(String),
    #[error("cwd must be an absolute directory, got {}", .0.display())]
    BadCwd(PathBuf),
    #[error(
        "this grove agent serves {}; {} is outside it (start another `grove acp` there)",
        root.display(),
        cwd.display()
    )]
    OutsideWorkspace { root: PathBuf, cwd: PathBuf },
    #[error(transparent)]
    Workspace(#[from] crate::paths::PathError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("no workspace yet: create or load a session first")]
    NoWorkspace,
    #[error("no mode {asked} is offered; this session offers: {}", offered.join(", "))]
    ModeNotOffered { asked: String, offered: Vec<String> },
    #[error("a prompt is already running in this session")]
    PromptRunning,
    #[error("cannot read the store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{}", grove_said(.0))]
    Grove(#[from] crate::client::ClientError),
    #[error("unexpected reply from the primary: {0}")]
    UnexpectedReply(String),
}

/// A refusal is not an outage: "grove is unavailable: too_large: ..." told
/// the user to wait for a grove that was up and had said why.
fn grove_said(e: &crate::client::ClientError) -> String {
    if e.is_unavailable() {
        format!("grove is unavailable: {e}")
    } else {
        format!("grove refused it: {e}")
    }
}

impl AcpError {
    fn code(&self) -> ErrorCode {
        use AcpError::*;
        match self {
            Parse(_) | LineTooLong => ErrorCode::ParseError,
            NotJsonRpc | BadRequestId => ErrorCode::InvalidRequest,
            MethodNotFound(_) => ErrorCode::MethodNotFound,
            Params { .. }
            | UnknownSession(_)
            | BadCwd(_)
            | OutsideWorkspace { .. }
            | Workspace(_)
            | Config(_)
            | NoWorkspace
            | ModeNotOffered { .. }
            | PromptRunning => ErrorCode::InvalidParams,
            Store(_) | Grove(_) | UnexpectedReply(_) => ErrorCode::InternalError,
        }
    }
}

impl From<&AcpError> for schema::Error {
    fn from(e: &AcpError) -> schema::Error {
        schema::Error::new(e.code().into(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_json_rpc_ones() {
        let err = |e: AcpError| schema::Error::from(&e);
        assert_eq!(i32::from(err(AcpError::LineTooLong).code), -32700);
        assert_eq!(
            i32::from(err(AcpError::MethodNotFound("x".into())).code),
            -32601
        );
        let refused = err(AcpError::ModeNotOffered {
            asked: "ghost".into(),
            offered: vec!["shell".into(), "claude".into()],
        });
        assert_eq!(i32::from(refused.code), -32602);
        assert_eq!(
            refused.message,
            "no mode ghost is offered; this session offers: shell, claude"
        );
        assert_eq!(i32::from(err(AcpError::NoWorkspace).code), -32602);
        assert_eq!(
            i32::from(err(AcpError::UnexpectedReply("x".into())).code),
            -32603
        );
        let refusal = crate::protocol::WireError::new(
            crate::protocol::ErrorCode::TooLarge,
            "the prompt is too long",
        );
        let said = AcpError::Grove(crate::client::ClientError::Refused(refusal)).to_string();
        assert_eq!(said, "grove refused it: too_large: the prompt is too long");
        let down = crate::client::ClientError::Unresponsive("no answer".into());
        let said = AcpError::Grove(down).to_string();
        assert!(said.starts_with("grove is unavailable: "), "{said}");
    }
}
