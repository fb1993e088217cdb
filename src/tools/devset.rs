//! `alarm-verifier make-devset`: the labelled development set that `eval` measures the policy on.
//!
//! Built from real footage and photographs only (Debian's opencv-doc: vtest.avi, tree.avi and
//! photos; scikit-image's and Ultralytics' bundled images), arranged into alarm clips:
//! - the vtest site with people, at several times, and photographs of people;
//! - intruders and vehicles cut from the footage or photos, moving across the *empty* vtest site;
//! - false alarms: the tree in wind, animals, the empty site with its parked vehicles, dusk and
//!   lights switching, rain, an insect on an IR camera's lens, empty ground.
//!
//! The empty site is the per-pixel median of frames spread over vtest.avi: the people move, so
//! the median keeps only the ground, the buildings and the parked vehicles.

use std::path::{Path, PathBuf};

use chrono::{TimeDelta, Utc};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use image::{Rgb, RgbImage, imageops};

use crate::analysis::clip::{self, Window};

const W: u32 = 768;
const H: u32 = 576;
const FPS: u32 = 10;
const SECONDS: u32 = 10;
/// Alarm time in the generated clips, seconds from their start.
const ALARM_AT: f64 = 5.0;

#[derive(Debug, thiserror::Error)]
pub enum DevsetError {
    #[error("{path}: {reason}")]
    Source { path: PathBuf, reason: String },
    #[error("{path}: cannot write: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// One labelled clip.
struct Entry {
    clip: String,
    expected: &'static str,
    alarm_at: f64,
    note: &'static str,
}

/// Where the inputs are: `footage` holds vtest.avi and tree.mp4, `images` the photographs.
pub struct Sources {
    pub footage: PathBuf,
    pub images: PathBuf,
}

impl Sources {
    fn image(&self, name: &str) -> Result<RgbImage, DevsetError> {
        let path = self.images.join(name);
        image::open(&path)
            .map(|i| i.to_rgb8())
            .map_err(|e| DevsetError::Source {
                path,
                reason: e.to_string(),
            })
    }
}

/// Builds the clips and `labels.tsv` into `out`.
pub fn build(sources: &Sources, out: &Path) -> Result<usize, DevsetError> {
    gst::init().map_err(|e| DevsetError::Write {
        path: out.into(),
        reason: e.to_string(),
    })?;
    std::fs::create_dir_all(out).map_err(|e| DevsetError::Write {
        path: out.into(),
        reason: e.to_string(),
    })?;
    let vtest = sources.footage.join("vtest.avi");
    let plate = empty_site(&vtest)?;
    let first = clip::first_frame(&vtest).map_err(|e| DevsetError::Source {
        path: vtest.clone(),
        reason: e.to_string(),
    })?;
    let mut entries = Vec::new();
    let mut add = |clip: &str, expected, alarm_at, note| {
        entries.push(Entry {
            clip: clip.to_owned(),
            expected,
            alarm_at,
            note,
        })
    };

    // Real intrusions: people.
    for at in [5.0, 25.0, 45.0, 65.0] {
        add("../vtest.mp4", "verified", at, "people walking across the site");
    }
    for (name, file, note) in [
        ("zidane", "zidane.jpg", "two people, photo"),
        ("bus_stop", "bus.jpg", "people at a bus, photo"),
        ("football", "messi5.jpg", "a person running, photo"),
        ("astronaut", "astronaut.png", "a person close up, photo"),
    ] {
        write_clip(&out.join(format!("{name}.mp4")), |i| {
            slow_zoom(&sources.image(file)?, i)
        })?;
        add(&format!("{name}.mp4"), "verified", ALARM_AT, note);
    }
    // An intruder crosses the empty site, from the left and from the right; the cut-outs come from vtest's first frame.
    let walker_a = imageops::crop_imm(&first, 637, 233, 53, 95).to_image();
    let walker_b = imageops::crop_imm(&first, 246, 214, 44, 100).to_image();
    write_clip(&out.join("intruder_left.mp4"), |i| {
        Ok(appearing(&plate, &walker_a, (60.0, 250.0), (560.0, 280.0), 0, i))
    })?;
    add(
        "intruder_left.mp4",
        "verified",
        ALARM_AT,
        "one person crossing the empty site",
    );
    write_clip(&out.join("intruder_right.mp4"), |i| {
        Ok(appearing(&plate, &walker_b, (620.0, 200.0), (380.0, 260.0), 40, i))
    })?;
    add(
        "intruder_right.mp4",
        "verified",
        ALARM_AT,
        "a person appears at the alarm and walks in",
    );
    // Real intrusions: vehicles that move.
    let van = imageops::resize(
        &imageops::crop_imm(&plate, 648, 38, 80, 64).to_image(),
        200,
        160,
        imageops::FilterType::Triangle,
    );
    write_clip(&out.join("van_arrives.mp4"), |i| {
        Ok(appearing(&plate, &van, (700.0, 220.0), (300.0, 250.0), 35, i))
    })?;
    add("van_arrives.mp4", "verified", ALARM_AT, "a van drives onto the site");
    let motorcycle = imageops::resize(
        &sources.image("motorcycle_left.png")?,
        300,
        200,
        imageops::FilterType::Triangle,
    );
    write_clip(&out.join("motorcycle.mp4"), |i| {
        Ok(appearing(&plate, &motorcycle, (0.0, 300.0), (420.0, 330.0), 0, i))
    })?;
    add("motorcycle.mp4", "verified", ALARM_AT, "a motorcycle crosses the site");
    let small_motorcycle =
        imageops::flip_horizontal(&imageops::resize(&motorcycle, 210, 140, imageops::FilterType::Triangle));
    write_clip(&out.join("motorcycle_arrives.mp4"), |i| {
        Ok(appearing(
            &plate,
            &small_motorcycle,
            (560.0, 180.0),
            (260.0, 230.0),
            48,
            i,
        ))
    })?;
    add(
        "motorcycle_arrives.mp4",
        "verified",
        ALARM_AT,
        "a motorcycle rides in from the far road at the alarm",
    );

    // False alarms.
    for at in [5.0, 15.0, 24.0] {
        add("../tree.mp4", "false_alarm", at, "a tree in wind");
    }
    write_clip(&out.join("empty_site.mp4"), |i| Ok(with_sensor_noise(&plate, i)))?;
    add(
        "empty_site.mp4",
        "false_alarm",
        ALARM_AT,
        "nobody there; parked vehicles only",
    );
    write_clip(&out.join("dusk.mp4"), |i| {
        Ok(scaled_brightness(
            &plate,
            1.0 - 0.65 * i as f32 / (FPS * SECONDS) as f32,
        ))
    })?;
    add(
        "dusk.mp4",
        "false_alarm",
        ALARM_AT,
        "light fading; parked vehicles only",
    );
    write_clip(&out.join("lights.mp4"), |i| {
        Ok(scaled_brightness(
            &plate,
            if (45..60).contains(&i) || (75..80).contains(&i) {
                0.35
            } else {
                1.0
            },
        ))
    })?;
    add(
        "lights.mp4",
        "false_alarm",
        ALARM_AT,
        "floodlights switching off and on",
    );
    write_clip(&out.join("rain.mp4"), |i| Ok(rain(&plate, i)))?;
    add("rain.mp4", "false_alarm", ALARM_AT, "heavy rain on the empty site");
    write_clip(&out.join("ir_insect.mp4"), |i| Ok(insect(&infrared(&plate), i)))?;
    add(
        "ir_insect.mp4",
        "false_alarm",
        ALARM_AT,
        "an insect on the lens of an IR camera at night",
    );
    let cat = imageops::resize(&sources.image("chelsea.png")?, 220, 146, imageops::FilterType::Triangle);
    write_clip(&out.join("cat_crossing.mp4"), |i| {
        Ok(appearing(&plate, &cat, (40.0, 380.0), (480.0, 400.0), 0, i))
    })?;
    add("cat_crossing.mp4", "false_alarm", ALARM_AT, "a cat crossing the lawn");
    for (name, file, note) in [
        ("cat", "chelsea.png", "a cat, photo"),
        ("squirrel", "squirrel_cls.jpg", "a squirrel, photo"),
        ("grass", "grass.png", "empty grass"),
        ("gravel", "gravel.png", "empty gravel"),
    ] {
        write_clip(&out.join(format!("{name}.mp4")), |i| {
            slow_zoom(&sources.image(file)?, i)
        })?;
        add(&format!("{name}.mp4"), "false_alarm", ALARM_AT, note);
    }

    let mut tsv = String::from("# clip\texpected\talarm_at_s\tnote\n");
    for e in &entries {
        tsv.push_str(&format!("{}\t{}\t{}\t{}\n", e.clip, e.expected, e.alarm_at, e.note));
    }
    let labels = out.join("labels.tsv");
    std::fs::write(&labels, tsv).map_err(|e| DevsetError::Write {
        path: labels,
        reason: e.to_string(),
    })?;
    Ok(entries.len())
}

/// The per-pixel median of frames spread over the video: the scene without what moves in it.
fn empty_site(video: &Path) -> Result<RgbImage, DevsetError> {
    let base = Utc::now();
    let window = Window {
        from: base,
        to: base + TimeDelta::seconds(80),
        fps: 1.0,
    };
    let mut frames: Vec<RgbImage> = Vec::new();
    clip::decode_file(video, base, window, |f| {
        frames.push(f.image);
        Ok(())
    })
    .map_err(|e| DevsetError::Source {
        path: video.into(),
        reason: e.to_string(),
    })?;
    let Some(first) = frames.first() else {
        return Err(DevsetError::Source {
            path: video.into(),
            reason: "no frames".into(),
        });
    };
    let mut plate = RgbImage::new(first.width(), first.height());
    let mut values = Vec::with_capacity(frames.len());
    for (i, px) in plate.as_mut().iter_mut().enumerate() {
        values.clear();
        values.extend(frames.iter().map(|f| f.as_raw()[i]));
        values.sort_unstable();
        *px = values[values.len() / 2];
    }
    Ok(plate)
}

/// Encodes (single-threaded, so that every build of the set is the same) `SECONDS` of `FPS` frames from `frame(i)` as H.264 in MP4.
fn write_clip(path: &Path, mut frame: impl FnMut(u32) -> Result<RgbImage, DevsetError>) -> Result<(), DevsetError> {
    let write_err = |reason: String| DevsetError::Write {
        path: path.into(),
        reason,
    };
    let location = path.display().to_string().replace('"', "\\\"");
    let desc = format!(
        "appsrc name=src format=time caps=video/x-raw,format=RGB,width={W},height={H},framerate={FPS}/1 \
         ! videoconvert ! x264enc speed-preset=veryfast key-int-max={FPS} bframes=0 threads=1 \
         ! h264parse ! mp4mux ! filesink location=\"{location}\""
    );
    let pipeline = gst::parse::launch(&desc)
        .map_err(|e| write_err(e.to_string()))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| write_err("not a pipeline".into()))?;
    let src = pipeline
        .by_name("src")
        .and_downcast::<gst_app::AppSrc>()
        .ok_or_else(|| write_err("appsrc missing".into()))?;
    src.set_property("block", true);
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| write_err(e.to_string()))?;
    let step = gst::ClockTime::SECOND / FPS as u64;
    for i in 0..FPS * SECONDS {
        let image = frame(i)?;
        let image = if image.dimensions() == (W, H) {
            image
        } else {
            imageops::resize(&image, W, H, imageops::FilterType::Triangle)
        };
        let mut buffer = gst::Buffer::from_mut_slice(image.into_raw());
        if let Some(b) = buffer.get_mut() {
            b.set_pts(step * i as u64);
            b.set_duration(step);
        }
        src.push_buffer(buffer).map_err(|e| write_err(format!("{e:?}")))?;
    }
    let _ = src.end_of_stream();
    let bus = pipeline.bus().ok_or_else(|| write_err("no bus".into()))?;
    let msg = bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(60),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    let _ = pipeline.set_state(gst::State::Null);
    match msg.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Eos(_)) => Ok(()),
        Some(gst::MessageView::Error(e)) => Err(write_err(e.error().to_string())),
        _ => Err(write_err("encoding did not finish".into())),
    }
}

/// A photograph filling the frame, zooming in slowly as a PTZ camera might.
fn slow_zoom(photo: &RgbImage, i: u32) -> Result<RgbImage, DevsetError> {
    let zoom = 1.0 + 0.1 * i as f32 / (FPS * SECONDS) as f32;
    let (pw, ph) = (photo.width() as f32, photo.height() as f32);
    // The largest 4:3 window of the photo, shrunk by the zoom, centred.
    let (cw, ch) = if pw / ph > W as f32 / H as f32 {
        (ph * W as f32 / H as f32, ph)
    } else {
        (pw, pw * H as f32 / W as f32)
    };
    let (cw, ch) = (cw / zoom, ch / zoom);
    let (x, y) = ((pw - cw) / 2.0, (ph - ch) / 2.0);
    let view = imageops::crop_imm(photo, x as u32, y as u32, cw as u32, ch as u32).to_image();
    Ok(imageops::resize(&view, W, H, imageops::FilterType::Triangle))
}

/// Pastes a cut-out whose edges fade into the background over a few pixels, as a real object's
/// outline does, rather than leaving a rectangular seam no camera would show.
fn paste_feathered(frame: &mut RgbImage, sprite: &RgbImage, x: i64, y: i64) {
    const FEATHER: f32 = 6.0;
    let (sw, sh) = (sprite.width() as i64, sprite.height() as i64);
    for sy in 0..sh {
        for sx in 0..sw {
            let (fx, fy) = (x + sx, y + sy);
            if fx < 0 || fy < 0 || fx >= frame.width() as i64 || fy >= frame.height() as i64 {
                continue;
            }
            let edge = sx.min(sy).min(sw - 1 - sx).min(sh - 1 - sy) as f32;
            let alpha = ((edge + 1.0) / FEATHER).min(1.0);
            let src = sprite.get_pixel(sx as u32, sy as u32);
            let dst = frame.get_pixel_mut(fx as u32, fy as u32);
            for c in 0..3 {
                dst.0[c] = (src.0[c] as f32 * alpha + dst.0[c] as f32 * (1.0 - alpha)).round() as u8;
            }
        }
    }
}

/// `sprite` pasted on `background` from frame `first` on, moving from `from` to `to` by the last frame.
fn appearing(
    background: &RgbImage,
    sprite: &RgbImage,
    from: (f32, f32),
    to: (f32, f32),
    first: u32,
    i: u32,
) -> RgbImage {
    if i < first {
        return with_sensor_noise(background, i);
    }
    let span = (FPS * SECONDS - 1 - first).max(1) as f32;
    let t = (i - first) as f32 / span;
    let mut frame = with_sensor_noise(background, i);
    let (x, y) = (from.0 + (to.0 - from.0) * t, from.1 + (to.1 - from.1) * t);
    paste_feathered(&mut frame, sprite, x as i64, y as i64);
    frame
}

/// A camera's frames are never still: a little noise, different in every frame.
fn with_sensor_noise(image: &RgbImage, i: u32) -> RgbImage {
    let mut rng = fastrand::Rng::with_seed(u64::from(i) + 1);
    let mut out = image.clone();
    for v in out.as_mut().iter_mut() {
        *v = (*v as i16 + rng.i16(-3..=3)).clamp(0, 255) as u8;
    }
    out
}

fn scaled_brightness(image: &RgbImage, gain: f32) -> RgbImage {
    let mut out = image.clone();
    for v in out.as_mut().iter_mut() {
        *v = (*v as f32 * gain).clamp(0.0, 255.0) as u8;
    }
    out
}

/// Slanted streaks of rain, new in every frame, over a darkened scene.
fn rain(image: &RgbImage, i: u32) -> RgbImage {
    let mut out = scaled_brightness(image, 0.7);
    let mut rng = fastrand::Rng::with_seed(1000 + u64::from(i));
    for _ in 0..900 {
        let (x, y) = (rng.i32(0..W as i32), rng.i32(0..H as i32));
        let len = rng.i32(8..24);
        for k in 0..len {
            let (px, py) = (x + k / 4, y + k);
            if (0..W as i32).contains(&px) && (0..H as i32).contains(&py) {
                let p = out.get_pixel_mut(px as u32, py as u32);
                *p = Rgb(p.0.map(|c| c.saturating_add(70)));
            }
        }
    }
    out
}

/// The scene as an IR camera sees it at night: grey and dim.
fn infrared(image: &RgbImage) -> RgbImage {
    let mut out = image.clone();
    for p in out.pixels_mut() {
        let g = ((p.0[0] as u32 * 3 + p.0[1] as u32 * 6 + p.0[2] as u32) / 10 / 2) as u8;
        *p = Rgb([g, g, g]);
    }
    out
}

/// A moth close to the IR illuminator: a large, bright, blurred blob wandering across the view.
fn insect(image: &RgbImage, i: u32) -> RgbImage {
    let mut out = with_sensor_noise(image, i);
    let t = i as f32 / 10.0;
    let (cx, cy) = (384.0 + 250.0 * (t * 0.9).sin(), 260.0 + 150.0 * (t * 1.7).cos());
    let radius = 45.0 + 15.0 * (t * 3.1).sin();
    for y in ((cy - radius) as i32).max(0)..((cy + radius) as i32).min(H as i32) {
        for x in ((cx - radius) as i32).max(0)..((cx + radius) as i32).min(W as i32) {
            let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt() / radius;
            if d < 1.0 {
                let glow = (1.0 - d * d) * 200.0;
                let p = out.get_pixel_mut(x as u32, y as u32);
                *p = Rgb(p.0.map(|c| (c as f32 + glow).min(255.0) as u8));
            }
        }
    }
    out
}
