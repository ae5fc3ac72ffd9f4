//! Model hot reload: watches the checkpoint directory (and SIGHUP), loads a new
//! checkpoint off the async threads, and hands it to the pipeline, which swaps it in
//! between two batches. An invalid or incompatible checkpoint is logged, counted and
//! ignored, so the running model keeps serving.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use crate::config::ModelSettings;
use crate::model::{load_checkpoint, ModelMeta, META_FILE};
use crate::scorer::Scorer;
use crate::telemetry::Metrics;

/// Starts [`watch`] for `settings.dir` on the current runtime and returns the
/// receiver to pass to [`crate::pipeline::Pipeline::with_model_updates`].
pub fn spawn_watcher(settings: &ModelSettings, metrics: Metrics) -> mpsc::Receiver<Scorer> {
    let (sender, receiver) = mpsc::channel(1);
    tokio::spawn(watch(
        settings.dir.clone(),
        Duration::from_secs(settings.reload_interval_s),
        sender,
        metrics,
    ));
    receiver
}

/// Returns why a new checkpoint cannot replace the running one, if it cannot.
pub fn incompatibility(running: &ModelMeta, candidate: &ModelMeta) -> Option<String> {
    let names = |meta: &ModelMeta| meta.features.names().map(str::to_owned).collect::<Vec<_>>();
    if names(running) != names(candidate) {
        return Some(format!(
            "features {:?} differ from the running model's {:?}",
            names(candidate),
            names(running)
        ));
    }
    if running.architecture.window != candidate.architecture.window {
        return Some(format!(
            "window {} differs from the running model's {}; restart the service to change it",
            candidate.architecture.window, running.architecture.window
        ));
    }
    None
}

/// Modification time of `model.json`, or `None` while it is missing.
fn meta_modified(dir: &Path) -> Option<SystemTime> {
    std::fs::metadata(dir.join(META_FILE))
        .and_then(|m| m.modified())
        .ok()
}

/// Polls `dir` every `interval` (when non-zero) and reloads on SIGHUP; sends each
/// checkpoint that loads to `models`. The pipeline decides compatibility because it
/// knows the running model.
pub async fn watch(
    dir: PathBuf,
    interval: Duration,
    models: mpsc::Sender<Scorer>,
    metrics: Metrics,
) {
    let mut last_seen = meta_modified(&dir);
    let mut hangup = hangup_signal();
    let mut ticker = tokio::time::interval(if interval.is_zero() {
        Duration::from_secs(3600)
    } else {
        interval
    });
    ticker.tick().await;

    loop {
        let forced = tokio::select! {
            _ = ticker.tick() => false,
            _ = recv_hangup(&mut hangup) => true,
        };
        let modified = meta_modified(&dir);
        let changed = !interval.is_zero() && modified.is_some() && modified != last_seen;
        if !(forced || changed) {
            continue;
        }
        last_seen = modified;
        tracing::info!(dir = %dir.display(), trigger = if forced { "SIGHUP" } else { "model.json changed" }, "loading model");

        let load_dir = dir.clone();
        match tokio::task::spawn_blocking(move || load_checkpoint(&load_dir)).await {
            Ok(Ok(loaded)) => {
                if models.send(Scorer::new(loaded)).await.is_err() {
                    return;
                }
            }
            Ok(Err(error)) => {
                metrics.model_reloads.with_label_values(&["failed"]).inc();
                tracing::error!(%error, "model reload failed; keeping the running model");
            }
            Err(error) => {
                metrics.model_reloads.with_label_values(&["failed"]).inc();
                tracing::error!(%error, "model reload task failed; keeping the running model");
            }
        }
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

fn hangup_signal() -> Hangup {
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; only the directory check reloads the model");
                None
            }
        }
    }
    #[cfg(not(unix))]
    {}
}

async fn recv_hangup(hangup: &mut Hangup) {
    #[cfg(unix)]
    {
        match hangup {
            Some(signal) => {
                signal.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = hangup;
        std::future::pending::<()>().await
    }
}
