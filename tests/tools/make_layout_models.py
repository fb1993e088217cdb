"""Builds the small ONNX models that tests/detector.rs checks each layout's decoder with.

Each model ignores its input's values and returns planted outputs, so the detections the decoder
must find are known exactly (see the comments, and the expectations in tests/detector.rs).
Run with the tools environment:  $(scripts/pytools.sh) tests/tools/make_layout_models.py
"""
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = os.path.join(os.path.dirname(__file__), "..", "data", "models")
OPSET = 13


def constant_model(name, input_name, input_type, input_shape, outputs):
    """A graph whose outputs are constants plus 0 x mean(input), so the input is really consumed."""
    nodes = []
    src = input_name
    if input_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [input_name], ["input_f"], to=TensorProto.FLOAT))
        src = "input_f"
    nodes.append(helper.make_node("ReduceMean", [src], ["mean"], keepdims=0))
    nodes.append(helper.make_node("Mul", ["mean", "zero"], ["nothing"]))
    initializers = [numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")]
    graph_outputs = []
    for out_name, value in outputs:
        value = np.asarray(value, dtype=np.float32)
        initializers.append(numpy_helper.from_array(value, out_name + "_value"))
        nodes.append(helper.make_node("Add", [out_name + "_value", "nothing"], [out_name]))
        graph_outputs.append(helper.make_tensor_value_info(out_name, TensorProto.FLOAT, list(value.shape)))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(input_name, input_type, input_shape)],
        graph_outputs,
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="alarm-verifier tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(OUT, name + ".onnx"))


def yolox():
    # Input 64x64: grids 8x8, 4x4, 2x2 = 84 rows of 5 + 80 COCO classes.
    out = np.zeros((1, 84, 85), dtype=np.float32)
    out[:, :, 4] = 0.01
    # Stride 16, cell (x=1, y=2) -> row 64 + 2*4 + 1 = 73: person at cx 24, cy 40, w 16, h 32, score 0.9*0.8.
    out[0, 73, :5] = [0.5, 0.5, 0.0, np.log(2.0), 0.9]
    out[0, 73, 5 + 0] = 0.8
    # Stride 8, cell (x=3, y=5) -> row 43: the same person, weaker -> removed by NMS.
    out[0, 43, :5] = [0.0, 0.0, np.log(2.0), np.log(4.0), 0.9]
    out[0, 43, 5 + 0] = 0.5
    # Stride 32, cell (1, 1) -> row 83: a car (class 2) at cx 48, cy 48, w 32, h 16, score 0.7.
    out[0, 83, :5] = [0.5, 0.5, 0.0, np.log(0.5), 1.0]
    out[0, 83, 5 + 2] = 0.7
    constant_model("yolox_64", "images", TensorProto.FLOAT, [1, 3, 64, 64], [("output", out)])


def yolov8():
    # [1, 4 + 80, 3]: columns cx, cy, w, h, class scores.
    out = np.zeros((1, 84, 3), dtype=np.float32)
    out[0, :4, 0] = [32, 32, 20, 10]
    out[0, 4 + 2, 0] = 0.9  # car
    out[0, :4, 1] = [5, 5, 2, 2]
    out[0, 4 + 0, 1] = 0.1  # below threshold
    out[0, :4, 2] = [10, 40, 8, 16]
    out[0, 4 + 0, 2] = 0.6  # person
    constant_model("yolov8_64", "images", TensorProto.FLOAT, [1, 3, 64, 64], [("output0", out)])


def yolov8_custom_labels():
    # Two classes of the user's own, named by a labels file: [1, 4 + 2, 2].
    out = np.zeros((1, 6, 2), dtype=np.float32)
    out[0, :, 0] = [16, 16, 8, 8, 0.2, 0.95]  # class 1
    out[0, :, 1] = [48, 48, 8, 8, 0.7, 0.1]  # class 0
    constant_model("yolov8_2class_64", "images", TensorProto.FLOAT, [1, 3, 64, 64], [("output0", out)])


def yolov5():
    # [1, 3, 5 + 80]: rows cx, cy, w, h, objectness, class scores.
    out = np.zeros((1, 3, 85), dtype=np.float32)
    out[0, 0, :5] = [32, 32, 20, 10, 0.9]
    out[0, 0, 5 + 7] = 0.9  # truck, score 0.81
    out[0, 1, :5] = [10, 10, 4, 4, 0.1]
    out[0, 1, 5 + 0] = 0.9  # objectness too low
    constant_model("yolov5_64", "images", TensorProto.FLOAT, [1, 3, 64, 64], [("output0", out)])


def ssd():
    # TensorFlow Object Detection API style: uint8 NHWC input, NMS done, COCO 91-numbering ids.
    boxes = np.array([[[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.5, 0.25], [0.1, 0.1, 0.2, 0.2]]], dtype=np.float32)
    scores = np.array([[0.85, 0.6, 0.99]], dtype=np.float32)
    classes = np.array([[1, 3, 18]], dtype=np.float32)  # person, car, dog (beyond the count)
    count = np.array([2], dtype=np.float32)
    constant_model(
        "ssd_64",
        "image_tensor",
        TensorProto.UINT8,
        [1, 64, 64, 3],
        [("detection_boxes", boxes), ("detection_scores", scores), ("detection_classes", classes), ("num_detections", count)],
    )


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    for make in (yolox, yolov8, yolov8_custom_labels, yolov5, ssd):
        make()
    print("written to", os.path.abspath(OUT))
