//! The detector: one ONNX Runtime session per worker, preprocessing and decoding in Rust.
//!
//! The model layout (YOLOX, Ultralytics YOLO v5/v8/v11, SSD with NMS in the graph) comes from
//! config and is checked when the model loads, so a wrong model is a start-up error rather than
//! garbage verdicts: against the shapes the model declares where they are fixed, and against the
//! real shapes of its outputs for one blank frame, which it runs at start-up. Symbolic sizes (as
//! tf2onnx, `torch.onnx.export` with dynamic axes and Ultralytics with `dynamic=True` export them,
//! often on every axis) are resolved that way.

mod decode;
pub mod labels;
pub mod preprocess;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use image::RgbImage;
use ort::ep;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{Session, SessionOutputs};
use ort::value::{TensorElementType, TensorRef, ValueType};
use serde::Serialize;

use crate::config::{ChannelOrder, DetectorConfig, Layout, Optimization, Provider, ResizeMode};
use crate::support::lock;
use decode::Candidate;
use labels::LabelsError;
use preprocess::{ElementType, InputSpec, PreprocessError, Scratch, Transform};

pub use labels::COCO80 as COCO_LABELS;

/// The ONNX Runtime minor version `ort` is built for.
const ORT_VERSION: &str = "1.31";

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error(
        "cannot load the ONNX Runtime library {path} (key detector.onnxruntime): {reason}. Expected ONNX Runtime \
         {ORT_VERSION} or newer (libonnxruntime.so.1.31.1; scripts/setup.sh installs it)"
    )]
    Runtime { path: PathBuf, reason: String },
    #[error("{path}: cannot load the detector model (key detector.model): {reason}")]
    Model { path: PathBuf, reason: String },
    #[error("execution provider {provider:?} (key detector.provider) cannot be used: {reason}")]
    Provider { provider: String, reason: String },
    #[error("{path}: the model does not fit detector.layout = {layout:?}: {reason}")]
    Layout {
        path: PathBuf,
        layout: String,
        reason: String,
    },
    #[error("{path}: cannot read the labels file (key detector.labels): {reason}")]
    Labels { path: PathBuf, reason: LabelsError },
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("cannot prepare the frame: {0}")]
    Frame(PreprocessError),
    /// [`Detector::input_tensor`] gives float tensors only.
    #[error("cannot prepare the frame: the model takes uint8 input")]
    Uint8Input,
    /// The blocking task that ran [`Detector::load_sessions`] panicked or was cancelled.
    #[error("the task loading the detector failed: {0}")]
    Loader(tokio::task::JoinError),
}

/// A box in pixels of the original frame: left, top, width, height.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BoxPx {
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
}

impl BoxPx {
    pub fn area(&self) -> f32 {
        self.w.max(0.0) * self.h.max(0.0)
    }

    pub fn iou(&self, other: &BoxPx) -> f32 {
        let x1 = self.x.max(other.x);
        let y1 = self.y.max(other.y);
        let x2 = (self.x + self.w).min(other.x + other.w);
        let y2 = (self.y + self.h).min(other.y + other.h);
        let inter = (x2 - x1).max(0.0) * (y2 - y1).max(0.0);
        let union = self.area() + other.area() - inter;
        if union <= 0.0 { 0.0 } else { inter / union }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    pub class_id: usize,
    pub label: String,
    pub score: f32,
    pub bbox: BoxPx,
}

/// Where the time of one frame went.
#[derive(Debug, Clone, Copy, Default)]
pub struct StageTimes {
    pub preprocess: Duration,
    pub inference: Duration,
    pub postprocess: Duration,
}

/// How to read the outputs, as found when the model loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outputs {
    Yolox {
        classes: usize,
    },
    YoloV5 {
        classes: usize,
    },
    YoloV8 {
        classes: usize,
    },
    Ssd {
        boxes: usize,
        scores: usize,
        classes: usize,
        count: usize,
    },
}

struct Engine {
    session: Session,
    scratch: Scratch,
}

pub struct Detector {
    /// One session per analysis worker, so workers infer in parallel; a worker takes a free one.
    engines: Vec<Mutex<Engine>>,
    _environment: ort::environment::Environment,
    input: InputSpec,
    outputs: Outputs,
    labels: Vec<String>,
    score_threshold: f32,
    nms_iou: f32,
    model_name: String,
    /// Inferences run and their total time in microseconds, for the metrics.
    inferences: std::sync::atomic::AtomicU64,
    inference_us: std::sync::atomic::AtomicU64,
}

impl Detector {
    /// Loads the ONNX Runtime library and the model, and checks the model against the layout.
    pub fn load(config: &DetectorConfig) -> Result<Self, DetectError> {
        Self::load_sessions(config, 1)
    }

    /// As [`load`](Self::load), with `sessions` sessions of the model for that many threads to use
    /// at once.
    pub fn load_sessions(config: &DetectorConfig, sessions: usize) -> Result<Self, DetectError> {
        let environment = load_runtime(&config.onnxruntime)?;
        let model = &config.model;
        let model_err = |reason: String| DetectError::Model {
            path: model.clone(),
            reason,
        };
        if !model.is_file() {
            return Err(model_err(
                "no such file (scripts/setup.sh puts yolox_nano.onnx into models/)".into(),
            ));
        }
        let builder = session_builder(&environment, config).map_err(|e| model_err(e.to_string()))?;
        let builder = register_provider(builder, config.provider)?;
        let mut session = commit(builder.clone(), model).map_err(|e| model_err(e.to_string()))?;
        let layout_err = |reason: String| DetectError::Layout {
            path: model.clone(),
            layout: format!("{:?}", config.layout).to_lowercase(),
            reason,
        };
        let inputs = input_specs(&session, config).map_err(layout_err)?;
        let labels = match &config.labels {
            Some(path) => labels::read(path).map_err(|reason| DetectError::Labels {
                path: path.clone(),
                reason,
            })?,
            None if config.layout == Layout::Ssd => labels::coco91(),
            None => labels::coco80(),
        };
        let declared = declared_outputs(&session);
        // Shapes the model declares in full are checked before it runs; where some are symbolic,
        // the run below names the real ones.
        if let Some(first) = inputs.first()
            && let Err(reason) = check_outputs(&declared, config.layout, first, labels.len())
            && declared.iter().all(Port::is_static)
        {
            return Err(layout_err(reason));
        }
        let (input, outputs) =
            probe(&mut session, inputs, &declared, config.layout, labels.len()).map_err(layout_err)?;
        let model_name = model
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let mut engines = vec![Mutex::new(Engine {
            session,
            scratch: Scratch::default(),
        })];
        for _ in 1..sessions.max(1) {
            let session = commit(builder.clone(), model).map_err(|e| model_err(e.to_string()))?;
            engines.push(Mutex::new(Engine {
                session,
                scratch: Scratch::default(),
            }));
        }
        Ok(Self {
            engines,
            _environment: environment,
            input,
            outputs,
            labels,
            score_threshold: config.score_threshold,
            nms_iou: config.nms_iou,
            model_name,
            inferences: Default::default(),
            inference_us: Default::default(),
        })
    }

    pub fn model_name(&self) -> &str {
        &self.model_name
    }

    /// Inferences run since start, and the seconds they took together.
    pub fn inference_totals(&self) -> (u64, f64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.inferences.load(Relaxed),
            self.inference_us.load(Relaxed) as f64 / 1e6,
        )
    }

    /// The model input: width, height.
    pub fn input_size(&self) -> (u32, u32) {
        (self.input.width, self.input.height)
    }

    /// The model input built from `frame` (float models only), with its shape: for comparing
    /// against other runtimes on exactly the same tensor.
    pub fn input_tensor(&self, frame: &RgbImage) -> Result<([usize; 4], Vec<f32>), DetectError> {
        let mut scratch = Scratch::default();
        preprocess::prepare(&self.input, frame, &mut scratch).map_err(DetectError::Frame)?;
        if self.input.element != ElementType::F32 {
            return Err(DetectError::Uint8Input);
        }
        Ok((self.input.shape(), scratch.f32_input))
    }

    /// A session no other thread is using, or else the first one, to wait for.
    fn free_engine(&self) -> std::sync::MutexGuard<'_, Engine> {
        for engine in &self.engines {
            match engine.try_lock() {
                Ok(guard) => return guard,
                Err(std::sync::TryLockError::Poisoned(e)) => return e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        lock(&self.engines[0])
    }

    /// Runs the model on one RGB frame; boxes come back in the frame's own pixels, best first.
    pub fn detect(&self, frame: &RgbImage) -> Result<Vec<Detection>, DetectError> {
        self.detect_timed(frame).map(|(d, _)| d)
    }

    /// As [`detect`](Self::detect), with the time spent in each stage.
    pub fn detect_timed(&self, frame: &RgbImage) -> Result<(Vec<Detection>, StageTimes), DetectError> {
        let mut times = StageTimes::default();
        let mut engine = self.free_engine();
        let Engine { session, scratch } = &mut *engine;
        let started = Instant::now();
        let transform = preprocess::prepare(&self.input, frame, scratch).map_err(DetectError::Frame)?;
        times.preprocess = started.elapsed();

        let started = Instant::now();
        let infer_err = |e: ort::Error| DetectError::Inference(e.to_string());
        let outputs = run_input(session, &self.input, scratch).map_err(infer_err)?;
        times.inference = started.elapsed();
        self.inferences.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inference_us
            .fetch_add(times.inference.as_micros() as u64, std::sync::atomic::Ordering::Relaxed);

        let started = Instant::now();
        let tensor = |i: usize| -> Result<&[f32], DetectError> {
            if i >= outputs.len() {
                return Err(DetectError::Inference(format!(
                    "the model returned {} outputs, not output {i}",
                    outputs.len()
                )));
            }
            outputs[i]
                .try_extract_tensor::<f32>()
                .map(|(_, d)| d)
                .map_err(infer_err)
        };
        let (iw, ih) = (self.input.width as usize, self.input.height as usize);
        let t = self.score_threshold;
        let candidates = match self.outputs {
            Outputs::Yolox { classes } => decode::yolox(tensor(0)?, iw, ih, classes, t),
            Outputs::YoloV5 { classes } => decode::yolo_v5(tensor(0)?, classes, t),
            Outputs::YoloV8 { classes } => decode::yolo_v8(tensor(0)?, classes, t),
            Outputs::Ssd {
                boxes,
                scores,
                classes,
                count,
            } => {
                let n = tensor(count)?.first().copied().unwrap_or(0.0).max(0.0) as usize;
                decode::ssd(tensor(boxes)?, tensor(scores)?, tensor(classes)?, n, iw, ih, t)
            }
        };
        let detections = self.finish(candidates, transform, frame.width(), frame.height());
        times.postprocess = started.elapsed();
        Ok((detections, times))
    }

    /// Maps candidates to the frame, names them, and (unless the graph did it) suppresses overlaps.
    fn finish(&self, candidates: Vec<Candidate>, transform: Transform, width: u32, height: u32) -> Vec<Detection> {
        let detections: Vec<Detection> = candidates
            .into_iter()
            .map(|c| Detection {
                label: self
                    .labels
                    .get(c.class_id)
                    .cloned()
                    .unwrap_or_else(|| format!("class{}", c.class_id)),
                class_id: c.class_id,
                score: c.score,
                bbox: transform.to_frame(c.bbox, width, height),
            })
            .collect();
        match self.outputs {
            Outputs::Ssd { .. } => {
                let mut d = detections;
                d.sort_by(|a, b| b.score.total_cmp(&a.score));
                d
            }
            _ => nms_per_class(detections, self.nms_iou),
        }
    }
}

/// ONNX Runtime allows one library and one environment per process; every detector shares them.
static RUNTIME: OnceLock<(PathBuf, ort::environment::Environment)> = OnceLock::new();
static RUNTIME_INIT: Mutex<()> = Mutex::new(());

fn load_runtime(path: &Path) -> Result<ort::environment::Environment, DetectError> {
    let runtime_err = |reason: String| DetectError::Runtime {
        path: path.to_owned(),
        reason,
    };
    let _init = lock(&RUNTIME_INIT);
    if let Some((loaded, environment)) = RUNTIME.get() {
        return if loaded == path {
            Ok(environment.clone())
        } else {
            Err(runtime_err(format!("this process already uses {}", loaded.display())))
        };
    }
    if !path.is_file() {
        return Err(runtime_err("no such file".into()));
    }
    let environment = ort::init_from(path)
        .map_err(|e| runtime_err(e.to_string()))?
        .with_name("alarm-verifier")
        .with_telemetry(false)
        .build()
        .map_err(|e| runtime_err(e.to_string()))?;
    let _ = RUNTIME.set((path.to_owned(), environment.clone()));
    Ok(environment)
}

fn session_builder(
    environment: &ort::environment::Environment,
    config: &DetectorConfig,
) -> ort::Result<SessionBuilder> {
    let level = match config.optimization {
        Optimization::Disable => GraphOptimizationLevel::Disable,
        Optimization::Basic => GraphOptimizationLevel::Level1,
        Optimization::Extended => GraphOptimizationLevel::Level2,
        Optimization::All => GraphOptimizationLevel::All,
    };
    Ok(Session::builder(environment)?
        .with_optimization_level(level)?
        .with_intra_threads(config.threads)?
        // Spinning threads would steal the cores that the other workers and GStreamer need.
        .with_intra_op_spinning(false)?)
}

/// Registers the configured execution provider; failing to is an error, never a silent CPU fallback.
fn register_provider(builder: SessionBuilder, provider: Provider) -> Result<SessionBuilder, DetectError> {
    let dispatch = match provider {
        Provider::Cpu => return Ok(builder),
        Provider::Cuda => ep::CUDA::default().build(),
        Provider::Tensorrt => ep::TensorRT::default().build(),
        Provider::Openvino => ep::OpenVINO::default().build(),
    };
    let name = format!("{provider:?}").to_lowercase();
    builder
        .with_execution_providers([dispatch.error_on_failure()])
        .map_err(|e| DetectError::Provider {
            provider: name,
            reason: format!("{e} (the loaded ONNX Runtime library may be a CPU-only build)"),
        })
}

fn commit(mut builder: SessionBuilder, model: &Path) -> ort::Result<Session> {
    builder.commit_from_file(model)
}

/// Runs the model on the input that `scratch` holds for `spec`.
fn run_input<'s>(session: &'s mut Session, spec: &InputSpec, scratch: &Scratch) -> ort::Result<SessionOutputs<'s>> {
    let shape = spec.shape();
    match spec.element {
        ElementType::F32 => session.run(ort::inputs![TensorRef::from_array_view((
            shape,
            scratch.f32_input.as_slice()
        ))?]),
        ElementType::U8 => session.run(ort::inputs![TensorRef::from_array_view((
            shape,
            scratch.u8_input.as_slice()
        ))?]),
    }
}

/// Sizes of a shape; `-1` where a size is symbolic. Empty where the model declares no shape.
fn dims(shape: Option<&ort::value::Shape>) -> Vec<i64> {
    shape.map(|s| s.iter().copied().collect()).unwrap_or_default()
}

/// A shape as the model declares it, symbolic sizes by their names: `[batch, 3, height, width]`.
fn declared_shape(dtype: &ValueType) -> String {
    match dtype {
        ValueType::Tensor {
            shape,
            dimension_symbols,
            ..
        } => {
            let sizes: Vec<String> = shape
                .iter()
                .enumerate()
                .map(|(i, &size)| match dimension_symbols.get(i) {
                    Some(symbol) if size < 0 && !symbol.is_empty() => symbol.clone(),
                    _ => size.to_string(),
                })
                .collect();
            format!("[{}]", sizes.join(", "))
        }
        other => other.to_string(),
    }
}

/// One model output, as the layout check sees it.
#[derive(Debug, Clone)]
struct Port {
    name: String,
    element: Option<TensorElementType>,
    /// Sizes; negative where symbolic (declared shapes only). Empty where no shape is declared.
    dims: Vec<i64>,
    /// The declared shape where it is not static, named beside the real one once the model ran.
    declared: Option<String>,
}

impl Port {
    /// Whether the shape is declared in full.
    fn is_static(&self) -> bool {
        !self.dims.is_empty() && self.dims.iter().all(|&d| d >= 0)
    }

    fn describe(&self) -> String {
        match &self.declared {
            Some(declared) => format!("{:?} {:?} (declared {declared})", self.name, self.dims),
            None => format!("{:?} {:?}", self.name, self.dims),
        }
    }

    /// The decoders read float32.
    fn float(&self) -> Result<(), String> {
        match self.element {
            Some(TensorElementType::Float32) => Ok(()),
            Some(other) => Err(format!(
                "output {:?} has element type {other:?}; expected float32",
                self.name
            )),
            None => Err(format!("output {:?} is not a tensor", self.name)),
        }
    }
}

/// The outputs as the model declares them.
fn declared_outputs(session: &Session) -> Vec<Port> {
    session
        .outputs()
        .iter()
        .map(|o| {
            let mut port = Port {
                name: o.name().to_owned(),
                element: o.dtype().tensor_type(),
                dims: dims(o.dtype().tensor_shape()),
                declared: None,
            };
            if !port.is_static() {
                port.declared = Some(declared_shape(o.dtype()));
            }
            port
        })
        .collect()
}

/// Works out the input tensor's layout, element type and size, and the preprocessing for it.
///
/// Where the channel axis cannot be told from the declared shape (every axis symbolic), both
/// NCHW and NHWC come back, the likelier first (NHWC for uint8, as TensorFlow exports, NCHW for
/// float); running the model tells them apart.
fn input_specs(session: &Session, config: &DetectorConfig) -> Result<Vec<InputSpec>, String> {
    let [input] = session.inputs() else {
        return Err(format!("expected 1 input, found {}", session.inputs().len()));
    };
    let shape = dims(input.dtype().tensor_shape());
    let declared = declared_shape(input.dtype());
    let element = match input.dtype().tensor_type() {
        Some(TensorElementType::Float32) => ElementType::F32,
        Some(TensorElementType::Uint8) => ElementType::U8,
        other => {
            return Err(format!(
                "input {:?} has element type {other:?}; expected float32 or uint8",
                input.name()
            ));
        }
    };
    let bad_shape = || {
        format!(
            "input {:?} has shape {declared}; expected [1, 3, H, W] or [1, H, W, 3]",
            input.name()
        )
    };
    // No declared shape at all: every size symbolic.
    let [batch, c1, mid, c3] = match shape.as_slice() {
        [] => [-1; 4],
        &[batch, c1, mid, c3] => [batch, c1, mid, c3],
        _ => return Err(bad_shape()),
    };
    if batch >= 0 && batch != 1 {
        return Err(bad_shape());
    }
    // (NHWC, channels, H, W)
    let nchw = (false, c1, mid, c3);
    let nhwc = (true, c3, c1, mid);
    let mut layouts: Vec<_> = [nchw, nhwc].into_iter().filter(|l| l.1 == 3).collect();
    if layouts.is_empty() {
        let likelier = if element == ElementType::U8 {
            [nhwc, nchw]
        } else {
            [nchw, nhwc]
        };
        layouts = likelier.into_iter().filter(|l| l.1 < 0).collect();
    }
    if layouts.is_empty() {
        return Err(bad_shape());
    }
    let default_size = match config.layout {
        Layout::Yolox => 416,
        Layout::Yolo => 640,
        Layout::Ssd => 300,
    };
    let side = |dim: i64| -> Result<u32, String> {
        match (u32::try_from(dim).ok().filter(|&d| d > 0), config.input_size) {
            (Some(fixed), Some(size)) if size != fixed => Err(format!(
                "detector.input_size = {size} but the model's input {:?} has the fixed shape {declared}",
                input.name()
            )),
            (Some(fixed), _) => Ok(fixed),
            (None, Some(size)) => Ok(size),
            (None, None) => Ok(default_size),
        }
    };
    let (order, scale, resize) = match config.layout {
        Layout::Yolox => (ChannelOrder::Bgr, 1.0, ResizeMode::Letterbox),
        Layout::Yolo => (ChannelOrder::Rgb, 1.0 / 255.0, ResizeMode::LetterboxCenter),
        Layout::Ssd => (ChannelOrder::Rgb, 1.0, ResizeMode::Stretch),
    };
    let mut specs = Vec::with_capacity(layouts.len());
    let mut first_err = None;
    for (nhwc, _, h, w) in layouts {
        match (side(h), side(w)) {
            (Ok(height), Ok(width)) => specs.push(InputSpec::new(
                width,
                height,
                nhwc,
                element,
                config.channel_order.unwrap_or(order),
                config.resize.unwrap_or(resize),
                config.scale.unwrap_or(scale),
                config.mean.unwrap_or([0.0; 3]),
                config.std.unwrap_or([1.0; 3]),
            )),
            (Err(e), _) | (_, Err(e)) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) if specs.is_empty() => Err(e),
        _ => Ok(specs),
    }
}

/// Runs one blank frame through the model, as the first input in `inputs` that the model takes,
/// and checks the real shapes of its outputs against the layout.
fn probe(
    session: &mut Session,
    inputs: Vec<InputSpec>,
    declared: &[Port],
    layout: Layout,
    labels: usize,
) -> Result<(InputSpec, Outputs), String> {
    let (declared_input, symbolic) = session
        .inputs()
        .first()
        .map(|i| {
            let sizes = dims(i.dtype().tensor_shape());
            (
                declared_shape(i.dtype()),
                sizes.is_empty() || sizes.iter().any(|&d| d < 0),
            )
        })
        .unwrap_or_default();
    let mut failures = Vec::new();
    for input in inputs {
        let (width, height) = (input.width, input.height);
        let blank = RgbImage::from_pixel(width, height, image::Rgb([preprocess::PAD_GREY; 3]));
        let mut scratch = Scratch::default();
        // The model's own input size failing to prepare is a layout problem, reported as one.
        preprocess::prepare(&input, &blank, &mut scratch).map_err(|e| e.to_string())?;
        let ran = format!("a blank {width}x{height} frame as input {:?}", input.shape());
        let outputs = match run_input(session, &input, &scratch) {
            Ok(outputs) => outputs,
            Err(e) => {
                failures.push(format!("{ran}: {}", e.to_string().trim_end()));
                continue;
            }
        };
        let real: Vec<Port> = declared
            .iter()
            .zip(outputs.values())
            .map(|(port, value)| Port {
                name: port.name.clone(),
                element: value.dtype().tensor_type(),
                dims: dims(value.dtype().tensor_shape()),
                declared: port.declared.clone(),
            })
            .collect();
        let describe = real.iter().map(Port::describe).collect::<Vec<_>>().join(", ");
        return match check_outputs(&real, layout, &input, labels) {
            Ok(Some(plan)) => Ok((input, plan)),
            Ok(None) => Err(format!("cannot tell the layout from the outputs {describe} of {ran}")),
            Err(reason) => Err(format!("{reason}, running {ran}")),
        };
    }
    let hint = if symbolic {
        "; detector.input_size sets the side of an input whose size is symbolic"
    } else {
        ""
    };
    Err(format!(
        "the model (input declared {declared_input}) does not run {}{hint}",
        failures.join("; nor ")
    ))
}

/// Checks the outputs against the layout and the number of classes. Symbolic sizes fit anything;
/// `None` where they leave the layout open (YOLO v5 or v8), which only the real shapes tell.
fn check_outputs(ports: &[Port], layout: Layout, input: &InputSpec, labels: usize) -> Result<Option<Outputs>, String> {
    let describe = || ports.iter().map(Port::describe).collect::<Vec<_>>().join(", ");
    let fits = |dim: i64, want: usize| dim < 0 || dim as usize == want;
    let is = |dim: i64, want: usize| dim >= 0 && dim as usize == want;
    match layout {
        Layout::Yolox | Layout::Yolo => {
            let [output] = ports else {
                return Err(format!("expected 1 output, found {}: {}", ports.len(), describe()));
            };
            output.float()?;
            let &[_, a, b] = output.dims.as_slice() else {
                return Err(format!("expected a 3-dimensional output, found {}", describe()));
            };
            if layout == Layout::Yolox {
                let rows = decode::yolox_rows(input.width as usize, input.height as usize);
                if !fits(a, rows) || !fits(b, 5 + labels) {
                    return Err(format!(
                        "expected output [1, {rows}, {}] (grid rows for a {}x{} input, 5 + {labels} classes), found {}",
                        5 + labels,
                        input.width,
                        input.height,
                        describe()
                    ));
                }
                return Ok(Some(Outputs::Yolox { classes: labels }));
            }
            if is(a, 4 + labels) {
                Ok(Some(Outputs::YoloV8 { classes: labels }))
            } else if is(b, 5 + labels) {
                Ok(Some(Outputs::YoloV5 { classes: labels }))
            } else if a < 0 || b < 0 {
                Ok(None)
            } else {
                Err(format!(
                    "expected [1, {}, N] (YOLOv8/v11) or [1, N, {}] (YOLOv5) for {labels} classes, found {}",
                    4 + labels,
                    5 + labels,
                    describe()
                ))
            }
        }
        Layout::Ssd => {
            // By name, passing over the extra outputs that TensorFlow 2 exports beside the four
            // (detection_multiclass_scores, raw_detection_boxes, raw_detection_scores).
            let find = |keys: &[&str]| {
                let named = |p: &Port| {
                    let name = p.name.to_ascii_lowercase();
                    keys.iter().any(|k| name.contains(k))
                };
                let extra = |p: &Port| {
                    let name = p.name.to_ascii_lowercase();
                    name.contains("raw") || name.contains("multiclass")
                };
                ports
                    .iter()
                    .position(|p| named(p) && !extra(p))
                    .or_else(|| ports.iter().position(named))
            };
            match (
                find(&["box"]),
                find(&["score"]),
                find(&["class"]),
                find(&["num", "count"]),
            ) {
                (Some(boxes), Some(scores), Some(classes), Some(count)) => {
                    for i in [boxes, scores, classes, count] {
                        if let Some(port) = ports.get(i) {
                            port.float()?;
                        }
                    }
                    let box_dims = ports.get(boxes).map(|p| p.dims.as_slice()).unwrap_or_default();
                    if !box_dims.last().is_some_and(|&d| fits(d, 4)) {
                        return Err(format!(
                            "the boxes output must end in 4 (ymin, xmin, ymax, xmax), found {}",
                            describe()
                        ));
                    }
                    Ok(Some(Outputs::Ssd {
                        boxes,
                        scores,
                        classes,
                        count,
                    }))
                }
                _ => Err(format!(
                    "expected outputs named for boxes, scores, classes and num_detections, found {}",
                    describe()
                )),
            }
        }
    }
}

/// Greedy non-maximum suppression within each class; the result is sorted by score, best first.
pub fn nms_per_class(detections: Vec<Detection>, iou_threshold: f32) -> Vec<Detection> {
    nms_per_class_by(detections, |d| d, iou_threshold)
}

/// [`nms_per_class`] over items that carry a detection (e.g. with the pass it came from).
pub fn nms_per_class_by<T>(mut items: Vec<T>, detection: impl Fn(&T) -> &Detection, iou_threshold: f32) -> Vec<T> {
    items.sort_by(|a, b| detection(b).score.total_cmp(&detection(a).score));
    let mut kept: Vec<T> = Vec::with_capacity(items.len());
    for item in items {
        let d = detection(&item);
        let overlaps = kept
            .iter()
            .map(&detection)
            .any(|k| k.class_id == d.class_id && k.bbox.iou(&d.bbox) > iou_threshold);
        if !overlaps {
            kept.push(item);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(class_id: usize, score: f32, x: f32) -> Detection {
        Detection {
            class_id,
            label: COCO_LABELS[class_id].into(),
            score,
            bbox: BoxPx {
                x,
                y: 0.0,
                w: 10.0,
                h: 10.0,
            },
        }
    }

    #[test]
    fn iou_of_identical_and_disjoint_boxes() {
        let a = BoxPx {
            x: 0.0,
            y: 0.0,
            w: 10.0,
            h: 10.0,
        };
        let b = BoxPx {
            x: 5.0,
            y: 0.0,
            w: 10.0,
            h: 10.0,
        };
        let c = BoxPx {
            x: 20.0,
            y: 0.0,
            w: 10.0,
            h: 10.0,
        };
        assert!((a.iou(&a) - 1.0).abs() < 1e-6);
        assert!((a.iou(&b) - 50.0 / 150.0).abs() < 1e-6);
        assert_eq!(a.iou(&c), 0.0);
    }

    fn port(name: &str, dims: &[i64]) -> Port {
        Port {
            name: name.into(),
            element: Some(TensorElementType::Float32),
            dims: dims.to_vec(),
            declared: None,
        }
    }

    fn check(layout: Layout, ports: &[Port]) -> Result<Option<Outputs>, String> {
        let input = InputSpec::new(
            64,
            64,
            false,
            ElementType::F32,
            ChannelOrder::Rgb,
            ResizeMode::Stretch,
            1.0,
            [0.0; 3],
            [1.0; 3],
        );
        check_outputs(ports, layout, &input, 80)
    }

    #[test]
    fn symbolic_sizes_fit_until_the_model_runs() {
        assert_eq!(check(Layout::Yolo, &[port("o", &[-1, -1, -1])]), Ok(None));
        assert_eq!(
            check(Layout::Yolo, &[port("o", &[-1, 84, -1])]),
            Ok(Some(Outputs::YoloV8 { classes: 80 }))
        );
        assert_eq!(
            check(Layout::Yolo, &[port("o", &[-1, -1, 85])]),
            Ok(Some(Outputs::YoloV5 { classes: 80 }))
        );
        assert!(check(Layout::Yolo, &[port("o", &[1, 6, 2])]).is_err());
        assert_eq!(
            check(Layout::Yolox, &[port("o", &[-1, -1, -1])]),
            Ok(Some(Outputs::Yolox { classes: 80 }))
        );
        let err = check(Layout::Yolox, &[port("o", &[-1, 84, 7])]).unwrap_err();
        assert!(
            err.contains("[1, 84, 85]") && err.contains("\"o\" [-1, 84, 7]"),
            "{err}"
        );
        // No declared shape: not static, so only a run can tell; a real rank-0 output is refused.
        assert!(!port("o", &[]).is_static() && !port("o", &[1, -1]).is_static() && port("o", &[1, 0]).is_static());
        assert!(check(Layout::Yolo, &[port("o", &[])]).is_err());
    }

    #[test]
    fn ssd_outputs_are_found_by_name_past_the_tensorflow_2_extras() {
        let mut ports = vec![
            port("detection_anchor_indices", &[-1, -1]),
            port("detection_boxes", &[-1, -1, -1]),
            port("detection_classes", &[-1, -1]),
            port("detection_multiclass_scores", &[-1, -1, -1]),
            port("detection_scores", &[-1, -1]),
            port("num_detections", &[-1]),
            port("raw_detection_boxes", &[-1, -1, -1]),
            port("raw_detection_scores", &[-1, -1, -1]),
        ];
        let plan = Outputs::Ssd {
            boxes: 1,
            scores: 4,
            classes: 2,
            count: 5,
        };
        assert_eq!(check(Layout::Ssd, &ports), Ok(Some(plan)));
        ports[1].dims = vec![1, 100, 5];
        let err = check(Layout::Ssd, &ports).unwrap_err();
        assert!(err.contains("end in 4") && err.contains("[1, 100, 5]"), "{err}");
        ports[1].dims = vec![1, 100, 4];
        ports[2].element = Some(TensorElementType::Int64);
        let err = check(Layout::Ssd, &ports).unwrap_err();
        assert!(err.contains("\"detection_classes\" has element type Int64"), "{err}");
    }

    #[test]
    fn nms_suppresses_overlaps_within_a_class_only() {
        let out = nms_per_class(
            vec![det(0, 0.6, 1.0), det(0, 0.9, 0.0), det(2, 0.5, 0.0), det(0, 0.7, 50.0)],
            0.45,
        );
        let summary: Vec<(usize, f32)> = out.iter().map(|d| (d.class_id, d.score)).collect();
        assert_eq!(summary, vec![(0, 0.9), (0, 0.7), (2, 0.5)]);
    }
}
