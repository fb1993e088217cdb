//! The detector: one shared ONNX Runtime session, letterbox preprocessing and NMS in Rust.
//!
//! The YOLOX layout is supported (raw grid output, strides 8/16/32). The model's input and output
//! shapes are checked against that layout when the detector loads, so a wrong model is a start-up
//! error rather than garbage verdicts.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use fast_image_resize as fr;
use image::RgbImage;
use ndarray::{Array4, ArrayViewD};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use serde::Serialize;

use crate::config::DetectorConfig;

const YOLOX_STRIDES: [u32; 3] = [8, 16, 32];
const LETTERBOX_FILL: f32 = 114.0;

/// COCO class names, in the order the model's class scores come.
pub const COCO_LABELS: [&str; 80] = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
];

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error(
        "cannot load the ONNX Runtime library {path}: {reason}. Expected ONNX Runtime 1.31 \
         (libonnxruntime.so.1.31.1; scripts/setup.sh installs it); set detector.onnxruntime to its path"
    )]
    Runtime { path: PathBuf, reason: String },
    #[error("{path}: cannot load the detector model (key detector.model): {reason}")]
    Model { path: PathBuf, reason: String },
    #[error("{path}: the model does not fit the yolox layout: {reason}")]
    Layout { path: PathBuf, reason: String },
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("frame of {0}x{1} pixels cannot be analysed")]
    Frame(u32, u32),
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

/// Where a frame sits inside the square model input.
#[derive(Debug, Clone, Copy)]
struct Letterbox {
    scale: f32,
}

pub struct Detector {
    session: Mutex<Session>,
    _environment: ort::environment::Environment,
    input_name: String,
    input_size: u32,
    score_threshold: f32,
    nms_iou: f32,
    model_name: String,
}

impl Detector {
    /// Loads the ONNX Runtime library and the model, and checks the model against the layout.
    pub fn load(config: &DetectorConfig) -> Result<Self, DetectError> {
        let environment = load_runtime(&config.onnxruntime)?;
        let model = &config.model;
        if !model.is_file() {
            return Err(DetectError::Model {
                path: model.clone(),
                reason: "no such file (scripts/setup.sh puts yolox_nano.onnx into models/)".into(),
            });
        }
        let session = build_session(&environment, model, config.threads).map_err(|e| DetectError::Model {
            path: model.clone(),
            reason: e.to_string(),
        })?;
        let input_name = check_yolox_shapes(&session, config.input_size).map_err(|reason| DetectError::Layout {
            path: model.clone(),
            reason,
        })?;
        let model_name = model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
        Ok(Self {
            session: Mutex::new(session),
            _environment: environment,
            input_name,
            input_size: config.input_size,
            score_threshold: config.score_threshold,
            nms_iou: config.nms_iou,
            model_name,
        })
    }

    pub fn model_name(&self) -> &str {
        &self.model_name
    }

    /// Runs the model on one RGB frame; boxes come back in the frame's own pixels.
    pub fn detect(&self, frame: &RgbImage) -> Result<Vec<Detection>, DetectError> {
        let (input, letterbox) = self.preprocess(frame)?;
        let raw = {
            let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
            let tensor = TensorRef::from_array_view(&input).map_err(|e| DetectError::Inference(e.to_string()))?;
            let outputs = session
                .run(ort::inputs![self.input_name.as_str() => tensor])
                .map_err(|e| DetectError::Inference(e.to_string()))?;
            let view = outputs[0].try_extract_array::<f32>().map_err(|e| DetectError::Inference(e.to_string()))?;
            decode_yolox(&view, self.input_size, self.score_threshold)?
        };
        let mut detections = raw
            .into_iter()
            .map(|d| Detection {
                bbox: unletterbox(d.bbox, letterbox, frame.width(), frame.height()),
                ..d
            })
            .collect::<Vec<_>>();
        detections = nms_per_class(detections, self.nms_iou);
        Ok(detections)
    }

    /// Letterbox: scale to fit keeping aspect ratio, top-left aligned, padded with 114; BGR planes, 0..255.
    fn preprocess(&self, frame: &RgbImage) -> Result<(Array4<f32>, Letterbox), DetectError> {
        let (w, h) = frame.dimensions();
        if w == 0 || h == 0 {
            return Err(DetectError::Frame(w, h));
        }
        let size = self.input_size;
        let scale = (size as f32 / w as f32).min(size as f32 / h as f32);
        let nw = ((w as f32 * scale) as u32).clamp(1, size);
        let nh = ((h as f32 * scale) as u32).clamp(1, size);
        let src = fr::images::ImageRef::new(w, h, frame.as_raw(), fr::PixelType::U8x3).map_err(|_| DetectError::Frame(w, h))?;
        let mut resized = fr::images::Image::new(nw, nh, fr::PixelType::U8x3);
        let options = fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
        fr::Resizer::new()
            .resize(&src, &mut resized, &options)
            .map_err(|e| DetectError::Inference(format!("resize: {e}")))?;

        let side = size as usize;
        let mut input = Array4::<f32>::from_elem((1, 3, side, side), LETTERBOX_FILL);
        let plane = side * side;
        let data = input.as_slice_mut().ok_or_else(|| DetectError::Inference("input tensor not contiguous".into()))?;
        let (b_plane, rest) = data.split_at_mut(plane);
        let (g_plane, r_plane) = rest.split_at_mut(plane);
        let row_bytes = nw as usize * 3;
        for (y, row) in resized.buffer().chunks_exact(row_bytes).enumerate() {
            let offset = y * side;
            for (x, px) in row.chunks_exact(3).enumerate() {
                r_plane[offset + x] = px[0] as f32;
                g_plane[offset + x] = px[1] as f32;
                b_plane[offset + x] = px[2] as f32;
            }
        }
        Ok((input, Letterbox { scale }))
    }
}

fn load_runtime(path: &Path) -> Result<ort::environment::Environment, DetectError> {
    let runtime_err = |reason: String| DetectError::Runtime {
        path: path.to_owned(),
        reason,
    };
    if !path.is_file() {
        return Err(runtime_err("no such file".into()));
    }
    ort::init_from(path)
        .map_err(|e| runtime_err(e.to_string()))?
        .with_name("alarm-verifier")
        .with_telemetry(false)
        .build()
        .map_err(|e| runtime_err(e.to_string()))
}

fn build_session(environment: &ort::environment::Environment, model: &Path, threads: usize) -> ort::Result<Session> {
    Ok(Session::builder(environment)?
        .with_optimization_level(GraphOptimizationLevel::All)?
        .with_intra_threads(threads)?
        .commit_from_file(model)?)
}

/// Checks input `[1, 3, S, S]` and output `[1, N, 5 + classes]` with N the YOLOX grid size for S.
fn check_yolox_shapes(session: &Session, input_size: u32) -> Result<String, String> {
    let [input] = session.inputs() else {
        return Err(format!("expected 1 input, found {}", session.inputs().len()));
    };
    let [output] = session.outputs() else {
        return Err(format!("expected 1 output, found {}", session.outputs().len()));
    };
    let in_shape: Vec<i64> = input.dtype().tensor_shape().map(|s| s.iter().copied().collect()).unwrap_or_default();
    let out_shape: Vec<i64> = output.dtype().tensor_shape().map(|s| s.iter().copied().collect()).unwrap_or_default();
    let s = input_size as i64;
    let fits = |dim: i64, want: i64| dim <= 0 || dim == want;
    if in_shape.len() != 4 || !fits(in_shape[1], 3) || !fits(in_shape[2], s) || !fits(in_shape[3], s) {
        return Err(format!(
            "input {:?} has shape {in_shape:?}; expected [1, 3, {s}, {s}] (detector.input_size = {s})",
            input.name()
        ));
    }
    let rows: i64 = YOLOX_STRIDES.iter().map(|st| (s / *st as i64).pow(2)).sum();
    if out_shape.len() != 3 || !fits(out_shape[1], rows) || out_shape[2] < 6 {
        return Err(format!(
            "output {:?} has shape {out_shape:?}; expected [1, {rows}, 5 + classes] for input size {s}",
            output.name()
        ));
    }
    Ok(input.name().to_owned())
}

/// Decodes raw YOLOX rows `cx, cy, w, h, objectness, class scores...` in input pixels.
fn decode_yolox(output: &ArrayViewD<f32>, input_size: u32, threshold: f32) -> Result<Vec<Detection>, DetectError> {
    let shape = output.shape();
    if shape.len() != 3 || shape[2] < 6 {
        return Err(DetectError::Inference(format!("unexpected output shape {shape:?}")));
    }
    let width = shape[2];
    let classes = width - 5;
    let data = output
        .as_slice()
        .ok_or_else(|| DetectError::Inference("output tensor is not contiguous".into()))?;
    let mut detections = Vec::new();
    let mut row = 0usize;
    for stride in YOLOX_STRIDES {
        let cells = input_size / stride;
        for gy in 0..cells {
            for gx in 0..cells {
                if row >= shape[1] {
                    return Err(DetectError::Inference(format!("output has {} rows, fewer than the grid", shape[1])));
                }
                let r = &data[row * width..(row + 1) * width];
                row += 1;
                let objectness = r[4];
                if objectness < threshold {
                    continue; // score = objectness * class score can only be lower
                }
                let (class_id, class_score) = (0..classes)
                    .map(|c| (c, r[5 + c]))
                    .fold((0, f32::MIN), |best, cur| if cur.1 > best.1 { cur } else { best });
                let score = objectness * class_score;
                if score < threshold {
                    continue;
                }
                let s = stride as f32;
                let cx = (r[0] + gx as f32) * s;
                let cy = (r[1] + gy as f32) * s;
                let w = r[2].exp() * s;
                let h = r[3].exp() * s;
                detections.push(Detection {
                    class_id,
                    label: COCO_LABELS.get(class_id).map_or_else(|| format!("class{class_id}"), |l| (*l).to_owned()),
                    score,
                    bbox: BoxPx {
                        x: cx - w / 2.0,
                        y: cy - h / 2.0,
                        w,
                        h,
                    },
                });
            }
        }
    }
    Ok(detections)
}

/// Maps a box from model-input pixels back to the frame, clipped to it.
fn unletterbox(b: BoxPx, lb: Letterbox, width: u32, height: u32) -> BoxPx {
    let (fw, fh) = (width as f32, height as f32);
    let x1 = (b.x / lb.scale).clamp(0.0, fw);
    let y1 = (b.y / lb.scale).clamp(0.0, fh);
    let x2 = ((b.x + b.w) / lb.scale).clamp(0.0, fw);
    let y2 = ((b.y + b.h) / lb.scale).clamp(0.0, fh);
    BoxPx {
        x: x1,
        y: y1,
        w: x2 - x1,
        h: y2 - y1,
    }
}

/// Greedy non-maximum suppression within each class; the result is sorted by score, best first.
pub fn nms_per_class(mut detections: Vec<Detection>, iou_threshold: f32) -> Vec<Detection> {
    detections.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::with_capacity(detections.len());
    for d in detections {
        let overlaps = kept
            .iter()
            .any(|k| k.class_id == d.class_id && k.bbox.iou(&d.bbox) > iou_threshold);
        if !overlaps {
            kept.push(d);
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
            bbox: BoxPx { x, y: 0.0, w: 10.0, h: 10.0 },
        }
    }

    #[test]
    fn iou_of_identical_and_disjoint_boxes() {
        let a = BoxPx { x: 0.0, y: 0.0, w: 10.0, h: 10.0 };
        let b = BoxPx { x: 5.0, y: 0.0, w: 10.0, h: 10.0 };
        let c = BoxPx { x: 20.0, y: 0.0, w: 10.0, h: 10.0 };
        assert!((a.iou(&a) - 1.0).abs() < 1e-6);
        assert!((a.iou(&b) - 50.0 / 150.0).abs() < 1e-6);
        assert_eq!(a.iou(&c), 0.0);
    }

    #[test]
    fn nms_suppresses_overlaps_within_a_class_only() {
        let out = nms_per_class(vec![det(0, 0.6, 1.0), det(0, 0.9, 0.0), det(2, 0.5, 0.0), det(0, 0.7, 50.0)], 0.45);
        let summary: Vec<(usize, f32)> = out.iter().map(|d| (d.class_id, d.score)).collect();
        assert_eq!(summary, vec![(0, 0.9), (0, 0.7), (2, 0.5)]);
    }

    #[test]
    fn yolox_decode_places_a_cell_on_its_grid() {
        // Input 64: grids 8x8, 4x4, 2x2 = 84 rows, 2 classes.
        let rows = 84;
        let mut out = ndarray::Array3::<f32>::zeros((1, rows, 7));
        // Row for stride 16, cell (x=1, y=2): offset 64 + 2*4 + 1 = 73.
        let r = 73;
        out[[0, r, 0]] = 0.5;
        out[[0, r, 1]] = 0.5;
        out[[0, r, 2]] = 0.0; // exp(0) * 16 = 16
        out[[0, r, 3]] = (2.0f32).ln(); // 32
        out[[0, r, 4]] = 0.9;
        out[[0, r, 6]] = 0.8;
        let dets = decode_yolox(&out.into_dyn().view(), 64, 0.25).expect("decodes");
        assert_eq!(dets.len(), 1);
        let d = &dets[0];
        assert_eq!(d.class_id, 1);
        assert!((d.score - 0.72).abs() < 1e-6);
        // cx = (0.5 + 1) * 16 = 24, cy = (0.5 + 2) * 16 = 40.
        assert_eq!(d.bbox, BoxPx { x: 16.0, y: 24.0, w: 16.0, h: 32.0 });
    }

    #[test]
    fn unletterbox_scales_and_clips() {
        let b = unletterbox(BoxPx { x: 10.0, y: 10.0, w: 500.0, h: 20.0 }, Letterbox { scale: 0.5 }, 640, 480);
        assert_eq!(b, BoxPx { x: 20.0, y: 20.0, w: 620.0, h: 40.0 });
    }
}
