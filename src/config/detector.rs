//! `[detector]`: the ONNX model, its layout and preprocessing, the runtime and its provider.

use std::path::PathBuf;

use serde::Deserialize;

use super::paths::Install;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// The ONNX model; default: the installed or checkout's YOLOX-Nano (`paths::Install`).
    pub model: PathBuf,
    /// The ONNX Runtime shared library, loaded at start-up; default as for `model`.
    pub onnxruntime: PathBuf,
    /// Intra-op threads for inference; one leaves a core for GStreamer's decoding.
    pub threads: usize,
    pub provider: Provider,
    pub optimization: Optimization,
    /// How the model's outputs are laid out.
    pub layout: Layout,
    /// Side of the square model input; unset: the model's own size, or the layout's default.
    pub input_size: Option<u32>,
    /// Unset: the layout's default (BGR for YOLOX, RGB otherwise).
    pub channel_order: Option<ChannelOrder>,
    /// Each input value is `(pixel * scale - mean) / std`; unset: the layout's defaults.
    pub scale: Option<f32>,
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
    /// Unset: the layout's default.
    pub resize: Option<ResizeMode>,
    /// Class names, one per line, in the model's class order; unset: COCO.
    pub labels: Option<PathBuf>,
    /// Detections below this score are discarded before NMS.
    pub score_threshold: f32,
    pub nms_iou: f32,
    /// Squares of the full-resolution frame detected in besides the whole frame, per analysed
    /// frame, where it changed or targets were seen; 0 turns regions off.
    pub max_regions: usize,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            model: Install::current().model(),
            onnxruntime: Install::current().onnxruntime(),
            threads: 1,
            provider: Provider::Cpu,
            optimization: Optimization::All,
            layout: Layout::Yolox,
            input_size: None,
            channel_order: None,
            scale: None,
            mean: None,
            std: None,
            resize: None,
            labels: None,
            score_threshold: 0.25,
            nms_iou: 0.45,
            max_regions: 4,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Cpu,
    Cuda,
    Tensorrt,
    Openvino,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimization {
    Disable,
    Basic,
    Extended,
    All,
}

/// Model output layouts (DESIGN.md, "Detector").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// YOLOX: raw grid output `[1, N, 5 + classes]`, strides 8/16/32.
    Yolox,
    /// Ultralytics YOLO: v5 `[1, N, 5 + classes]` or v8/v11 `[1, 4 + classes, N]`, boxes decoded.
    Yolo,
    /// NMS inside the graph: boxes, scores, classes and count outputs (TensorFlow Object Detection API).
    Ssd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    Rgb,
    Bgr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    /// Keep the aspect ratio, image at the top left, padded with grey 114 (YOLOX).
    Letterbox,
    /// Keep the aspect ratio, image centred, padded with grey 114 (Ultralytics).
    LetterboxCenter,
    /// Scale each axis to the input size (SSD).
    Stretch,
}
