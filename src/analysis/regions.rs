//! Regions: squares of the full-resolution frame worth a closer look, so that a far person reaches
//! the model at native scale instead of shrunk with the whole frame (a 1920×1080 frame is shrunk
//! 4.6 times into a 416×416 input; a person 60 px tall becomes 13 px, too small for the model).
//!
//! Two things make a region: where the picture changed since the previous analysed frame (found on
//! a small grey copy, with global changes such as a light or an IR switch ignored), and where
//! target objects were seen in the frames before. Each becomes a square of at least the model's
//! input side, slid (not clipped) to stay inside the frame; overlapping squares merge; the number
//! per frame is bounded. Detections from regions are merged with the whole-frame pass in frame
//! coordinates, and a box cut by a region's inner edge gives way to a whole one.

use fast_image_resize as fr;
use image::RgbImage;

use crate::analysis::detect::{BoxPx, Detection, nms_per_class_by};

/// Width of the grey copy motion is found on.
const MOTION_WIDTH: u32 = 320;
/// A pixel of the grey copy changed when it differs by more than this (0-255) from the previous
/// frame, after the frame's mean change (a global brightness shift) is taken out.
const PIXEL_CHANGE: i16 = 24;
/// Side of the cells changed pixels are counted in, in grey-copy pixels.
const CELL: u32 = 8;
/// A cell has moved when this many of its pixels changed.
const CELL_PIXELS: u32 = 6;
/// More of the frame than this changing at once is a global change (lights, IR mode), not motion.
const GLOBAL_CHANGE: f32 = 0.35;
/// Squares overlapping by this share of the smaller one are merged into one.
const MERGE_OVERLAP: f32 = 0.25;
/// A box within this many pixels of a region's inner edge was cut by it.
const EDGE: f32 = 2.0;

/// A square of the frame, in its pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub x: u32,
    pub y: u32,
    pub side: u32,
}

impl Region {
    pub fn as_box(&self) -> BoxPx {
        BoxPx {
            x: self.x as f32,
            y: self.y as f32,
            w: self.side as f32,
            h: self.side as f32,
        }
    }

    fn overlap_share(&self, other: &Region) -> f32 {
        let (a, b) = (self.as_box(), other.as_box());
        let w = (a.x + a.w).min(b.x + b.w) - a.x.max(b.x);
        let h = (a.y + a.h).min(b.y + b.h) - a.y.max(b.y);
        if w <= 0.0 || h <= 0.0 {
            return 0.0;
        }
        w * h / a.area().min(b.area()).max(1.0)
    }
}

/// Whether frames of this size are worth regions: when the whole-frame pass shrinks them more than
/// twice into the model's input.
pub fn worth_regions((w, h): (u32, u32), input_side: u32) -> bool {
    w.max(h) > 2 * input_side
}

/// The square of side at least `side` around `area`, slid inside a frame of `(w, h)`.
fn square_around(area: &BoxPx, side: u32, (w, h): (u32, u32)) -> Region {
    let side = side.max(area.w.ceil() as u32).max(area.h.ceil() as u32).min(w.min(h));
    let (cx, cy) = (area.x + area.w / 2.0, area.y + area.h / 2.0);
    let slide = |centre: f32, limit: u32| -> u32 {
        let start = (centre - side as f32 / 2.0).round().max(0.0) as u32;
        start.min(limit.saturating_sub(side))
    };
    Region {
        x: slide(cx, w),
        y: slide(cy, h),
        side,
    }
}

/// Squares of at least `side` around `areas` (most important first), slid inside the frame, merged
/// where they overlap, at most `max` of them.
pub fn build(areas: &[BoxPx], side: u32, frame: (u32, u32), max: usize) -> Vec<Region> {
    let mut regions: Vec<Region> = Vec::new();
    for area in areas {
        let mut square = square_around(area, side, frame);
        // Merge with every square it overlaps, growing as needed, until it overlaps none.
        while let Some(i) = regions.iter().position(|r| r.overlap_share(&square) >= MERGE_OVERLAP) {
            let other = regions.remove(i);
            let (a, b) = (square.as_box(), other.as_box());
            let (x0, y0) = (a.x.min(b.x), a.y.min(b.y));
            let union = BoxPx {
                x: x0,
                y: y0,
                w: (a.x + a.w).max(b.x + b.w) - x0,
                h: (a.y + a.h).max(b.y + b.h) - y0,
            };
            square = square_around(&union, side, frame);
        }
        regions.push(square);
    }
    regions.truncate(max);
    regions
}

/// Finds where the picture changes between the frames it is shown.
#[derive(Default)]
pub struct Motion {
    previous: Option<(u32, u32, Vec<u8>)>,
}

impl Motion {
    /// Boxes (in `frame`'s pixels) around what changed since the previous frame shown, largest
    /// first; none for the first frame, or when most of the picture changed at once.
    pub fn changes(&mut self, frame: &RgbImage) -> Vec<BoxPx> {
        let Some((gw, gh, grey)) = grey_copy(frame) else {
            return Vec::new();
        };
        let previous = self.previous.replace((gw, gh, grey));
        let (Some((pw, ph, before)), Some((_, _, now))) = (previous, self.previous.as_ref()) else {
            return Vec::new();
        };
        if (pw, ph) != (gw, gh) {
            return Vec::new();
        }
        let diff: Vec<i16> = now.iter().zip(&before).map(|(a, b)| *a as i16 - *b as i16).collect();
        let mean = diff.iter().map(|d| *d as i64).sum::<i64>() / diff.len().max(1) as i64;
        let changed: Vec<bool> = diff.iter().map(|d| (d - mean as i16).abs() > PIXEL_CHANGE).collect();
        if changed.iter().filter(|c| **c).count() as f32 > GLOBAL_CHANGE * changed.len() as f32 {
            return Vec::new();
        }
        let (cw, ch) = (gw.div_ceil(CELL), gh.div_ceil(CELL));
        let mut counts = vec![0u32; (cw * ch) as usize];
        for (i, _) in changed.iter().enumerate().filter(|(_, c)| **c) {
            let (x, y) = (i as u32 % gw, i as u32 / gw);
            counts[((y / CELL) * cw + x / CELL) as usize] += 1;
        }
        let mut cells: Vec<bool> = counts.iter().map(|n| *n >= CELL_PIXELS).collect();
        let scale = frame.width() as f32 / gw as f32;
        let mut boxes: Vec<BoxPx> = connected_cells(&mut cells, cw, ch)
            .into_iter()
            .map(|(x0, y0, x1, y1)| BoxPx {
                x: (x0 * CELL) as f32 * scale,
                y: (y0 * CELL) as f32 * scale,
                w: ((x1 + 1 - x0) * CELL) as f32 * scale,
                h: ((y1 + 1 - y0) * CELL) as f32 * scale,
            })
            .collect();
        boxes.sort_by(|a, b| b.area().total_cmp(&a.area()));
        boxes
    }
}

/// A small grey copy of the frame, `MOTION_WIDTH` wide.
fn grey_copy(frame: &RgbImage) -> Option<(u32, u32, Vec<u8>)> {
    let (w, h) = frame.dimensions();
    if w == 0 || h == 0 {
        return None;
    }
    let gw = MOTION_WIDTH.min(w);
    let gh = ((h as u64 * gw as u64) / w as u64).max(1) as u32;
    let src = fr::images::ImageRef::new(w, h, frame.as_raw(), fr::PixelType::U8x3).ok()?;
    let mut dst = fr::images::Image::new(gw, gh, fr::PixelType::U8x3);
    fr::Resizer::new()
        .resize(
            &src,
            &mut dst,
            &fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Box)),
        )
        .ok()?;
    let grey = dst
        .buffer()
        .chunks_exact(3)
        .map(|p| ((p[0] as u16 * 77 + p[1] as u16 * 150 + p[2] as u16 * 29) >> 8) as u8)
        .collect();
    Some((gw, gh, grey))
}

/// Bounding boxes (in cells, inclusive) of the 8-connected groups of set cells; clears them.
fn connected_cells(cells: &mut [bool], cw: u32, ch: u32) -> Vec<(u32, u32, u32, u32)> {
    let mut groups = Vec::new();
    for start in 0..cells.len() {
        if !cells[start] {
            continue;
        }
        cells[start] = false;
        let mut stack = vec![start];
        let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
        while let Some(i) = stack.pop() {
            let (x, y) = (i as u32 % cw, i as u32 / cw);
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                    if nx < 0 || ny < 0 || nx >= cw as i64 || ny >= ch as i64 {
                        continue;
                    }
                    let n = (ny as u32 * cw + nx as u32) as usize;
                    if cells[n] {
                        cells[n] = false;
                        stack.push(n);
                    }
                }
            }
        }
        groups.push((x0, y0, x1, y1));
    }
    groups
}

/// Region detections in frame coordinates, without those cut by the region's edge where the frame
/// goes on beyond it (the whole object is then in another pass).
pub fn to_frame(region: &Region, detections: Vec<Detection>, frame: (u32, u32)) -> Vec<Detection> {
    let (x0, y0) = (region.x as f32, region.y as f32);
    let (x1, y1) = (x0 + region.side as f32, y0 + region.side as f32);
    detections
        .into_iter()
        .map(|mut d| {
            d.bbox.x += x0;
            d.bbox.y += y0;
            d
        })
        .filter(|d| {
            let b = &d.bbox;
            let cut_left = region.x > 0 && b.x <= x0 + EDGE;
            let cut_top = region.y > 0 && b.y <= y0 + EDGE;
            let cut_right = (x1 as u32) < frame.0 && b.x + b.w >= x1 - EDGE;
            let cut_bottom = (y1 as u32) < frame.1 && b.y + b.h >= y1 - EDGE;
            !(cut_left || cut_top || cut_right || cut_bottom)
        })
        .collect()
}

/// Merges the whole-frame pass with the region passes (each detection with the region it came
/// from), keeping the strongest of boxes of one class that overlap by more than `iou`.
pub fn merge(passes: Vec<(Option<usize>, Detection)>, iou: f32) -> Vec<(Option<usize>, Detection)> {
    nms_per_class_by(passes, |(_, d)| d, iou)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(x: f32, y: f32, w: f32, h: f32) -> BoxPx {
        BoxPx { x, y, w, h }
    }

    #[test]
    fn regions_are_squares_of_at_least_the_input_side_slid_inside_the_frame() {
        let frame = (1920, 1080);
        let regions = build(&[b(1900.0, 1060.0, 10.0, 10.0), b(0.0, 0.0, 20.0, 40.0)], 416, frame, 8);
        assert_eq!(regions.len(), 2);
        for r in &regions {
            assert_eq!(r.side, 416);
            assert!(r.x + r.side <= 1920 && r.y + r.side <= 1080, "{r:?} leaves the frame");
        }
        assert_eq!(
            regions[0],
            Region {
                x: 1920 - 416,
                y: 1080 - 416,
                side: 416
            }
        );
        assert_eq!(regions[1], Region { x: 0, y: 0, side: 416 });
        // A large area gets a square big enough to hold it.
        let big = build(&[b(100.0, 100.0, 600.0, 300.0)], 416, frame, 8);
        assert_eq!(big[0].side, 600);
    }

    #[test]
    fn overlapping_regions_merge_and_their_number_is_bounded() {
        let frame = (1920, 1080);
        let merged = build(
            &[b(500.0, 500.0, 20.0, 40.0), b(560.0, 520.0, 20.0, 40.0)],
            416,
            frame,
            8,
        );
        assert_eq!(merged.len(), 1, "{merged:?}");
        assert!(merged[0].side >= 416);
        let apart: Vec<BoxPx> = (0..6).map(|i| b(i as f32 * 320.0, 500.0, 20.0, 40.0)).collect();
        let bounded = build(&apart, 416, frame, 3);
        assert_eq!(bounded.len(), 3);
    }

    #[test]
    fn motion_is_found_where_something_moved_and_not_in_a_global_change() {
        let still = RgbImage::from_pixel(1920, 1080, image::Rgb([90, 100, 110]));
        let mut moved = still.clone();
        for y in 600..680 {
            for x in 1200..1230 {
                moved.put_pixel(x, y, image::Rgb([170, 160, 150]));
            }
        }
        let mut motion = Motion::default();
        assert!(
            motion.changes(&still).is_empty(),
            "nothing to compare the first frame with"
        );
        let boxes = motion.changes(&moved);
        assert_eq!(boxes.len(), 1, "{boxes:?}");
        let m = boxes[0];
        // Cells are 48 px of the frame: the box holds the patch's centre and is not much larger.
        assert!(
            m.x <= 1215.0 && m.x + m.w >= 1215.0 && m.y <= 640.0 && m.y + m.h >= 640.0,
            "{m:?}"
        );
        assert!(m.w <= 30.0 + 2.0 * 48.0 && m.h <= 80.0 + 2.0 * 48.0, "{m:?}");
        // Lights on: every pixel brighter by the same amount is no motion.
        let brighter = RgbImage::from_fn(1920, 1080, |x, y| {
            let p = moved.get_pixel(x, y);
            image::Rgb([
                p[0].saturating_add(60),
                p[1].saturating_add(60),
                p[2].saturating_add(60),
            ])
        });
        let lit = motion.changes(&brighter);
        assert!(lit.is_empty(), "a global change was taken for motion: {lit:?}");
    }

    #[test]
    fn a_box_cut_by_a_regions_inner_edge_is_dropped() {
        let region = Region {
            x: 400,
            y: 0,
            side: 416,
        };
        let d = |x: f32| Detection {
            class_id: 0,
            label: "person".into(),
            score: 0.8,
            bbox: b(x, 100.0, 30.0, 60.0),
        };
        let kept = to_frame(&region, vec![d(0.0), d(100.0), d(386.0)], (1920, 1080));
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(kept[0].bbox.x, 500.0);
    }
}
