//! Parsing and validation of one sensor message into a [`SensorRecord`].
//!
//! Contract: a JSON object whose keys are feature names or aliases, plus optional
//! `device_id` (string) and `ts` (RFC 3339 string, or Unix seconds or milliseconds).
//! Keys that are neither are ignored. Every failure maps to a [`RejectReason`] with a
//! stable `kind()` used as the dead-letter reason and metric label.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::config::UnknownFields;
use crate::schema::FeatureSchema;

/// Device id used when neither the payload nor the message key names one.
pub const DEFAULT_DEVICE_ID: &str = "default";

/// Longest accepted device id, in bytes.
pub const MAX_DEVICE_ID_BYTES: usize = 256;

/// Unix timestamps above this are read as milliseconds, below as seconds. 10^11 s is
/// the year 5138, and 10^11 ms is March 1973, so real readings are never ambiguous.
const MILLIS_CUTOFF: f64 = 1e11;

/// One validated reading: feature values in schema order.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorRecord {
    pub device_id: String,
    /// Reading time in Unix milliseconds.
    pub ts_ms: i64,
    pub values: Vec<f32>,
}

/// Reason a message cannot be scored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RejectReason {
    #[error("empty message")]
    Empty,
    #[error("message of {bytes} bytes exceeds the {max}-byte limit (input.max_message_bytes)")]
    Oversized { bytes: usize, max: usize },
    #[error("message is not valid UTF-8: {0}")]
    InvalidUtf8(String),
    #[error("message is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("message is not a JSON object")]
    NotAnObject,
    #[error("key {0:?} appears more than once")]
    DuplicateKey(String),
    #[error("key {0:?} is not a known feature, alias, device_id or ts (input.unknown_fields = \"reject\")")]
    UnknownField(String),
    #[error("feature {0:?} is missing")]
    MissingFeature(String),
    #[error("feature {feature:?} is not a number: {found}")]
    NonNumeric { feature: String, found: String },
    #[error("feature {0:?} is not a finite number")]
    NonFinite(String),
    #[error("feature {feature:?} = {value} is outside its physical range [{min}, {max}]")]
    OutOfRange {
        feature: String,
        value: f64,
        min: f64,
        max: f64,
    },
    #[error("invalid device_id: {0}")]
    InvalidDeviceId(String),
    #[error("invalid ts: {0}")]
    InvalidTimestamp(String),
    #[error("timestamp {ts_ms} ms is older than the device's last reading at {last_ts_ms} ms")]
    Late { ts_ms: i64, last_ts_ms: i64 },
}

impl RejectReason {
    /// Stable snake_case reason used in dead-letter headers and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Oversized { .. } => "oversized",
            Self::InvalidUtf8(_) => "invalid_utf8",
            Self::InvalidJson(_) => "invalid_json",
            Self::NotAnObject => "not_an_object",
            Self::DuplicateKey(_) => "duplicate_key",
            Self::UnknownField(_) => "unknown_field",
            Self::MissingFeature(_) => "missing_feature",
            Self::NonNumeric { .. } => "non_numeric",
            Self::NonFinite(_) => "non_finite",
            Self::OutOfRange { .. } => "out_of_range",
            Self::InvalidDeviceId(_) => "invalid_device_id",
            Self::InvalidTimestamp(_) => "invalid_timestamp",
            Self::Late { .. } => "late",
        }
    }
}

/// Parses messages against one feature schema.
#[derive(Debug, Clone)]
pub struct RecordParser {
    schema: FeatureSchema,
    max_message_bytes: usize,
    unknown_fields: UnknownFields,
}

/// Kafka metadata that supplies defaults for a payload's missing fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessageMeta<'a> {
    pub key: Option<&'a [u8]>,
    /// Kafka message timestamp in Unix milliseconds.
    pub timestamp_ms: Option<i64>,
}

impl RecordParser {
    pub fn new(
        schema: FeatureSchema,
        max_message_bytes: usize,
        unknown_fields: UnknownFields,
    ) -> Self {
        Self {
            schema,
            max_message_bytes,
            unknown_fields,
        }
    }

    pub fn schema(&self) -> &FeatureSchema {
        &self.schema
    }

    /// Parses and validates one message.
    ///
    /// Device id: payload `device_id`, else the message key, else [`DEFAULT_DEVICE_ID`].
    /// Time: payload `ts`, else the Kafka timestamp, else the current time.
    pub fn parse(
        &self,
        payload: &[u8],
        meta: MessageMeta<'_>,
    ) -> Result<SensorRecord, RejectReason> {
        if payload.is_empty() || payload.iter().all(u8::is_ascii_whitespace) {
            return Err(RejectReason::Empty);
        }
        if payload.len() > self.max_message_bytes {
            return Err(RejectReason::Oversized {
                bytes: payload.len(),
                max: self.max_message_bytes,
            });
        }
        let text =
            std::str::from_utf8(payload).map_err(|e| RejectReason::InvalidUtf8(e.to_string()))?;

        let mut deserializer = serde_json::Deserializer::from_str(text);
        let raw = RawRecordSeed {
            schema: &self.schema,
            reject_unknown: self.unknown_fields == UnknownFields::Reject,
        }
        .deserialize(&mut deserializer)
        .map_err(|e| RejectReason::InvalidJson(e.to_string()))?;
        deserializer
            .end()
            .map_err(|e| RejectReason::InvalidJson(e.to_string()))?;
        let raw = raw?;

        let values = self.check_values(raw.values.as_slice())?;
        let device_id = resolve_device_id(raw.device_id, meta.key)?;
        let ts_ms = match raw.ts {
            Some(ts) => ts,
            None => meta.timestamp_ms.unwrap_or_else(now_ms),
        };
        Ok(SensorRecord {
            device_id,
            ts_ms,
            values,
        })
    }

    fn check_values(&self, values: &[Option<f64>]) -> Result<Vec<f32>, RejectReason> {
        let mut out = Vec::with_capacity(values.len());
        for (spec, value) in self.schema.features().iter().zip(values) {
            let value = value.ok_or_else(|| RejectReason::MissingFeature(spec.name.clone()))?;
            if !value.is_finite() || value.abs() > f32::MAX as f64 {
                return Err(RejectReason::NonFinite(spec.name.clone()));
            }
            let min = spec.min.unwrap_or(f64::NEG_INFINITY);
            let max = spec.max.unwrap_or(f64::INFINITY);
            if value < min || value > max {
                return Err(RejectReason::OutOfRange {
                    feature: spec.name.clone(),
                    value,
                    min,
                    max,
                });
            }
            out.push(value as f32);
        }
        Ok(out)
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn resolve_device_id(
    from_payload: Option<String>,
    key: Option<&[u8]>,
) -> Result<String, RejectReason> {
    let id = match (from_payload, key) {
        (Some(id), _) => id,
        (None, Some(key)) if !key.is_empty() => std::str::from_utf8(key)
            .map_err(|_| RejectReason::InvalidDeviceId("message key is not valid UTF-8".into()))?
            .to_owned(),
        _ => return Ok(DEFAULT_DEVICE_ID.to_owned()),
    };
    if id.is_empty() {
        return Err(RejectReason::InvalidDeviceId("empty string".into()));
    }
    if id.len() > MAX_DEVICE_ID_BYTES {
        return Err(RejectReason::InvalidDeviceId(format!(
            "{} bytes, at most {MAX_DEVICE_ID_BYTES} allowed",
            id.len()
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(RejectReason::InvalidDeviceId(
            "contains control characters".into(),
        ));
    }
    Ok(id)
}

/// Parses a timestamp given as RFC 3339 text or Unix seconds/milliseconds.
pub fn parse_timestamp_text(text: &str) -> Result<i64, RejectReason> {
    if let Ok(number) = text.trim().parse::<f64>() {
        return unix_number_to_ms(number);
    }
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            RejectReason::InvalidTimestamp(format!(
                "{text:?} is neither RFC 3339 nor a Unix time ({e})"
            ))
        })
}

fn unix_number_to_ms(number: f64) -> Result<i64, RejectReason> {
    if !number.is_finite() || number < 0.0 {
        return Err(RejectReason::InvalidTimestamp(format!(
            "{number} is not a non-negative Unix time"
        )));
    }
    let ms = if number >= MILLIS_CUTOFF {
        number
    } else {
        number * 1000.0
    };
    // Year 9999 in milliseconds; beyond it RFC 3339 output cannot represent the time.
    if ms > 253_402_300_799_999.0 {
        return Err(RejectReason::InvalidTimestamp(format!(
            "{number} is beyond the year 9999"
        )));
    }
    Ok(ms.round() as i64)
}

/// Fields of a payload before validation; `values[i]` belongs to schema column `i`.
struct RawRecord {
    device_id: Option<String>,
    ts: Option<i64>,
    values: FeatureSlots,
}

/// Schemas up to this many features parse without a heap allocation for the values.
const INLINE_FEATURES: usize = 16;

/// One slot per schema feature, on the stack for up to [`INLINE_FEATURES`] features.
// The inline variant is large on purpose: it lives on the stack for one parse.
#[allow(clippy::large_enum_variant)]
enum FeatureSlots {
    Inline([Option<f64>; INLINE_FEATURES], usize),
    Heap(Vec<Option<f64>>),
}

impl FeatureSlots {
    fn new(len: usize) -> Self {
        if len <= INLINE_FEATURES {
            Self::Inline([None; INLINE_FEATURES], len)
        } else {
            Self::Heap(vec![None; len])
        }
    }

    fn as_slice(&self) -> &[Option<f64>] {
        match self {
            Self::Inline(slots, len) => &slots[..*len],
            Self::Heap(slots) => slots,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [Option<f64>] {
        match self {
            Self::Inline(slots, len) => &mut slots[..*len],
            Self::Heap(slots) => slots,
        }
    }
}

/// Deserializes a JSON object straight into a [`RawRecord`] without building a
/// `serde_json::Value` tree, and reports semantic problems (duplicate keys, wrong
/// types) as `Ok(Err(reason))` so they keep their own dead-letter reason.
struct RawRecordSeed<'s> {
    schema: &'s FeatureSchema,
    reject_unknown: bool,
}

impl<'de> DeserializeSeed<'de> for RawRecordSeed<'_> {
    type Value = Result<RawRecord, RejectReason>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RawRecordSeed<'_> {
    type Value = Result<RawRecord, RejectReason>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut raw = RawRecord {
            device_id: None,
            ts: None,
            values: FeatureSlots::new(self.schema.len()),
        };
        let mut seen_device = false;
        let mut seen_ts = false;
        // The first problem found wins, but the rest of the object is still consumed so
        // that a syntax error later in the message is reported as invalid JSON.
        let mut problem: Option<RejectReason> = None;

        while let Some(key) = map.next_key::<KeyText<'de>>()? {
            let key = key.0;
            let value: Scalar<'de> = map.next_value()?;
            if problem.is_some() {
                continue;
            }
            let duplicate = || RejectReason::DuplicateKey(key.to_string());
            match key.as_ref() {
                "device_id" => {
                    if std::mem::replace(&mut seen_device, true) {
                        problem = Some(duplicate());
                        continue;
                    }
                    match value {
                        Scalar::Text(id) => raw.device_id = Some(id.into_owned()),
                        Scalar::Null => {}
                        other => {
                            problem = Some(RejectReason::InvalidDeviceId(format!(
                                "expected a string, found {}",
                                other.describe()
                            )))
                        }
                    }
                }
                "ts" => {
                    if std::mem::replace(&mut seen_ts, true) {
                        problem = Some(duplicate());
                        continue;
                    }
                    match value {
                        Scalar::Number(n) => match unix_number_to_ms(n) {
                            Ok(ms) => raw.ts = Some(ms),
                            Err(e) => problem = Some(e),
                        },
                        Scalar::Text(text) => match parse_timestamp_text(&text) {
                            Ok(ms) => raw.ts = Some(ms),
                            Err(e) => problem = Some(e),
                        },
                        Scalar::Null => {}
                        other => {
                            problem = Some(RejectReason::InvalidTimestamp(format!(
                                "expected a string or number, found {}",
                                other.describe()
                            )))
                        }
                    }
                }
                name => {
                    let Some(index) = self.schema.index_of(name) else {
                        if self.reject_unknown {
                            problem = Some(RejectReason::UnknownField(name.to_owned()));
                        }
                        continue;
                    };
                    let slot = &mut raw.values.as_mut_slice()[index];
                    if slot.is_some() {
                        problem = Some(duplicate());
                        continue;
                    }
                    let feature = &self.schema.features()[index].name;
                    match value {
                        Scalar::Number(n) => *slot = Some(n),
                        Scalar::Null => {
                            problem = Some(RejectReason::MissingFeature(feature.clone()))
                        }
                        other => {
                            problem = Some(RejectReason::NonNumeric {
                                feature: feature.clone(),
                                found: other.describe(),
                            })
                        }
                    }
                }
            }
        }

        Ok(match problem {
            Some(reason) => Err(reason),
            None => Ok(raw),
        })
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Err(RejectReason::NotAnObject))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err(RejectReason::NotAnObject))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err(RejectReason::NotAnObject))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err(RejectReason::NotAnObject))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err(RejectReason::NotAnObject))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err(RejectReason::NotAnObject))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Err(RejectReason::NotAnObject))
    }
}

/// An object key, borrowed from the input when it has no escapes.
struct KeyText<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for KeyText<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = KeyText<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(KeyText(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(KeyText(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(KeyText(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A JSON value reduced to what validation needs; nested values are skipped, not built.
/// Strings without escapes are borrowed from the payload.
enum Scalar<'de> {
    Null,
    Bool,
    Number(f64),
    Text(Cow<'de, str>),
    Array,
    Object,
}

impl Scalar<'_> {
    fn describe(&self) -> String {
        match self {
            Self::Null => "null".into(),
            Self::Bool => "a boolean".into(),
            Self::Number(n) => format!("the number {n}"),
            Self::Text(t) => {
                let shown: String = t.chars().take(40).collect();
                format!("the string {shown:?}")
            }
            Self::Array => "an array".into(),
            Self::Object => "an object".into(),
        }
    }
}

impl<'de> de::Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl<'de> Visitor<'de> for ScalarVisitor {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Null)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Bool)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Number(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Number(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Number(v))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Text(Cow::Owned(v)))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar<'de>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Array)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar<'de>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Object)
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FeatureSpec;

    fn anoml_schema() -> FeatureSchema {
        let spec = |name: &str, alias: &str, min: f64, max: f64| FeatureSpec {
            name: name.into(),
            aliases: vec![alias.into()],
            min: Some(min),
            max: Some(max),
        };
        FeatureSchema::new(vec![
            spec("Temperature", "temperatura", -40.0, 125.0),
            spec("Humidity", "umidade", 0.0, 100.0),
            spec("Air Quality", "qualidade_do_ar", 0.0, 1023.0),
            spec("Light", "luz", 0.0, 1023.0),
            spec("Loudness", "som", 0.0, 1023.0),
        ])
        .unwrap()
    }

    fn parser() -> RecordParser {
        RecordParser::new(anoml_schema(), 1024, UnknownFields::Ignore)
    }

    fn reject(payload: &str) -> RejectReason {
        parser()
            .parse(payload.as_bytes(), MessageMeta::default())
            .unwrap_err()
    }

    const SEED_LINES: [&str; 5] = [
        r#"{"temperatura": 25.1, "umidade": 60.5, "qualidade_do_ar": 75, "luz": 628.0, "som": 145.0}"#,
        r#"{"temperatura": 24.8, "umidade": 58.0, "qualidade_do_ar": 55, "luz": 589.0, "som": 152.0}"#,
        r#"{"temperatura": 27.5, "umidade": 55.2, "qualidade_do_ar": 75, "luz": 632.0, "som": 160.0}"#,
        r#"{"temperatura": 65.5, "umidade": 12.0, "qualidade_do_ar": 75, "luz": 630.0, "som": 148.0}"#,
        r#"{"temperatura": 26.2, "umidade": 62.1, "qualidade_do_ar": 75, "luz": 629.0, "som": 450.0}"#,
    ];

    #[test]
    fn seed_lines_are_accepted() {
        let meta = MessageMeta {
            key: None,
            timestamp_ms: Some(1_700_000_000_000),
        };
        for line in SEED_LINES {
            let record = parser().parse(line.as_bytes(), meta).unwrap();
            assert_eq!(record.device_id, DEFAULT_DEVICE_ID);
            assert_eq!(record.ts_ms, 1_700_000_000_000);
            assert_eq!(record.values.len(), 5);
        }
        let second = parser().parse(SEED_LINES[1].as_bytes(), meta).unwrap();
        assert_eq!(second.values, vec![24.8, 58.0, 55.0, 589.0, 152.0]);
    }

    #[test]
    fn canonical_names_and_metadata() {
        let payload = r#"{"device_id": "sala-204", "ts": "2026-12-04T19:00:00Z", "Temperature": 25.1,
            "Humidity": 60.5, "Air Quality": 75, "Light": 628.0, "Loudness": 145.0, "battery": "low"}"#;
        let record = parser()
            .parse(payload.as_bytes(), MessageMeta::default())
            .unwrap();
        assert_eq!(record.device_id, "sala-204");
        assert_eq!(record.ts_ms, 1_796_410_800_000);
    }

    #[test]
    fn device_id_falls_back_to_key() {
        let meta = MessageMeta {
            key: Some(b"lab-7"),
            timestamp_ms: None,
        };
        let record = parser().parse(SEED_LINES[0].as_bytes(), meta).unwrap();
        assert_eq!(record.device_id, "lab-7");
    }

    #[test]
    fn unix_seconds_and_millis() {
        let seconds = SEED_LINES[0].replace('}', r#", "ts": 1623781306}"#);
        let millis = SEED_LINES[0].replace('}', r#", "ts": 1623781306000}"#);
        let text = SEED_LINES[0].replace('}', r#", "ts": "1623781306.5"}"#);
        let p = parser();
        assert_eq!(
            p.parse(seconds.as_bytes(), MessageMeta::default())
                .unwrap()
                .ts_ms,
            1_623_781_306_000
        );
        assert_eq!(
            p.parse(millis.as_bytes(), MessageMeta::default())
                .unwrap()
                .ts_ms,
            1_623_781_306_000
        );
        assert_eq!(
            p.parse(text.as_bytes(), MessageMeta::default())
                .unwrap()
                .ts_ms,
            1_623_781_306_500
        );
    }

    #[test]
    fn each_bad_record_has_its_reason() {
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "empty"),
            ("   ".into(), "empty"),
            ("x".repeat(2000), "oversized"),
            (r#"{"temperatura": 25.1,"#.into(), "invalid_json"),
            ("[1, 2, 3]".into(), "not_an_object"),
            ("42".into(), "not_an_object"),
            (
                SEED_LINES[0].replace(r#""som": 145.0"#, r#""som": 145.0, "luz": 1.0"#),
                "duplicate_key",
            ),
            (
                SEED_LINES[0].replace(r#", "som": 145.0"#, ""),
                "missing_feature",
            ),
            (SEED_LINES[0].replace("145.0", "null"), "missing_feature"),
            (SEED_LINES[0].replace("145.0", r#""145.0""#), "non_numeric"),
            (SEED_LINES[0].replace("145.0", "[145.0]"), "non_numeric"),
            (SEED_LINES[0].replace("145.0", "NaN"), "invalid_json"),
            (SEED_LINES[0].replace("145.0", "1e400"), "invalid_json"),
            (SEED_LINES[0].replace("145.0", "1e300"), "non_finite"),
            (SEED_LINES[0].replace("60.5", "160.5"), "out_of_range"),
            (
                SEED_LINES[0].replace('}', r#", "device_id": 7}"#),
                "invalid_device_id",
            ),
            (
                SEED_LINES[0].replace('}', r#", "device_id": ""}"#),
                "invalid_device_id",
            ),
            (
                SEED_LINES[0].replace('}', r#", "ts": "yesterday"}"#),
                "invalid_timestamp",
            ),
            (
                SEED_LINES[0].replace('}', r#", "ts": -5}"#),
                "invalid_timestamp",
            ),
            (format!("{} trailing", SEED_LINES[0]), "invalid_json"),
            (
                format!("{}{}", "[".repeat(200), "]".repeat(200)),
                "not_an_object",
            ),
            (
                format!("{{\"som\": {}1{}}}", "[".repeat(200), "]".repeat(200)),
                "non_numeric",
            ),
        ];
        for (payload, kind) in cases {
            let reason = reject(&payload);
            assert_eq!(reason.kind(), kind, "payload {payload:.60} gave {reason}");
        }
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        let reason = parser()
            .parse(b"{\"temperatura\": \xff}", MessageMeta::default())
            .unwrap_err();
        assert_eq!(reason.kind(), "invalid_utf8");
    }

    #[test]
    fn unknown_field_rejected_by_policy() {
        let strict = RecordParser::new(anoml_schema(), 1024, UnknownFields::Reject);
        let payload = SEED_LINES[0].replace('}', r#", "battery": 3.1}"#);
        let reason = strict
            .parse(payload.as_bytes(), MessageMeta::default())
            .unwrap_err();
        assert_eq!(reason, RejectReason::UnknownField("battery".into()));
        assert!(strict
            .parse(SEED_LINES[0].as_bytes(), MessageMeta::default())
            .is_ok());
        assert!(parser()
            .parse(payload.as_bytes(), MessageMeta::default())
            .is_ok());
    }

    #[test]
    fn reason_names_the_feature() {
        let reason = reject(&SEED_LINES[0].replace(r#", "som": 145.0"#, ""));
        assert_eq!(reason.to_string(), "feature \"Loudness\" is missing");
    }
}
