//! Frame → model input: resize (SIMD, `fast_image_resize`), place, convert, normalise.
//!
//! The resize uses bilinear *interpolation* (not convolution), which is what OpenCV's
//! `INTER_LINEAR`, and with it the YOLOX and Ultralytics reference pipelines, do.

use fast_image_resize as fr;
use image::RgbImage;

use crate::config::{ChannelOrder, ResizeMode};

use super::BoxPx;

/// Why a frame could not be turned into model input.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("frame of {width}x{height} pixels")]
    Empty { width: u32, height: u32 },
    #[error(transparent)]
    Buffer(#[from] fr::ImageBufferError),
    #[error(transparent)]
    Resize(#[from] fr::ResizeError),
}

/// Grey that letterboxed models were trained with for the padding.
pub(crate) const PAD_GREY: u8 = 114;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementType {
    F32,
    U8,
}

/// Everything about the model input that preprocessing needs.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub width: u32,
    pub height: u32,
    /// `[1, H, W, 3]` rather than `[1, 3, H, W]`.
    pub nhwc: bool,
    pub element: ElementType,
    pub order: ChannelOrder,
    pub resize: ResizeMode,
    /// Normalised value of each 0..255 pixel value, per model channel.
    lut: [[f32; 256]; 3],
}

impl InputSpec {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        width: u32,
        height: u32,
        nhwc: bool,
        element: ElementType,
        order: ChannelOrder,
        resize: ResizeMode,
        scale: f32,
        mean: [f32; 3],
        std: [f32; 3],
    ) -> Self {
        let mut lut = [[0.0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, out) in table.iter_mut().enumerate() {
                *out = (v as f32 * scale - mean[c]) / std[c];
            }
        }
        Self {
            width,
            height,
            nhwc,
            element,
            order,
            resize,
            lut,
        }
    }

    pub fn shape(&self) -> [usize; 4] {
        let (w, h) = (self.width as usize, self.height as usize);
        if self.nhwc { [1, h, w, 3] } else { [1, 3, h, w] }
    }

    fn len(&self) -> usize {
        self.width as usize * self.height as usize * 3
    }
}

/// How model-input pixels map back to frame pixels: `frame = (model - pad) / scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transform {
    pub scale_x: f32,
    pub scale_y: f32,
    pub pad_x: f32,
    pub pad_y: f32,
}

impl Transform {
    /// A box in model-input pixels, in frame pixels, clipped to the frame.
    pub fn to_frame(&self, b: BoxPx, width: u32, height: u32) -> BoxPx {
        let (fw, fh) = (width as f32, height as f32);
        let x1 = ((b.x - self.pad_x) / self.scale_x).clamp(0.0, fw);
        let y1 = ((b.y - self.pad_y) / self.scale_y).clamp(0.0, fh);
        let x2 = ((b.x + b.w - self.pad_x) / self.scale_x).clamp(0.0, fw);
        let y2 = ((b.y + b.h - self.pad_y) / self.scale_y).clamp(0.0, fh);
        BoxPx {
            x: x1,
            y: y1,
            w: x2 - x1,
            h: y2 - y1,
        }
    }
}

/// Buffers reused from frame to frame, so a frame costs no allocation.
#[derive(Default)]
pub struct Scratch {
    resized: Vec<u8>,
    pub f32_input: Vec<f32>,
    pub u8_input: Vec<u8>,
    resizer: fr::Resizer,
}

/// Where the resized frame goes inside the input, and at what size.
fn placement(spec: &InputSpec, w: u32, h: u32) -> (u32, u32, Transform) {
    let (iw, ih) = (spec.width as f32, spec.height as f32);
    match spec.resize {
        ResizeMode::Stretch => (
            spec.width,
            spec.height,
            Transform {
                scale_x: iw / w as f32,
                scale_y: ih / h as f32,
                pad_x: 0.0,
                pad_y: 0.0,
            },
        ),
        ResizeMode::Letterbox => {
            let r = (iw / w as f32).min(ih / h as f32);
            // As YOLOX does: int(w * r).
            let nw = ((w as f32 * r) as u32).clamp(1, spec.width);
            let nh = ((h as f32 * r) as u32).clamp(1, spec.height);
            (
                nw,
                nh,
                Transform {
                    scale_x: r,
                    scale_y: r,
                    pad_x: 0.0,
                    pad_y: 0.0,
                },
            )
        }
        ResizeMode::LetterboxCenter => {
            let r = (iw / w as f32).min(ih / h as f32);
            // As Ultralytics does: round the size, split the padding, round(d - 0.1) on the top/left.
            let nw = ((w as f32 * r).round() as u32).clamp(1, spec.width);
            let nh = ((h as f32 * r).round() as u32).clamp(1, spec.height);
            let left = ((spec.width - nw) as f32 / 2.0 - 0.1).round().max(0.0);
            let top = ((spec.height - nh) as f32 / 2.0 - 0.1).round().max(0.0);
            (
                nw,
                nh,
                Transform {
                    scale_x: r,
                    scale_y: r,
                    pad_x: left,
                    pad_y: top,
                },
            )
        }
    }
}

/// Fills `scratch`'s input buffer for `spec` from `frame`; returns how to map boxes back.
pub fn prepare(spec: &InputSpec, frame: &RgbImage, scratch: &mut Scratch) -> Result<Transform, PreprocessError> {
    let (w, h) = frame.dimensions();
    if w == 0 || h == 0 {
        return Err(PreprocessError::Empty { width: w, height: h });
    }
    let (nw, nh, transform) = placement(spec, w, h);
    resize_into(frame, nw, nh, scratch)?;
    let (left, top) = (transform.pad_x as usize, transform.pad_y as usize);
    // Which frame channel feeds each model channel.
    let source = match spec.order {
        ChannelOrder::Rgb => [0usize, 1, 2],
        ChannelOrder::Bgr => [2usize, 1, 0],
    };
    let (iw, ih) = (spec.width as usize, spec.height as usize);
    let rows = scratch.resized.chunks_exact(nw as usize * 3);
    match spec.element {
        ElementType::F32 => {
            let buf = &mut scratch.f32_input;
            buf.resize(spec.len(), 0.0);
            if spec.nhwc {
                for px in buf.chunks_exact_mut(3) {
                    for (value, lut) in px.iter_mut().zip(&spec.lut) {
                        *value = lut[PAD_GREY as usize];
                    }
                }
                for (y, row) in rows.enumerate() {
                    let start = ((y + top) * iw + left) * 3;
                    for (dst, src) in buf[start..start + row.len()]
                        .chunks_exact_mut(3)
                        .zip(row.chunks_exact(3))
                    {
                        for c in 0..3 {
                            dst[c] = spec.lut[c][src[source[c]] as usize];
                        }
                    }
                }
            } else {
                let plane = iw * ih;
                for (c, p) in buf.chunks_exact_mut(plane).enumerate() {
                    p.fill(spec.lut[c][PAD_GREY as usize]);
                }
                for (y, row) in rows.enumerate() {
                    let offset = (y + top) * iw + left;
                    for (x, src) in row.chunks_exact(3).enumerate() {
                        for c in 0..3 {
                            buf[c * plane + offset + x] = spec.lut[c][src[source[c]] as usize];
                        }
                    }
                }
            }
        }
        ElementType::U8 => {
            let buf = &mut scratch.u8_input;
            buf.resize(spec.len(), 0);
            let plane = iw * ih;
            buf.fill(PAD_GREY);
            for (y, row) in rows.enumerate() {
                for (x, src) in row.chunks_exact(3).enumerate() {
                    for c in 0..3 {
                        let at = if spec.nhwc {
                            ((y + top) * iw + left + x) * 3 + c
                        } else {
                            c * plane + (y + top) * iw + left + x
                        };
                        buf[at] = src[source[c]];
                    }
                }
            }
        }
    }
    Ok(transform)
}

fn resize_into(frame: &RgbImage, nw: u32, nh: u32, scratch: &mut Scratch) -> Result<(), PreprocessError> {
    let (w, h) = frame.dimensions();
    scratch.resized.resize(nw as usize * nh as usize * 3, 0);
    if (nw, nh) == (w, h) {
        scratch.resized.copy_from_slice(frame.as_raw());
        return Ok(());
    }
    let src = fr::images::ImageRef::new(w, h, frame.as_raw(), fr::PixelType::U8x3)?;
    let mut dst = fr::images::Image::from_slice_u8(nw, nh, &mut scratch.resized, fr::PixelType::U8x3)?;
    let options = fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Interpolation(fr::FilterType::Bilinear));
    scratch.resizer.resize(&src, &mut dst, &options)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(resize: ResizeMode, order: ChannelOrder, nhwc: bool) -> InputSpec {
        InputSpec::new(8, 8, nhwc, ElementType::F32, order, resize, 1.0, [0.0; 3], [1.0; 3])
    }

    /// A 4x2 frame, red on the left half, blue on the right.
    fn frame() -> RgbImage {
        RgbImage::from_fn(4, 2, |x, _| {
            if x < 2 {
                image::Rgb([200, 0, 0])
            } else {
                image::Rgb([0, 0, 200])
            }
        })
    }

    #[test]
    fn letterbox_places_top_left_and_pads_grey_in_bgr_planes() {
        let mut s = Scratch::default();
        let t = prepare(&spec(ResizeMode::Letterbox, ChannelOrder::Bgr, false), &frame(), &mut s).expect("prepared");
        assert_eq!(
            t,
            Transform {
                scale_x: 2.0,
                scale_y: 2.0,
                pad_x: 0.0,
                pad_y: 0.0
            }
        );
        let plane = 64;
        // Pixel (0,0) is red: B plane 0, R plane 200.
        assert_eq!(s.f32_input[0], 0.0);
        assert_eq!(s.f32_input[2 * plane], 200.0);
        // Pixel (7,0) is blue.
        assert_eq!(s.f32_input[7], 200.0);
        // Row 4 and below is padding.
        assert_eq!(s.f32_input[4 * 8], 114.0);
        assert_eq!(s.f32_input[2 * plane + 7 * 8 + 7], 114.0);
    }

    #[test]
    fn centred_letterbox_pads_top_and_bottom() {
        let mut s = Scratch::default();
        let t = prepare(
            &spec(ResizeMode::LetterboxCenter, ChannelOrder::Rgb, true),
            &frame(),
            &mut s,
        )
        .expect("prepared");
        assert_eq!((t.pad_x, t.pad_y), (0.0, 2.0));
        // Row 0 is padding, row 2 is image (red at x=0, RGB interleaved).
        assert_eq!(&s.f32_input[0..3], &[114.0, 114.0, 114.0]);
        assert_eq!(&s.f32_input[2 * 8 * 3..2 * 8 * 3 + 3], &[200.0, 0.0, 0.0]);
        let b = t.to_frame(
            BoxPx {
                x: 0.0,
                y: 2.0,
                w: 8.0,
                h: 4.0,
            },
            4,
            2,
        );
        assert_eq!(
            b,
            BoxPx {
                x: 0.0,
                y: 0.0,
                w: 4.0,
                h: 2.0
            }
        );
    }

    #[test]
    fn stretch_maps_each_axis() {
        let mut s = Scratch::default();
        let t = prepare(&spec(ResizeMode::Stretch, ChannelOrder::Rgb, false), &frame(), &mut s).expect("prepared");
        assert_eq!(
            t,
            Transform {
                scale_x: 2.0,
                scale_y: 4.0,
                pad_x: 0.0,
                pad_y: 0.0
            }
        );
        let b = t.to_frame(
            BoxPx {
                x: 4.0,
                y: 4.0,
                w: 4.0,
                h: 4.0,
            },
            4,
            2,
        );
        assert_eq!(
            b,
            BoxPx {
                x: 2.0,
                y: 1.0,
                w: 2.0,
                h: 1.0
            }
        );
    }

    #[test]
    fn normalisation_uses_scale_mean_std() {
        let spec = InputSpec::new(
            4,
            2,
            false,
            ElementType::F32,
            ChannelOrder::Rgb,
            ResizeMode::Stretch,
            1.0 / 255.0,
            [0.5; 3],
            [0.5; 3],
        );
        let mut s = Scratch::default();
        prepare(&spec, &frame(), &mut s).expect("prepared");
        // Red channel of a red pixel: (200/255 - 0.5) / 0.5.
        assert!((s.f32_input[0] - (200.0 / 255.0 - 0.5) / 0.5).abs() < 1e-6);
        // Green channel: (0 - 0.5) / 0.5 = -1.
        assert_eq!(s.f32_input[8], -1.0);
    }
}
