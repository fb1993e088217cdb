//! The evidence image: the frame that best shows why, with the detections drawn on it.

use image::codecs::jpeg::JpegEncoder;
use image::{Rgb, RgbImage};
use imageproc::drawing::draw_hollow_rect_mut;
use imageproc::rect::Rect;

use crate::config::EvidenceConfig;
use crate::detect::Detection;

const CAUSE_COLOUR: Rgb<u8> = Rgb([255, 40, 40]);
const OTHER_COLOUR: Rgb<u8> = Rgb([255, 210, 0]);

#[derive(Debug, thiserror::Error)]
#[error("cannot encode the evidence JPEG: {0}")]
pub struct EvidenceError(String);

/// Draws `detections` (causes in red, the rest in yellow) and encodes a JPEG no larger than configured.
pub fn render(
    frame: &RgbImage,
    detections: &[Detection],
    is_cause: impl Fn(&Detection) -> bool,
    config: &EvidenceConfig,
) -> Result<Vec<u8>, EvidenceError> {
    let (w, h) = frame.dimensions();
    let scale = (config.max_size as f32 / w.max(h) as f32).min(1.0);
    let mut image = if scale < 1.0 {
        let (nw, nh) = (((w as f32 * scale) as u32).max(1), ((h as f32 * scale) as u32).max(1));
        image::imageops::resize(frame, nw, nh, image::imageops::FilterType::Triangle)
    } else {
        frame.clone()
    };
    let thickness = (image.width().max(image.height()) / 400).max(2) as i32;
    // Others first, so causes are drawn on top.
    let (causes, others): (Vec<&Detection>, Vec<&Detection>) = detections.iter().partition(|d| is_cause(d));
    for (d, colour) in others.iter().map(|d| (d, OTHER_COLOUR)).chain(causes.iter().map(|d| (d, CAUSE_COLOUR))) {
        for t in 0..thickness {
            let x = (d.bbox.x * scale) as i32 - t;
            let y = (d.bbox.y * scale) as i32 - t;
            let rw = ((d.bbox.w * scale) as i32 + 2 * t).max(1) as u32;
            let rh = ((d.bbox.h * scale) as i32 + 2 * t).max(1) as u32;
            draw_hollow_rect_mut(&mut image, Rect::at(x, y).of_size(rw, rh), colour);
        }
    }
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, config.quality)
        .encode_image(&image)
        .map_err(|e| EvidenceError(e.to_string()))?;
    Ok(jpeg)
}
