//! Ingestion events: the validated [`Event`] type, and the checks that turn
//! a request body into events or into an error naming the bad field.
//!
//! Validation walks a `serde_json::Value` by hand instead of deriving
//! `Deserialize` so that every refusal names its field (`customer_id`,
//! `[3].ts`, `dimensions.country`): explicit 4xx errors were one of the
//! incident's fixes, and a client can only fix what it is told.

use std::collections::BTreeMap;

use serde_json::Value;

/// One accepted event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub customer_id: String,
    pub event: String,
    /// Event time, milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// Dimension name to value, e.g. `country -> fr`.
    pub dimensions: BTreeMap<String, String>,
    /// The measured value; 1.0 when the client sent none.
    pub value: f64,
}

impl Event {
    /// An event with no dimensions and value 1.0.
    pub fn new(customer_id: impl Into<String>, event: impl Into<String>, ts_ms: i64) -> Self {
        Event {
            customer_id: customer_id.into(),
            event: event.into(),
            ts_ms,
            dimensions: BTreeMap::new(),
            value: 1.0,
        }
    }

    /// Adds a dimension (builder style, for tests and demos).
    pub fn with_dim(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.dimensions.insert(name.into(), value.into());
        self
    }

    /// Sets the value (builder style).
    pub fn with_value(mut self, value: f64) -> Self {
        self.value = value;
        self
    }
}

/// Why a body was refused; `field` is `None` when the body as a whole is bad
/// (not JSON, not an object).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct FieldError {
    pub field: Option<String>,
    pub message: String,
}

impl FieldError {
    fn at(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    fn whole(message: impl Into<String>) -> Self {
        FieldError {
            field: None,
            message: message.into(),
        }
    }

    /// Prefixes the field with the batch index: `ts` becomes `[3].ts`.
    fn in_batch(self, index: usize) -> Self {
        let field = match self.field {
            Some(f) => format!("[{index}].{f}"),
            None => format!("[{index}]"),
        };
        FieldError {
            field: Some(field),
            message: self.message,
        }
    }
}

fn parse_json(body: &[u8]) -> Result<Value, FieldError> {
    // serde_json's message carries "at line L column C".
    serde_json::from_slice(body).map_err(|e| FieldError::whole(format!("invalid JSON: {e}")))
}

/// Parses a `POST /v1/events` body.
pub fn parse_one(body: &[u8]) -> Result<Event, FieldError> {
    validate(&parse_json(body)?)
}

/// Parses a `POST /v1/events/batch` body: every event is checked before any
/// is returned, so the caller can accept all or none.
pub fn parse_batch(body: &[u8]) -> Result<Vec<Event>, FieldError> {
    let Value::Array(items) = parse_json(body)? else {
        return Err(FieldError::whole("expected a JSON array of events"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| validate(item).map_err(|e| e.in_batch(i)))
        .collect()
}

fn required_str(obj: &serde_json::Map<String, Value>, key: &str) -> Result<String, FieldError> {
    match obj.get(key) {
        None | Some(Value::Null) => Err(FieldError::at(key, format!("`{key}` is required"))),
        Some(Value::String(s)) if s.is_empty() => {
            Err(FieldError::at(key, format!("`{key}` must not be empty")))
        }
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(FieldError::at(key, format!("`{key}` must be a string"))),
    }
}

/// Checks one event object.
pub fn validate(value: &Value) -> Result<Event, FieldError> {
    let Value::Object(obj) = value else {
        return Err(FieldError::whole("expected a JSON object"));
    };
    let customer_id = required_str(obj, "customer_id")?;
    let event = required_str(obj, "event")?;
    let ts_ms = match obj.get("ts") {
        None | Some(Value::Null) => return Err(FieldError::at("ts", "`ts` is required")),
        Some(Value::Number(n)) => n.as_i64().filter(|t| *t >= 0).ok_or_else(|| {
            FieldError::at(
                "ts",
                "`ts` must be a non-negative integer (milliseconds since the Unix epoch)",
            )
        })?,
        Some(_) => {
            return Err(FieldError::at(
                "ts",
                "`ts` must be an integer (milliseconds since the Unix epoch)",
            ))
        }
    };
    let mut dimensions = BTreeMap::new();
    match obj.get("dimensions") {
        None | Some(Value::Null) => {}
        Some(Value::Object(dims)) => {
            for (name, v) in dims {
                let field = format!("dimensions.{name}");
                if name.is_empty() {
                    return Err(FieldError::at(field, "dimension names must not be empty"));
                }
                let Value::String(v) = v else {
                    return Err(FieldError::at(field, "dimension values must be strings"));
                };
                dimensions.insert(name.clone(), v.clone());
            }
        }
        Some(_) => {
            return Err(FieldError::at(
                "dimensions",
                "`dimensions` must be an object of strings",
            ))
        }
    }
    let value = match obj.get("value") {
        None | Some(Value::Null) => 1.0,
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|v| v.is_finite())
            .ok_or_else(|| FieldError::at("value", "`value` must be a finite number"))?,
        Some(_) => return Err(FieldError::at("value", "`value` must be a number")),
    };
    Ok(Event {
        customer_id,
        event,
        ts_ms,
        dimensions,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"customer_id":"c1","event":"page_view","ts":1732550000000,
        "dimensions":{"country":"fr","device":"ios"},"value":12.5}"#;

    fn field_of(body: &str) -> Option<String> {
        parse_one(body.as_bytes()).unwrap_err().field
    }

    #[test]
    fn accepts_a_full_event() {
        let e = parse_one(GOOD.as_bytes()).unwrap();
        assert_eq!(e.customer_id, "c1");
        assert_eq!(e.event, "page_view");
        assert_eq!(e.ts_ms, 1_732_550_000_000);
        assert_eq!(e.dimensions["country"], "fr");
        assert_eq!(e.value, 12.5);
    }

    #[test]
    fn value_defaults_to_one_and_dimensions_to_none() {
        let e = parse_one(br#"{"customer_id":"c","event":"e","ts":5}"#).unwrap();
        assert_eq!(e, Event::new("c", "e", 5));
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(
            field_of(r#"{"event":"e","ts":1}"#).as_deref(),
            Some("customer_id")
        );
        assert_eq!(
            field_of(r#"{"customer_id":"","event":"e","ts":1}"#).as_deref(),
            Some("customer_id")
        );
        assert_eq!(
            field_of(r#"{"customer_id":"c","event":7,"ts":1}"#).as_deref(),
            Some("event")
        );
        for ts in ["\"2024\"", "1.5", "-1", "null"] {
            let body = format!(r#"{{"customer_id":"c","event":"e","ts":{ts}}}"#);
            assert_eq!(field_of(&body).as_deref(), Some("ts"), "{ts}");
        }
        assert_eq!(
            field_of(r#"{"customer_id":"c","event":"e","ts":1,"dimensions":{"os":1}}"#).as_deref(),
            Some("dimensions.os")
        );
        assert_eq!(
            field_of(r#"{"customer_id":"c","event":"e","ts":1,"dimensions":[]}"#).as_deref(),
            Some("dimensions")
        );
        assert_eq!(
            field_of(r#"{"customer_id":"c","event":"e","ts":1,"value":"3"}"#).as_deref(),
            Some("value")
        );
    }

    #[test]
    fn invalid_json_says_where() {
        let err = parse_one(b"{\"customer_id\": \n oops}").unwrap_err();
        assert_eq!(err.field, None);
        assert!(err.message.contains("line 2"), "{}", err.message);
        assert_eq!(parse_one(b"[1]").unwrap_err().field, None);
    }

    #[test]
    fn batch_names_index_and_field() {
        let body = format!(
            "[{GOOD},{GOOD},{GOOD},{}]",
            r#"{"customer_id":"c","event":"e","ts":"now"}"#
        );
        let err = parse_batch(body.as_bytes()).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("[3].ts"));
        let err = parse_batch(b"[{}, 3]").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("[0].customer_id"));
        let err = parse_batch(b"[3]").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("[0]"));
        assert_eq!(parse_batch(b"{}").unwrap_err().field, None);
        assert_eq!(
            parse_batch(format!("[{GOOD},{GOOD}]").as_bytes())
                .unwrap()
                .len(),
            2
        );
        assert!(parse_batch(b"[]").unwrap().is_empty());
    }
}
