//! Synthetic sensor traffic for benchmarks, and a stand-in model when no trained
//! checkpoint exists.
//!
//! Traffic replays the rows of a real series (the AnoML-IoT CSV) over many devices:
//! device `d` at step `t` sends row `(t + 997·d) mod rows`, so devices are out of
//! phase and the mix of normal and anomalous windows matches the data set. Each
//! device's timestamps advance 10 s per step, so no record is late.

use std::io::Write;
use std::path::Path;

use tch::{nn, Device};

use crate::config::ThresholdMethod;
use crate::dataset::{load_csv, CsvOptions, DatasetError};
use crate::model::{
    load_checkpoint, Architecture, CheckpointError, LoadedModel, LstmAutoencoder, ModelMeta,
    Scaler, ThresholdInfo, TrainingInfo, CHECKPOINT_FORMAT, META_FILE,
};
use crate::schema::FeatureSchema;

/// Reading time of step 0: 2021-06-15T18:21:46Z, the first AnoML-IoT row.
const START_MS: i64 = 1_623_781_306_000;
/// Time between two readings of one device.
const STEP_MS: i64 = 10_000;
/// Row offset between neighbouring devices, prime so devices rarely share a phase.
const DEVICE_PHASE: usize = 997;

/// Replays the feature rows of a series as JSON messages for `devices` devices.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Canonical feature names, JSON-quoted, in schema order.
    quoted_names: Vec<String>,
    rows: Vec<Vec<f32>>,
    devices: usize,
}

impl Workload {
    /// Reads the feature columns of `csv` (mapped by name or alias to `schema`).
    pub fn from_csv(
        csv: &Path,
        schema: &FeatureSchema,
        devices: usize,
    ) -> Result<Self, DatasetError> {
        let series = load_csv(csv, schema, &CsvOptions::default())?;
        let rows = series.records.into_iter().map(|r| r.values).collect();
        Ok(Self::from_rows(schema, rows, devices))
    }

    /// Builds a workload from `rows` of `schema.len()` values each.
    ///
    /// # Panics
    /// When `rows` is empty or `devices` is 0.
    pub fn from_rows(schema: &FeatureSchema, rows: Vec<Vec<f32>>, devices: usize) -> Self {
        assert!(!rows.is_empty(), "a workload needs at least one row");
        assert!(devices > 0, "a workload needs at least one device");
        let quoted_names = schema
            .names()
            .map(|name| serde_json::to_string(name).expect("a string serialises"))
            .collect();
        Self {
            quoted_names,
            rows,
            devices,
        }
    }

    pub fn devices(&self) -> usize {
        self.devices
    }

    /// Returns the device id of message `sequence`. Messages go round-robin over the
    /// devices.
    pub fn device_id(&self, sequence: u64) -> String {
        format!("dev-{:06}", sequence % self.devices as u64)
    }

    /// Feature values of message `sequence`, in schema order.
    pub fn values(&self, sequence: u64) -> &[f32] {
        let device = (sequence % self.devices as u64) as usize;
        let step = (sequence / self.devices as u64) as usize;
        let row = (step + device.wrapping_mul(DEVICE_PHASE)) % self.rows.len();
        &self.rows[row]
    }

    /// Reading time of message `sequence` in Unix milliseconds.
    pub fn ts_ms(&self, sequence: u64) -> i64 {
        START_MS + (sequence / self.devices as u64) as i64 * STEP_MS
    }

    /// Writes the JSON payload of message `sequence` into `out`, replacing its
    /// contents, for example
    /// `{"device_id":"dev-000042","ts":1623781306000,"Temperature":37.94,...}`.
    pub fn write_payload(&self, sequence: u64, out: &mut Vec<u8>) {
        out.clear();
        let device = sequence % self.devices as u64;
        write!(
            out,
            "{{\"device_id\":\"dev-{device:06}\",\"ts\":{}",
            self.ts_ms(sequence)
        )
        .expect("writing to a Vec cannot fail");
        for (name, value) in self.quoted_names.iter().zip(self.values(sequence)) {
            write!(out, ",{name}:{value}").expect("writing to a Vec cannot fail");
        }
        out.push(b'}');
    }
}

/// Origin of a benchmark's model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelSource {
    Checkpoint,
    /// Random weights of the requested architecture: the same arithmetic as a trained
    /// model, so timings hold, but its verdicts mean nothing.
    RandomWeights,
}

/// Loads the checkpoint in `dir`, or builds a model with random weights (seeded) of
/// `arch` when `dir` has no `model.json`.
pub fn load_or_stand_in(
    dir: &Path,
    schema: &FeatureSchema,
    arch: Architecture,
) -> Result<(LoadedModel, ModelSource), CheckpointError> {
    if dir.join(META_FILE).is_file() {
        return Ok((load_checkpoint(dir)?, ModelSource::Checkpoint));
    }
    Ok((stand_in_model(schema, arch, 42), ModelSource::RandomWeights))
}

/// Builds a model with random weights (seeded), a unit scaler and threshold 1.
pub fn stand_in_model(schema: &FeatureSchema, arch: Architecture, seed: i64) -> LoadedModel {
    tch::manual_seed(seed);
    let mut vars = nn::VarStore::new(Device::Cpu);
    let model = LstmAutoencoder::new(&vars.root(), arch);
    vars.freeze();
    let features = schema.len();
    let meta = ModelMeta {
        format: CHECKPOINT_FORMAT.into(),
        model_version: format!("random-weights-s{seed}"),
        created_at: "1970-01-01T00:00:00Z".into(),
        features: schema.clone(),
        architecture: arch,
        scaler: Scaler {
            mean: vec![0.0; features],
            std: vec![1.0; features],
        },
        error_scale: vec![1.0; features],
        score_aggregation: Default::default(),
        threshold: ThresholdInfo {
            value: 1.0,
            method: ThresholdMethod::Quantile,
            quantile: 0.99,
            multiplier: 1.0,
            calibration_windows: 0,
            pot: None,
        },
        training: TrainingInfo {
            data_path: String::new(),
            data_sha256: String::new(),
            rows: 0,
            train_windows: 0,
            validation_windows: 0,
            seed: seed as u64,
            epochs_run: 0,
            best_epoch: 0,
            best_validation_loss: 0.0,
            train_seconds: 0.0,
            time_column: None,
            label_column: None,
            device_column: None,
            anomaly_windows: Vec::new(),
        },
        evaluation: None,
    };
    LoadedModel { meta, model, vars }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FeatureSpec, UnknownFields};
    use crate::record::{MessageMeta, RecordParser};

    fn schema() -> FeatureSchema {
        let spec = |name: &str| FeatureSpec {
            name: name.into(),
            aliases: Vec::new(),
            min: None,
            max: None,
        };
        FeatureSchema::new(vec![spec("Temperature"), spec("Air Quality")]).unwrap()
    }

    #[test]
    fn payload_parses_back() {
        let rows = vec![vec![37.94, 75.0], vec![38.5, 76.0], vec![39.0, 77.0]];
        let workload = Workload::from_rows(&schema(), rows, 2);
        let parser = RecordParser::new(schema(), 1024, UnknownFields::Reject);
        let mut payload = Vec::new();
        for sequence in 0..6 {
            workload.write_payload(sequence, &mut payload);
            let record = parser.parse(&payload, MessageMeta::default()).unwrap();
            assert_eq!(record.device_id, workload.device_id(sequence));
            assert_eq!(record.ts_ms, workload.ts_ms(sequence));
            assert_eq!(record.values, workload.values(sequence));
        }
    }

    #[test]
    fn devices_advance_in_steps() {
        let workload = Workload::from_rows(&schema(), vec![vec![1.0, 2.0]], 3);
        assert_eq!(workload.device_id(4), "dev-000001");
        assert_eq!(workload.ts_ms(2), START_MS);
        assert_eq!(workload.ts_ms(3), START_MS + STEP_MS);
    }

    #[test]
    fn stand_in_model_scores() {
        let arch = Architecture {
            features: 2,
            window: 4,
            hidden_size: 3,
            num_layers: 1,
        };
        let loaded = stand_in_model(&schema(), arch, 7);
        assert!(loaded.meta.validate(Path::new("stand-in")).is_ok());
    }
}
