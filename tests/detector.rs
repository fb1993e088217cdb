//! The detector engine against references: YOLOX parity with Python ONNX Runtime on a real frame,
//! every layout's decoder on small models with known outputs, and clear errors for bad models,
//! layouts, libraries and providers.

mod common;

use std::path::PathBuf;

use alarm_verifier::analysis::clip;
use alarm_verifier::analysis::detect::{BoxPx, Detection, Detector};
use alarm_verifier::config::{Config, DetectorConfig, Layout, Provider};
use common::root;
use image::RgbImage;

fn config(model: &str, layout: Layout) -> DetectorConfig {
    DetectorConfig {
        model: root().join(model),
        onnxruntime: root().join(DetectorConfig::default().onnxruntime),
        layout,
        ..DetectorConfig::default()
    }
}

fn load(config: &DetectorConfig) -> Detector {
    Detector::load(config).unwrap_or_else(|e| panic!("{} does not load: {e}", config.model.display()))
}

fn load_err(config: &DetectorConfig) -> String {
    match Detector::load(config) {
        Ok(_) => panic!("{} loaded, but should not", config.model.display()),
        Err(e) => e.to_string(),
    }
}

/// The first frame of testdata/vtest.avi, decoded the way the service decodes.
fn first_vtest_frame() -> RgbImage {
    gstreamer::init().expect("gstreamer");
    clip::first_frame(&root().join("testdata/vtest.avi")).expect("decode vtest.avi")
}

fn summary(d: &[Detection]) -> Vec<(String, f32, [f32; 4])> {
    d.iter()
        .map(|d| (d.label.clone(), d.score, [d.bbox.x, d.bbox.y, d.bbox.w, d.bbox.h]))
        .collect()
}

#[test]
fn yolox_matches_python_onnxruntime_on_a_real_frame() {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/data/yolox_reference.json")).expect("reference"),
    )
    .expect("reference JSON");
    let expected = reference["detections"].as_array().expect("detections");
    let frame = first_vtest_frame();
    assert_eq!(frame.dimensions(), (768, 576));
    let detector = load(&config("models/yolox_nano.onnx", Layout::Yolox));
    let got = detector.detect(&frame).expect("detect");
    assert_eq!(
        got.len(),
        expected.len(),
        "Rust {:?}\nreference {expected:?}",
        summary(&got)
    );
    for e in expected {
        let class_id = e["class_id"].as_u64().expect("class") as usize;
        let score = e["score"].as_f64().expect("score") as f32;
        let b: Vec<f32> = e["box_xyxy"]
            .as_array()
            .expect("box")
            .iter()
            .map(|v| v.as_f64().unwrap_or(-1.0) as f32)
            .collect();
        let want = BoxPx {
            x: b[0],
            y: b[1],
            w: b[2] - b[0],
            h: b[3] - b[1],
        };
        let found = got
            .iter()
            .filter(|d| d.class_id == class_id)
            .max_by(|a, b| a.bbox.iou(&want).total_cmp(&b.bbox.iou(&want)))
            .unwrap_or_else(|| panic!("no class {class_id} in {:?}", summary(&got)));
        assert!(
            (found.score - score).abs() < 0.01,
            "score {} vs reference {score} for {e}",
            found.score
        );
        let (x2, y2) = (found.bbox.x + found.bbox.w, found.bbox.y + found.bbox.h);
        for (ours, theirs) in [found.bbox.x, found.bbox.y, x2, y2].iter().zip(&b) {
            assert!((ours - theirs).abs() < 1.0, "box {:?} vs reference {b:?}", found.bbox);
        }
    }
}

/// Any 128x96 frame: the layout models ignore the pixels.
fn frame() -> RgbImage {
    RgbImage::from_pixel(128, 96, image::Rgb([90, 120, 150]))
}

fn assert_box(d: &Detection, want: [f32; 4]) {
    let got = [d.bbox.x, d.bbox.y, d.bbox.w, d.bbox.h];
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 0.01, "{} box {got:?}, expected {want:?}", d.label);
    }
}

#[test]
fn yolox_layout_decodes_grid_cells_and_suppresses_overlaps() {
    let d = load(&config("tests/data/models/yolox_64.onnx", Layout::Yolox))
        .detect(&frame())
        .expect("detect");
    // Letterbox 128x96 -> 64x48 at the top left: frame = model / 0.5.
    assert_eq!(d.len(), 2, "{:?}", summary(&d));
    assert_eq!((d[0].label.as_str(), (d[0].score * 100.0).round()), ("person", 72.0));
    // Model y 24..56 is frame y 48..112, clipped to the 96-pixel frame.
    assert_box(&d[0], [32.0, 48.0, 32.0, 48.0]);
    assert_eq!(d[1].label, "car");
    assert!((d[1].score - 0.7).abs() < 1e-6);
    assert_box(&d[1], [64.0, 80.0, 64.0, 16.0]); // clipped at the frame's bottom edge
}

#[test]
fn yolo_v8_layout_decodes_columns_with_centred_letterbox() {
    let d = load(&config("tests/data/models/yolov8_64.onnx", Layout::Yolo))
        .detect(&frame())
        .expect("detect");
    // Centred letterbox: 64x48 image, 8 px of padding at the top; frame = (model - pad) / 0.5.
    assert_eq!(d.len(), 2, "{:?}", summary(&d));
    assert_eq!(d[0].label, "car");
    assert_box(&d[0], [44.0, 38.0, 40.0, 20.0]);
    assert_eq!(d[1].label, "person");
    assert_box(&d[1], [12.0, 48.0, 16.0, 32.0]);
}

#[test]
fn yolo_v5_layout_multiplies_objectness() {
    let d = load(&config("tests/data/models/yolov5_64.onnx", Layout::Yolo))
        .detect(&frame())
        .expect("detect");
    assert_eq!(d.len(), 1, "{:?}", summary(&d));
    assert_eq!(d[0].label, "truck");
    assert!((d[0].score - 0.81).abs() < 1e-5);
    assert_box(&d[0], [44.0, 38.0, 40.0, 20.0]);
}

#[test]
fn ssd_layout_reads_named_outputs_with_tensorflow_class_ids() {
    let d = load(&config("tests/data/models/ssd_64.onnx", Layout::Ssd))
        .detect(&frame())
        .expect("detect");
    // Stretch: normalised boxes scale straight to the frame; the third row is beyond num_detections.
    assert_eq!(d.len(), 2, "{:?}", summary(&d));
    assert_eq!(d[0].label, "person");
    assert_box(&d[0], [64.0, 24.0, 64.0, 48.0]);
    assert_eq!(d[1].label, "car");
    assert_box(&d[1], [0.0, 0.0, 32.0, 48.0]);
}

#[test]
fn labels_file_names_a_custom_model_classes() {
    let mut c = config("tests/data/models/yolov8_2class_64.onnx", Layout::Yolo);
    c.labels = Some(root().join("tests/data/models/yolov8_2class_64.labels"));
    let d = load(&c).detect(&frame()).expect("detect");
    let labels: Vec<&str> = d.iter().map(|d| d.label.as_str()).collect();
    assert_eq!(labels, vec!["van", "intruder"]);
    // Without the labels file, 80 COCO classes do not fit a 2-class output.
    let err = load_err(&config("tests/data/models/yolov8_2class_64.onnx", Layout::Yolo));
    assert!(err.contains("[1, 84, N]") && err.contains("[1, 6, 2]"), "{err}");
}

#[test]
fn a_model_of_another_layout_is_refused_naming_the_shapes() {
    let err = load_err(&config("tests/data/models/yolov8_64.onnx", Layout::Yolox));
    assert!(
        err.contains("yolov8_64.onnx") && err.contains("yolox") && err.contains("[1, 84, 3]"),
        "{err}"
    );
    let err = load_err(&config("models/yolox_nano.onnx", Layout::Ssd));
    assert!(err.contains("ssd") && err.contains("\"output\" [1, 3549, 85]"), "{err}");
    let mut c = config("models/yolox_nano.onnx", Layout::Yolox);
    c.input_size = Some(640);
    let err = load_err(&c);
    assert!(
        err.contains("input_size = 640") && err.contains("[1, 3, 416, 416]"),
        "{err}"
    );
}

/// The same detections, boxes to a hundredth of a pixel (the twins may resize to different sizes).
fn assert_same(got: &[Detection], want: &[Detection], what: &str) {
    assert!(!want.is_empty(), "{what}: the static twin finds nothing");
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: {:?}\nstatic twin {:?}",
        summary(got),
        summary(want)
    );
    for (g, w) in got.iter().zip(want) {
        assert_eq!((g.class_id, &g.label), (w.class_id, &w.label), "{what}");
        assert!((g.score - w.score).abs() < 1e-6, "{what}: {} vs {}", g.score, w.score);
        assert_box(g, [w.bbox.x, w.bbox.y, w.bbox.w, w.bbox.h]);
    }
}

#[test]
fn models_with_symbolic_dimensions_decode_as_their_static_twins() {
    // The *_dyn twins declare symbolic sizes on the input and on every output axis; their input
    // size comes from detector.input_size (64, as the static twins' is), or for ssd the layout's 300.
    for (twin, model, layout, input_size) in [
        ("yolox_64", "yolox_dyn", Layout::Yolox, Some(64)),
        ("yolov8_64", "yolov8_dyn", Layout::Yolo, Some(64)),
        ("yolov5_64", "yolov5_dyn", Layout::Yolo, Some(64)),
        ("yolov5_64", "yolov5_nhwc_dyn", Layout::Yolo, Some(64)),
        ("ssd_64", "ssd_dyn", Layout::Ssd, None),
    ] {
        let want = load(&config(&format!("tests/data/models/{twin}.onnx"), layout))
            .detect(&frame())
            .expect("detect");
        let mut c = config(&format!("tests/data/models/{model}.onnx"), layout);
        c.input_size = input_size;
        // Two sessions, as two workers have: the start-up run is on the first.
        let detector = Detector::load_sessions(&c, 2).unwrap_or_else(|e| panic!("{model} does not load: {e}"));
        let side = input_size.unwrap_or(300);
        assert_eq!(detector.input_size(), (side, side), "{model}");
        assert_same(&detector.detect(&frame()).expect("detect"), &want, model);
        // Any frame size, twice over: nothing is kept from the start-up run.
        let big = RgbImage::from_pixel(1280, 720, image::Rgb([10, 20, 30]));
        let again = detector.detect(&big).expect("detect");
        assert_eq!(again.len(), want.len(), "{model}");
    }
}

#[test]
fn a_uint8_image_tensor_of_any_size_works_with_the_ssd_layout_alone() {
    // As tf2onnx exports the TensorFlow Object Detection API: image_tensor [-1, -1, -1, 3], uint8,
    // and the TensorFlow 2 extra outputs (detection_multiclass_scores before detection_scores).
    let want = load(&config("tests/data/models/ssd_64.onnx", Layout::Ssd))
        .detect(&frame())
        .expect("detect");
    let mut c = config("tests/data/models/ssd_dyn.onnx", Layout::Ssd);
    c.input_size = Some(512);
    let detector = load(&c);
    assert_eq!(detector.input_size(), (512, 512));
    assert_same(&detector.detect(&frame()).expect("detect"), &want, "ssd_dyn at 512");
    // The uint8 input is not a float tensor to compare.
    assert!(detector.input_tensor(&frame()).is_err());
}

#[test]
fn a_model_with_symbolic_dimensions_of_another_layout_is_refused_naming_the_real_shapes() {
    // YOLOv8 columns read as a YOLOX grid: the declared shape says nothing; the start-up run does.
    let mut c = config("tests/data/models/yolov8_dyn.onnx", Layout::Yolox);
    c.input_size = Some(64);
    let err = load_err(&c);
    assert!(
        err.contains("yolov8_dyn.onnx")
            && err.contains("\"yolox\"")
            && err.contains("expected output [1, 84, 85]")
            && err.contains("\"output0\" [1, 84, 3] (declared [-1, -1, -1])")
            && err.contains("blank 64x64 frame as input [1, 3, 64, 64]"),
        "{err}"
    );
    // A grid for another input size: at the layout's default 416, YOLOX has 3549 rows.
    let err = load_err(&config("tests/data/models/yolox_dyn.onnx", Layout::Yolox));
    assert!(
        err.contains("expected output [1, 3549, 85] (grid rows for a 416x416 input")
            && err.contains("\"output\" [1, 84, 85] (declared [batch, anchors, outputs])"),
        "{err}"
    );
    let mut c = config("tests/data/models/yolov5_dyn.onnx", Layout::Ssd);
    c.input_size = Some(64);
    let err = load_err(&c);
    assert!(
        err.contains("\"ssd\"") && err.contains("boxes, scores") && err.contains("\"output0\" [1, 3, 85]"),
        "{err}"
    );
    let err = load_err(&config("tests/data/models/ssd_dyn.onnx", Layout::Yolo));
    assert!(
        err.contains("expected 1 output, found 8")
            && err.contains("\"detection_boxes\" [1, 3, 4] (declared [unk__5, unk__6, unk__7])"),
        "{err}"
    );
    // Two labels do not fit 80 classes, whichever of v5 and v8 the symbolic shape leaves open.
    let mut c = config("tests/data/models/yolov8_dyn.onnx", Layout::Yolo);
    c.input_size = Some(64);
    c.labels = Some(root().join("tests/data/models/yolov8_2class_64.labels"));
    let err = load_err(&c);
    assert!(err.contains("[1, 6, N]") && err.contains("[1, 84, 3]"), "{err}");
}

#[test]
fn a_model_that_does_not_run_at_start_up_is_refused_with_what_was_tried() {
    // Only NHWC 64x64 runs; unset, detector.input_size is the layout's 640, and both axis orders fail.
    let err = load_err(&config("tests/data/models/yolov5_nhwc_dyn.onnx", Layout::Yolo));
    assert!(
        err.contains("yolov5_nhwc_dyn.onnx")
            && err.contains("declared [unk__0, unk__1, unk__2, unk__3]")
            && err.contains("[1, 3, 640, 640]")
            && err.contains("[1, 640, 640, 3]")
            && err.contains("detector.input_size"),
        "{err}"
    );
}

#[test]
fn broken_model_files_are_clear_errors() {
    let dir = tempfile::tempdir().expect("dir");
    let not_onnx = dir.path().join("notes.onnx");
    std::fs::write(&not_onnx, "this is not a model").expect("write");
    let truncated = dir.path().join("truncated.onnx");
    let bytes = std::fs::read(root().join("models/yolox_nano.onnx")).expect("model");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    for (path, what) in [
        (not_onnx, "notes.onnx"),
        (truncated, "truncated.onnx"),
        (dir.path().join("absent.onnx"), "no such file"),
    ] {
        let mut c = config("models/yolox_nano.onnx", Layout::Yolox);
        c.model = path;
        let err = load_err(&c);
        assert!(err.contains(what) && err.contains("detector.model"), "{err}");
    }
}

#[test]
fn a_missing_runtime_library_says_where_it_looked_and_what_it_needs() {
    let mut c = config("models/yolox_nano.onnx", Layout::Yolox);
    c.onnxruntime = PathBuf::from("/opt/nowhere/libonnxruntime.so");
    let err = load_err(&c);
    assert!(
        err.contains("/opt/nowhere/libonnxruntime.so") && err.contains("1.31") && err.contains("detector.onnxruntime"),
        "{err}"
    );
}

#[test]
fn an_unavailable_provider_is_an_error_not_a_silent_cpu_fallback() {
    let mut c = config("models/yolox_nano.onnx", Layout::Yolox);
    c.provider = Provider::Cuda;
    let err = load_err(&c);
    assert!(err.contains("\"cuda\"") && err.contains("detector.provider"), "{err}");
    // An unknown provider is caught with the config.
    let err = Config::parse("[detector]\nprovider = \"tpu\"\n", "site.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("site.toml") && err.contains("provider") && err.contains("cuda"),
        "{err}"
    );
}
