//! Property tests of the record parser: no input panics it, every rejection carries a
//! reason, and every accepted record satisfies the contract. `make fuzz` runs them
//! with many more cases (PROPTEST_CASES).

use iot_anomaly::config::{FeatureSpec, UnknownFields};
use iot_anomaly::record::{MessageMeta, RecordParser, RejectReason};
use iot_anomaly::schema::FeatureSchema;
use proptest::prelude::*;

const MAX_BYTES: usize = 4096;

fn parser() -> RecordParser {
    let spec = |name: &str, alias: &str| FeatureSpec {
        name: name.into(),
        aliases: vec![alias.into()],
        min: Some(-40.0),
        max: Some(125.0),
    };
    let schema = FeatureSchema::new(vec![
        spec("Temperature", "temperatura"),
        spec("Humidity", "umidade"),
    ])
    .unwrap();
    RecordParser::new(schema, MAX_BYTES, UnknownFields::Ignore)
}

fn check_outcome(result: Result<iot_anomaly::record::SensorRecord, RejectReason>) {
    match result {
        Ok(record) => {
            assert_eq!(record.values.len(), 2);
            assert!(record
                .values
                .iter()
                .all(|v| v.is_finite() && (-40.0..=125.0).contains(v)));
            assert!(!record.device_id.is_empty());
            assert!(record.device_id.len() <= 256);
        }
        Err(reason) => {
            assert!(!reason.kind().is_empty());
            assert!(!reason.to_string().is_empty());
        }
    }
}

/// JSON-like text built from the pieces a sensor payload is made of, so that random
/// inputs often get past the tokenizer and exercise validation.
fn json_like() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("\"temperatura\"".to_string()),
        Just("\"Humidity\"".to_string()),
        Just("\"umidade\"".to_string()),
        Just("\"device_id\"".to_string()),
        Just("\"ts\"".to_string()),
        "\"[a-z]{0,6}\"".prop_map(|k| k),
    ];
    let value = prop_oneof![
        any::<f64>().prop_map(|v| format!("{v}")),
        any::<i64>().prop_map(|v| v.to_string()),
        Just("null".to_string()),
        Just("true".to_string()),
        "\"[ -~]{0,12}\"".prop_map(|v| v),
        Just("[1,[2,{}]]".to_string()),
        Just("1e400".to_string()),
        Just("\"2026-12-04T19:00:00Z\"".to_string()),
    ];
    prop::collection::vec((key, value), 0..8).prop_map(|pairs| {
        let body: Vec<String> = pairs.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
        format!("{{{}}}", body.join(","))
    })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600), key in prop::option::of(prop::collection::vec(any::<u8>(), 0..40))) {
        let meta = MessageMeta { key: key.as_deref(), timestamp_ms: Some(1) };
        check_outcome(parser().parse(&bytes, meta));
    }

    #[test]
    fn json_like_input_meets_contract(text in json_like()) {
        check_outcome(parser().parse(text.as_bytes(), MessageMeta::default()));
    }

    #[test]
    fn valid_readings_are_accepted(t in -40.0f64..125.0, h in -40.0f64..125.0, device in "[a-z0-9-]{1,20}") {
        let text = format!(r#"{{"device_id":"{device}","temperatura":{t},"umidade":{h}}}"#);
        let record = parser().parse(text.as_bytes(), MessageMeta::default()).unwrap();
        prop_assert_eq!(record.device_id, device);
        prop_assert_eq!(record.values, vec![t as f32, h as f32]);
    }
}
