//! One provisioning request, validated once from the raw Kafka message bytes.
//!
//! A [`ProvisionRequest`] only exists if every rule below held, so the rest of the worker
//! never re-checks a field. A message that breaks a rule becomes a [`Rejected`], whose
//! reason is stored in the row's `error_message` and sent in the dead-letter header, so the
//! reasons are written for the person who has to fix the producer.
//!
//! The message is `{"request_id": "…", "user_id": "…", "gpu_count": 4, "duration_hours": 2}`.
//! Unknown fields are ignored because the backend may add some; a repeated field is
//! rejected because two readers could disagree about which copy counts.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Larger messages are rejected before parsing, which bounds the work one message can cost.
pub const MAX_MESSAGE_BYTES: usize = 65536;
pub const MAX_GPU_COUNT: u32 = 1024;
/// One year.
pub const MAX_DURATION_HOURS: u32 = 8760;
/// Counted in Unicode scalar values (Rust `char`s), not bytes.
pub const MAX_USER_ID_CHARS: usize = 256;
/// Counted in Unicode scalar values (Rust `char`s), not bytes.
pub const MAX_REQUEST_ID_CHARS: usize = 128;

/// A request that passed every rule. `serde::Serialize` gives the wire form back (for `send`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProvisionRequest {
    /// Non-empty, not only whitespace, at most [`MAX_REQUEST_ID_CHARS`], no control characters;
    /// stored exactly as sent (not trimmed).
    pub request_id: String,
    /// Non-empty, at most [`MAX_USER_ID_CHARS`]; any content, stored exactly as sent.
    pub user_id: String,
    /// In `1..=MAX_GPU_COUNT`.
    pub gpu_count: u32,
    /// In `1..=MAX_DURATION_HOURS`.
    pub duration_hours: u32,
}

/// A message that is not a valid request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The message's `request_id` when it is a valid one in a JSON object (and not repeated),
    /// so the caller can mark that row failed; `None` when no row can be named.
    pub request_id: Option<String>,
    pub reason: RequestError,
}

/// Why a message is not a valid request. `Display` is the reason stored in `error_message`
/// and sent in the dead-letter header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// The message is larger than [`MAX_MESSAGE_BYTES`].
    TooLarge {
        size: usize,
    },
    /// The message is not UTF-8; `valid_up_to` is the offset of the first bad byte.
    NotUtf8 {
        valid_up_to: usize,
    },
    /// serde_json's own message, with line and column.
    NotJson {
        message: String,
    },
    /// The message is JSON but not an object; `found` is "an array", "a string", ….
    NotAnObject {
        found: &'static str,
    },
    /// A top-level key appears twice (shortened to 64 characters for the message).
    DuplicateField {
        field: String,
    },
    MissingField {
        field: &'static str,
    },
    /// `found` describes the value without echoing text: "a string", "the number 4.5", ….
    WrongType {
        field: &'static str,
        expected: &'static str,
        found: String,
    },
    /// A whole number outside `1..=max`.
    OutOfRange {
        field: &'static str,
        value: i128,
        max: u32,
    },
    /// Empty, or (for `request_id`) only whitespace.
    Blank {
        field: &'static str,
    },
    TooLong {
        field: &'static str,
        chars: usize,
        max: usize,
    },
    /// `position` counts characters from 1.
    ControlCharacter {
        field: &'static str,
        character: char,
        position: usize,
    },
}

impl ProvisionRequest {
    /// Validates one message. Never panics, whatever the bytes.
    pub fn parse(bytes: &[u8]) -> Result<ProvisionRequest, Rejected> {
        let unnamed = |reason| Rejected {
            request_id: None,
            reason,
        };
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(unnamed(RequestError::TooLarge { size: bytes.len() }));
        }
        // serde_json would find bad UTF-8 too, but only inside strings and without the offset.
        let text = std::str::from_utf8(bytes).map_err(|err| {
            unnamed(RequestError::NotUtf8 {
                valid_up_to: err.valid_up_to(),
            })
        })?;
        // Deep nesting cannot overflow the stack: serde_json stops at 128 levels for values
        // we keep, and skips ignored values without recursion.
        let top: TopLevel = serde_json::from_str(text).map_err(|err| {
            unnamed(RequestError::NotJson {
                message: err.to_string(),
            })
        })?;
        let fields = match top {
            TopLevel::Object(fields) => fields,
            TopLevel::Other(found) => return Err(unnamed(RequestError::NotAnObject { found })),
        };

        let request_id = match (&fields.request_id, fields.request_id_repeated) {
            (Some(value), false) => Some(request_id_from(value)),
            _ => None,
        };
        let readable = request_id.as_ref().and_then(|id| id.as_ref().ok()).cloned();
        let reject = |reason| Rejected {
            request_id: readable.clone(),
            reason,
        };
        if let Some(field) = fields.duplicate {
            return Err(reject(RequestError::DuplicateField { field }));
        }
        let request_id = request_id
            .unwrap_or(Err(RequestError::MissingField {
                field: "request_id",
            }))
            .map_err(reject)?;
        let user_id = required("user_id", fields.user_id.as_ref())
            .and_then(user_id_from)
            .map_err(reject)?;
        let gpu_count = required("gpu_count", fields.gpu_count.as_ref())
            .and_then(|value| count_from("gpu_count", value, MAX_GPU_COUNT))
            .map_err(reject)?;
        let duration_hours = required("duration_hours", fields.duration_hours.as_ref())
            .and_then(|value| count_from("duration_hours", value, MAX_DURATION_HOURS))
            .map_err(reject)?;
        Ok(ProvisionRequest {
            request_id,
            user_id,
            gpu_count,
            duration_hours,
        })
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::TooLarge { size } => write!(
                f,
                "message is {size} bytes, more than the limit of {MAX_MESSAGE_BYTES} bytes"
            ),
            RequestError::NotUtf8 { valid_up_to } => write!(
                f,
                "message is not valid UTF-8: bad byte at offset {valid_up_to}"
            ),
            RequestError::NotJson { message } => write!(f, "message is not valid JSON: {message}"),
            RequestError::NotAnObject { found } => {
                write!(f, "message must be a JSON object, found {found}")
            }
            RequestError::DuplicateField { field } => {
                write!(f, "field {field:?} appears more than once")
            }
            RequestError::MissingField { field } => write!(f, "missing field {field:?}"),
            RequestError::WrongType {
                field,
                expected,
                found,
            } => write!(f, "field {field:?} must be {expected}, found {found}"),
            RequestError::OutOfRange { field, value, max } => {
                write!(f, "field {field:?} must be from 1 to {max}, found {value}")
            }
            RequestError::Blank { field } => {
                write!(f, "field {field:?} must not be empty or only whitespace")
            }
            RequestError::TooLong { field, chars, max } => write!(
                f,
                "field {field:?} is {chars} characters long, more than the limit of {max}"
            ),
            RequestError::ControlCharacter {
                field,
                character,
                position,
            } => write!(
                f,
                "field {field:?} must not contain control characters, found U+{:04X} at character {position}",
                u32::from(*character)
            ),
        }
    }
}

impl std::error::Error for RequestError {}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.reason.fmt(f)
    }
}

impl std::error::Error for Rejected {}

/// The top level of a message, as far as validation needs it.
enum TopLevel {
    Object(Fields),
    /// Not an object: what it was instead.
    Other(&'static str),
}

/// The known fields of an object, kept as JSON values so type errors can say what was found.
#[derive(Default)]
struct Fields {
    request_id: Option<Value>,
    user_id: Option<Value>,
    gpu_count: Option<Value>,
    duration_hours: Option<Value>,
    /// The first key seen twice, if any.
    duplicate: Option<String>,
    /// A repeated `request_id` names no row for sure, so a rejection then names none.
    request_id_repeated: bool,
}

/// Reads the top level ourselves rather than into `serde_json::Value`, whose map silently
/// keeps the last of two equal keys: here every key is seen, and unknown fields are skipped
/// without being built.
impl<'de> serde::Deserialize<'de> for TopLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TopLevelVisitor)
    }
}

struct TopLevelVisitor;

impl<'de> Visitor<'de> for TopLevelVisitor {
    type Value = TopLevel;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
        let mut fields = Fields::default();
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let slot = match key.as_str() {
                "request_id" => {
                    fields.request_id_repeated |= fields.request_id.is_some();
                    Some(&mut fields.request_id)
                }
                "user_id" => Some(&mut fields.user_id),
                "gpu_count" => Some(&mut fields.gpu_count),
                "duration_hours" => Some(&mut fields.duration_hours),
                _ => None,
            };
            match slot {
                Some(slot) => *slot = Some(map.next_value::<Value>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            if fields.duplicate.is_none() && !seen.insert(key.clone()) {
                fields.duplicate = Some(key.chars().take(64).collect());
            }
        }
        Ok(TopLevel::Object(fields))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TopLevel, A::Error> {
        // Consume the elements so serde_json still checks the rest of the message is JSON.
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(TopLevel::Other("an array"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a number"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a string"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("null"))
    }
}

fn required<'v>(field: &'static str, value: Option<&'v Value>) -> Result<&'v Value, RequestError> {
    value.ok_or(RequestError::MissingField { field })
}

fn request_id_from(value: &Value) -> Result<String, RequestError> {
    const FIELD: &str = "request_id";
    let text = string_from(FIELD, value)?;
    if text.trim().is_empty() {
        return Err(RequestError::Blank { field: FIELD });
    }
    check_length(FIELD, text, MAX_REQUEST_ID_CHARS)?;
    // The id ends up in log lines, a dead-letter header and the kubeconfig's names; a control
    // character there could forge a log line or break a header.
    if let Some((index, character)) = text.chars().enumerate().find(|(_, c)| c.is_control()) {
        return Err(RequestError::ControlCharacter {
            field: FIELD,
            character,
            position: index + 1,
        });
    }
    Ok(text.to_string())
}

/// Any non-empty content is a user id: the backend accepted it, and rejecting it here would
/// only strand the request.
fn user_id_from(value: &Value) -> Result<String, RequestError> {
    const FIELD: &str = "user_id";
    let text = string_from(FIELD, value)?;
    if text.is_empty() {
        return Err(RequestError::Blank { field: FIELD });
    }
    check_length(FIELD, text, MAX_USER_ID_CHARS)?;
    Ok(text.to_string())
}

fn string_from<'v>(field: &'static str, value: &'v Value) -> Result<&'v str, RequestError> {
    value.as_str().ok_or_else(|| RequestError::WrongType {
        field,
        expected: "a string",
        found: describe(value),
    })
}

fn check_length(field: &'static str, text: &str, max: usize) -> Result<(), RequestError> {
    let chars = text.chars().count();
    if chars > max {
        return Err(RequestError::TooLong { field, chars, max });
    }
    Ok(())
}

/// A whole number in `1..=max`. `4.0` is rejected: a producer that sends floats has a bug
/// worth hearing about, and accepting it would hide one that sends `4.5` next.
fn count_from(field: &'static str, value: &Value, max: u32) -> Result<u32, RequestError> {
    let whole = match value {
        Value::Number(number) => number
            .as_u64()
            .map(i128::from)
            .or_else(|| number.as_i64().map(i128::from)),
        _ => None,
    };
    let Some(whole) = whole else {
        return Err(RequestError::WrongType {
            field,
            expected: "a whole number",
            found: describe(value),
        });
    };
    match u32::try_from(whole) {
        Ok(count) if (1..=max).contains(&count) => Ok(count),
        _ => Err(RequestError::OutOfRange {
            field,
            value: whole,
            max,
        }),
    }
}

/// Describes a value for an error without echoing text, which may be long or sensitive.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(_) => "a boolean".to_string(),
        Value::Number(number) => format!("the number {number}"),
        Value::String(_) => "a string".to_string(),
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `Ok` holds the expected request; `Err` the expected rejection (readable id, reason).
    fn check(input: &[u8], expected: Result<ProvisionRequest, (Option<&str>, RequestError)>) {
        let actual = ProvisionRequest::parse(input);
        let expected = expected.map_err(|(request_id, reason)| Rejected {
            request_id: request_id.map(str::to_string),
            reason,
        });
        assert_eq!(
            actual,
            expected,
            "input {:?}",
            String::from_utf8_lossy(input)
        );
    }

    fn ok(
        request_id: &str,
        user_id: &str,
        gpu_count: u32,
        duration_hours: u32,
    ) -> Result<ProvisionRequest, (Option<&'static str>, RequestError)> {
        Ok(ProvisionRequest {
            request_id: request_id.to_string(),
            user_id: user_id.to_string(),
            gpu_count,
            duration_hours,
        })
    }

    fn wrong_type(field: &'static str, expected: &'static str, found: &str) -> RequestError {
        RequestError::WrongType {
            field,
            expected,
            found: found.to_string(),
        }
    }

    /// A valid message with one field's raw JSON replaced (or removed with `None`).
    fn with(field: &str, raw: Option<&str>) -> Vec<u8> {
        let mut parts = Vec::new();
        for (name, default) in [
            ("request_id", "\"r-1\""),
            ("user_id", "\"alice\""),
            ("gpu_count", "4"),
            ("duration_hours", "2"),
        ] {
            let value = if name == field { raw } else { Some(default) };
            if let Some(value) = value {
                parts.push(format!("\"{name}\": {value}"));
            }
        }
        format!("{{{}}}", parts.join(", ")).into_bytes()
    }

    const R1: Option<&str> = Some("r-1");

    #[test]
    fn accepts_the_documented_message() {
        check(
            br#"{"request_id": "uuid-string", "user_id": "username", "gpu_count": 4, "duration_hours": 2}"#,
            ok("uuid-string", "username", 4, 2),
        );
    }

    #[test]
    fn accepts_limits_and_ignores_unknown_fields() {
        check(&with("gpu_count", Some("1")), ok("r-1", "alice", 1, 2));
        check(
            &with("gpu_count", Some("1024")),
            ok("r-1", "alice", 1024, 2),
        );
        check(
            &with("duration_hours", Some("8760")),
            ok("r-1", "alice", 4, 8760),
        );
        check(
            br#"{"extra": {"deep": [1, {"x": null}]}, "request_id": "r", "user_id": "u", "gpu_count": 1, "duration_hours": 1, "created_at": "now"}"#,
            ok("r", "u", 1, 1),
        );
        check(
            br#"{"request_id":"r","user_id":"u","gpu_count":1,"duration_hours":1,"x":1,"y":1}"#,
            ok("r", "u", 1, 1),
        );
        // Escaped key names are the same keys.
        check(
            br#"{"\u0072equest_id": "r", "user_id": "u", "gpu_count": 1, "duration_hours": 1}"#,
            ok("r", "u", 1, 1),
        );
    }

    #[test]
    fn stores_ids_exactly_as_sent() {
        check(
            &with("request_id", Some("\"  padded  \"")),
            ok("  padded  ", "alice", 4, 2),
        );
        for (raw, user) in [
            (r#""a\"b'c""#, "a\"b'c"),
            (r#""line\nbreak\ttab\u0000nul""#, "line\nbreak\ttab\0nul"),
            (
                r#""key: value # not a comment""#,
                "key: value # not a comment",
            ),
            (r#""&anchor *alias !!binary""#, "&anchor *alias !!binary"),
            (r#""日本語 😀 \u00e9""#, "日本語 😀 é"),
            (r#""   ""#, "   "),
            (r#""null""#, "null"),
        ] {
            check(&with("user_id", Some(raw)), ok("r-1", user, 4, 2));
        }
    }

    #[test]
    fn rejects_oversized_messages_before_parsing() {
        let mut big = with("user_id", Some("\"alice\""));
        big.resize(MAX_MESSAGE_BYTES + 1, b' ');
        check(&big, Err((None, RequestError::TooLarge { size: 65537 })));
        assert_eq!(
            RequestError::TooLarge { size: 65537 }.to_string(),
            "message is 65537 bytes, more than the limit of 65536 bytes"
        );
        // Exactly at the limit is parsed (and here valid, as trailing whitespace is JSON).
        big.truncate(MAX_MESSAGE_BYTES);
        check(&big, ok("r-1", "alice", 4, 2));
    }

    #[test]
    fn rejects_invalid_utf8_with_its_offset() {
        check(
            b"{\"request_id\": \"r\xff\"}",
            Err((None, RequestError::NotUtf8 { valid_up_to: 17 })),
        );
        assert_eq!(
            RequestError::NotUtf8 { valid_up_to: 17 }.to_string(),
            "message is not valid UTF-8: bad byte at offset 17"
        );
    }

    #[test]
    fn rejects_non_json_with_line_and_column() {
        for (input, message) in [
            (&b""[..], "EOF while parsing a value at line 1 column 0"),
            (
                b"{\"request_id\": ",
                "EOF while parsing a value at line 1 column 15",
            ),
            (b"{'a': 1}", "key must be a string at line 1 column 2"),
            (b"{}\n{}", "trailing characters at line 2 column 1"),
            (
                b"\"\\ud800\"",
                "unexpected end of hex escape at line 1 column 8",
            ),
        ] {
            check(
                input,
                Err((
                    None,
                    RequestError::NotJson {
                        message: message.to_string(),
                    },
                )),
            );
        }
        let err = ProvisionRequest::parse(b"nope").unwrap_err();
        assert_eq!(
            err.reason.to_string(),
            "message is not valid JSON: expected ident at line 1 column 2"
        );
    }

    #[test]
    fn rejects_json_that_is_not_an_object() {
        for (input, found) in [
            ("[1, 2]", "an array"),
            ("\"text\"", "a string"),
            ("4", "a number"),
            ("-4", "a number"),
            ("4.5", "a number"),
            ("true", "a boolean"),
            ("null", "null"),
        ] {
            check(
                input.as_bytes(),
                Err((None, RequestError::NotAnObject { found })),
            );
        }
    }

    #[test]
    fn rejects_duplicate_fields() {
        let dup = |field: &str| RequestError::DuplicateField {
            field: field.to_string(),
        };
        check(
            br#"{"request_id": "r", "user_id": "a", "user_id": "b", "gpu_count": 1, "duration_hours": 1}"#,
            Err((Some("r"), dup("user_id"))),
        );
        check(
            br#"{"x": 1, "request_id": "r", "user_id": "a", "gpu_count": 1, "duration_hours": 1, "x": 2}"#,
            Err((Some("r"), dup("x"))),
        );
        // Two request ids name no row for certain.
        check(
            br#"{"request_id": "r", "request_id": "s", "user_id": "a", "gpu_count": 1, "duration_hours": 1}"#,
            Err((None, dup("request_id"))),
        );
        assert_eq!(dup("x").to_string(), "field \"x\" appears more than once");
    }

    #[test]
    fn rejects_missing_fields_by_name() {
        for field in ["user_id", "gpu_count", "duration_hours"] {
            check(
                &with(field, None),
                Err((R1, RequestError::MissingField { field })),
            );
        }
        check(
            &with("request_id", None),
            Err((
                None,
                RequestError::MissingField {
                    field: "request_id",
                },
            )),
        );
        check(
            b"{}",
            Err((
                None,
                RequestError::MissingField {
                    field: "request_id",
                },
            )),
        );
        assert_eq!(
            RequestError::MissingField { field: "gpu_count" }.to_string(),
            "missing field \"gpu_count\""
        );
    }

    #[test]
    fn rejects_wrong_types_saying_what_was_found() {
        check(
            &with("request_id", Some("123")),
            Err((None, wrong_type("request_id", "a string", "the number 123"))),
        );
        check(
            &with("user_id", Some("null")),
            Err((R1, wrong_type("user_id", "a string", "null"))),
        );
        check(
            &with("user_id", Some("[\"a\"]")),
            Err((R1, wrong_type("user_id", "a string", "an array"))),
        );
        check(
            &with("gpu_count", Some("\"4\"")),
            Err((R1, wrong_type("gpu_count", "a whole number", "a string"))),
        );
        check(
            &with("gpu_count", Some("4.0")),
            Err((
                R1,
                wrong_type("gpu_count", "a whole number", "the number 4.0"),
            )),
        );
        check(
            &with("gpu_count", Some("4e0")),
            Err((
                R1,
                wrong_type("gpu_count", "a whole number", "the number 4.0"),
            )),
        );
        check(
            &with("duration_hours", Some("2.5")),
            Err((
                R1,
                wrong_type("duration_hours", "a whole number", "the number 2.5"),
            )),
        );
        check(
            &with("duration_hours", Some("true")),
            Err((
                R1,
                wrong_type("duration_hours", "a whole number", "a boolean"),
            )),
        );
        check(
            &with("duration_hours", Some("{}")),
            Err((
                R1,
                wrong_type("duration_hours", "a whole number", "an object"),
            )),
        );
        // Beyond u64, serde_json reads a float; it is still reported, not wrapped.
        check(
            &with("gpu_count", Some("100000000000000000000")),
            Err((
                R1,
                wrong_type("gpu_count", "a whole number", "the number 1e+20"),
            )),
        );
        assert_eq!(
            wrong_type("gpu_count", "a whole number", "a string").to_string(),
            "field \"gpu_count\" must be a whole number, found a string"
        );
    }

    #[test]
    fn rejects_counts_out_of_range() {
        let range = |field, value, max| RequestError::OutOfRange { field, value, max };
        check(
            &with("gpu_count", Some("0")),
            Err((R1, range("gpu_count", 0, 1024))),
        );
        check(
            &with("gpu_count", Some("-1")),
            Err((R1, range("gpu_count", -1, 1024))),
        );
        check(
            &with("gpu_count", Some("1025")),
            Err((R1, range("gpu_count", 1025, 1024))),
        );
        check(
            &with("gpu_count", Some("18446744073709551615")),
            Err((R1, range("gpu_count", 18446744073709551615, 1024))),
        );
        check(
            &with("gpu_count", Some("-9223372036854775808")),
            Err((R1, range("gpu_count", -9223372036854775808, 1024))),
        );
        check(
            &with("duration_hours", Some("0")),
            Err((R1, range("duration_hours", 0, 8760))),
        );
        check(
            &with("duration_hours", Some("8761")),
            Err((R1, range("duration_hours", 8761, 8760))),
        );
        assert_eq!(
            range("gpu_count", 0, 1024).to_string(),
            "field \"gpu_count\" must be from 1 to 1024, found 0"
        );
    }

    #[test]
    fn rejects_bad_request_ids_without_naming_them() {
        let blank = RequestError::Blank {
            field: "request_id",
        };
        check(
            &with("request_id", Some("\"\"")),
            Err((None, blank.clone())),
        );
        check(
            &with("request_id", Some("\" \\t\\n \"")),
            Err((None, blank)),
        );
        let long = format!("\"{}\"", "é".repeat(129));
        check(
            &with("request_id", Some(&long)),
            Err((
                None,
                RequestError::TooLong {
                    field: "request_id",
                    chars: 129,
                    max: 128,
                },
            )),
        );
        let longest = "é".repeat(128);
        check(
            &with("request_id", Some(&format!("\"{longest}\""))),
            ok(&longest, "alice", 4, 2),
        );
        check(
            &with("request_id", Some("\"ab\\u001bc\"")),
            Err((
                None,
                RequestError::ControlCharacter {
                    field: "request_id",
                    character: '\u{1b}',
                    position: 3,
                },
            )),
        );
        check(
            &with("request_id", Some("\"a\\u0085\"")),
            Err((
                None,
                RequestError::ControlCharacter {
                    field: "request_id",
                    character: '\u{85}',
                    position: 2,
                },
            )),
        );
        assert_eq!(
            RequestError::ControlCharacter {
                field: "request_id",
                character: '\n',
                position: 2
            }
            .to_string(),
            "field \"request_id\" must not contain control characters, found U+000A at character 2"
        );
    }

    #[test]
    fn rejects_bad_user_ids() {
        check(
            &with("user_id", Some("\"\"")),
            Err((R1, RequestError::Blank { field: "user_id" })),
        );
        let long = format!("\"{}\"", "x".repeat(257));
        check(
            &with("user_id", Some(&long)),
            Err((
                R1,
                RequestError::TooLong {
                    field: "user_id",
                    chars: 257,
                    max: 256,
                },
            )),
        );
        let longest = "😀".repeat(256);
        check(
            &with("user_id", Some(&format!("\"{longest}\""))),
            ok("r-1", &longest, 4, 2),
        );
    }

    #[test]
    fn reports_the_first_broken_rule_in_field_order() {
        check(
            br#"{"duration_hours": 0, "gpu_count": 0, "user_id": "", "request_id": "r"}"#,
            Err((Some("r"), RequestError::Blank { field: "user_id" })),
        );
    }

    #[test]
    fn deep_nesting_does_not_overflow_the_stack() {
        // 100000 levels is over the size limit, so `parse` refuses it unread; the JSON reader
        // itself must survive it too, in case the limit is ever raised.
        let open = "[".repeat(100_000);
        let closed = format!("{open}{}", "]".repeat(100_000));
        let result = ProvisionRequest::parse(open.as_bytes()).unwrap_err();
        assert_eq!(result.reason, RequestError::TooLarge { size: 100_000 });
        assert!(serde_json::from_str::<TopLevel>(&open).is_err());
        assert!(matches!(
            serde_json::from_str::<TopLevel>(&closed),
            Ok(TopLevel::Other("an array"))
        ));

        // Within the limit: nesting at the top level, in a known field, in an ignored field.
        let depth = 30_000;
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        check(
            nested.as_bytes(),
            Err((None, RequestError::NotAnObject { found: "an array" })),
        );
        let in_known = ProvisionRequest::parse(&with("user_id", Some(&nested))).unwrap_err();
        assert!(
            matches!(&in_known.reason, RequestError::NotJson { message } if message.starts_with("recursion limit exceeded")),
            "{in_known:?}"
        );
        let in_ignored = format!(
            "{{\"extra\": {nested}, \"request_id\": \"r\", \"user_id\": \"u\", \"gpu_count\": 1, \"duration_hours\": 1}}"
        );
        check(in_ignored.as_bytes(), ok("r", "u", 1, 1));
    }

    #[test]
    fn reasons_are_lower_case_without_a_trailing_period() {
        let reasons = [
            RequestError::TooLarge { size: 1 },
            RequestError::NotUtf8 { valid_up_to: 0 },
            RequestError::NotAnObject { found: "null" },
            RequestError::Blank { field: "user_id" },
            RequestError::TooLong {
                field: "user_id",
                chars: 300,
                max: 256,
            },
        ];
        for reason in reasons {
            let message = reason.to_string();
            assert!(message.starts_with(char::is_lowercase), "{message}");
            assert!(!message.ends_with('.'), "{message}");
        }
    }

    /// Valid ids, made so by mapping rather than filtering, which would discard most cases.
    fn request_id_strategy() -> impl Strategy<Value = String> {
        let visible = any::<char>().prop_map(|c| if c.is_control() { '?' } else { c });
        proptest::collection::vec(visible, 1..=MAX_REQUEST_ID_CHARS).prop_map(|mut chars| {
            if chars.iter().all(|c| c.is_whitespace()) {
                chars[0] = 'x';
            }
            String::from_iter(chars)
        })
    }

    fn user_id_strategy() -> impl Strategy<Value = String> {
        proptest::collection::vec(any::<char>(), 1..=MAX_USER_ID_CHARS).prop_map(String::from_iter)
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = ProvisionRequest::parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_mangled_messages(
            cut in 0usize..120,
            byte in any::<u8>(),
        ) {
            let mut message = with("user_id", Some("\"al\\\"ice\""));
            let at = cut.min(message.len() - 1);
            message[at] = byte;
            let _ = ProvisionRequest::parse(&message);
            message.truncate(at);
            let _ = ProvisionRequest::parse(&message);
        }

        #[test]
        fn every_valid_request_roundtrips(
            request_id in request_id_strategy(),
            user_id in user_id_strategy(),
            gpu_count in 1..=MAX_GPU_COUNT,
            duration_hours in 1..=MAX_DURATION_HOURS,
        ) {
            let request = ProvisionRequest { request_id, user_id, gpu_count, duration_hours };
            let bytes = serde_json::to_vec(&request).unwrap();
            prop_assert_eq!(ProvisionRequest::parse(&bytes), Ok(request));
        }
    }
}
