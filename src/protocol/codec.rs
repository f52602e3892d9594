//! The MessagePack codec: named fields out, and in only the forms the
//! contract allows (see `wire_form`), telling a newer peer (version,
//! method) apart from a malformed frame.

use super::wire_form;
use super::{DecodeError, MAX_FRAME_BYTES, METHOD_NAMES, Method, PROTOCOL_VERSION, Request};
use serde::{Deserialize, Serialize};

/// Encodes any wire value with named fields.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing our own plain structs into a Vec cannot fail.
    rmp_serde::to_vec_named(value).expect("wire types always serialize")
}

pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    rmp_serde::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// Decodes what the store itself wrote (an event's payload, a ledger's
/// reply): no frame limit, which is the wire's bound on what a peer may
/// send. A row written bigger than a frame by an older grove must not
/// stop every follower that catches up through it, forever.
pub fn decode_stored<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    rmp_serde::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// The parts of a request that can be read even when its method cannot, so
/// that the error reply can still be addressed to the request's id.
#[derive(Debug, Default, Deserialize)]
pub struct RequestHead {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub method: Option<std::collections::BTreeMap<String, serde::de::IgnoredAny>>,
}

/// Only the version of a request, read on its own so that a request of a
/// newer protocol is told so even when the rest of it does not decode here.
#[derive(Debug, Default, Deserialize)]
struct VersionHead {
    #[serde(default)]
    v: Option<u32>,
}

/// Decodes a request frame, telling apart a newer protocol version and an
/// unknown method (the peer is newer than us) from a malformed request, and
/// refusing the MessagePack forms the contract leaves out (see `wire_form`).
/// On failure returns the request id when it could be read, so the caller
/// can still answer.
pub fn decode_request(bytes: &[u8]) -> Result<Request, (String, DecodeError)> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err((String::new(), DecodeError::TooLarge(bytes.len())));
    }
    // The id and the version are read only from a map: in a positional
    // array they would be guesses (and arrays are refused anyway).
    let is_map = matches!(bytes.first(), Some(0x80..=0x8f | 0xde | 0xdf));
    let head = || -> RequestHead {
        match is_map {
            true => rmp_serde::from_slice(bytes).unwrap_or_default(),
            false => RequestHead::default(),
        }
    };
    match rmp_serde::from_slice::<Request>(bytes) {
        // Refused by its version alone, by the caller.
        Ok(req) if req.v != PROTOCOL_VERSION && is_map => Ok(req),
        // Exactly the bytes grove itself would send (every Rust client):
        // the contract's form by construction, without building two
        // generic views of the request to compare.
        Ok(req) if encode(&req) == bytes => Ok(req),
        Ok(req) => match wire_form::check(bytes, &req) {
            Ok(()) => Ok(req),
            Err(form) => Err((head().id, DecodeError::Form(form))),
        },
        Err(full_err) => {
            let head = head();
            let version = is_map
                .then(|| rmp_serde::from_slice::<VersionHead>(bytes).ok())
                .flatten()
                .and_then(|h| h.v);
            if let Some(v) = version.filter(|&v| v != PROTOCOL_VERSION) {
                return Err((head.id, DecodeError::UnsupportedVersion(v)));
            }
            let method_name = head.method.as_ref().and_then(|m| m.keys().next().cloned());
            let err = match method_name {
                Some(name) if !METHOD_NAMES.contains(&name.as_str()) => {
                    DecodeError::UnknownMethod(name)
                }
                _ => DecodeError::Malformed(full_err.to_string()),
            };
            Err((head.id, err))
        }
    }
}

/// The id of a request too large to decode, read without building its
/// method (whose payload is skipped), so that the `too_large` answer still
/// reaches the caller waiting for that id. Empty when it cannot be read.
pub fn oversized_request_id(bytes: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Head {
        #[serde(default)]
        id: String,
    }
    rmp_serde::from_slice::<Head>(bytes)
        .map(|h| h.id)
        .unwrap_or_default()
}

/// A fingerprint of what a write asks for, stored beside its ledger row so
/// that an id reused for a different request is refused
/// (`idempotency_conflict`) instead of answered with the first reply.
/// FNV-1a over the method's encoding: stable across builds and versions, as
/// the ledger outlives the process that wrote it.
pub fn request_digest(method: &Method) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in encode(method) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

type RmpResult = Result<(), rmp::encode::ValueWriteError>;

/// The reply to request `id` whose result (`Result<ReplyBody, WireError>`)
/// is encoded already, as the store thread encoded it for the ledger: the
/// bytes `encode(&Reply { .. })` gives, without encoding the result again
/// on the primary's event loop, where it was a write's costliest step (a
/// task record is most of a reply; see docs/design.md, Serving as primary).
/// `None` when `result` is not an encoded `Ok` or `Err`: the caller decodes
/// and encodes it the long way.
pub fn encode_reply_from(id: &str, epoch: u64, result: &[u8]) -> Option<Vec<u8>> {
    // `Result` encodes as a one-entry map named after its variant.
    const OK: &[u8] = &[0x81, 0xa2, b'O', b'k'];
    const ERR: &[u8] = &[0x81, 0xa3, b'E', b'r', b'r'];
    const NIL: &[u8] = &[0xc0];
    let (ok, err) = match (result.strip_prefix(OK), result.strip_prefix(ERR)) {
        (Some(body), _) => (body, NIL),
        (_, Some(error)) => (NIL, error),
        _ => return None,
    };
    // `Reply`'s fields, in their declared order, as `encode` names them.
    fn fields(out: &mut Vec<u8>, id: &str, epoch: u64, ok: &[u8], err: &[u8]) -> RmpResult {
        use rmp::encode::{write_map_len, write_str, write_uint};
        write_map_len(out, 5)?;
        write_str(out, "v")?;
        write_uint(out, u64::from(PROTOCOL_VERSION))?;
        write_str(out, "id")?;
        write_str(out, id)?;
        write_str(out, "epoch")?;
        write_uint(out, epoch)?;
        write_str(out, "ok")?;
        out.extend_from_slice(ok);
        write_str(out, "err")?;
        out.extend_from_slice(err);
        Ok(())
    }
    let mut out = Vec::with_capacity(40 + id.len() + result.len());
    fields(&mut out, id, epoch, ok, err).expect("writing to a Vec cannot fail");
    Some(out)
}

/// An event's frame as `encode(&event)` gives it, written around `data`,
/// the bytes of `event.data` as the store thread encoded them for the event
/// log: the publisher sends a committed event without encoding its task
/// record again on the event loop (see docs/design.md, Serving as primary).
pub fn encode_event_from(seq: u64, epoch: u64, at: u64, data: &[u8]) -> Vec<u8> {
    // `Event`'s fields, in their declared order, as `encode` names them.
    fn fields(out: &mut Vec<u8>, seq: u64, epoch: u64, at: u64, data: &[u8]) -> RmpResult {
        use rmp::encode::{write_map_len, write_str, write_uint};
        write_map_len(out, 4)?;
        write_str(out, "seq")?;
        write_uint(out, seq)?;
        write_str(out, "epoch")?;
        write_uint(out, epoch)?;
        write_str(out, "at")?;
        write_uint(out, at)?;
        write_str(out, "data")?;
        out.extend_from_slice(data);
        Ok(())
    }
    let mut out = Vec::with_capacity(40 + data.len());
    fields(&mut out, seq, epoch, at, data).expect("writing to a Vec cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ERROR_CODES, ErrorCode, NewTask};

    fn req(method: Method) -> Request {
        Request {
            v: PROTOCOL_VERSION,
            id: "r1".into(),
            from: "me".into(),
            epoch_seen: 3,
            method,
        }
    }

    #[test]
    fn request_roundtrip() {
        let r = req(Method::TaskCreate(NewTask {
            prompt: "echo hi".into(),
            tags: vec!["a".into()],
            ..Default::default()
        }));
        let back = decode_request(&encode(&r)).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn unknown_method_is_told_apart() {
        #[derive(Serialize)]
        struct Weird {
            v: u32,
            id: String,
            from: String,
            epoch_seen: u64,
            method: std::collections::BTreeMap<String, u8>,
        }
        let w = Weird {
            v: 1,
            id: "abc".into(),
            from: "x".into(),
            epoch_seen: 0,
            method: [("task.frobnicate".to_string(), 1u8)].into(),
        };
        let (id, err) = decode_request(&encode(&w)).unwrap_err();
        assert_eq!(id, "abc");
        assert_eq!(err.code(), ErrorCode::UnknownMethod);
    }

    #[test]
    fn garbage_is_bad_request() {
        let (id, err) = decode_request(b"\xc1\xff garbage").unwrap_err();
        assert_eq!(id, "");
        assert_eq!(err.code(), ErrorCode::BadRequest);
    }

    #[test]
    fn oversized_is_refused_before_decoding() {
        let big = vec![0u8; MAX_FRAME_BYTES + 1];
        let (_, err) = decode_request(&big).unwrap_err();
        assert_eq!(err.code(), ErrorCode::TooLarge);
        assert_eq!(oversized_request_id(&big), "");
        let huge = req(Method::TaskCreate(NewTask {
            prompt: "x".repeat(MAX_FRAME_BYTES),
            ..Default::default()
        }));
        let bytes = encode(&huge);
        assert_eq!(
            decode_request(&bytes).unwrap_err().1.code(),
            ErrorCode::TooLarge
        );
        assert_eq!(oversized_request_id(&bytes), huge.id);
    }

    #[test]
    fn digest_tells_requests_apart() {
        let a = Method::TaskCancel { id: "a".into() };
        assert_eq!(request_digest(&a), request_digest(&a.clone()));
        assert_ne!(
            request_digest(&a),
            request_digest(&Method::TaskCancel { id: "b".into() })
        );
        assert_ne!(
            request_digest(&a),
            request_digest(&Method::TaskPause { id: "a".into() })
        );
    }

    proptest::proptest! {
        /// Whatever bytes arrive, decoding answers (Ok or a coded error) and
        /// never panics.
        #[test]
        fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            match decode_request(&bytes) {
                Ok(r) => proptest::prop_assert!(r.id.len() <= bytes.len()),
                Err((_, e)) => proptest::prop_assert!(matches!(
                    e.code(),
                    ErrorCode::BadRequest
                        | ErrorCode::UnknownMethod
                        | ErrorCode::UnsupportedVersion
                        | ErrorCode::TooLarge
                )),
            }
        }

        /// Valid requests with bytes flipped or cut off: still no panic, and
        /// an untouched frame always decodes to the same request.
        #[test]
        fn mutated_requests_decode_without_panic(
            prompt in ".{0,64}",
            flips in proptest::collection::vec((0usize..512, proptest::num::u8::ANY), 0..8),
            cut in 0usize..512,
        ) {
            let r = req(Method::TaskCreate(NewTask { prompt, ..Default::default() }));
            let mut bytes = encode(&r);
            proptest::prop_assert_eq!(decode_request(&bytes).ok(), Some(r));
            for (at, b) in flips {
                let n = bytes.len();
                bytes[at % n] = b;
            }
            bytes.truncate(cut.max(1));
            let _ = decode_request(&bytes);
        }
    }

    #[test]
    fn error_code_names_match_serde() {
        for code in ERROR_CODES {
            let v: String = rmp_serde::from_slice(&encode(code)).unwrap();
            assert_eq!(v, code.as_str());
        }
    }

    #[test]
    fn a_reply_from_an_encoded_result_is_the_reply_encoded_whole() {
        use crate::protocol::{Reply, ReplyBody, WireError};
        type Res = Result<ReplyBody, WireError>;
        let long_id = "r".repeat(300);
        let results: Vec<Res> = vec![
            Ok(ReplyBody::Done {}),
            Ok(ReplyBody::Task(Box::new(crate::protocol::TaskRecord::new(
                "t1".into(),
                crate::protocol::TaskSpec {
                    prompt: "é".repeat(40),
                    ..Default::default()
                },
                1_700_000_000_000,
            )))),
            Err(WireError::new(ErrorCode::InvalidParams, "no such engine")),
        ];
        for result in results {
            for (id, epoch) in [("r1", 0), (long_id.as_str(), 7), ("", u64::MAX)] {
                let fast = encode_reply_from(id, epoch, &encode(&result)).unwrap();
                let whole = match result.clone() {
                    Ok(body) => Reply::ok(id.into(), epoch, body),
                    Err(e) => Reply::err(id.into(), epoch, e),
                };
                assert_eq!(fast, encode(&whole), "{whole:?}");
                assert_eq!(decode::<Reply>(&fast).unwrap(), whole);
            }
        }
        // Anything else is left to the long way.
        assert_eq!(
            encode_reply_from("r1", 1, &encode(&ReplyBody::Done {})),
            None
        );
        assert_eq!(encode_reply_from("r1", 1, b""), None);
    }

    #[test]
    fn an_event_written_around_its_stored_data_is_the_event_encoded() {
        use crate::protocol::{Event, EventData, TaskRecord, TaskSpec};
        let task = TaskRecord::new(
            "t1".into(),
            TaskSpec {
                prompt: "é".repeat(300),
                ..Default::default()
            },
            1_700_000_000_000,
        );
        let data = [
            EventData::TaskCreated { task },
            EventData::TaskDeleted { id: "t2".into() },
        ];
        for data in data {
            for (seq, epoch, at) in [
                (1, 0, 0),
                (200, 70_000, 1_700_000_000_000),
                (u64::MAX, 1, 127),
            ] {
                let event = Event::new(seq, epoch, at, data.clone());
                let fast = encode_event_from(seq, epoch, at, &encode(&event.data));
                assert_eq!(fast, encode(&event), "{event:?}");
                assert_eq!(decode::<Event>(&fast).unwrap(), event);
            }
        }
    }

    #[test]
    fn a_borrowed_request_encodes_as_the_request() {
        let r = req(Method::TaskCreate(NewTask {
            prompt: "echo hi".into(),
            tags: vec!["a".into()],
            ..Default::default()
        }));
        for epoch_seen in [
            0,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            u64::from(u32::MAX) + 1,
            u64::MAX,
        ] {
            let borrowed = crate::protocol::RequestRef {
                v: r.v,
                id: &r.id,
                from: &r.from,
                epoch_seen,
                method: &r.method,
            };
            let owned = Request {
                epoch_seen,
                ..r.clone()
            };
            assert_eq!(encode(&borrowed), encode(&owned));
        }
    }
}
