"""Builds the small ONNX models that tests/detector.rs checks each layout's decoder with.

Each model ignores its input's values and returns planted outputs, so the detections the decoder
must find are known exactly (see the comments, and the expectations in tests/detector.rs).
Each layout also has a twin with symbolic dimensions (`*_dyn.onnx`), as tf2onnx, `torch.onnx.export`
with dynamic axes and Ultralytics with `dynamic=True` export them: the same planted outputs, declared
with named or unnamed symbolic sizes on the input and outputs, so the detector must find the real
shapes by running the model at start-up.
Run with the tools environment:  $(scripts/pytools.sh) tests/tools/make_layout_models.py
"""
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = os.path.join(os.path.dirname(__file__), "..", "data", "models")
OPSET = 13


def constant_model(name, input_name, input_type, input_shape, outputs, output_shapes=None, nhwc_side=None):
    """A graph whose outputs are constants plus 0 x mean(input), so the input is really consumed.

    Shapes are lists of sizes, symbol names (symbolic, named) and None (symbolic, unnamed);
    `output_shapes` declares the outputs' shapes (default: the constants' own, static). With it, each
    output is reshaped to its shape plus 0 x mean(input), so that, as in a real model, its size
    depends on the input and ONNX Runtime's shape inference cannot make it static.
    With `nhwc_side`, the input goes NHWC -> NCHW into a convolution over 3 channels and is then
    reshaped to that side: the model runs only on an NHWC input of that size, as TensorFlow's do.
    """
    nodes = []
    initializers = [numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")]
    src = input_name
    if input_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [input_name], ["input_f"], to=TensorProto.FLOAT))
        src = "input_f"
    if nhwc_side is not None:
        initializers.append(numpy_helper.from_array(np.zeros((1, 3, 1, 1), dtype=np.float32), "conv_w"))
        initializers.append(numpy_helper.from_array(np.array([1, nhwc_side, nhwc_side], dtype=np.int64), "side"))
        nodes.append(helper.make_node("Transpose", [src], ["nchw"], perm=[0, 3, 1, 2]))
        nodes.append(helper.make_node("Conv", ["nchw", "conv_w"], ["conv"]))
        nodes.append(helper.make_node("Reshape", ["conv", "side"], ["square"]))
        src = "square"
    nodes.append(helper.make_node("ReduceMean", [src], ["mean"], keepdims=0))
    nodes.append(helper.make_node("Mul", ["mean", "zero"], ["nothing"]))
    graph_outputs = []
    for i, (out_name, value) in enumerate(outputs):
        value = np.asarray(value, dtype=np.float32)
        initializers.append(numpy_helper.from_array(value, out_name + "_value"))
        if output_shapes is None:
            nodes.append(helper.make_node("Add", [out_name + "_value", "nothing"], [out_name]))
            shape = list(value.shape)
        else:
            if i == 0:
                nodes.append(helper.make_node("Cast", ["nothing"], ["nothing_i64"], to=TensorProto.INT64))
            initializers.append(numpy_helper.from_array(np.array(value.shape, dtype=np.int64), out_name + "_shape"))
            nodes.append(helper.make_node("Add", [out_name + "_shape", "nothing_i64"], [out_name + "_dims"]))
            nodes.append(helper.make_node("Add", [out_name + "_value", "nothing"], [out_name + "_flat"]))
            nodes.append(helper.make_node("Reshape", [out_name + "_flat", out_name + "_dims"], [out_name]))
            shape = output_shapes[i]
        graph_outputs.append(helper.make_tensor_value_info(out_name, TensorProto.FLOAT, shape))
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
    # torch.onnx.export with dynamic axes: batch, height and width of the input, every output axis, named.
    constant_model(
        "yolox_dyn",
        "images",
        TensorProto.FLOAT,
        ["batch", 3, "height", "width"],
        [("output", out)],
        [["batch", "anchors", "outputs"]],
    )


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
    # Symbolic on every axis, the channels of the input too, and unnamed on the output: neither the
    # input's layout nor v8 against v5 can be told from the declared shapes.
    constant_model(
        "yolov8_dyn",
        "images",
        TensorProto.FLOAT,
        ["batch", "channels", "height", "width"],
        [("output0", out)],
        [[None, None, None]],
    )


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
    # Ultralytics with dynamic=True, but the output's last axis symbolic too.
    constant_model(
        "yolov5_dyn",
        "images",
        TensorProto.FLOAT,
        ["batch", 3, "height", "width"],
        [("output0", out)],
        [["batch", "boxes", "values"]],
    )
    # Every axis of the input symbolic, but only NHWC of 64x64 runs: the detector must try NCHW (the
    # likelier for float) and then NHWC.
    constant_model(
        "yolov5_nhwc_dyn",
        "input_1",
        TensorProto.FLOAT,
        ["unk__0", "unk__1", "unk__2", "unk__3"],
        [("output0", out)],
        [["unk__4", "unk__5", "unk__6"]],
        nhwc_side=64,
    )


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
    # As tf2onnx exports a TensorFlow 2 Object Detection API model: image_tensor [-1, -1, -1, 3] of any
    # size, every output axis symbolic ("unk__N"), and the signature's outputs in alphabetical order,
    # where detection_multiclass_scores comes before detection_scores and raw_detection_boxes is no box.
    multiclass = np.zeros((1, 3, 91), dtype=np.float32)
    raw_boxes = np.full((1, 5, 4), 0.5, dtype=np.float32)
    raw_scores = np.zeros((1, 5, 91), dtype=np.float32)
    anchors = np.array([[7, 3, 1]], dtype=np.float32)
    unk = iter(f"unk__{i}" for i in range(100))
    constant_model(
        "ssd_dyn",
        "image_tensor",
        TensorProto.UINT8,
        [next(unk), next(unk), next(unk), 3],
        [
            ("detection_anchor_indices", anchors),
            ("detection_boxes", boxes),
            ("detection_classes", classes),
            ("detection_multiclass_scores", multiclass),
            ("detection_scores", scores),
            ("num_detections", count),
            ("raw_detection_boxes", raw_boxes),
            ("raw_detection_scores", raw_scores),
        ],
        [[next(unk) for _ in v.shape] for v in (anchors, boxes, classes, multiclass, scores, count, raw_boxes, raw_scores)],
    )


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    for make in (yolox, yolov8, yolov8_custom_labels, yolov5, ssd):
        make()
    print("written to", os.path.abspath(OUT))
