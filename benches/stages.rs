//! Per-stage costs of the scoring path: JSON parsing and validation, window update,
//! batched inference, verdict serialisation, and the single-thread matrix-multiply
//! rate behind the compute-bound ceiling.
//!
//! Uses the checkpoint in `models/anoml-iot` (`make train`) when it exists, else
//! random weights of the default architecture (same arithmetic, meaningless scores).
//! Run with `cargo bench --bench stages`; `make bench` runs it too.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use iot_anomaly::config::Settings;
use iot_anomaly::detector::Detector;
use iot_anomaly::model::{Architecture, LoadedModel};
use iot_anomaly::record::{MessageMeta, RecordParser, SensorRecord};
use iot_anomaly::schema::FeatureSchema;
use iot_anomaly::scorer::Scorer;
use iot_anomaly::window::{Push, WindowStore};
use iot_anomaly::workload::{load_or_stand_in, ModelSource, Workload};
use tch::{Device, Kind, Tensor};

const CONFIG: &str = "config/anoml-iot.toml";
const MODEL_DIR: &str = "models/anoml-iot";
const CSV: &str = "data/anoml-iot.csv";
/// Devices in the window and parsing benchmarks.
const DEVICES: usize = 1_000;
const BATCH_SIZES: [usize; 5] = [1, 8, 32, 128, 512];

struct Fixture {
    settings: Settings,
    schema: FeatureSchema,
    workload: Workload,
}

fn fixture() -> Fixture {
    let settings = Settings::load(Some(Path::new(CONFIG))).expect("config/anoml-iot.toml loads");
    let schema = FeatureSchema::new(settings.features.clone()).expect("valid feature schema");
    let workload =
        Workload::from_csv(Path::new(CSV), &schema, DEVICES).expect("data/anoml-iot.csv loads");
    Fixture {
        settings,
        schema,
        workload,
    }
}

fn model(fixture: &Fixture) -> LoadedModel {
    let training = &fixture.settings.training;
    let arch = Architecture {
        features: fixture.schema.len() as i64,
        window: training.window as i64,
        hidden_size: training.hidden_size as i64,
        num_layers: training.num_layers as i64,
    };
    let (loaded, source) = load_or_stand_in(Path::new(MODEL_DIR), &fixture.schema, arch)
        .expect("the checkpoint in models/anoml-iot loads");
    if source == ModelSource::RandomWeights {
        eprintln!("no model in {MODEL_DIR}: benchmarking random weights of {arch:?}; run `make train` for the trained model");
    }
    loaded
}

fn records(fixture: &Fixture, count: u64) -> Vec<SensorRecord> {
    (0..count)
        .map(|sequence| SensorRecord {
            device_id: fixture.workload.device_id(sequence),
            ts_ms: fixture.workload.ts_ms(sequence),
            values: fixture.workload.values(sequence).to_vec(),
        })
        .collect()
}

fn parse(c: &mut Criterion) {
    let fixture = fixture();
    let parser = RecordParser::new(
        fixture.schema.clone(),
        fixture.settings.input.max_message_bytes,
        fixture.settings.input.unknown_fields,
    );
    let mut payload = Vec::new();
    fixture.workload.write_payload(12_345, &mut payload);
    let meta = MessageMeta {
        key: Some(b"dev-000345"),
        timestamp_ms: Some(1_700_000_000_000),
    };

    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(1));
    group.bench_function("record", |b| {
        b.iter(|| parser.parse(black_box(&payload), meta).unwrap())
    });
    group.finish();
}

fn window(c: &mut Criterion) {
    let fixture = fixture();
    let arch_window = fixture.settings.training.window;
    let mut stream = records(&fixture, (DEVICES * arch_window * 4) as u64);
    let span_ms = stream.last().unwrap().ts_ms - stream[0].ts_ms + 10_000;
    let mut store = WindowStore::new(arch_window, fixture.schema.len(), &fixture.settings.windows);
    let mut out = Vec::new();
    // Fill every device's window so each push below also copies a full window out.
    for record in &stream[..DEVICES * arch_window] {
        store.push(record, record.ts_ms, &mut out).unwrap();
    }
    out.clear();

    let mut group = c.benchmark_group("window");
    group.throughput(Throughput::Elements(1));
    let mut next = DEVICES * arch_window;
    group.bench_function("push_full", |b| {
        b.iter(|| {
            if next == stream.len() {
                // Replay the stream later in time, so no record is late.
                for record in &mut stream {
                    record.ts_ms += span_ms;
                }
                next = 0;
            }
            if out.len() > 512 * arch_window * fixture.schema.len() {
                out.clear();
            }
            let record = &stream[next];
            next += 1;
            let pushed = store.push(black_box(record), record.ts_ms, &mut out);
            debug_assert_eq!(pushed, Ok(Push::Ready));
            pushed
        })
    });
    group.finish();
}

fn inference(c: &mut Criterion) {
    let fixture = fixture();
    let scorer = Scorer::new(model(&fixture));
    let per_window = scorer.window_values();
    let windows = raw_windows(&fixture, per_window);

    let mut group = c.benchmark_group("inference");
    for batch in BATCH_SIZES {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("batch_{batch}"), |b| {
            b.iter_batched_ref(
                || windows[..batch * per_window].to_vec(),
                |buffer| scorer.score_windows(buffer),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// The forward pass through libtorch's operators, which scoring used before the
/// fused pass, with one and two intra-op threads.
fn inference_libtorch(c: &mut Criterion) {
    let fixture = fixture();
    let loaded = model(&fixture);
    let arch = loaded.meta.architecture;
    let per_window = (arch.window * arch.features) as usize;
    let mut windows = raw_windows(&fixture, per_window);
    loaded.meta.scaler.transform_in_place(&mut windows);

    for threads in [1, 2] {
        tch::set_num_threads(threads);
        let mut group = c.benchmark_group(format!("inference_libtorch_{threads}thread"));
        group.measurement_time(Duration::from_secs(3));
        for batch in BATCH_SIZES {
            let input = Tensor::from_slice(&windows[..batch * per_window]).view([
                batch as i64,
                arch.window,
                arch.features,
            ]);
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_function(format!("batch_{batch}"), |b| {
                b.iter(|| {
                    tch::no_grad(|| {
                        let errors = (loaded.model.forward(&input) - &input).square().mean_dim(
                            1,
                            false,
                            Kind::Float,
                        );
                        Vec::<f32>::try_from(errors.view([-1])).unwrap()
                    })
                })
            });
        }
        group.finish();
    }
    tch::set_num_threads(1);
}

/// 512 raw windows of consecutive workload records, `[512][W][F]`.
fn raw_windows(fixture: &Fixture, per_window: usize) -> Vec<f32> {
    records(fixture, 512 * 40)
        .iter()
        .flat_map(|r| r.values.iter().copied())
        .take(512 * per_window)
        .collect()
}

fn detector(c: &mut Criterion) {
    let fixture = fixture();
    tch::set_num_threads(1);
    let mut detector = Detector::new(Scorer::new(model(&fixture)), &fixture.settings.windows);
    let window = fixture.settings.training.window;
    let mut stream = records(&fixture, (DEVICES * (window + 20)) as u64);
    let span_ms = stream.last().unwrap().ts_ms - stream[0].ts_ms + 10_000;
    let warm_up = DEVICES * window;
    for chunk in stream[..warm_up].chunks(512) {
        detector.assess(chunk.iter().map(|r| (r, r.ts_ms)));
    }

    // One untimed batch gives a scored assessment for the serialisation benchmark.
    let mut next = warm_up;
    let sample = &stream[next..next + 512];
    let results = detector.assess(sample.iter().map(|r| (r, r.ts_ms)));
    let record = sample[511].clone();
    let assessment = results[511]
        .clone()
        .expect("records arrive in order, so none is late");
    assert!(assessment.score.is_some(), "a warm device has a score");
    next += 512;

    let mut group = c.benchmark_group("detector");
    group.throughput(Throughput::Elements(512));
    group.bench_function("assess_512_records", |b| {
        b.iter(|| {
            if next + 512 > stream.len() {
                // Replay the stream later in time, so no record is late.
                for record in &mut stream {
                    record.ts_ms += span_ms;
                }
                next = 0;
            }
            let chunk = &stream[next..next + 512];
            next += 512;
            detector.assess(chunk.iter().map(|r| (r, r.ts_ms)))
        })
    });

    group.throughput(Throughput::Elements(1));
    group.bench_function("verdict_json", |b| {
        b.iter(|| {
            let verdict = detector.verdict(&record, &assessment, Some(3), Some(123_456));
            serde_json::to_vec(&verdict).unwrap()
        })
    });
    group.finish();
}

fn sgemm(c: &mut Criterion) {
    tch::set_num_threads(1);
    let mut group = c.benchmark_group("sgemm_1thread");
    // The recurrent product of the default model at batch 512, and a large square.
    for (m, k, n) in [(512i64, 16i64, 64i64), (512, 32, 64), (1024, 1024, 1024)] {
        let options = (Kind::Float, Device::Cpu);
        let a = Tensor::randn([m, k], options);
        let w = Tensor::randn([k, n], options);
        let out = Tensor::zeros([m, n], options);
        // Elements are FLOPs here, so the reported rate is FLOP/s.
        group.throughput(Throughput::Elements((2 * m * k * n) as u64));
        group.bench_function(format!("{m}x{k}x{n}"), |b| b.iter(|| a.mm_out(&out, &w)));
    }
    group.finish();
}

criterion_group!(
    stages,
    parse,
    window,
    inference,
    inference_libtorch,
    detector,
    sgemm
);
criterion_main!(stages);
