//! The evidence image: the frame that best shows why, annotated for the operator.
//!
//! Causes are boxed in red, target classes that a rule ignored in orange, other objects in yellow,
//! each with its label and score. Zones are outlined in cyan with their names, masks in grey. The
//! camera and the frame's time are burnt in at the top, the verdict and its reason at the bottom.

use fast_image_resize as fr;
use font8x8::UnicodeFonts;
use image::codecs::jpeg::JpegEncoder;
use image::{Rgb, RgbImage};
use imageproc::drawing::{draw_filled_rect_mut, draw_hollow_rect_mut, draw_line_segment_mut};
use imageproc::rect::Rect;

use crate::analysis::detect::{BoxPx, Detection};
use crate::analysis::policy::Role;
use crate::config::{EvidenceConfig, Zone};

const CAUSE: Rgb<u8> = Rgb([255, 40, 40]);
const IGNORED: Rgb<u8> = Rgb([255, 150, 0]);
const OTHER: Rgb<u8> = Rgb([255, 220, 0]);
const ZONE: Rgb<u8> = Rgb([0, 220, 255]);
const MASK: Rgb<u8> = Rgb([160, 160, 160]);
const REGION: Rgb<u8> = Rgb([230, 90, 255]);
const INK: Rgb<u8> = Rgb([255, 255, 255]);
const PAPER: Rgb<u8> = Rgb([0, 0, 0]);

// The causes are shown in the text rather than as sources, so error chains print them once.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("cannot make the evidence image: {0}")]
    Buffer(fr::ImageBufferError),
    #[error("cannot make the evidence image: {0}")]
    Resize(fr::ResizeError),
    #[error("cannot make the evidence image: resized frame of the wrong size")]
    ResizedSize,
    #[error("cannot make the evidence image: {0}")]
    Encode(image::ImageError),
}

/// A frame scaled down to the evidence size, with the factor from frame to image pixels.
pub struct Scaled {
    pub image: RgbImage,
    pub scale: f32,
}

/// Scales `frame` so that its longest side is at most `max_size` (kept as is when smaller).
pub fn fit(frame: RgbImage, max_size: u32) -> Result<Scaled, EvidenceError> {
    let (w, h) = frame.dimensions();
    let scale = (max_size as f32 / w.max(h) as f32).min(1.0);
    if scale >= 1.0 {
        return Ok(Scaled {
            image: frame,
            scale: 1.0,
        });
    }
    let (nw, nh) = (((w as f32 * scale) as u32).max(1), ((h as f32 * scale) as u32).max(1));
    let src = fr::images::ImageRef::new(w, h, frame.as_raw(), fr::PixelType::U8x3).map_err(EvidenceError::Buffer)?;
    let mut dst = fr::images::Image::new(nw, nh, fr::PixelType::U8x3);
    fr::Resizer::new()
        // Bilinear interpolation: a few milliseconds for a 1080p frame, where convolution takes tens.
        .resize(
            &src,
            &mut dst,
            &fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Interpolation(fr::FilterType::Bilinear)),
        )
        .map_err(EvidenceError::Resize)?;
    let image = RgbImage::from_raw(nw, nh, dst.into_vec()).ok_or(EvidenceError::ResizedSize)?;
    Ok(Scaled { image, scale })
}

/// What goes on the image besides the frame.
pub struct Annotations<'a> {
    pub detections: &'a [(Detection, Role)],
    /// Regions of the frame detected in at full resolution where a cause was found.
    pub regions: &'a [BoxPx],
    pub zones: &'a [Zone],
    pub masks: &'a [Zone],
    /// Top line: camera and frame time.
    pub header: String,
    /// Bottom line: verdict and reason.
    pub footer: String,
}

/// Draws the annotations on the frame and encodes it as JPEG.
pub fn render(frame: &Scaled, notes: &Annotations, config: &EvidenceConfig) -> Result<Vec<u8>, EvidenceError> {
    let mut image = frame.image.clone();
    let (w, h) = image.dimensions();
    let text_scale = if w >= 960 { 2 } else { 1 };
    let thickness = (w.max(h) / 400).max(2) as i32;
    for (zone, colour) in notes
        .masks
        .iter()
        .map(|m| (m, MASK))
        .chain(notes.zones.iter().map(|z| (z, ZONE)))
    {
        outline(&mut image, &zone.points, colour);
        if colour == ZONE
            && let Some(p) = zone.points.first()
        {
            draw_text(
                &mut image,
                (p[0] * w as f32) as i32 + 2,
                (p[1] * h as f32) as i32 + 2,
                &zone.name,
                text_scale,
                ZONE,
            );
        }
    }
    for region in notes.regions {
        let s = frame.scale;
        let (x, y) = ((region.x * s) as i32, (region.y * s) as i32);
        let (rw, rh) = (((region.w * s) as u32).max(1), ((region.h * s) as u32).max(1));
        draw_hollow_rect_mut(&mut image, Rect::at(x, y).of_size(rw, rh), REGION);
        draw_text(&mut image, x + 2, y + 2, "region", text_scale, REGION);
    }
    // Causes last, so they are drawn on top.
    let mut ordered: Vec<&(Detection, Role)> = notes.detections.iter().collect();
    ordered.sort_by_key(|(_, role)| match role {
        Role::Other => 0,
        Role::Ignored => 1,
        Role::Cause => 2,
    });
    for (d, role) in ordered {
        let colour = match role {
            Role::Cause => CAUSE,
            Role::Ignored => IGNORED,
            Role::Other => OTHER,
        };
        let s = frame.scale;
        let (x, y) = ((d.bbox.x * s) as i32, (d.bbox.y * s) as i32);
        for t in 0..thickness {
            let rw = ((d.bbox.w * s) as i32 + 2 * t).max(1) as u32;
            let rh = ((d.bbox.h * s) as i32 + 2 * t).max(1) as u32;
            draw_hollow_rect_mut(&mut image, Rect::at(x - t, y - t).of_size(rw, rh), colour);
        }
        let label = format!("{} {:.2}", d.label, d.score);
        let label_y = if y >= 10 * text_scale as i32 + thickness {
            y - 10 * text_scale as i32 - thickness
        } else {
            y + thickness
        };
        draw_text(&mut image, x - thickness, label_y, &label, text_scale, colour);
    }
    draw_text(&mut image, 0, 0, &notes.header, text_scale, INK);
    let footer_y = h as i32 - 10 * text_scale as i32;
    let max_chars = (w / (8 * text_scale)) as usize;
    let footer: String = notes.footer.chars().take(max_chars.saturating_sub(1)).collect();
    draw_text(&mut image, 0, footer_y, &footer, text_scale, INK);

    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, config.quality)
        .encode_image(&image)
        .map_err(EvidenceError::Encode)?;
    Ok(jpeg)
}

/// The evidence re-encoded to at most `max_bytes`, smaller and at a lower quality step by step,
/// for a broker whose packet limit the original is over; `None` when even the smallest is over.
pub fn shrink(jpeg: &[u8], max_bytes: usize) -> Result<Option<Vec<u8>>, EvidenceError> {
    /// Longest sides tried, and the JPEG quality for them: still enough to see a person.
    const STEPS: [(u32, u8); 4] = [(960, 70), (640, 60), (480, 50), (320, 40)];
    let image = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)
        .map_err(EvidenceError::Encode)?
        .to_rgb8();
    let longest = image.width().max(image.height());
    for (size, quality) in STEPS.into_iter().filter(|(size, _)| *size < longest) {
        let scaled = fit(image.clone(), size)?;
        let mut smaller = Vec::new();
        JpegEncoder::new_with_quality(&mut smaller, quality)
            .encode_image(&scaled.image)
            .map_err(EvidenceError::Encode)?;
        if smaller.len() <= max_bytes {
            return Ok(Some(smaller));
        }
    }
    Ok(None)
}

fn outline(image: &mut RgbImage, points: &[[f32; 2]], colour: Rgb<u8>) {
    let (w, h) = (image.width() as f32 - 1.0, image.height() as f32 - 1.0);
    for (i, a) in points.iter().enumerate() {
        let b = points[(i + 1) % points.len()];
        for d in [0.0, 1.0] {
            draw_line_segment_mut(image, (a[0] * w + d, a[1] * h), (b[0] * w + d, b[1] * h), colour);
        }
    }
}

/// Writes `text` with the 8x8 bitmap font, `scale` times enlarged, on a dark band for legibility.
fn draw_text(image: &mut RgbImage, x: i32, y: i32, text: &str, scale: u32, colour: Rgb<u8>) {
    let s = scale as i32;
    let width = (text.chars().count() as u32 * 8 + 2) * scale;
    let (iw, ih) = (image.width() as i32, image.height() as i32);
    let x = x.clamp(0, (iw - width as i32).max(0));
    let y = y.clamp(0, (ih - 10 * s).max(0));
    draw_filled_rect_mut(image, Rect::at(x, y).of_size(width, 10 * scale), PAPER);
    for (i, ch) in text.chars().enumerate() {
        let glyph = font8x8::BASIC_FONTS
            .get(ch)
            .or_else(|| font8x8::BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) == 0 {
                    continue;
                }
                for dy in 0..s {
                    for dx in 0..s {
                        let px = x + s + (i as i32 * 8 + col) * s + dx;
                        let py = y + s + row as i32 * s + dy;
                        if (0..iw).contains(&px) && (0..ih).contains(&py) {
                            image.put_pixel(px as u32, py as u32, colour);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotated(detections: &[(Detection, Role)]) -> RgbImage {
        let frame = fit(RgbImage::from_pixel(400, 300, Rgb([40, 90, 40])), 1280).expect("fit");
        let zones = [Zone {
            name: "yard".into(),
            points: vec![[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]],
        }];
        let notes = Annotations {
            detections,
            regions: &[],
            zones: &zones,
            masks: &[],
            header: "gate 2026-11-21T10:00:00Z".into(),
            footer: "VERIFIED: person".into(),
        };
        let jpeg = render(&frame, &notes, &EvidenceConfig::default()).expect("render");
        image::load_from_memory(&jpeg).expect("decodes").to_rgb8()
    }

    fn is_near(p: &Rgb<u8>, c: Rgb<u8>) -> bool {
        p.0.iter().zip(c.0).all(|(a, b)| (*a as i32 - b as i32).abs() < 60)
    }

    #[test]
    fn boxes_zones_and_text_are_drawn() {
        let person = Detection {
            class_id: 0,
            label: "person".into(),
            score: 0.9,
            bbox: BoxPx {
                x: 100.0,
                y: 100.0,
                w: 50.0,
                h: 100.0,
            },
        };
        let img = annotated(&[(person, Role::Cause)]);
        // The left edge of the box is red; the zone's top edge (y = 150) is cyan; the header band is dark with white ink.
        assert!(is_near(img.get_pixel(100, 150), CAUSE), "{:?}", img.get_pixel(100, 150));
        assert!(
            is_near(img.get_pixel(300, 149), ZONE) || is_near(img.get_pixel(300, 150), ZONE),
            "{:?}",
            img.get_pixel(300, 150)
        );
        let header_ink = (0..100)
            .flat_map(|x| (0..10).map(move |y| (x, y)))
            .filter(|&(x, y)| is_near(img.get_pixel(x, y), INK))
            .count();
        assert!(header_ink > 50, "no header text ({header_ink} white pixels)");
    }

    #[test]
    fn shrink_fits_a_large_image_under_the_limit_or_says_it_cannot() {
        // Noise compresses badly: a 1280x720 frame of it is far over 100 KB.
        let noise = RgbImage::from_fn(1280, 720, |x, y| {
            let v = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)).wrapping_mul(2_246_822_519) >> 24;
            Rgb([v as u8, (v >> 1) as u8, (v * 3) as u8])
        });
        let mut jpeg = Vec::new();
        JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode_image(&noise)
            .expect("encode");
        assert!(jpeg.len() > 200_000, "{} bytes", jpeg.len());
        let small = shrink(&jpeg, 100_000).expect("shrink").expect("fits");
        assert!(small.len() <= 100_000, "{} bytes", small.len());
        let decoded = image::load_from_memory(&small).expect("a JPEG");
        assert!(decoded.width() < 1280 && decoded.width() >= 320);
        assert_eq!(shrink(&jpeg, 1_000).expect("shrink"), None);
        assert!(shrink(b"not a jpeg", 1_000).is_err());
    }

    #[test]
    fn large_frames_are_scaled_to_the_configured_size() {
        let scaled = fit(RgbImage::new(1920, 1080), 1280).expect("fit");
        assert_eq!(scaled.image.dimensions(), (1280, 720));
        assert!((scaled.scale - 2.0 / 3.0).abs() < 1e-6);
    }
}
