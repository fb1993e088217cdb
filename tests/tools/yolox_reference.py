"""The YOLOX reference for tests/detector.rs: Python ONNX Runtime with YOLOX's own preprocessing
(cv2.resize INTER_LINEAR, top-left letterbox, grey 114, BGR) and decoding (demo_postprocess), then
per-class NMS (YOLOX's `nms`, IoU 0.45) on the best class of each row, score threshold 0.25.

The frame is the first frame of testdata/vtest.avi, decoded by GStreamer exactly as the service
decodes it (decodebin ! videoconvert ! RGB). Writes tests/data/yolox_reference.json.
Run with the tools environment:  $(scripts/pytools.sh) tests/tools/yolox_reference.py
"""
import json
import os
import subprocess

import cv2
import numpy as np
import onnxruntime as ort

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
VIDEO = os.path.join(ROOT, "testdata", "vtest.avi")
MODEL = os.path.join(ROOT, "models", "yolox_nano.onnx")
OUT = os.path.join(ROOT, "tests", "data", "yolox_reference.json")
SIZE = 416
SCORE_THR = 0.25
NMS_THR = 0.45
W, H = 768, 576


def first_frame_rgb():
    cmd = ["gst-launch-1.0", "-q", "filesrc", f"location={VIDEO}", "!", "decodebin", "!", "videoconvert", "!",
           "video/x-raw,format=RGB", "!", "fdsink", "fd=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    data = proc.stdout.read(W * H * 3)
    proc.kill()
    return np.frombuffer(data, dtype=np.uint8).reshape(H, W, 3)


def preproc(img_bgr):
    # yolox/data/data_augment.py: preproc
    padded = np.ones((SIZE, SIZE, 3), dtype=np.uint8) * 114
    r = min(SIZE / img_bgr.shape[0], SIZE / img_bgr.shape[1])
    resized = cv2.resize(img_bgr, (int(img_bgr.shape[1] * r), int(img_bgr.shape[0] * r)), interpolation=cv2.INTER_LINEAR).astype(np.uint8)
    padded[: int(img_bgr.shape[0] * r), : int(img_bgr.shape[1] * r)] = resized
    return np.ascontiguousarray(padded.transpose(2, 0, 1), dtype=np.float32), r


def demo_postprocess(outputs):
    # yolox/utils/demo_utils.py: demo_postprocess
    grids, expanded = [], []
    for stride in (8, 16, 32):
        hs, ws = SIZE // stride, SIZE // stride
        xv, yv = np.meshgrid(np.arange(ws), np.arange(hs))
        grid = np.stack((xv, yv), 2).reshape(1, -1, 2)
        grids.append(grid)
        expanded.append(np.full((*grid.shape[:2], 1), stride))
    grids = np.concatenate(grids, 1)
    expanded = np.concatenate(expanded, 1)
    outputs[..., :2] = (outputs[..., :2] + grids) * expanded
    outputs[..., 2:4] = np.exp(outputs[..., 2:4]) * expanded
    return outputs


def nms(boxes, scores, thr):
    # yolox/utils/demo_utils.py: nms (pixel areas without the +1 of older code, as in the current repo)
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1) * np.maximum(0.0, yy2 - yy1)
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thr)[0] + 1]
    return keep


def main():
    rgb = first_frame_rgb()
    inp, ratio = preproc(rgb[:, :, ::-1])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(MODEL, opts, providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: inp[None]})[0]
    pred = demo_postprocess(out)[0]
    boxes = pred[:, :4]
    scores = pred[:, 4:5] * pred[:, 5:]
    xyxy = np.stack([boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 1] - boxes[:, 3] / 2,
                     boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2], 1) / ratio
    cls = scores.argmax(1)
    best = scores[np.arange(len(cls)), cls]
    detections = []
    for c in np.unique(cls[best >= SCORE_THR]):
        idx = np.where((cls == c) & (best >= SCORE_THR))[0]
        for k in nms(xyxy[idx], best[idx], NMS_THR):
            i = idx[k]
            x1, y1, x2, y2 = (float(v) for v in xyxy[i])
            x1, x2 = max(0.0, min(W, x1)), max(0.0, min(W, x2))
            y1, y2 = max(0.0, min(H, y1)), max(0.0, min(H, y2))
            detections.append({"class_id": int(c), "score": float(best[i]), "box_xyxy": [x1, y1, x2, y2]})
    detections.sort(key=lambda d: -d["score"])
    doc = {
        "frame": "testdata/vtest.avi, first frame, 768x576",
        "model": "models/yolox_nano.onnx",
        "onnxruntime": ort.__version__,
        "score_threshold": SCORE_THR,
        "nms_iou": NMS_THR,
        "detections": detections,
    }
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=1)
    print(len(detections), "detections written to", os.path.abspath(OUT))


if __name__ == "__main__":
    main()
