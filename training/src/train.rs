//! Step 2: fit the autoencoder on normal windows with Adam and early stopping.

use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use iot_anomaly::config::TrainingSettings;
use iot_anomaly::model::{Architecture, LstmAutoencoder};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// Largest gradient norm applied in one step; keeps early LSTM updates stable.
const MAX_GRAD_NORM: f64 = 1.0;
/// Windows per forward pass when computing the validation loss.
const EVAL_CHUNK: i64 = 2048;
/// A validation loss must improve by this fraction to reset the patience counter.
const MIN_RELATIVE_IMPROVEMENT: f64 = 1e-3;

#[derive(Debug, Clone)]
pub struct FitSummary {
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub best_validation_loss: f64,
    pub seconds: f64,
}

/// Mean squared reconstruction error of `windows` (`[N, W, F]`, scaled).
pub fn mean_loss(model: &LstmAutoencoder, windows: &Tensor) -> f64 {
    tch::no_grad(|| {
        let n = windows.size()[0];
        let mut total = 0.0;
        let mut start = 0;
        while start < n {
            let len = EVAL_CHUNK.min(n - start);
            let chunk = windows.narrow(0, start, len);
            let loss = (model.forward(&chunk) - &chunk).square().mean(Kind::Float);
            total += loss.double_value(&[]) * len as f64;
            start += len;
        }
        total / n as f64
    })
}

/// Trains the variables of `vars` (the weights of `model`) and leaves them at the
/// epoch with the lowest validation loss.
pub fn fit(
    vars: &mut nn::VarStore,
    model: &LstmAutoencoder,
    arch: Architecture,
    train: &Tensor,
    validation: &Tensor,
    settings: &TrainingSettings,
    show_progress: bool,
) -> anyhow::Result<FitSummary> {
    let started = Instant::now();
    let mut optimizer = nn::Adam::default()
        .build(vars, settings.learning_rate)
        .context("cannot create the Adam optimiser")?;
    let mut best = nn::VarStore::new(Device::Cpu);
    let _best_model = LstmAutoencoder::new(&best.root(), arch);
    best.copy(vars).context("cannot snapshot the weights")?;

    let n = train.size()[0];
    let batch = settings.batch_size as i64;
    let mut best_loss = f64::INFINITY;
    let mut best_epoch = 0;
    let mut epochs_run = 0;
    let mut stale_epochs = 0;

    let bar = if show_progress {
        ProgressBar::new(settings.max_epochs as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] epoch {pos}/{len} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_prefix("training");

    for epoch in 1..=settings.max_epochs {
        epochs_run = epoch;
        let order = Tensor::randperm(n, (Kind::Int64, Device::Cpu));
        let mut train_total = 0.0;
        let mut start = 0;
        while start < n {
            let len = batch.min(n - start);
            let index = order.narrow(0, start, len);
            let windows = train.index_select(0, &index);
            let loss = (model.forward(&windows) - &windows)
                .square()
                .mean(Kind::Float);
            optimizer.backward_step_clip_norm(&loss, MAX_GRAD_NORM);
            train_total += loss.double_value(&[]) * len as f64;
            start += len;
        }
        let train_loss = train_total / n as f64;
        let validation_loss = mean_loss(model, validation);

        if validation_loss < best_loss * (1.0 - MIN_RELATIVE_IMPROVEMENT) {
            best_loss = validation_loss;
            best_epoch = epoch;
            stale_epochs = 0;
            best.copy(vars).context("cannot snapshot the weights")?;
        } else {
            stale_epochs += 1;
        }

        let message = format!("train loss {train_loss:.5}  validation loss {validation_loss:.5}  best {best_loss:.5} (epoch {best_epoch})");
        bar.set_position(epoch as u64);
        if show_progress && bar.is_hidden() {
            // No terminal (CI, a pipe): one line per epoch instead of the bar.
            eprintln!("training epoch {epoch}/{}: {message}", settings.max_epochs);
        } else {
            bar.set_message(message);
        }
        if stale_epochs >= settings.patience {
            break;
        }
    }
    bar.finish();

    vars.copy(&best)
        .context("cannot restore the best weights")?;
    Ok(FitSummary {
        epochs_run,
        best_epoch,
        best_validation_loss: best_loss,
        seconds: started.elapsed().as_secs_f64(),
    })
}
