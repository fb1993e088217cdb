"""The ONNX Runtime side of `alarm-verifier bench`: times session.run on the very input tensor the
Rust detector built, with the same thread count. Prints one JSON line.

Usage: python bench_ort.py MODEL INPUT.f32 SHAPE THREADS RUNS   (SHAPE like 1,3,416,416)
"""
import json
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort


def main():
    model, input_path, shape, threads, runs = sys.argv[1:6]
    shape = tuple(int(d) for d in shape.split(","))
    tensor = np.fromfile(input_path, dtype=np.float32).reshape(shape)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: tensor}
    for _ in range(5):
        sess.run(None, feed)
    times = []
    for _ in range(int(runs)):
        start = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - start) * 1000.0)
    print(json.dumps({"median_ms": statistics.median(times), "min_ms": min(times), "onnxruntime": ort.__version__}))


if __name__ == "__main__":
    main()
