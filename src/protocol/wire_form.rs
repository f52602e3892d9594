//! The encoding the contract allows, and nothing else.
//!
//! Part of `protocol`. The contract (`ipc-schema/README.md`) is MessagePack with named fields:
//! records are maps, enum values are names, strings are `str`. rmp-serde
//! would also take a record as a positional array, an enum value as its
//! variant index and a string as `bin`. A client that relied on that would
//! break on any field reordering, so grove refuses those forms: what it
//! accepts is exactly what the contract says.

use serde::Serialize;
use serde_json::Value;

/// A form the contract leaves out, and where it was.
#[derive(Debug, thiserror::Error)]
pub enum FormError {
    #[error("only MessagePack str, int, bool, nil, array and map (with str keys) are allowed: {0}")]
    NotContractForm(rmp_serde::decode::Error),
    #[error("{path} must be a map of named fields (a record or a variant), not {found}")]
    NotAMap { path: String, found: &'static str },
    #[error("{path} must be a string (an enum value is sent by name), not {found}")]
    NotAString { path: String, found: &'static str },
    /// Our own value has no JSON view (a bug, not the sender's fault).
    #[error("cannot compare with the canonical form: {0}")]
    Canonical(serde_json::Error),
}

/// Checks that `bytes`, which decoded to `decoded`, used only the contract's
/// forms. `Err` names the first offending place (e.g.
/// `request.method.hello`) and what to send instead.
pub fn check<T: Serialize>(bytes: &[u8], decoded: &T) -> Result<(), FormError> {
    // The generic view keeps the received structure: arrays stay arrays,
    // numbers stay numbers. It refuses bin, ext and non-string map keys.
    let received: Value = rmp_serde::from_slice(bytes).map_err(FormError::NotContractForm)?;
    let canonical = serde_json::to_value(decoded).map_err(FormError::Canonical)?;
    compare(&canonical, &received)
}

/// Walks both values side by side (a work list: the depth is the sender's
/// choice). Keys the canonical form lacks are unknown fields: ignored.
fn compare(canonical: &Value, received: &Value) -> Result<(), FormError> {
    let mut work = vec![(canonical, received, String::from("request"))];
    while let Some((c, r, path)) = work.pop() {
        match (c, r) {
            (Value::Object(c), Value::Object(r)) => {
                for (key, rv) in r {
                    if let Some(cv) = c.get(key) {
                        work.push((cv, rv, format!("{path}.{key}")));
                    }
                }
            }
            (Value::Object(_), _) => {
                return Err(FormError::NotAMap {
                    path,
                    found: kind(r),
                });
            }
            (Value::Array(c), Value::Array(r)) => {
                for (i, (cv, rv)) in c.iter().zip(r).enumerate() {
                    work.push((cv, rv, format!("{path}[{i}]")));
                }
            }
            (Value::String(_), r) if !r.is_string() => {
                return Err(FormError::NotAString {
                    path,
                    found: kind(r),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nil",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a map",
    }
}

#[cfg(test)]
mod tests {
    use crate::protocol::{
        DecodeError, ErrorCode, MemberInfo, Method, PROTOCOL_VERSION, Request, decode_request,
        encode,
    };

    fn hello() -> Request {
        Request {
            v: PROTOCOL_VERSION,
            id: "r1".into(),
            from: "me".into(),
            epoch_seen: 0,
            method: Method::Hello(MemberInfo {
                instance_id: "i".into(),
                pid: 1,
                kind: "serve".into(),
                started_at: 2,
            }),
        }
    }

    fn refused(bytes: &[u8]) -> (String, DecodeError) {
        decode_request(bytes).expect_err("refused")
    }

    #[test]
    fn named_maps_pass() {
        assert_eq!(decode_request(&encode(&hello())).unwrap(), hello());
    }

    #[test]
    fn positional_forms_are_refused() {
        // The whole request as an array (rmp-serde's default struct form).
        let (id, e) = refused(&rmp_serde::to_vec(&hello()).unwrap());
        assert_eq!((id.as_str(), e.code()), ("", ErrorCode::BadRequest), "{e}");
        // A nested record as an array: the id is still echoed.
        let mut v: serde_json::Value = serde_json::to_value(hello()).unwrap();
        v["method"]["hello"] = serde_json::json!(["i", 1, "serve", 2]);
        let (id, e) = refused(&rmp_serde::to_vec_named(&v).unwrap());
        assert_eq!(id, "r1");
        assert!(e.to_string().contains("request.method.hello"), "{e}");
    }

    #[test]
    fn enum_index_and_bin_strings_are_refused() {
        let mut v = serde_json::json!({"v": 1, "id": "r2", "from": "me", "epoch_seen": 0,
            "method": {"task.update_status": {"id": "t", "status": 3}}});
        let (_, e) = refused(&rmp_serde::to_vec_named(&v).unwrap());
        assert!(e.to_string().contains("status"), "{e}");
        v["method"]["task.update_status"]["status"] = "completed".into();
        assert!(decode_request(&rmp_serde::to_vec_named(&v).unwrap()).is_ok());
        // `from` as bin.
        #[derive(serde::Serialize)]
        struct BinFrom<'a> {
            v: u32,
            id: &'a str,
            #[serde(with = "serde_bytes_compat")]
            from: &'a [u8],
            epoch_seen: u64,
            method: serde_json::Value,
        }
        mod serde_bytes_compat {
            pub fn serialize<S: serde::Serializer>(b: &&[u8], s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(b)
            }
        }
        let bin = BinFrom {
            v: 1,
            id: "r3",
            from: b"me",
            epoch_seen: 0,
            method: serde_json::json!({"ping": {}}),
        };
        let (_, e) = refused(&rmp_serde::to_vec_named(&bin).unwrap());
        assert_eq!(e.code(), ErrorCode::BadRequest, "{e}");
    }

    #[test]
    fn a_newer_version_is_told_before_its_shape() {
        let v = serde_json::json!({"v": 2, "id": "r4", "from": "me", "epoch_seen": 0,
            "method": {"task.frobnicate": {"x": 1}}});
        let (id, e) = refused(&rmp_serde::to_vec_named(&v).unwrap());
        assert_eq!(
            (id.as_str(), e.code()),
            ("r4", ErrorCode::UnsupportedVersion)
        );
    }
}
