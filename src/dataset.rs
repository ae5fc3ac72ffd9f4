//! Sensor history from CSV: records in file order plus optional 0/1 labels.
//!
//! Labels come from a label column when the file has one, otherwise from known
//! anomalous periods (inclusive Unix-second ranges), otherwise there are none.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::record::{parse_timestamp_text, SensorRecord, DEFAULT_DEVICE_ID};
use crate::schema::FeatureSchema;

/// Column names tried, in order, when no time column is configured.
const TIME_COLUMN_GUESSES: [&str; 5] = ["Time", "time", "ts", "timestamp", "datetime"];
/// Label column used when none is configured.
pub const DEFAULT_LABEL_COLUMN: &str = "anomaly";

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("cannot read {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: invalid CSV: {cause}")]
    Csv { path: PathBuf, cause: csv::Error },
    #[error("{path}: no column for feature {feature:?} (tried {tried:?}); rename the column or add an alias to the feature")]
    MissingColumn {
        path: PathBuf,
        feature: String,
        tried: Vec<String>,
    },
    #[error("{path}: column {column:?} not found; header is {header:?}")]
    UnknownColumn {
        path: PathBuf,
        column: String,
        header: Vec<String>,
    },
    #[error("{path}, line {line}: {message}")]
    Row {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("{path} has no data rows")]
    Empty { path: PathBuf },
}

/// Origin of the labels.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum LabelSource {
    Column(String),
    AnomalyWindows(usize),
    None,
}

impl std::fmt::Display for LabelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Column(name) => write!(f, "column {name:?}"),
            Self::AnomalyWindows(n) => write!(f, "{n} labelled anomaly windows"),
            Self::None => f.write_str("no labels"),
        }
    }
}

/// How to read one CSV.
#[derive(Debug, Clone, Default)]
pub struct CsvOptions {
    pub time_column: Option<String>,
    /// Defaults to [`DEFAULT_LABEL_COLUMN`]; used only when the header has it.
    pub label_column: Option<String>,
    pub device_column: Option<String>,
    pub anomaly_windows: Vec<[i64; 2]>,
}

#[derive(Debug, Clone)]
pub struct LabelledSeries {
    pub path: PathBuf,
    pub sha256: String,
    pub records: Vec<SensorRecord>,
    /// `labels[i]` is true when `records[i]` is anomalous.
    pub labels: Option<Vec<bool>>,
    pub label_source: LabelSource,
}

impl LabelledSeries {
    pub fn anomalous_count(&self) -> usize {
        self.labels
            .as_ref()
            .map_or(0, |l| l.iter().filter(|&&x| x).count())
    }
}

/// Reads `path`, mapping columns to `schema` by feature name or alias; see
/// [`csv_reader`] for the separator.
pub fn load_csv(
    path: &Path,
    schema: &FeatureSchema,
    options: &CsvOptions,
) -> Result<LabelledSeries, DatasetError> {
    let bytes = std::fs::read(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        cause: source,
    })?;
    let sha256 = format!("{:x}", Sha256::digest(&bytes));
    let csv_error = |source| DatasetError::Csv {
        path: path.to_path_buf(),
        cause: source,
    };
    let mut reader = csv_reader(&bytes);
    let header: Vec<String> = reader
        .headers()
        .map_err(csv_error)?
        .iter()
        .map(str::to_owned)
        .collect();

    let find = |name: &str| header.iter().position(|h| h == name);
    let require = |name: &str| {
        find(name).ok_or_else(|| DatasetError::UnknownColumn {
            path: path.to_path_buf(),
            column: name.to_owned(),
            header: header.clone(),
        })
    };

    let mut feature_columns = Vec::with_capacity(schema.len());
    for spec in schema.features() {
        let tried: Vec<String> = std::iter::once(&spec.name)
            .chain(&spec.aliases)
            .cloned()
            .collect();
        let column = tried.iter().find_map(|name| find(name)).ok_or_else(|| {
            DatasetError::MissingColumn {
                path: path.to_path_buf(),
                feature: spec.name.clone(),
                tried: tried.clone(),
            }
        })?;
        feature_columns.push(column);
    }
    let time_column = match &options.time_column {
        Some(name) => Some(require(name)?),
        None => TIME_COLUMN_GUESSES.iter().find_map(|name| find(name)),
    };
    let device_column = options.device_column.as_deref().map(require).transpose()?;
    let label_name = options
        .label_column
        .as_deref()
        .unwrap_or(DEFAULT_LABEL_COLUMN);
    let label_column = find(label_name);
    if options.label_column.is_some()
        && label_column.is_none()
        && options.anomaly_windows.is_empty()
    {
        require(label_name)?;
    }

    let mut records = Vec::new();
    let mut column_labels = Vec::new();
    for (row_index, row) in reader.records().enumerate() {
        let row = row.map_err(csv_error)?;
        let line = row.position().map_or(row_index as u64 + 2, |p| p.line());
        let row_error = |message: String| DatasetError::Row {
            path: path.to_path_buf(),
            line,
            message,
        };
        let field = |column: usize| row.get(column).unwrap_or_default();

        let mut values = Vec::with_capacity(feature_columns.len());
        for (spec, &column) in schema.features().iter().zip(&feature_columns) {
            let value: f32 = field(column)
                .parse()
                .ok()
                .filter(|v: &f32| v.is_finite())
                .ok_or_else(|| {
                    row_error(format!(
                        "{} = {:?} is not a finite number",
                        spec.name,
                        field(column)
                    ))
                })?;
            values.push(value);
        }
        let ts_ms = match time_column {
            Some(column) => parse_csv_time(field(column))
                .map_err(|message| row_error(format!("{}: {message}", header[column])))?,
            // No time column: one reading per second in file order.
            None => row_index as i64 * 1000,
        };
        let device_id = match device_column {
            Some(column) => field(column).to_owned(),
            None => DEFAULT_DEVICE_ID.to_owned(),
        };
        if let Some(column) = label_column {
            let label = match field(column) {
                "0" | "0.0" => false,
                "1" | "1.0" => true,
                other => {
                    return Err(row_error(format!(
                        "label {label_name} = {other:?} is not 0 or 1"
                    )))
                }
            };
            column_labels.push(label);
        }
        records.push(SensorRecord {
            device_id,
            ts_ms,
            values,
        });
    }
    if records.is_empty() {
        return Err(DatasetError::Empty {
            path: path.to_path_buf(),
        });
    }

    let (labels, label_source) = if label_column.is_some() {
        (
            Some(column_labels),
            LabelSource::Column(label_name.to_owned()),
        )
    } else if !options.anomaly_windows.is_empty() {
        let labels = records
            .iter()
            .map(|r| in_windows(r.ts_ms, &options.anomaly_windows))
            .collect();
        (
            Some(labels),
            LabelSource::AnomalyWindows(options.anomaly_windows.len()),
        )
    } else {
        (None, LabelSource::None)
    };

    Ok(LabelledSeries {
        path: path.to_path_buf(),
        sha256,
        records,
        labels,
        label_source,
    })
}

/// Builds a CSV reader over `bytes` that trims cells. The separator is `;` when the
/// header line has `;` and no `,` (SKAB's files), else `,`.
pub fn csv_reader(bytes: &[u8]) -> csv::Reader<&[u8]> {
    let first_line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    let delimiter = if first_line.contains(&b';') && !first_line.contains(&b',') {
        b';'
    } else {
        b','
    };
    csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .trim(csv::Trim::All)
        .from_reader(bytes)
}

/// True when `ts_ms` falls in any inclusive `[start, end]` Unix-second window. A
/// reading at `end` plus a fraction of a second still counts, since windows are
/// published with one-second resolution.
pub fn in_windows(ts_ms: i64, windows: &[[i64; 2]]) -> bool {
    let seconds = ts_ms.div_euclid(1000);
    windows
        .iter()
        .any(|[start, end]| seconds >= *start && seconds <= *end)
}

/// Parses a CSV time cell: Unix seconds or milliseconds, RFC 3339, or
/// `YYYY-MM-DD hh:mm:ss` read as UTC.
fn parse_csv_time(text: &str) -> Result<i64, String> {
    if let Ok(ms) = parse_timestamp_text(text) {
        return Ok(ms);
    }
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
        .map(|t| t.and_utc().timestamp_millis())
        .map_err(|_| format!("{text:?} is not a Unix time, RFC 3339 or YYYY-MM-DD hh:mm:ss"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FeatureSpec;
    use std::io::Write;

    fn schema() -> FeatureSchema {
        FeatureSchema::new(vec![
            FeatureSpec {
                name: "Temperature".into(),
                aliases: vec!["temperatura".into()],
                min: None,
                max: None,
            },
            FeatureSpec {
                name: "Light".into(),
                aliases: vec![],
                min: None,
                max: None,
            },
        ])
        .unwrap()
    }

    fn write(content: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(content.as_bytes()).unwrap();
        file
    }

    #[test]
    fn labels_from_windows() {
        let file = write("Time,temperatura,Light\n100,1.5,2\n110,1.6,3\n120,9.0,4\n");
        let options = CsvOptions {
            anomaly_windows: vec![[110, 115]],
            ..Default::default()
        };
        let series = load_csv(file.path(), &schema(), &options).unwrap();
        assert_eq!(series.records.len(), 3);
        assert_eq!(series.records[1].ts_ms, 110_000);
        assert_eq!(series.records[2].values, vec![9.0, 4.0]);
        assert_eq!(series.labels, Some(vec![false, true, false]));
        assert_eq!(series.label_source, LabelSource::AnomalyWindows(1));
    }

    #[test]
    fn label_column_and_semicolons() {
        let file = write("datetime;Temperature;Light;anomaly\n2020-03-09 10:14:33;1;2;0.0\n2020-03-09 10:14:34;1;2;1.0\n");
        let series = load_csv(file.path(), &schema(), &CsvOptions::default()).unwrap();
        assert_eq!(series.labels, Some(vec![false, true]));
        assert_eq!(series.records[1].ts_ms - series.records[0].ts_ms, 1000);
    }

    #[test]
    fn missing_feature_column_is_named() {
        let file = write("Time,Temperature\n1,2\n");
        let error = load_csv(file.path(), &schema(), &CsvOptions::default()).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("no column for feature \"Light\""),
            "{error}"
        );
    }

    #[test]
    fn bad_cell_names_line() {
        let file = write("Time,Temperature,Light\n1,2,3\n2,x,3\n");
        let error = load_csv(file.path(), &schema(), &CsvOptions::default()).unwrap_err();
        assert!(error.to_string().contains("line 3"), "{error}");
    }

    #[test]
    fn device_column_splits_devices() {
        let file = write("Time,Temperature,Light,room\n1,2,3,a\n1,2,3,b\n");
        let options = CsvOptions {
            device_column: Some("room".into()),
            ..Default::default()
        };
        let series = load_csv(file.path(), &schema(), &options).unwrap();
        assert_eq!(series.records[1].device_id, "b");
        assert_eq!(series.labels, None);
    }
}
