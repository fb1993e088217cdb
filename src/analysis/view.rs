//! The view check: what the camera could see in each analysed frame. An alarm whose view became
//! blocked (dark or flat), blinded (saturated) or defocused around the alarm, while it was fine
//! before, is never concluded "nobody there": the analysis makes it `unverifiable` instead.
//!
//! The measures are taken on a grid of about 160 × 90 points of the frame, so they cost the same
//! at any resolution: brightness, contrast (the spread of brightness), the share of saturated
//! points, the share of points on an edge (sharpness that does not depend on the light), the
//! share of the picture that changed against the baseline, and whether the picture is grey (an IR
//! camera at night). Only a change against the view before counts: a scene that was always dark,
//! always grey or always soft does not trip it, and only a loss that lasts does: headlights, a
//! flickering lamp or the IR switch pass in a frame or two and leave the picture as it was.

use chrono::{DateTime, Utc};
use image::RgbImage;
use serde::Serialize;

/// Grid points across and down.
const GRID: (u32, u32) = (160, 90);
/// A point this much brighter or darker (of 255) than the baseline's has changed.
const CHANGED: i16 = 48;
/// Below this contrast a picture shows nothing (a hand, tape or paint over the lens), whatever it
/// showed before; a quarter of the baseline's, if that is less, so that lights dimmed to a third
/// are not mistaken for a cover.
const FLAT: f32 = 0.06;
const FLAT_OF_BASELINE: f32 = 0.25;
/// A baseline with at least this contrast showed something.
const VIEW_OK: f32 = 0.08;
/// At least this share of the picture must have changed for a loss of view.
const MIN_CHANGED: f32 = 0.35;
/// Share of saturated points that blinds the view.
const BLINDED: f32 = 0.45;
/// Edges fall below this share of the baseline's: defocused.
const DEFOCUSED: f32 = 0.25;
/// A loss of view that does not reach the window's end must last this long.
const MIN_LOSS_S: f64 = 2.0;
/// Mean chroma (of 255) under which a picture is grey.
const GREY_CHROMA: f32 = 6.0;

/// The view in one frame.
#[derive(Debug, Clone)]
pub struct ViewStats {
    pub time: DateTime<Utc>,
    /// Mean brightness, 0 to 1.
    pub brightness: f32,
    /// Standard deviation of brightness, 0 to 0.5.
    pub contrast: f32,
    /// Share of points at 250 or more.
    pub saturated: f32,
    /// Share of points on an edge (a step relative to the frame's own contrast).
    pub edges: f32,
    /// No colour: an IR picture.
    pub grey: bool,
    luma: Vec<u8>,
}

/// How a view was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    Blocked,
    Blinded,
    Defocused,
}

impl Loss {
    fn name(self) -> &'static str {
        match self {
            Self::Blocked => "blocked",
            Self::Blinded => "blinded",
            Self::Defocused => "defocused",
        }
    }
}

/// A loss of view that lasted, for the verdict.
#[derive(Debug, Clone)]
pub struct LostView {
    pub loss: Loss,
    pub from: DateTime<Utc>,
    pub reason: String,
}

fn luma(p: &image::Rgb<u8>) -> u8 {
    ((u32::from(p.0[0]) * 77 + u32::from(p.0[1]) * 150 + u32::from(p.0[2]) * 29) >> 8) as u8
}

/// Measures the view in `image`.
pub fn measure(image: &RgbImage, time: DateTime<Utc>) -> ViewStats {
    let (w, h) = image.dimensions();
    let (cols, rows) = (GRID.0.min(w.max(1)), GRID.1.min(h.max(1)));
    // The step to the neighbour an edge is measured against grows with the resolution, so that
    // a blur of the same share of the picture reads the same at 640 and 1920 pixels.
    let d = (w / 640).max(1);
    let mut samples = Vec::with_capacity((cols * rows) as usize);
    let mut gradients = Vec::with_capacity(samples.capacity());
    let (mut saturated, mut chroma) = (0u32, 0u64);
    for r in 0..rows {
        let y = (r * h.saturating_sub(1 + d)) / rows.max(1);
        for c in 0..cols {
            let x = (c * w.saturating_sub(1 + d)) / cols.max(1);
            let p = image.get_pixel(x, y);
            let l = luma(p);
            let right = luma(image.get_pixel((x + d).min(w - 1), y));
            let below = luma(image.get_pixel(x, (y + d).min(h - 1)));
            samples.push(l);
            gradients.push(l.abs_diff(right) as u16 + l.abs_diff(below) as u16);
            saturated += u32::from(l >= 250);
            let [r, g, b] = p.0.map(i16::from);
            chroma += ((r - g).abs() + (g - b).abs()) as u64;
        }
    }
    let n = samples.len().max(1) as f32;
    let mean = samples.iter().map(|v| f32::from(*v)).sum::<f32>() / n;
    let variance = samples.iter().map(|v| (f32::from(*v) - mean).powi(2)).sum::<f32>() / n;
    let std = variance.sqrt();
    // An edge is a step of at least 40% of the frame's spread (and 10 levels, above sensor noise):
    // dusk lowers steps and spread alike, a blur only the steps.
    let step = (0.4 * std).max(10.0);
    let edges = gradients.iter().filter(|g| f32::from(**g) >= step).count() as f32 / n;
    ViewStats {
        time,
        brightness: mean / 255.0,
        contrast: std / 255.0,
        saturated: saturated as f32 / n,
        edges,
        grey: (chroma as f32 / n) < GREY_CHROMA,
        luma: samples,
    }
}

impl ViewStats {
    /// Share of the picture that changed against `base`.
    fn changed_from(&self, base: &ViewStats) -> f32 {
        if self.luma.len() != base.luma.len() || self.luma.is_empty() {
            return 1.0;
        }
        let changed = self
            .luma
            .iter()
            .zip(&base.luma)
            .filter(|(a, b)| (i16::from(**a) - i16::from(**b)).abs() >= CHANGED)
            .count();
        changed as f32 / self.luma.len() as f32
    }

    /// Whether this view shows something: the baseline a loss is measured against.
    fn is_fine(&self) -> bool {
        self.contrast >= VIEW_OK && self.saturated < BLINDED / 2.0
    }

    /// How this view is lost against `base`, if it is.
    fn loss_against(&self, base: &ViewStats) -> Option<Loss> {
        // A cover or a torch changes most of the picture; a defocus may keep its colours.
        let changed = self.changed_from(base) >= MIN_CHANGED;
        if changed && self.saturated >= BLINDED {
            Some(Loss::Blinded)
        } else if changed && self.contrast < FLAT.min(base.contrast * FLAT_OF_BASELINE) {
            Some(Loss::Blocked)
        } else if base.edges >= 0.02 && self.edges < base.edges * DEFOCUSED {
            Some(Loss::Defocused)
        } else {
            None
        }
    }
}

/// The views of one alarm's analysed frames.
#[derive(Debug, Default, Clone)]
pub struct ViewCheck {
    /// The first fine view: the picture as it was before anything happened.
    baseline: Option<ViewStats>,
    frames: Vec<(ViewStats, Option<Loss>)>,
}

impl ViewCheck {
    pub fn observe(&mut self, stats: ViewStats) {
        if self.baseline.is_none() && stats.is_fine() {
            self.baseline = Some(stats.clone());
        }
        let loss = self.baseline.as_ref().and_then(|b| stats.loss_against(b));
        self.frames.push((stats, loss));
    }

    /// Whether the newest frame's view is lost.
    pub fn last_is_lost(&self) -> bool {
        self.frames.last().is_some_and(|(_, loss)| loss.is_some())
    }

    /// Whether any frame showed a fine view (one a loss could be measured against).
    pub fn saw_a_view(&self) -> bool {
        self.baseline.is_some()
    }

    /// Most frames were grey: night on an IR camera.
    pub fn is_night(&self) -> bool {
        !self.frames.is_empty() && self.frames.iter().filter(|(s, _)| s.grey).count() * 2 > self.frames.len()
    }

    /// The loss of view that lasted from around the alarm: a run of lost frames reaching the last
    /// analysed frame (two at least), or one that lasted `MIN_LOSS_S` after `since`.
    pub fn lost(&self, since: DateTime<Utc>) -> Option<LostView> {
        let base = self.baseline.as_ref()?;
        let mut runs: Vec<&[(ViewStats, Option<Loss>)]> = Vec::new();
        for run in self.frames.split(|(_, l)| l.is_none()) {
            if !run.is_empty() {
                runs.push(run);
            }
        }
        let ends_last = |run: &[(ViewStats, Option<Loss>)]| {
            run.last().map(|(s, _)| s.time) == self.frames.last().map(|(s, _)| s.time)
        };
        let run = runs.into_iter().find(|run| {
            let (Some((first, _)), Some((last, _))) = (run.first(), run.last()) else {
                return false;
            };
            last.time >= since
                && ((ends_last(run) && run.len() >= 2) || (last.time - first.time).as_seconds_f64() >= MIN_LOSS_S)
        })?;
        let (first, loss) = run.first().map(|(s, l)| (s, l.unwrap_or(Loss::Blocked)))?;
        Some(LostView {
            loss,
            from: first.time,
            reason: describe(loss, first, base),
        })
    }
}

/// A camera's view as the idle check sees it, in its state message: `ok`, `blocked`, `blinded`,
/// `defocused`, or `unknown` before a first fine view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ViewState {
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Every camera's idle check, shared by the service's check task (which writes it) and the live
/// analyses (which read it).
#[derive(Debug, Default)]
pub struct IdleViews(std::sync::Mutex<std::collections::HashMap<String, IdleView>>);

impl IdleViews {
    /// Takes a check of `camera`; true when its state changed.
    pub fn check(&self, camera: &str, stats: ViewStats) -> bool {
        crate::support::lock(&self.0)
            .entry(camera.to_owned())
            .or_default()
            .check(stats)
    }

    /// `camera`'s view state; None when it is not checked.
    pub fn state(&self, camera: &str) -> Option<ViewState> {
        crate::support::lock(&self.0).get(camera).map(IdleView::state)
    }

    /// The loss of view the idle check has seen on `camera`, if any.
    pub fn lost(&self, camera: &str) -> Option<LostView> {
        crate::support::lock(&self.0).get(camera)?.lost().cloned()
    }
}

/// The idle check of one camera, on its newest keyframe every `camera.view_check_s`: the last
/// fine view, and a loss of view against it once two checks in a row have seen it (a camera
/// covered or blinded while nothing happens, the tamper an operator expects to be told about).
#[derive(Debug, Default, Clone)]
pub struct IdleView {
    reference: Option<ViewStats>,
    first_seen: Option<(Loss, ViewStats)>,
    lost: Option<LostView>,
}

impl IdleView {
    /// Takes a check's measure; true when the state changed.
    pub fn check(&mut self, stats: ViewStats) -> bool {
        let before = self.state();
        self.take(stats);
        self.state() != before
    }

    fn take(&mut self, stats: ViewStats) {
        let loss = self.reference.as_ref().and_then(|r| Some((stats.loss_against(r)?, r)));
        let Some((loss, reference)) = loss else {
            if stats.is_fine() {
                self.reference = Some(stats);
            }
            self.first_seen = None;
            self.lost = None;
            return;
        };
        if self.lost.is_some() {
            return;
        }
        match self.first_seen.take() {
            Some((first_loss, first)) => {
                self.lost = Some(LostView {
                    loss: first_loss,
                    from: first.time,
                    reason: describe(first_loss, &first, reference),
                });
            }
            None => self.first_seen = Some((loss, stats)),
        }
    }

    /// The loss of view two checks in a row have seen, if any.
    pub fn lost(&self) -> Option<&LostView> {
        self.lost.as_ref()
    }

    pub fn state(&self) -> ViewState {
        match (&self.lost, &self.reference) {
            (Some(lost), _) => ViewState {
                state: lost.loss.name(),
                since: Some(crate::analysis::verdict::rfc3339(lost.from)),
                reason: Some(lost.reason.clone()),
            },
            (None, Some(_)) => ViewState {
                state: "ok",
                since: None,
                reason: None,
            },
            (None, None) => ViewState {
                state: "unknown",
                since: None,
                reason: None,
            },
        }
    }
}

fn describe(loss: Loss, lost: &ViewStats, base: &ViewStats) -> String {
    // chrono has no tenths of a second (`%.1f` is not a format it knows).
    let at = format!(
        "{}.{}",
        lost.time.format("%H:%M:%S"),
        lost.time.timestamp_subsec_millis() / 100
    );
    match loss {
        Loss::Blocked => format!(
            "view blocked from {at} ({}, contrast {:.2}, was {:.2})",
            if lost.brightness < 0.15 { "dark" } else { "flat" },
            lost.contrast,
            base.contrast
        ),
        Loss::Blinded => format!(
            "view blinded from {at} (saturated {:.0}% of the picture, was {:.0}%)",
            lost.saturated * 100.0,
            base.saturated * 100.0
        ),
        Loss::Defocused => format!(
            "view defocused from {at} (edges {:.1}% of the picture, were {:.1}%)",
            lost.edges * 100.0,
            base.edges * 100.0
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn scene(seed: u64) -> RgbImage {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut img = RgbImage::new(320, 180);
        // Blocks of colour: edges and contrast, like a real scene.
        for (x, y, p) in img.enumerate_pixels_mut() {
            let v = (((x / 20) * 37 + (y / 15) * 53) % 200) as u8 + 20;
            let n = rng.u8(0..4);
            *p = image::Rgb([v.saturating_add(n), v / 2 + 30, 255 - v]);
        }
        img
    }

    fn filled(v: u8) -> RgbImage {
        RgbImage::from_pixel(320, 180, image::Rgb([v, v, v]))
    }

    fn at(s: f64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_000, 0).unwrap_or_default() + TimeDelta::milliseconds((s * 1000.0) as i64)
    }

    fn check(frames: &[RgbImage]) -> ViewCheck {
        let mut check = ViewCheck::default();
        for (i, f) in frames.iter().enumerate() {
            check.observe(measure(f, at(i as f64)));
        }
        check
    }

    #[test]
    fn a_covered_lens_is_a_blocked_view_from_the_first_dark_frame() {
        let frames = [scene(1), scene(2), filled(5), filled(6), filled(4)];
        let lost = check(&frames).lost(at(1.0));
        let lost = lost.map(|l| (l.loss, l.from, l.reason));
        assert!(
            matches!(&lost, Some((Loss::Blocked, t, r)) if *t == at(2.0) && r.contains("dark")),
            "{lost:?}"
        );
    }

    #[test]
    fn a_torch_is_a_blinded_view_and_a_blur_a_defocused_one() {
        let torch = [scene(1), scene(2), filled(255), filled(254)];
        assert_eq!(check(&torch).lost(at(0.0)).map(|l| l.loss), Some(Loss::Blinded));
        let blurred: Vec<RgbImage> = [scene(3), scene(4)]
            .into_iter()
            .chain((0..3).map(|i| image::imageops::blur(&scene(5 + i), 12.0)))
            .collect();
        assert_eq!(check(&blurred).lost(at(0.0)).map(|l| l.loss), Some(Loss::Defocused));
    }

    #[test]
    fn always_dark_brief_losses_and_dimming_do_not_trip_it() {
        let dark = [filled(3), filled(4), filled(3)];
        assert!(check(&dark).lost(at(0.0)).is_none(), "a scene that was always dark");
        let flash = [scene(1), filled(255), scene(2), scene(3)];
        assert!(
            check(&flash).lost(at(0.0)).is_none(),
            "one saturated frame (headlights)"
        );
        let dim: Vec<RgbImage> = (0..4)
            .map(|i| {
                let mut s = scene(i);
                s.iter_mut().for_each(|v| *v = (*v as f32 * 0.35) as u8);
                s
            })
            .collect();
        let frames = [scene(9), dim[0].clone(), dim[1].clone(), dim[2].clone()];
        assert!(check(&frames).lost(at(0.0)).is_none(), "lights dimmed to 35%");
    }

    #[test]
    fn the_idle_check_reports_a_loss_seen_twice_and_its_end() {
        let mut idle = IdleView::default();
        assert_eq!(idle.state().state, "unknown");
        assert!(idle.check(measure(&scene(1), at(0.0))), "unknown -> ok");
        assert!(
            !idle.check(measure(&filled(3), at(60.0))),
            "one dark check is not yet a tamper"
        );
        assert!(idle.check(measure(&filled(3), at(120.0))));
        let state = idle.state();
        assert_eq!((state.state, state.since.is_some()), ("blocked", true), "{state:?}");
        assert!(idle.lost().is_some_and(|l| l.from == at(60.0)));
        assert!(idle.check(measure(&scene(2), at(180.0))), "the view came back");
        assert_eq!(idle.state().state, "ok");
    }

    #[test]
    fn grey_frames_are_night() {
        assert!(check(&[filled(80), filled(90)]).is_night());
        assert!(!check(&[scene(1), scene(2)]).is_night());
    }
}
