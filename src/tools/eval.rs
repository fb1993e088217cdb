//! `alarm-verifier eval DIR`: the verify-clip path over a labelled set of clips, scored.
//!
//! `DIR/labels.tsv` has one clip a line: `clip<TAB>expected<TAB>alarm_at_s[<TAB>note]`, with
//! `expected` one of `verified`, `false_alarm` and `unverifiable`, and `#` starting a comment line.
//! `unverifiable` labels a clip whose view was lost (covered, blinded, sprayed): anything but
//! `false_alarm` is right for it, since nobody can say that nobody was there.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::analysis::verdict::VerdictKind;
use crate::analysis::verify::{Verifier, VerifyError};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: cannot read: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{path}:{line}: {problem}")]
    Line {
        path: PathBuf,
        line: usize,
        problem: LineProblem,
    },
}

/// What is wrong with a line of `labels.tsv`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LineProblem {
    #[error("expected clip<TAB>expected<TAB>alarm_at_s[<TAB>note]")]
    Columns,
    #[error("expected verdict `verified`, `false_alarm` or `unverifiable`, got {0:?}")]
    Verdict(String),
    #[error("expected the alarm time in seconds, got {0:?}")]
    AlarmTime(String),
}

/// One labelled clip.
#[derive(Debug, Clone)]
pub struct Case {
    pub clip: PathBuf,
    pub expected: VerdictKind,
    pub alarm_at: f64,
    pub note: String,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub case: Case,
    /// The verdict, or the error that kept the clip from one.
    pub got: Result<VerdictKind, Arc<VerifyError>>,
    pub reason: String,
    pub latency_ms: u64,
}

pub struct Report {
    pub outcomes: Vec<Outcome>,
}

pub fn read_labels(dir: &Path) -> Result<Vec<Case>, EvalError> {
    let path = dir.join("labels.tsv");
    let text = std::fs::read_to_string(&path).map_err(|error| EvalError::Read {
        path: path.clone(),
        error,
    })?;
    let mut cases = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_err = |problem: LineProblem| EvalError::Line {
            path: path.clone(),
            line: i + 1,
            problem,
        };
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        let [clip, expected, alarm_at, rest @ ..] = cols.as_slice() else {
            return Err(line_err(LineProblem::Columns));
        };
        let expected = match *expected {
            "verified" => VerdictKind::Verified,
            "false_alarm" => VerdictKind::FalseAlarm,
            "unverifiable" => VerdictKind::Unverifiable,
            other => {
                return Err(line_err(LineProblem::Verdict(other.to_owned())));
            }
        };
        let alarm_at: f64 = alarm_at
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| line_err(LineProblem::AlarmTime((*alarm_at).to_owned())))?;
        cases.push(Case {
            clip: dir.join(clip),
            expected,
            alarm_at,
            note: rest.join(" "),
        });
    }
    Ok(cases)
}

pub fn run(verifier: &Arc<Verifier>, cases: Vec<Case>) -> Report {
    let outcomes = cases
        .into_iter()
        .map(|case| {
            let started = Instant::now();
            let result = verifier.verify_file(&case.clip, case.alarm_at, "eval");
            let latency_ms = started.elapsed().as_millis() as u64;
            match result {
                Ok(f) => Outcome {
                    got: Ok(f.doc.verdict),
                    reason: f.doc.reason,
                    latency_ms,
                    case,
                },
                Err(e) => Outcome {
                    reason: e.to_string(),
                    got: Err(Arc::new(e)),
                    latency_ms,
                    case,
                },
            }
        })
        .collect();
    Report { outcomes }
}

fn name(kind: VerdictKind) -> &'static str {
    match kind {
        VerdictKind::Verified => "verified",
        VerdictKind::FalseAlarm => "false_alarm",
        VerdictKind::Unverifiable => "unverifiable",
    }
}

impl Outcome {
    /// Right: the expected verdict, or for a lost view anything but `false_alarm`.
    pub fn is_right(&self) -> bool {
        match (&self.got, self.case.expected) {
            (Ok(got), VerdictKind::Unverifiable) => *got != VerdictKind::FalseAlarm,
            (Ok(got), expected) => *got == expected,
            (Err(_), _) => false,
        }
    }
}

impl Report {
    fn count(&self, expected: VerdictKind, got: Option<VerdictKind>) -> usize {
        self.outcomes
            .iter()
            .filter(|o| o.case.expected == expected && o.got.as_ref().ok().copied() == got)
            .count()
    }

    fn total(&self, expected: VerdictKind) -> usize {
        self.outcomes.iter().filter(|o| o.case.expected == expected).count()
    }

    /// Real intrusions verified, as a fraction (1 when there are none).
    pub fn recall(&self) -> f64 {
        ratio(
            self.count(VerdictKind::Verified, Some(VerdictKind::Verified)),
            self.total(VerdictKind::Verified),
        )
    }

    /// Lost views not dismissed as `false_alarm`, as a fraction (1 when there are none).
    pub fn lost_views_kept(&self) -> f64 {
        let (right, total) = self.lost_views();
        ratio(right, total)
    }

    fn lost_views(&self) -> (usize, usize) {
        let cases = self
            .outcomes
            .iter()
            .filter(|o| o.case.expected == VerdictKind::Unverifiable);
        let right = cases.clone().filter(|o| o.is_right()).count();
        (right, cases.count())
    }

    /// False alarms answered `false_alarm`, as a fraction.
    pub fn filtering(&self) -> f64 {
        ratio(
            self.count(VerdictKind::FalseAlarm, Some(VerdictKind::FalseAlarm)),
            self.total(VerdictKind::FalseAlarm),
        )
    }

    fn latency_percentile(&self, p: f64) -> u64 {
        let mut v: Vec<u64> = self.outcomes.iter().map(|o| o.latency_ms).collect();
        v.sort_unstable();
        let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1)) - 1;
        v.get(rank).copied().unwrap_or(0)
    }

    pub fn render(&self) -> String {
        let mut out =
            String::from("| clip | alarm s | expected | got | ok | ms | reason |\n|---|---|---|---|---|---|---|\n");
        for o in &self.outcomes {
            let got = match &o.got {
                Ok(k) => name(*k).to_owned(),
                Err(_) => "error".to_owned(),
            };
            let ok = if o.is_right() { "yes" } else { "NO" };
            let clip = o
                .case
                .clip
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push_str(&format!(
                "| {clip} | {} | {} | {got} | {ok} | {} | {} |\n",
                o.case.alarm_at,
                name(o.case.expected),
                o.latency_ms,
                o.reason.replace('|', "/")
            ));
        }
        out.push_str("\nconfusion (rows: expected, columns: got)\n\n| | verified | false_alarm | unverifiable | error |\n|---|---|---|---|---|\n");
        for expected in [
            VerdictKind::Verified,
            VerdictKind::FalseAlarm,
            VerdictKind::Unverifiable,
        ] {
            if expected == VerdictKind::Unverifiable && self.total(expected) == 0 {
                continue;
            }
            let errors = self
                .outcomes
                .iter()
                .filter(|o| o.case.expected == expected && o.got.is_err())
                .count();
            out.push_str(&format!(
                "| {} | {} | {} | {} | {errors} |\n",
                name(expected),
                self.count(expected, Some(VerdictKind::Verified)),
                self.count(expected, Some(VerdictKind::FalseAlarm)),
                self.count(expected, Some(VerdictKind::Unverifiable)),
            ));
        }
        out.push_str(&format!("\n{}\n", self.summary()));
        out
    }

    /// The one line CI and the README quote.
    pub fn summary(&self) -> String {
        let (kept, lost) = self.lost_views();
        format!(
            "recall on real intrusions: {}/{} ({:.1}%); lost views not dismissed: {kept}/{lost}; false alarms filtered: {}/{} ({:.1}%); latency per clip: median {} ms, p95 {} ms",
            self.count(VerdictKind::Verified, Some(VerdictKind::Verified)),
            self.total(VerdictKind::Verified),
            self.recall() * 100.0,
            self.count(VerdictKind::FalseAlarm, Some(VerdictKind::FalseAlarm)),
            self.total(VerdictKind::FalseAlarm),
            self.filtering() * 100.0,
            self.latency_percentile(0.5),
            self.latency_percentile(0.95),
        )
    }
}

fn ratio(n: usize, d: usize) -> f64 {
    if d == 0 { 1.0 } else { n as f64 / d as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_file_errors_name_the_line() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(
            dir.path().join("labels.tsv"),
            "# c\te\tt\na.mp4\tverified\t5\tnote here\nb.mp4\tmaybe\t5\n",
        )
        .expect("write");
        let err = read_labels(dir.path()).unwrap_err().to_string();
        assert!(err.contains("labels.tsv:3") && err.contains("maybe"), "{err}");
        std::fs::write(
            dir.path().join("labels.tsv"),
            "a.mp4\tverified\t5\tnote here\nb.mp4\tfalse_alarm\t2.5\n",
        )
        .expect("write");
        let cases = read_labels(dir.path()).expect("valid");
        assert_eq!(cases.len(), 2);
        assert_eq!(cases[1].alarm_at, 2.5);
        assert_eq!(cases[0].note, "note here");
    }
}
