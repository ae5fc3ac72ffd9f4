//! The producer side: turns a CSV or JSON-lines file into sensor messages on a topic.
//!
//! - CSV: each row becomes a JSON object keyed by the header names; numeric cells
//!   become numbers, the time column (`Time`, `time`, `ts`, `timestamp` or
//!   `datetime`) becomes `ts`.
//! - JSON lines: each line's JSON value is sent byte for byte. Blank lines and lines
//!   starting with `#` are skipped, and a `#` comment after the value is dropped, so
//!   annotated examples such as `{"temperatura": 65.5, ...} #anômalo` replay as is.
//!
//! The message key is the device id (`--device`, or the payload's `device_id`), so
//! every reading of one device lands on one partition.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use serde_json::{Map, Value};

use crate::kafka::KafkaError;

const TIME_COLUMNS: [&str; 5] = ["Time", "time", "ts", "timestamp", "datetime"];
/// Deliveries awaited at once; bounds the memory of in-flight futures.
const IN_FLIGHT: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: invalid CSV: {cause}")]
    Csv { path: PathBuf, cause: csv::Error },
    #[error("{path}, line {line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("cannot produce to {topic}: {cause}")]
    Produce { topic: String, cause: KafkaError },
}

/// One message ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayMessage {
    pub key: Option<String>,
    pub payload: Vec<u8>,
}

/// Reads `path` as JSON lines when its extension is `.jsonl`, `.ndjson` or `.json`,
/// else as CSV. `device` sets the key of every message and, for CSV, `device_id`.
pub fn read_messages(path: &Path, device: Option<&str>) -> Result<Vec<ReplayMessage>, ReplayError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReplayError::Io {
        path: path.to_path_buf(),
        cause: source,
    })?;
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    if matches!(extension, "jsonl" | "ndjson" | "json") {
        json_lines(path, &text, device)
    } else {
        csv_rows(path, &text, device)
    }
}

fn json_lines(
    path: &Path,
    text: &str,
    device: Option<&str>,
) -> Result<Vec<ReplayMessage>, ReplayError> {
    let mut messages = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let line_error = |message: String| ReplayError::Line {
            path: path.to_path_buf(),
            line: index + 1,
            message,
        };
        let mut values = serde_json::Deserializer::from_str(trimmed).into_iter::<Value>();
        let value = match values.next() {
            Some(Ok(value)) => value,
            Some(Err(error)) => return Err(line_error(format!("invalid JSON: {error}"))),
            None => continue,
        };
        let end = values.byte_offset();
        let rest = trimmed[end..].trim_start();
        if !(rest.is_empty() || rest.starts_with('#')) {
            return Err(line_error(format!(
                "unexpected text after the JSON value: {:?}",
                rest.chars().take(40).collect::<String>()
            )));
        }
        let key = device.map(str::to_owned).or_else(|| {
            value
                .get("device_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        messages.push(ReplayMessage {
            key,
            payload: trimmed.as_bytes()[..end].to_vec(),
        });
    }
    Ok(messages)
}

fn csv_rows(
    path: &Path,
    text: &str,
    device: Option<&str>,
) -> Result<Vec<ReplayMessage>, ReplayError> {
    let csv_error = |source| ReplayError::Csv {
        path: path.to_path_buf(),
        cause: source,
    };
    let mut reader = crate::dataset::csv_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .map_err(csv_error)?
        .iter()
        .map(str::to_owned)
        .collect();
    let time_column = header
        .iter()
        .position(|h| TIME_COLUMNS.contains(&h.as_str()));

    let mut messages = Vec::new();
    for row in reader.records() {
        let row = row.map_err(csv_error)?;
        let mut object = Map::new();
        if let Some(device) = device {
            object.insert("device_id".into(), Value::String(device.to_owned()));
        }
        for (column, (name, cell)) in header.iter().zip(row.iter()).enumerate() {
            let value = match cell
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
            {
                Some(number) => Value::Number(parse_integer(cell).unwrap_or(number)),
                None => Value::String(cell.to_owned()),
            };
            let key = if Some(column) == time_column {
                "ts"
            } else {
                name.as_str()
            };
            object.insert(key.to_owned(), value);
        }
        let key = object
            .get("device_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let payload =
            serde_json::to_vec(&Value::Object(object)).expect("a JSON map always serialises");
        messages.push(ReplayMessage { key, payload });
    }
    Ok(messages)
}

/// Keeps integers such as Unix seconds exact instead of turning them into floats.
fn parse_integer(cell: &str) -> Option<serde_json::Number> {
    cell.parse::<i64>().ok().map(serde_json::Number::from)
}

/// Sends `messages` to `topic` in order, at most `rate` per second when given, and
/// waits for every acknowledgement. Returns the number sent.
pub async fn produce_all(
    producer: &FutureProducer,
    topic: &str,
    messages: &[ReplayMessage],
    rate: Option<f64>,
) -> Result<usize, ReplayError> {
    let started = tokio::time::Instant::now();
    let mut in_flight: Vec<DeliveryFuture> = Vec::with_capacity(IN_FLIGHT.min(messages.len()));
    let produce_error = |source| ReplayError::Produce {
        topic: topic.to_owned(),
        cause: source,
    };

    for (index, message) in messages.iter().enumerate() {
        if let Some(rate) = rate.filter(|r| *r > 0.0) {
            tokio::time::sleep_until(started + Duration::from_secs_f64(index as f64 / rate)).await;
        }
        let mut record = FutureRecord::<str, [u8]>::to(topic).payload(&message.payload);
        if let Some(key) = &message.key {
            record = record.key(key.as_str());
        }
        loop {
            match producer.send_result(record) {
                Ok(future) => {
                    in_flight.push(future);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((source, _)) => return Err(produce_error(source)),
            }
        }
        if in_flight.len() >= IN_FLIGHT {
            await_deliveries(&mut in_flight)
                .await
                .map_err(produce_error)?;
        }
    }
    await_deliveries(&mut in_flight)
        .await
        .map_err(produce_error)?;
    Ok(messages.len())
}

async fn await_deliveries(in_flight: &mut Vec<DeliveryFuture>) -> Result<(), KafkaError> {
    for future in in_flight.drain(..) {
        match future.await {
            Ok(Ok(_)) => {}
            Ok(Err((error, _))) => return Err(error),
            Err(_) => return Err(KafkaError::Canceled),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(extension: &str, content: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new()
            .suffix(extension)
            .tempfile()
            .unwrap();
        file.write_all(content.as_bytes()).unwrap();
        file
    }

    #[test]
    fn json_lines_keep_bytes_and_drop_comments() {
        let content = "# seed examples\n{\"temperatura\": 24.8, \"qualidade_do_ar\": 55} #anômalo\n\n{\"device_id\": \"a\", \"luz\": 1}\n";
        let input = file(".jsonl", content);
        let messages = read_messages(input.path(), None).unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(
            messages[0].payload,
            br#"{"temperatura": 24.8, "qualidade_do_ar": 55}"#
        );
        assert_eq!(messages[0].key, None);
        assert_eq!(messages[1].key.as_deref(), Some("a"));
    }

    #[test]
    fn json_lines_reject_trailing_text() {
        let input = file(".jsonl", "{\"a\": 1} trailing\n");
        let error = read_messages(input.path(), None).unwrap_err();
        assert!(error.to_string().contains("line 1"), "{error}");
    }

    #[test]
    fn csv_rows_become_objects() {
        let input = file(
            ".csv",
            "Time,Temperature,Air Quality\n1623781306,37.94,75\n",
        );
        let messages = read_messages(input.path(), Some("lab")).unwrap();
        let value: Value = serde_json::from_slice(&messages[0].payload).unwrap();
        assert_eq!(value["ts"], 1623781306);
        assert_eq!(value["Temperature"], 37.94);
        assert_eq!(value["Air Quality"], 75);
        assert_eq!(value["device_id"], "lab");
        assert_eq!(messages[0].key.as_deref(), Some("lab"));
    }
}
