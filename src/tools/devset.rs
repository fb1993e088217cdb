//! `alarm-verifier make-devset`: the labelled development set that `eval` measures the policy on.
//!
//! Built from real footage and photographs only (Debian's opencv-doc: vtest.avi, tree.avi and
//! photos; scikit-image's and Ultralytics' bundled images), arranged into alarm clips:
//! - the vtest site with people, at several times, and photographs of people;
//! - intruders and vehicles cut from the footage or photos, moving across the *empty* vtest site;
//! - false alarms: the tree in wind, animals, the empty site with its parked vehicles, dusk and
//!   lights switching, rain, an insect on an IR camera's lens, empty ground;
//! - far targets on wide 1080p and 1440p views of the empty site (scaled up): people 50-72 px tall
//!   cut from vtest frame by frame as they walk, by day, at dusk and at night (IR), each clip with
//!   an empty twin; a small cat and a squirrel crossing far away.
//!
//! The empty site is the per-pixel median of frames spread over vtest.avi: the people move, so
//! the median keeps only the ground, the buildings and the parked vehicles.

use std::path::{Path, PathBuf};

use chrono::{TimeDelta, Utc};
use gstreamer as gst;
use gstreamer::prelude::*;
use image::{GrayImage, Luma, Rgb, RgbImage, Rgba, RgbaImage, imageops};

use crate::analysis::clip::{self, Window};
use crate::support::gst::{self as gst_support, GstError};

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

impl Entry {
    /// A generated clip, its alarm at `ALARM_AT`.
    fn at_alarm(clip: &str, expected: &'static str, note: &'static str) -> Self {
        Self {
            clip: clip.to_owned(),
            expected,
            alarm_at: ALARM_AT,
            note,
        }
    }
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
    gst_support::init().map_err(|e| DevsetError::Write {
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
    entries.extend(view_cases(&plate, &walker_a, out)?);
    // Far targets on wide views, with their empty twins and small animals.
    entries.extend(far_targets(sources, &plate, out)?);

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

/// Lost views (a covered lens, a torch, paint), labelled `unverifiable`, and the changes of light
/// and weather that must not pass for them (headlights, the IR switch, a night that is always
/// dark, a flickering lamp, snow at night, fog, a cloud's shadow), labelled `false_alarm`. A view lost after someone was seen stays `verified`.
fn view_cases(plate: &RgbImage, walker: &RgbImage, out: &Path) -> Result<Vec<Entry>, DevsetError> {
    let mut entries = Vec::new();
    let mut add = |clip: &str, expected, note| entries.push(Entry::at_alarm(clip, expected, note));
    // A hand over the lens from 4.6 s: two frames of it coming closer, then a dark blur.
    let covered = |i: u32| match i {
        ..46 => with_sensor_noise(plate, i),
        46 => with_sensor_noise(&scaled_brightness(plate, 0.45), i),
        47 => with_sensor_noise(&scaled_brightness(plate, 0.15), i),
        _ => with_sensor_noise(&hand_over_lens(), i),
    };
    write_clip(&out.join("covered.mp4"), |i| Ok(covered(i)))?;
    add("covered.mp4", "unverifiable", "the lens covered just before the alarm");
    write_clip(&out.join("seen_then_covered.mp4"), |i| {
        Ok(if i < 46 {
            appearing(plate, walker, (60.0, 250.0), (560.0, 280.0), 0, i)
        } else {
            covered(i)
        })
    })?;
    add(
        "seen_then_covered.mp4",
        "verified",
        "a person walks in, then the lens is covered",
    );
    write_clip(&out.join("torch.mp4"), |i| {
        Ok(if i < 49 {
            with_sensor_noise(plate, i)
        } else {
            torch(plate, i - 49, i)
        })
    })?;
    add("torch.mp4", "unverifiable", "a torch shone into the lens at the alarm");
    let sprayed = sprayed(plate);
    write_clip(&out.join("sprayed.mp4"), |i| {
        Ok(match i {
            ..44 => with_sensor_noise(plate, i),
            44..48 => with_sensor_noise(&blend(plate, &sprayed, (i - 43) as f32 / 5.0), i),
            _ => with_sensor_noise(&sprayed, i),
        })
    })?;
    add(
        "sprayed.mp4",
        "unverifiable",
        "the lens sprayed with paint before the alarm",
    );

    let night = scaled_brightness(&infrared(plate), 0.6);
    write_clip(&out.join("headlights.mp4"), |i| Ok(headlights(&night, i)))?;
    add(
        "headlights.mp4",
        "false_alarm",
        "headlights sweep the empty yard at night (IR)",
    );
    let dusk = scaled_brightness(plate, 0.4);
    write_clip(&out.join("ir_switch.mp4"), |i| {
        Ok(with_sensor_noise(if i < 48 { &dusk } else { &night }, i))
    })?;
    add(
        "ir_switch.mp4",
        "false_alarm",
        "the camera switches from colour to IR at the alarm",
    );
    let dark = scaled_brightness(&infrared(plate), 0.25);
    write_clip(&out.join("night_dark.mp4"), |i| Ok(with_sensor_noise(&dark, i)))?;
    add("night_dark.mp4", "false_alarm", "a dark night, always dark (IR)");
    write_clip(&out.join("flicker.mp4"), |i| {
        Ok(with_sensor_noise(
            &scaled_brightness(plate, if (i / 2) % 3 == 0 { 0.3 } else { 1.0 }),
            i,
        ))
    })?;
    add(
        "flicker.mp4",
        "false_alarm",
        "a failing lamp flickering over the empty site",
    );
    write_clip(&out.join("snow_night.mp4"), |i| Ok(snow(&night, i)))?;
    add(
        "snow_night.mp4",
        "false_alarm",
        "snow falling at night, lit by the IR illuminator",
    );
    let fog = fog(plate);
    write_clip(&out.join("fog.mp4"), |i| Ok(with_sensor_noise(&fog, i)))?;
    add("fog.mp4", "false_alarm", "thick fog over the empty site");
    write_clip(&out.join("cloud_shadows.mp4"), |i| Ok(cloud_shadow(plate, i)))?;
    add(
        "cloud_shadows.mp4",
        "false_alarm",
        "a cloud's shadow sweeping over the empty site",
    );
    Ok(entries)
}

/// Snowflakes near an IR illuminator: bright soft discs of several sizes drifting down, new
/// positions in every frame.
fn snow(night: &RgbImage, i: u32) -> RgbImage {
    let mut out = with_sensor_noise(night, i);
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..260 {
        let (x0, y0) = (rng.f32() * W as f32, rng.f32() * H as f32);
        let (size, speed, drift) = (1.5 + rng.f32() * 5.0, 6.0 + rng.f32() * 14.0, rng.f32() * 4.0 - 2.0);
        let x = (x0 + drift * i as f32 + 20.0 * (i as f32 * 0.2 + x0).sin()).rem_euclid(W as f32);
        let y = (y0 + speed * i as f32).rem_euclid(H as f32);
        for dy in -(size as i32)..=size as i32 {
            for dx in -(size as i32)..=size as i32 {
                let d = ((dx * dx + dy * dy) as f32).sqrt() / size;
                let (px, py) = (x as i32 + dx, y as i32 + dy);
                if d < 1.0 && (0..W as i32).contains(&px) && (0..H as i32).contains(&py) {
                    let p = out.get_pixel_mut(px as u32, py as u32);
                    *p = Rgb(p.0.map(|c| (c as f32 + (1.0 - d) * 170.0).min(255.0) as u8));
                }
            }
        }
    }
    out
}

/// Thick fog: the scene softened and washed towards a light grey.
fn fog(plate: &RgbImage) -> RgbImage {
    let small = imageops::resize(plate, W / 3, H / 3, imageops::FilterType::Triangle);
    let soft = imageops::resize(&small, W, H, imageops::FilterType::Triangle);
    blend(&soft, &RgbImage::from_pixel(W, H, Rgb([186, 188, 190])), 0.6)
}

/// A cloud's shadow: a large soft-edged darkening crossing the scene from left to right.
fn cloud_shadow(plate: &RgbImage, i: u32) -> RgbImage {
    let mut out = with_sensor_noise(plate, i);
    let cx = -300.0 + i as f32 * 14.0;
    for (x, y, p) in out.enumerate_pixels_mut() {
        let d = (((x as f32 - cx) / 330.0).powi(2) + ((y as f32 - 260.0) / 260.0).powi(2)).sqrt();
        let shade = 1.0 - 0.45 * (1.0 - (d - 0.6).clamp(0.0, 0.4) / 0.4);
        *p = Rgb(p.0.map(|c| (c as f32 * shade) as u8));
    }
    out
}

/// A hand over the lens: dark, a little skin colour leaking in at one edge, no detail.
fn hand_over_lens() -> RgbImage {
    RgbImage::from_fn(W, H, |x, _| {
        let leak = (12.0 * (1.0 - x as f32 / W as f32)).max(0.0) as u8;
        Rgb([6 + leak, 4 + leak / 2, 3])
    })
}

/// A torch close to the lens, `k` frames after it was switched on: a white core that swamps most
/// of the picture, and a glare around it.
fn torch(plate: &RgbImage, k: u32, i: u32) -> RgbImage {
    let mut out = with_sensor_noise(plate, i);
    let (cx, cy) = (360.0 + 8.0 * (i as f32).sin(), 300.0 + 6.0 * (i as f32 * 1.3).cos());
    let core = (240.0 + 60.0 * (k.min(3) as f32)).min(420.0);
    for (x, y, p) in out.enumerate_pixels_mut() {
        let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt() / core;
        let glare = if d < 1.0 { 1.0 } else { (2.0 - d).max(0.0) };
        *p = Rgb(p.0.map(|c| (c as f32 + glare * 400.0).min(255.0) as u8));
    }
    out
}

/// The scene through a sprayed lens: no edges left, a grey-blue film over it.
fn sprayed(plate: &RgbImage) -> RgbImage {
    let small = imageops::resize(plate, W / 16, H / 16, imageops::FilterType::Triangle);
    let soft = imageops::resize(&small, W, H, imageops::FilterType::Gaussian);
    let film = RgbImage::from_pixel(W, H, Rgb([70, 78, 90]));
    blend(&soft, &film, 0.55)
}

/// `a` mixed with `share` of `b`.
fn blend(a: &RgbImage, b: &RgbImage, share: f32) -> RgbImage {
    let mut out = a.clone();
    for (o, v) in out.iter_mut().zip(b.iter()) {
        *o = (*o as f32 * (1.0 - share) + *v as f32 * share).round() as u8;
    }
    out
}

/// A car's headlights sweeping across the yard at night: a bright cone moving from left to right
/// between 3 s and 7 s.
fn headlights(night: &RgbImage, i: u32) -> RgbImage {
    let mut out = with_sensor_noise(night, i);
    if !(30..70).contains(&i) {
        return out;
    }
    let cx = -100.0 + (i - 30) as f32 * 25.0;
    let cy = 330.0;
    for (x, y, p) in out.enumerate_pixels_mut() {
        let (dx, dy) = ((x as f32 - cx) / 220.0, (y as f32 - cy) / 90.0);
        let glow = (1.0 - (dx * dx + dy * dy)).max(0.0);
        *p = Rgb(p.0.map(|c| (c as f32 + glow * 220.0).min(255.0) as u8));
    }
    out
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
    for (i, px) in plate.iter_mut().enumerate() {
        values.clear();
        values.extend(frames.iter().map(|f| f.as_raw()[i]));
        values.sort_unstable();
        *px = values[values.len() / 2];
    }
    Ok(plate)
}

/// Encodes (single-threaded, so that every build of the set is the same) `SECONDS` of `FPS` frames from `frame(i)` as H.264 in MP4.
fn write_clip(path: &Path, frame: impl FnMut(u32) -> Result<RgbImage, DevsetError>) -> Result<(), DevsetError> {
    write_sized_clip(path, (W, H), frame)
}

/// [`write_clip`] for frames of `size` (`frame(i)` is scaled to it if need be).
fn write_sized_clip(
    path: &Path,
    (width, height): (u32, u32),
    mut frame: impl FnMut(u32) -> Result<RgbImage, DevsetError>,
) -> Result<(), DevsetError> {
    let write_err = |reason: String| DevsetError::Write {
        path: path.into(),
        reason,
    };
    let location = path.display().to_string().replace('"', "\\\"");
    let desc = format!(
        "appsrc name=src format=time caps=video/x-raw,format=RGB,width={width},height={height},framerate={FPS}/1 \
         ! videoconvert ! x264enc speed-preset=veryfast key-int-max={FPS} bframes=0 threads=1 \
         ! h264parse ! mp4mux ! filesink location=\"{location}\""
    );
    let gst_err = |e: GstError| write_err(e.to_string());
    let pipeline = gst_support::launch(&desc).map_err(gst_err)?;
    let src = gst_support::app_src(&pipeline, "src").map_err(gst_err)?;
    src.set_property("block", true);
    gst_support::play(&pipeline).map_err(gst_err)?;
    let step = gst::ClockTime::SECOND / FPS as u64;
    for i in 0..FPS * SECONDS {
        let image = frame(i)?;
        let image = if image.dimensions() == (width, height) {
            image
        } else {
            imageops::resize(&image, width, height, imageops::FilterType::Triangle)
        };
        let mut buffer = gst::Buffer::from_mut_slice(image.into_raw());
        if let Some(b) = buffer.get_mut() {
            b.set_pts(step * i as u64);
            b.set_duration(step);
        }
        src.push_buffer(buffer).map_err(|e| write_err(format!("{e:?}")))?;
    }
    let _ = src.end_of_stream();
    let ended = gst_support::wait_for_eos(&pipeline, gst::ClockTime::from_seconds(60));
    gst_support::stop(&pipeline);
    ended.map_err(|e| match e {
        GstError::TimedOut | GstError::Unexpected => write_err("encoding did not finish".into()),
        other => gst_err(other),
    })
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
    for v in out.iter_mut() {
        *v = (*v as i16 + rng.i16(-3..=3)).clamp(0, 255) as u8;
    }
    out
}

/// [`with_sensor_noise`] of up to ±`amplitude` for the large frames of wide views: eight values
/// from each random number, different in every frame `i` (and the same in every build).
fn with_grain(image: &RgbImage, i: u32, amplitude: u8) -> RgbImage {
    let mut rng = fastrand::Rng::with_seed(u64::from(i) + 1);
    let span = 2 * u16::from(amplitude) + 1;
    let mut out = image.clone();
    for chunk in out.chunks_mut(8) {
        let bytes = rng.u64(..).to_le_bytes();
        for (v, r) in chunk.iter_mut().zip(bytes) {
            let offset = ((u16::from(r) * span) >> 8) as i16 - i16::from(amplitude);
            *v = (*v as i16 + offset).clamp(0, 255) as u8;
        }
    }
    out
}

fn scaled_brightness(image: &RgbImage, gain: f32) -> RgbImage {
    let mut out = image.clone();
    for v in out.iter_mut() {
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

// Far targets. The detector sees 416×416: a 1920×1080 frame is shrunk 4.6 times and a 2560×1440
// one 6.2 times, so a person 50-70 px tall across a yard reaches it as 11-15 px. These clips put
// real people, cut from vtest frame by frame as they walk, small into wide views of the empty
// site, by day, at dusk and at night; each has an empty twin, and two small animals cross too.

/// A 1080p camera.
const FULL_HD: (u32, u32) = (1920, 1080);
/// A 4 MP camera.
const QHD: (u32, u32) = (2560, 1440);

/// A cut-out: RGBA with the colour premultiplied by the alpha, where its feet are in it, and how
/// tall the figure in it is.
#[derive(Clone)]
struct Pose {
    image: RgbaImage,
    foot: (f32, f32),
    height: f32,
}

impl Pose {
    /// Scaled by `scale`, and turned round if `mirror`.
    fn scaled(&self, scale: f32, mirror: bool) -> Pose {
        let (w, h) = (
            ((self.image.width() as f32 * scale).round() as u32).max(1),
            ((self.image.height() as f32 * scale).round() as u32).max(1),
        );
        let image = imageops::resize(&self.image, w, h, imageops::FilterType::Triangle);
        let foot = (self.foot.0 * w as f32 / self.image.width() as f32, self.foot.1 * scale);
        if mirror {
            Pose {
                image: imageops::flip_horizontal(&image),
                foot: (w as f32 - foot.0, foot.1),
                height: self.height * scale,
            }
        } else {
            Pose {
                image,
                foot,
                height: self.height * scale,
            }
        }
    }
}

/// A person walking in real footage, cut out frame by frame over whole steps: the poses in turn,
/// how far along (x) the person is in each relative to the first, and how far one round of poses
/// takes them. In the footage's pixels.
struct Walk {
    poses: Vec<Pose>,
    offsets: Vec<f32>,
    per_cycle: f32,
}

impl Walk {
    /// The walk shown `height` px tall, feet starting at `start` and going along `slope` (dy/dx);
    /// `mirror` turns the person round, to walk the other way.
    fn actor(&self, height: f32, start: (f32, f32), slope: f32, mirror: bool) -> Actor {
        let mut heights: Vec<f32> = self.poses.iter().map(|p| p.height).collect();
        heights.sort_by(f32::total_cmp);
        let scale = height / heights[heights.len() / 2];
        let sign = if mirror { -scale } else { scale };
        Actor {
            poses: self.poses.iter().map(|p| p.scaled(scale, mirror)).collect(),
            offsets: self.offsets.iter().map(|o| o * sign).collect(),
            per_cycle: self.per_cycle * sign,
            start,
            slope,
            hop: 0.0,
        }
    }
}

/// Something moving across a far view, in the view's pixels: its poses in turn (one for an
/// animal sliding along), how far along x it is in each relative to the first, how far one round
/// of poses takes it, where its feet start, the slope of its path, and how high it hops.
struct Actor {
    poses: Vec<Pose>,
    offsets: Vec<f32>,
    per_cycle: f32,
    start: (f32, f32),
    slope: f32,
    hop: f32,
}

impl Actor {
    /// An animal cut from a photo, `width` px wide, sliding `speed` px a frame (negative: to the
    /// left, and then turned round) from `start`.
    fn animal(photo: &Pose, width: f32, start: (f32, f32), speed: f32, hop: f32) -> Actor {
        let pose = photo.scaled(width / photo.image.width() as f32, speed < 0.0);
        Actor {
            poses: vec![pose],
            offsets: vec![0.0],
            per_cycle: speed,
            start,
            slope: 0.0,
            hop,
        }
    }

    /// Draws the actor as it is at frame `i`, behind whatever `occluder` (a mask over the frame) covers.
    fn draw(&self, frame: &mut RgbImage, i: u32, occluder: Option<&GrayImage>) {
        let n = self.poses.len();
        let (k, round) = (i as usize % n, (i as usize / n) as f32);
        let x = self.start.0 + self.offsets[k] + round * self.per_cycle;
        // Hops of 4 frames: up and down again.
        let lift = self.hop * (std::f32::consts::PI * i as f32 / 4.0).sin().abs();
        let y = self.start.1 + self.slope * (x - self.start.0) - lift;
        let pose = &self.poses[k];
        paste_premultiplied(
            frame,
            &pose.image,
            (x - pose.foot.0).round() as i64,
            (y - pose.foot.1).round() as i64,
            occluder,
        );
    }
}

/// Composites a premultiplied cut-out at (`x`, `y`), hidden where `occluder` is set.
fn paste_premultiplied(frame: &mut RgbImage, sprite: &RgbaImage, x: i64, y: i64, occluder: Option<&GrayImage>) {
    for (sx, sy, px) in sprite.enumerate_pixels() {
        let (fx, fy) = (x + sx as i64, y + sy as i64);
        if fx < 0 || fy < 0 || fx >= frame.width() as i64 || fy >= frame.height() as i64 {
            continue;
        }
        let (fx, fy) = (fx as u32, fy as u32);
        let visible = occluder.map_or(1.0, |m| 1.0 - m.get_pixel(fx, fy).0[0] as f32 / 255.0);
        let alpha = px.0[3] as f32 / 255.0 * visible;
        if alpha <= 0.0 {
            continue;
        }
        let dst = frame.get_pixel_mut(fx, fy);
        for c in 0..3 {
            dst.0[c] = (px.0[c] as f32 * visible + dst.0[c] as f32 * (1.0 - alpha))
                .round()
                .clamp(0.0, 255.0) as u8;
        }
    }
}

/// The first `count` frames of a video, as decoded for the service.
fn footage_frames(video: &Path, count: usize) -> Result<Vec<RgbImage>, DevsetError> {
    let base = Utc::now();
    let window = Window {
        from: base,
        to: base + TimeDelta::seconds(count as i64),
        // Faster than any footage: every frame is taken.
        fps: 1000.0,
    };
    let mut frames = Vec::new();
    clip::decode_file(video, base, window, |f| {
        if frames.len() < count {
            frames.push(f.image);
        }
    })
    .map_err(|e| DevsetError::Source {
        path: video.into(),
        reason: e.to_string(),
    })?;
    if frames.len() < count {
        return Err(DevsetError::Source {
            path: video.into(),
            reason: format!("{} frames, {count} needed", frames.len()),
        });
    }
    Ok(frames)
}

/// How much each pixel of `frame` differs from the empty `plate`: the largest difference of its channels.
fn difference(frame: &RgbImage, plate: &RgbImage) -> GrayImage {
    GrayImage::from_fn(frame.width(), frame.height(), |x, y| {
        let (a, b) = (frame.get_pixel(x, y).0, plate.get_pixel(x, y).0);
        Luma([(0..3).map(|c| a[c].abs_diff(b[c])).max().unwrap_or(0)])
    })
}

/// A person walking in `frames` (vtest), tracked from the box `start` (x, y, w, h) around them in
/// the first frame and cut out in the frames of `cycle`, whole steps after which the poses repeat.
/// Each frame the box moves to where it holds the most pixels that clearly differ from the empty
/// `plate`; the person is the largest such blob in it.
fn cut_walk(
    frames: &[RgbImage],
    plate: &RgbImage,
    start: (i64, i64, i64, i64),
    cycle: std::ops::Range<usize>,
) -> Result<Walk, DevsetError> {
    let (mut bx, mut by, bw, bh) = start;
    let mut poses = Vec::new();
    let mut xs = Vec::new();
    for (k, frame) in frames.iter().enumerate().take(cycle.end + 1) {
        let diff = difference(frame, plate);
        let moving = |x: i64, y: i64| {
            x >= 0
                && y >= 0
                && x < diff.width() as i64
                && y < diff.height() as i64
                && diff.get_pixel(x as u32, y as u32).0[0] > 35
        };
        if k > 0 {
            let mut best = (0usize, 0i64, 0i64);
            for dy in -8..=8i64 {
                for dx in -20..=20i64 {
                    let mass = (0..bh)
                        .flat_map(|y| (0..bw).map(move |x| (x, y)))
                        .filter(|&(x, y)| moving(bx + dx + x, by + dy + y))
                        .count();
                    // Ties go to the smaller move.
                    if mass > best.0 || (mass == best.0 && dx.abs() + dy.abs() < best.1.abs() + best.2.abs()) {
                        best = (mass, dx, dy);
                    }
                }
            }
            bx += best.1;
            by += best.2;
        }
        if cycle.contains(&k) || k == cycle.end {
            let (pose, x) = matte(frame, &diff, (bx - 8, by - 8, bw + 16, bh + 16));
            xs.push(x);
            if cycle.contains(&k) {
                poses.push(pose);
            }
        }
    }
    if poses.is_empty() || xs.len() != poses.len() + 1 {
        return Err(DevsetError::Source {
            path: "vtest.avi".into(),
            reason: "too few frames for the walk".into(),
        });
    }
    Ok(Walk {
        offsets: xs.iter().map(|x| x - xs[0]).take(poses.len()).collect(),
        per_cycle: xs[xs.len() - 1] - xs[0],
        poses,
    })
}

/// The person in `area` (x, y, w, h) of `frame`, matted by `diff` (the frame's difference from the
/// empty scene): the largest blob differing by more than 35, with the fainter pixels (24-35)
/// within 2 px of it blended in (hair, edges). Also the blob's centre (x) in the frame.
fn matte(frame: &RgbImage, diff: &GrayImage, area: (i64, i64, i64, i64)) -> (Pose, f32) {
    let x0 = area.0.clamp(0, frame.width() as i64 - 1) as u32;
    let y0 = area.1.clamp(0, frame.height() as i64 - 1) as u32;
    let w = ((area.0 + area.2).clamp(0, frame.width() as i64) as u32)
        .saturating_sub(x0)
        .max(1);
    let h = ((area.1 + area.3).clamp(0, frame.height() as i64) as u32)
        .saturating_sub(y0)
        .max(1);
    let soft = |x: u32, y: u32| ((diff.get_pixel(x0 + x, y0 + y).0[0] as f32 - 24.0) / 22.0).clamp(0.0, 1.0);
    let mask: Vec<bool> = (0..w * h).map(|p| soft(p % w, p / w) >= 0.5).collect();
    let body = largest_blob(&mask, w as usize, h as usize);
    let near_body = |x: u32, y: u32| {
        (y.saturating_sub(2)..(y + 3).min(h))
            .any(|ny| (x.saturating_sub(2)..(x + 3).min(w)).any(|nx| body[(ny * w + nx) as usize]))
    };
    let (mut left, mut top, mut right, mut bottom) = (w, h, 0, 0);
    let (mut sum_x, mut count) = (0.0, 0.0);
    for p in 0..w * h {
        if body[p as usize] {
            let (x, y) = (p % w, p / w);
            (left, top, right, bottom) = (left.min(x), top.min(y), right.max(x), bottom.max(y));
            sum_x += x as f32;
            count += 1.0;
        }
    }
    let centre = if count > 0.0 { sum_x / count } else { w as f32 / 2.0 };
    let (cx, cy) = (left.saturating_sub(2), top.saturating_sub(2));
    let (cw, ch) = (
        ((right + 3).min(w)).saturating_sub(cx).max(1),
        ((bottom + 3).min(h)).saturating_sub(cy).max(1),
    );
    let image = RgbaImage::from_fn(cw, ch, |x, y| {
        let (ax, ay) = (cx + x, cy + y);
        let alpha = if near_body(ax, ay) { soft(ax, ay) } else { 0.0 };
        let px = frame.get_pixel(x0 + ax, y0 + ay).0;
        Rgba([
            (px[0] as f32 * alpha).round() as u8,
            (px[1] as f32 * alpha).round() as u8,
            (px[2] as f32 * alpha).round() as u8,
            (alpha * 255.0).round() as u8,
        ])
    });
    let pose = Pose {
        image,
        foot: (centre - cx as f32, (bottom + 1 - cy) as f32),
        height: (bottom + 1).saturating_sub(top) as f32,
    };
    (pose, x0 as f32 + centre)
}

/// The largest 4-connected blob of `mask` (`w` wide, `h` high).
fn largest_blob(mask: &[bool], w: usize, h: usize) -> Vec<bool> {
    let mut label = vec![0u32; w * h];
    let (mut best, mut best_size, mut next) = (0, 0, 0);
    let mut stack = Vec::new();
    for seed in 0..w * h {
        if !mask[seed] || label[seed] != 0 {
            continue;
        }
        next += 1;
        label[seed] = next;
        stack.push(seed);
        let mut size = 0;
        while let Some(p) = stack.pop() {
            size += 1;
            let (x, y) = (p % w, p / w);
            let neighbours = [
                (x > 0).then(|| p - 1),
                (x + 1 < w).then(|| p + 1),
                (y > 0).then(|| p - w),
                (y + 1 < h).then(|| p + w),
            ];
            for q in neighbours.into_iter().flatten() {
                if mask[q] && label[q] == 0 {
                    label[q] = next;
                    stack.push(q);
                }
            }
        }
        if size > best_size {
            (best, best_size) = (next, size);
        }
    }
    label.iter().map(|&l| l != 0 && l == best).collect()
}

/// A photo's subject cut out: the part of `rect` (x, y, w, h) where `keep(x, y, colour)` (0..1, in
/// the photo's coordinates) says the subject is, feet at the bottom centre.
fn cut_photo(photo: &RgbImage, rect: (u32, u32, u32, u32), keep: impl Fn(u32, u32, [u8; 3]) -> f32) -> Pose {
    let (x0, y0, w, h) = rect;
    let image = RgbaImage::from_fn(w, h, |x, y| {
        let px = photo.get_pixel(x0 + x, y0 + y).0;
        let alpha = keep(x0 + x, y0 + y, px).clamp(0.0, 1.0);
        Rgba([
            (px[0] as f32 * alpha).round() as u8,
            (px[1] as f32 * alpha).round() as u8,
            (px[2] as f32 * alpha).round() as u8,
            (alpha * 255.0).round() as u8,
        ])
    });
    Pose {
        image,
        foot: (w as f32 / 2.0, h as f32),
        height: h as f32,
    }
}

/// 1 inside the ellipse centred at `c` with radii `r`, fading to 0 over the outer tenth.
fn inside_ellipse(x: u32, y: u32, c: (f32, f32), r: (f32, f32)) -> f32 {
    let d = ((x as f32 - c.0) / r.0).powi(2) + ((y as f32 - c.1) / r.1).powi(2);
    ((1.0 - d.sqrt()) * 10.0).clamp(0.0, 1.0)
}

/// The empty site as a wide camera of `size` frames it: the top 16:9 of the plate, scaled up.
fn wide_site(plate: &RgbImage, size: (u32, u32)) -> RgbImage {
    let top = imageops::crop_imm(plate, 0, 0, plate.width(), plate.width() * 9 / 16).to_image();
    imageops::resize(&top, size.0, size.1, imageops::FilterType::CatmullRom)
}

/// What stands between the camera and anyone on the lawn strip in front of the building, as a
/// mask over [`wide_site`] of `size`: the lamp post (bright) and the tripod (dark, thin).
fn foreground(plate: &RgbImage, size: (u32, u32)) -> GrayImage {
    let mask = GrayImage::from_fn(plate.width(), plate.width() * 9 / 16, |x, y| {
        let px = plate.get_pixel(x, y).0;
        let post = (422..432).contains(&x) && (86..200).contains(&y) && px.into_iter().min().unwrap_or(0) >= 170;
        let tripod = (428..467).contains(&x) && (116..172).contains(&y) && px.into_iter().max().unwrap_or(255) < 100;
        Luma([if post || tripod { 255 } else { 0 }])
    });
    imageops::resize(&mask, size.0, size.1, imageops::FilterType::Triangle)
}

#[derive(Clone, Copy)]
enum Light {
    Day,
    Dusk,
    /// An IR camera at night.
    Night,
}

/// A wide view at frame `i`: `actors` over `background`, behind `occluder`, in `light`, with the
/// sensor noise of that light.
fn far_frame(
    background: &RgbImage,
    occluder: &GrayImage,
    light: Light,
    actors: &[&Actor],
    i: u32,
) -> Result<RgbImage, DevsetError> {
    let mut frame = background.clone();
    for actor in actors {
        actor.draw(&mut frame, i, Some(occluder));
    }
    Ok(match light {
        Light::Day => with_grain(&frame, i, 3),
        Light::Dusk => with_grain(&dusk_light(&frame), i, 6),
        Light::Night => with_grain(&infrared(&frame), i, 8),
    })
}

/// Dusk: a third of the light, bluish.
fn dusk_light(image: &RgbImage) -> RgbImage {
    let mut out = image.clone();
    for p in out.pixels_mut() {
        let [r, g, b] = p.0;
        *p = Rgb([
            (r as f32 * 0.28).round() as u8,
            (g as f32 * 0.32).round() as u8,
            (b as f32 * 0.40).round() as u8,
        ]);
    }
    out
}

/// A far intrusion and its empty twin: a wide view of `size`, in `light`, with `people` walking.
struct FarScene {
    name: &'static str,
    note: &'static str,
    empty_note: &'static str,
    size: (u32, u32),
    light: Light,
    people: Vec<Actor>,
}

/// The far-target clips and their labels.
fn far_targets(sources: &Sources, plate: &RgbImage, out: &Path) -> Result<Vec<Entry>, DevsetError> {
    let mut entries = Vec::new();
    let mut add = |clip: &str, expected, note| entries.push(Entry::at_alarm(clip, expected, note));
    // Two men from vtest's first seconds, each alone then: the man in black walking left at the
    // right (the one `intruder_left` pastes whole), whose poses repeat after 16 frames (two
    // steps), and the man in the dark jacket at the left walking off to the right, after 9 (one).
    let frames = footage_frames(&sources.footage.join("vtest.avi"), 17)?;
    let man_in_black = cut_walk(&frames, plate, (630, 226, 66, 110), 0..16)?;
    let man_in_jacket = cut_walk(&frames, plate, (238, 208, 60, 112), 2..11)?;

    let site_hd = wide_site(plate, FULL_HD);
    let in_front_hd = foreground(plate, FULL_HD);
    let site_qhd = wide_site(plate, QHD);
    let in_front_qhd = foreground(plate, QHD);
    // Where people walk, in the plate's pixels times the view's scale (2.5 for 1080p, 3.33 for
    // 1440p): the lawn strip in front of the building, behind the lamp post and the tripod (plate
    // y 118-135); the pavement by the van (y 105-122); the path across the far lawn at the top
    // left (y 85-140).
    let scenes = [
        FarScene {
            name: "far_day_1080p",
            note: "far person 60 px walking along the building, day, 1080p",
            empty_note: "empty twin of far_day_1080p: nobody, day, 1080p",
            size: FULL_HD,
            light: Light::Day,
            people: vec![man_in_black.actor(60.0, (1500.0, 300.0), 0.02, false)],
        },
        FarScene {
            name: "far_dusk_1440p",
            note: "far person 72 px walking up the far path, dusk, 1440p",
            empty_note: "empty twin of far_dusk_1440p: nobody, dusk, 1440p",
            size: QHD,
            light: Light::Dusk,
            people: vec![man_in_jacket.actor(72.0, (100.0, 470.0), -0.19, false)],
        },
        FarScene {
            name: "far_night_1080p",
            note: "far person 55 px walking to the van, IR night, 1080p",
            empty_note: "empty twin of far_night_1080p: nobody, IR night, 1080p",
            size: FULL_HD,
            light: Light::Night,
            people: vec![man_in_black.actor(55.0, (1175.0, 305.0), -0.07, true)],
        },
        FarScene {
            name: "far_pair_1440p",
            note: "two far people 50 and 65 px, one passing behind the lamp post, day, 1440p",
            empty_note: "empty twin of far_pair_1440p: nobody, day, 1440p",
            size: QHD,
            light: Light::Day,
            people: vec![
                man_in_jacket.actor(65.0, (1170.0, 440.0), -0.03, false),
                man_in_black.actor(50.0, (965.0, 287.0), -0.19, false),
            ],
        },
    ];
    for scene in &scenes {
        let (background, occluder) = if scene.size == FULL_HD {
            (&site_hd, &in_front_hd)
        } else {
            (&site_qhd, &in_front_qhd)
        };
        let (name, size, light) = (scene.name, scene.size, scene.light);
        let people: Vec<&Actor> = scene.people.iter().collect();
        write_sized_clip(&out.join(format!("{name}.mp4")), size, |i| {
            far_frame(background, occluder, light, &people, i)
        })?;
        add(&format!("{name}.mp4"), "verified", scene.note);
        write_sized_clip(&out.join(format!("{name}_empty.mp4")), size, |i| {
            far_frame(background, occluder, light, &[], i)
        })?;
        add(&format!("{name}_empty.mp4"), "false_alarm", scene.empty_note);
    }

    // Small animals, far: a cat at night, a squirrel hopping by day.
    let chelsea = sources.image("chelsea.png")?;
    let cat = cut_photo(&chelsea, (20, 0, 400, 300), |x, y, _| {
        inside_ellipse(x, y, (215.0, 160.0), (195.0, 150.0))
    });
    let cat = Actor::animal(&cat, 40.0, (1700.0, 330.0), -5.0, 0.0);
    write_sized_clip(&out.join("far_cat_night_1080p.mp4"), FULL_HD, |i| {
        far_frame(&site_hd, &in_front_hd, Light::Night, &[&cat], i)
    })?;
    add(
        "far_cat_night_1080p.mp4",
        "false_alarm",
        "far cat 40 px wide crossing the lawn strip, IR night, 1080p",
    );
    // The squirrel without the leaves behind it (green) and the branch it sits on (below a line).
    let squirrel_photo = sources.image("squirrel_cls.jpg")?;
    let squirrel = cut_photo(&squirrel_photo, (128, 108, 234, 242), |x, y, [r, g, _]| {
        let not_leaf = ((r as f32 - g as f32 + 5.0) / 10.0).clamp(0.0, 1.0);
        let above_branch = (y as f32) < 330.0 - 0.74 * (x as f32 - 265.0);
        if above_branch {
            not_leaf * inside_ellipse(x, y, (245.0, 229.0), (120.0, 124.0))
        } else {
            0.0
        }
    });
    let squirrel = Actor::animal(&squirrel, 28.0, (180.0, 420.0), 5.0, 10.0);
    write_sized_clip(&out.join("far_squirrel_1440p.mp4"), QHD, |i| {
        far_frame(&site_qhd, &in_front_qhd, Light::Day, &[&squirrel], i)
    })?;
    add(
        "far_squirrel_1440p.mp4",
        "false_alarm",
        "far squirrel 28 px hopping across the far lawn, day, 1440p",
    );
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_blob_keeps_only_the_largest_four_connected_blob() {
        // Two blobs: three pixels in a row (top left), and two touching it only diagonally.
        let mask = [
            true, true, true, false, //
            false, false, false, true, //
            false, false, false, true, //
        ];
        let blob = largest_blob(&mask, 4, 3);
        assert_eq!(blob.iter().filter(|&&b| b).count(), 3);
        assert!(blob[0] && blob[1] && blob[2] && !blob[7] && !blob[11]);
        assert!(largest_blob(&[false; 4], 2, 2).iter().all(|&b| !b));
    }

    #[test]
    fn grain_stays_within_its_amplitude_and_is_the_same_in_every_build() {
        let grey = RgbImage::from_pixel(64, 64, Rgb([128, 128, 128]));
        let a = with_grain(&grey, 7, 8);
        assert!(a.as_raw().iter().all(|&v| (120..=136).contains(&v)));
        assert!(a.as_raw().iter().any(|&v| v < 125) && a.as_raw().iter().any(|&v| v > 131));
        assert_eq!(a, with_grain(&grey, 7, 8));
        assert_ne!(a, with_grain(&grey, 8, 8));
    }

    #[test]
    fn a_cut_out_is_hidden_behind_what_stands_in_front() {
        let mut frame = RgbImage::from_pixel(4, 1, Rgb([0, 0, 0]));
        // Opaque white, half-transparent white (premultiplied), opaque white twice.
        let sprite = RgbaImage::from_fn(4, 1, |x, _| {
            if x == 1 {
                Rgba([128, 128, 128, 128])
            } else {
                Rgba([255, 255, 255, 255])
            }
        });
        let occluder = GrayImage::from_fn(4, 1, |x, _| Luma([if x == 3 { 255 } else { 0 }]));
        paste_premultiplied(&mut frame, &sprite, 0, 0, Some(&occluder));
        let values: Vec<u8> = frame.pixels().map(|p| p.0[0]).collect();
        assert_eq!(values, [255, 128, 255, 0]);
    }

    #[test]
    fn a_pose_turned_round_keeps_its_feet() {
        let pose = Pose {
            image: RgbaImage::new(20, 40),
            foot: (5.0, 40.0),
            height: 36.0,
        };
        let half = pose.scaled(0.5, true);
        assert_eq!(half.image.dimensions(), (10, 20));
        assert_eq!(half.foot, (7.5, 20.0));
        assert_eq!(half.height, 18.0);
    }
}
