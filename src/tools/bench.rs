//! `alarm-verifier bench`: where a frame's time goes, against ONNX Runtime's own Python API on the
//! same model, thread count and input tensor, and the wall time to verify one clip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::RgbImage;

use crate::analysis::clip::{self, ClipError, Decoders};
use crate::analysis::detect::{DetectError, Detector, StageTimes};
use crate::analysis::verify::{Verifier, VerifyError};
use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Detect(#[from] DetectError),
    #[error("{0}")]
    Gstreamer(crate::support::gst::GstError),
    /// The clip's first frame cannot be decoded.
    #[error(transparent)]
    Clip(#[from] ClipError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

/// Why the side-by-side Python run gave no figure; shown in its cell of the table.
#[derive(Debug, thiserror::Error)]
enum PythonError {
    #[error(transparent)]
    Detect(#[from] DetectError),
    /// Writing the input tensor for it.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("cannot run {path}: {error}")]
    Spawn { path: PathBuf, error: std::io::Error },
    /// The script's last line on stderr.
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Output(#[from] serde_json::Error),
    #[error("no median_ms in its output")]
    NoMedian,
}

pub struct BenchOptions {
    pub clip: PathBuf,
    pub runs: usize,
    /// Python with onnxruntime and numpy, for the side-by-side run; None skips it.
    pub python: Option<PathBuf>,
}

/// Medians of the stage times over the runs.
struct FrameBench {
    name: String,
    preprocess: Duration,
    inference: Duration,
    postprocess: Duration,
    python_inference: Option<Result<f64, PythonError>>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

pub fn run(config: &Config, options: &BenchOptions) -> Result<String, BenchError> {
    crate::support::gst::init().map_err(BenchError::Gstreamer)?;
    let detector = Arc::new(Detector::load(&config.detector)?);
    let frame = clip::first_frame(&options.clip)?;
    let full_hd = image::imageops::resize(&frame, 1920, 1080, image::imageops::FilterType::Triangle);
    let mut rows = Vec::new();
    for (name, image) in [
        (format!("{}x{}", frame.width(), frame.height()), &frame),
        ("1920x1080".to_owned(), &full_hd),
    ] {
        rows.push(bench_frame(&detector, config, options, &name, image)?);
    }
    let (clip_time, frames) = bench_clip(&detector, config, &options.clip)?;
    let small = image::imageops::resize(&frame, 640, 360, image::imageops::FilterType::Triangle);
    let views =
        [("640x360", &small), ("1920x1080", &full_hd)].map(|(name, image)| (name, bench_view(image, options.runs)));
    let mut out = report(config, &detector, options, &rows, clip_time, frames);
    out.push_str("view check per frame (median):");
    for (name, took) in views {
        out.push_str(&format!(" {name} {:.1} µs;", took.as_secs_f64() * 1e6));
    }
    out.push('\n');
    Ok(out)
}

/// The median time of the view check (brightness, contrast, edges, change) on one frame.
fn bench_view(image: &RgbImage, runs: usize) -> Duration {
    let now = chrono::Utc::now();
    let samples = (0..runs.max(1))
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(crate::analysis::view::measure(image, now));
            started.elapsed()
        })
        .collect();
    median(samples)
}

fn bench_frame(
    detector: &Detector,
    config: &Config,
    options: &BenchOptions,
    name: &str,
    image: &RgbImage,
) -> Result<FrameBench, BenchError> {
    for _ in 0..5 {
        detector.detect_timed(image)?;
    }
    let mut samples: Vec<StageTimes> = Vec::with_capacity(options.runs);
    for _ in 0..options.runs {
        samples.push(detector.detect_timed(image)?.1);
    }
    let python_inference = options
        .python
        .as_ref()
        .map(|python| python_session_run(python, detector, config, image, options.runs));
    Ok(FrameBench {
        name: name.to_owned(),
        preprocess: median(samples.iter().map(|s| s.preprocess).collect()),
        inference: median(samples.iter().map(|s| s.inference).collect()),
        postprocess: median(samples.iter().map(|s| s.postprocess).collect()),
        python_inference,
    })
}

/// Median milliseconds of Python onnxruntime's session.run on the same input tensor.
fn python_session_run(
    python: &Path,
    detector: &Detector,
    config: &Config,
    image: &RgbImage,
    runs: usize,
) -> Result<f64, PythonError> {
    let (shape, tensor) = detector.input_tensor(image)?;
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("input.f32");
    let bytes: Vec<u8> = tensor.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&input, bytes)?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/bench_ort.py");
    let shape = shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",");
    let out = Command::new(python)
        .arg(&script)
        .arg(&config.detector.model)
        .arg(&input)
        .arg(shape)
        .arg(config.detector.threads.to_string())
        .arg(runs.to_string())
        .output()
        .map_err(|error| PythonError::Spawn {
            path: python.to_owned(),
            error,
        })?;
    if !out.status.success() {
        let last_line = String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("failed")
            .to_owned();
        return Err(PythonError::Failed(last_line));
    }
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    doc["median_ms"].as_f64().ok_or(PythonError::NoMedian)
}

/// Wall time of verify-clip's path (decode, detect, policy, evidence) on 10 s into the clip.
fn bench_clip(detector: &Arc<Detector>, config: &Config, path: &Path) -> Result<(Duration, usize), BenchError> {
    let verifier = Arc::new(Verifier::new(detector.clone(), config, Decoders::software()));
    let started = Instant::now();
    let finding = verifier.verify_file(path, 10.0, "bench")?;
    Ok((started.elapsed(), finding.doc.frames_analyzed))
}

fn report(
    config: &Config,
    detector: &Detector,
    options: &BenchOptions,
    rows: &[FrameBench],
    clip: Duration,
    frames: usize,
) -> String {
    let (iw, ih) = detector.input_size();
    let mut out = format!(
        "model {} ({}x{} input), {} intra-op thread(s), median of {} runs\n\n\
         | frame | preprocess ms | inference ms | postprocess ms | (pre+post)/inference | onnxruntime (Python) session.run ms | inference / onnxruntime |\n\
         |---|---|---|---|---|---|---|\n",
        config.detector.model.display(),
        iw,
        ih,
        config.detector.threads,
        options.runs
    );
    for r in rows {
        let overhead = (ms(r.preprocess) + ms(r.postprocess)) / ms(r.inference).max(1e-9);
        let (python, ratio) = match &r.python_inference {
            Some(Ok(p)) => (format!("{p:.2}"), format!("{:.3}", ms(r.inference) / p)),
            Some(Err(e)) => (format!("failed: {e}"), "-".into()),
            None => ("not run".into(), "-".into()),
        };
        out.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.3} | {:.1}% | {python} | {ratio} |\n",
            r.name,
            ms(r.preprocess),
            ms(r.inference),
            ms(r.postprocess),
            overhead * 100.0
        ));
    }
    out.push_str(&format!(
        "\nverify one clip ({}, 10 s in, {} + {} s at {} fps): {:.0} ms wall for {frames} frames (decode, detect, policy, evidence)\n",
        options.clip.display(),
        config.clip.pre_s,
        config.clip.post_s,
        config.clip.analysis_fps,
        ms(clip)
    ));
    out
}
