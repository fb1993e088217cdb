//! Model outputs → candidate boxes in model-input pixels, one decoder per layout.

use super::BoxPx;

/// A detection before NMS and before mapping back to the frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub class_id: usize,
    pub score: f32,
    pub bbox: BoxPx,
}

const YOLOX_STRIDES: [usize; 3] = [8, 16, 32];

/// Rows of a YOLOX output for an input of `width` x `height`.
pub fn yolox_rows(width: usize, height: usize) -> usize {
    YOLOX_STRIDES.iter().map(|s| (width / s) * (height / s)).sum()
}

fn best_class(scores: impl Iterator<Item = f32>) -> (usize, f32) {
    scores
        .enumerate()
        .fold((0, f32::MIN), |best, cur| if cur.1 > best.1 { cur } else { best })
}

fn centre_box(cx: f32, cy: f32, w: f32, h: f32) -> BoxPx {
    BoxPx {
        x: cx - w / 2.0,
        y: cy - h / 2.0,
        w,
        h,
    }
}

/// YOLOX raw grid output, rows `cx, cy, w, h, objectness, class scores...` relative to grid cells.
pub fn yolox(data: &[f32], width: usize, height: usize, classes: usize, threshold: f32) -> Vec<Candidate> {
    let row_len = 5 + classes;
    let mut out = Vec::new();
    let mut rows = data.chunks_exact(row_len);
    for stride in YOLOX_STRIDES {
        let (gw, gh) = (width / stride, height / stride);
        for gy in 0..gh {
            for gx in 0..gw {
                let Some(r) = rows.next() else {
                    return out;
                };
                // score = objectness * class score can only be lower than objectness.
                if r[4] < threshold {
                    continue;
                }
                let (class_id, class_score) = best_class(r[5..].iter().copied());
                let score = r[4] * class_score;
                if score < threshold {
                    continue;
                }
                let s = stride as f32;
                let bbox = centre_box(
                    (r[0] + gx as f32) * s,
                    (r[1] + gy as f32) * s,
                    r[2].exp() * s,
                    r[3].exp() * s,
                );
                out.push(Candidate { class_id, score, bbox });
            }
        }
    }
    out
}

/// Ultralytics YOLOv5: `[1, N, 5 + classes]`, rows `cx, cy, w, h, objectness, class scores...` in input pixels.
pub fn yolo_v5(data: &[f32], classes: usize, threshold: f32) -> Vec<Candidate> {
    data.chunks_exact(5 + classes)
        .filter(|r| r[4] >= threshold)
        .filter_map(|r| {
            let (class_id, class_score) = best_class(r[5..].iter().copied());
            let score = r[4] * class_score;
            (score >= threshold).then(|| Candidate {
                class_id,
                score,
                bbox: centre_box(r[0], r[1], r[2], r[3]),
            })
        })
        .collect()
}

/// Ultralytics YOLOv8/v11: `[1, 4 + classes, N]`, columns `cx, cy, w, h, class scores...` in input pixels.
/// N is taken from the data itself, so a model whose N varies at run time cannot index out of it.
pub fn yolo_v8(data: &[f32], classes: usize, threshold: f32) -> Vec<Candidate> {
    let anchors = data.len() / (4 + classes);
    let at = |row: usize, i: usize| data[row * anchors + i];
    (0..anchors)
        .filter_map(|i| {
            let (class_id, score) = best_class((0..classes).map(|c| at(4 + c, i)));
            (score >= threshold).then(|| Candidate {
                class_id,
                score,
                bbox: centre_box(at(0, i), at(1, i), at(2, i), at(3, i)),
            })
        })
        .collect()
}

/// SSD with NMS in the graph: boxes `[ymin, xmin, ymax, xmax]` normalised to the input, scores,
/// class ids (as floats) and the count of valid rows.
pub fn ssd(
    boxes: &[f32],
    scores: &[f32],
    classes: &[f32],
    count: usize,
    width: usize,
    height: usize,
    threshold: f32,
) -> Vec<Candidate> {
    let (w, h) = (width as f32, height as f32);
    (0..count.min(scores.len()).min(classes.len()).min(boxes.len() / 4))
        .filter(|&i| scores[i] >= threshold && classes[i] >= 0.0)
        .map(|i| {
            let b = &boxes[i * 4..i * 4 + 4];
            Candidate {
                class_id: classes[i].round() as usize,
                score: scores[i],
                bbox: BoxPx {
                    x: b[1] * w,
                    y: b[0] * h,
                    w: (b[3] - b[1]) * w,
                    h: (b[2] - b[0]) * h,
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yolox_decode_places_a_cell_on_its_grid() {
        // Input 64: grids 8x8, 4x4, 2x2 = 84 rows, 2 classes.
        assert_eq!(yolox_rows(64, 64), 84);
        let mut out = vec![0.0f32; 84 * 7];
        // Row for stride 16, cell (x=1, y=2): offset 64 + 2*4 + 1 = 73.
        let r = &mut out[73 * 7..74 * 7];
        r.copy_from_slice(&[0.5, 0.5, 0.0, (2.0f32).ln(), 0.9, 0.0, 0.8]);
        let dets = yolox(&out, 64, 64, 2, 0.25);
        assert_eq!(dets.len(), 1);
        assert_eq!(dets[0].class_id, 1);
        assert!((dets[0].score - 0.72).abs() < 1e-6);
        // cx = (0.5 + 1) * 16 = 24, cy = (0.5 + 2) * 16 = 40, w = 16, h = 32.
        assert_eq!(
            dets[0].bbox,
            BoxPx {
                x: 16.0,
                y: 24.0,
                w: 16.0,
                h: 32.0
            }
        );
    }

    #[test]
    fn yolo_v8_reads_columns() {
        // 2 classes, 3 anchors: rows cx, cy, w, h, c0, c1.
        let data = [
            10.0, 20.0, 30.0, // cx
            10.0, 20.0, 30.0, // cy
            4.0, 4.0, 4.0, // w
            6.0, 6.0, 6.0, // h
            0.1, 0.9, 0.2, // class 0
            0.3, 0.1, 0.7, // class 1
        ];
        let dets = yolo_v8(&data, 2, 0.5);
        let got: Vec<(usize, f32, f32)> = dets.iter().map(|d| (d.class_id, d.score, d.bbox.x)).collect();
        assert_eq!(got, vec![(0, 0.9, 18.0), (1, 0.7, 28.0)]);
    }

    #[test]
    fn yolo_v5_multiplies_objectness() {
        let data = [50.0, 50.0, 10.0, 20.0, 0.8, 0.5, 1.0, 5.0, 5.0, 1.0, 1.0, 0.1, 0.9, 0.9];
        let dets = yolo_v5(&data, 2, 0.3);
        assert_eq!(dets.len(), 1);
        assert_eq!(dets[0].class_id, 1);
        assert!((dets[0].score - 0.8).abs() < 1e-6);
        assert_eq!(
            dets[0].bbox,
            BoxPx {
                x: 45.0,
                y: 40.0,
                w: 10.0,
                h: 20.0
            }
        );
    }

    #[test]
    fn ssd_respects_count_and_threshold() {
        let boxes = [0.1, 0.2, 0.5, 0.6, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.5, 0.5];
        let scores = [0.9, 0.2, 0.95];
        let classes = [1.0, 3.0, 8.0];
        let dets = ssd(&boxes, &scores, &classes, 2, 100, 50, 0.5);
        assert_eq!(dets.len(), 1, "the third row is beyond the count");
        assert_eq!(dets[0].class_id, 1);
        let b = dets[0].bbox;
        assert!(
            (b.x - 20.0).abs() < 1e-4
                && (b.y - 5.0).abs() < 1e-4
                && (b.w - 40.0).abs() < 1e-4
                && (b.h - 20.0).abs() < 1e-4,
            "{b:?}"
        );
    }
}
