//! Server-rendered SVG plots. This module only computes coordinates; the
//! markup is in `web/templates/plot.html`, so every label goes through
//! askama's escaping like any other text on the page.

pub const WIDTH: f64 = 900.0;
pub const HEIGHT: f64 = 300.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 44.0;

pub struct Tick {
    pub pos: String,
    pub label: String,
}

pub struct Series {
    pub name: String,
    pub class: String,
    /// The `d` attribute of the line: numbers and M/L only.
    pub path: String,
}

pub struct Point {
    pub x: String,
    pub y: String,
    pub class: String,
    pub title: String,
    pub href: Option<String>,
}

/// A vertical error bar.
pub struct Whisker {
    pub x: String,
    pub y_lo: String,
    pub y_hi: String,
    pub cap_l: String,
    pub cap_r: String,
}

/// A vertical marker line across the plot.
pub struct Marker {
    pub x: String,
    pub label: String,
}

pub struct Plot {
    pub id: String,
    pub title: String,
    pub width: f64,
    pub height: f64,
    pub left: f64,
    pub right_edge: f64,
    pub top: f64,
    pub bottom_edge: f64,
    pub x_label: String,
    pub y_label: String,
    pub x_ticks: Vec<Tick>,
    pub y_ticks: Vec<Tick>,
    pub series: Vec<Series>,
    pub points: Vec<Point>,
    pub whiskers: Vec<Whisker>,
    pub markers: Vec<Marker>,
    pub legend: Vec<(String, String)>,
    /// Plain-text summary for screen readers and text browsers.
    pub summary: String,
}

fn f(v: f64) -> String {
    format!("{v:.1}")
}

/// A "nice" upper bound and step for an axis from 0 to `max`.
fn nice_axis(max: f64) -> (f64, f64) {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

struct Frame {
    x_min: f64,
    x_max: f64,
    y_max: f64,
}

impl Frame {
    fn x(&self, v: f64) -> f64 {
        let span = (self.x_max - self.x_min).max(1e-9);
        LEFT + (v - self.x_min) / span * (WIDTH - LEFT - RIGHT)
    }
    fn y(&self, v: f64) -> f64 {
        HEIGHT - BOTTOM - (v / self.y_max).clamp(0.0, 1.0) * (HEIGHT - TOP - BOTTOM)
    }
}

fn empty(id: &str, title: &str, x_label: &str, y_label: &str) -> Plot {
    Plot {
        id: id.to_owned(),
        title: title.to_owned(),
        width: WIDTH,
        height: HEIGHT,
        left: LEFT,
        right_edge: WIDTH - RIGHT,
        top: TOP,
        bottom_edge: HEIGHT - BOTTOM,
        x_label: x_label.to_owned(),
        y_label: y_label.to_owned(),
        x_ticks: Vec::new(),
        y_ticks: Vec::new(),
        series: Vec::new(),
        points: Vec::new(),
        whiskers: Vec::new(),
        markers: Vec::new(),
        legend: Vec::new(),
        summary: String::new(),
    }
}

fn y_ticks(frame: &Frame, step: f64, fmt: impl Fn(f64) -> String) -> Vec<Tick> {
    let mut out = Vec::new();
    let mut v = 0.0;
    while v <= frame.y_max + step * 0.01 {
        out.push(Tick {
            pos: f(frame.y(v)),
            label: fmt(v),
        });
        v += step;
    }
    out
}

/// One series of a line plot: its name, CSS class and (x, y) values.
pub struct LineInput {
    pub name: &'static str,
    pub class: &'static str,
    pub values: Vec<(f64, f64)>,
}

/// Per-cycle timings of a job: x = cycle, y = milliseconds. `bad` are
/// cycles (x values) where the guest died; `marker` e.g. the failed cycle.
pub fn timings(
    lines: Vec<LineInput>,
    bad: &[f64],
    marker: Option<(f64, String)>,
    x_max: f64,
    bucket: i32,
) -> Plot {
    let title = if bucket > 1 {
        format!("Per-cycle timings (each point: the largest of {bucket} cycles)")
    } else {
        "Per-cycle timings".to_owned()
    };
    let mut plot = empty("timings", &title, "cycle", "ms");
    let y_max = lines
        .iter()
        .flat_map(|l| l.values.iter().map(|v| v.1))
        .fold(0.0, f64::max);
    let (y_top, step) = nice_axis(y_max);
    let frame = Frame {
        x_min: 1.0,
        x_max: x_max.max(2.0),
        y_max: y_top,
    };
    plot.y_ticks = y_ticks(&frame, step, |v| format!("{v}"));
    let (x_top, x_step) = nice_axis(frame.x_max);
    let mut v = 0.0;
    while v <= x_top && v <= frame.x_max {
        if v >= 1.0 {
            plot.x_ticks.push(Tick {
                pos: f(frame.x(v)),
                label: format!("{v}"),
            });
        }
        v += x_step;
    }
    if plot.x_ticks.is_empty() {
        plot.x_ticks.push(Tick {
            pos: f(frame.x(1.0)),
            label: "1".into(),
        });
    }
    let mut summary = Vec::new();
    for l in &lines {
        if l.values.is_empty() {
            continue;
        }
        let mut d = String::new();
        for (i, (x, y)) in l.values.iter().enumerate() {
            d.push_str(&format!(
                "{}{},{} ",
                if i == 0 { 'M' } else { 'L' },
                f(frame.x(*x)),
                f(frame.y(*y))
            ));
        }
        if l.values.len() <= 400 {
            for (x, y) in &l.values {
                plot.points.push(Point {
                    x: f(frame.x(*x)),
                    y: f(frame.y(*y)),
                    class: l.class.to_owned(),
                    title: format!("cycle {x}: {} {y:.1} ms", l.name),
                    href: None,
                });
            }
        }
        let max = l.values.iter().map(|v| v.1).fold(0.0, f64::max);
        summary.push(format!("{}: max {max:.1} ms", l.name));
        plot.series.push(Series {
            name: l.name.to_owned(),
            class: l.class.to_owned(),
            path: d.trim_end().to_owned(),
        });
        plot.legend.push((l.name.to_owned(), l.class.to_owned()));
    }
    for x in bad {
        plot.points.push(Point {
            x: f(frame.x(*x)),
            y: f(frame.y(0.0)),
            class: "dead".into(),
            title: format!("cycle {x}: guest not alive"),
            href: None,
        });
    }
    if !bad.is_empty() {
        plot.legend.push(("guest not alive".into(), "dead".into()));
    }
    if let Some((x, label)) = marker {
        plot.markers.push(Marker {
            x: f(frame.x(x)),
            label,
        });
    }
    plot.summary = format!(
        "{} cycles plotted. {}",
        lines.first().map(|l| l.values.len()).unwrap_or(0),
        summary.join("; ")
    );
    plot
}

/// One kernel on a branch trend plot.
pub struct TrendInput {
    pub kernel_id: i64,
    pub label: String,
    pub rate: f64,
    pub lo: f64,
    pub hi: f64,
    pub class: String,
    pub detail: String,
}

/// Failure rate per kernel along a branch (oldest left), with 95% CI
/// whiskers; each point links to its kernel.
pub fn trend(points: &[TrendInput], title: &str) -> Plot {
    let mut plot = empty(
        "trend",
        title,
        "kernel (oldest → newest)",
        "failure rate per cycle",
    );
    let y_max = points.iter().map(|p| p.hi.max(p.rate)).fold(0.0, f64::max);
    let (y_top, step) = nice_axis((y_max * 100.0).max(0.1));
    let frame = Frame {
        x_min: -0.5,
        x_max: points.len() as f64 - 0.5,
        y_max: y_top / 100.0,
    };
    plot.y_ticks = y_ticks(
        &Frame {
            y_max: y_top,
            ..frame
        },
        step,
        |v| format!("{v}%"),
    );
    // y_ticks were computed on a percent frame; positions are identical.
    let every = (points.len() / 12).max(1);
    let mut d = String::new();
    for (i, p) in points.iter().enumerate() {
        let x = frame.x(i as f64);
        if i % every == 0 {
            plot.x_ticks.push(Tick {
                pos: f(x),
                label: p.label.clone(),
            });
        }
        let y = frame.y(p.rate);
        d.push_str(&format!(
            "{}{},{} ",
            if i == 0 { 'M' } else { 'L' },
            f(x),
            f(y)
        ));
        plot.whiskers.push(Whisker {
            x: f(x),
            y_lo: f(frame.y(p.lo)),
            y_hi: f(frame.y(p.hi)),
            cap_l: f(x - 4.0),
            cap_r: f(x + 4.0),
        });
        plot.points.push(Point {
            x: f(x),
            y: f(y),
            class: p.class.clone(),
            title: format!("{}: {}", p.label, p.detail),
            href: Some(format!("/kernels/{}", p.kernel_id)),
        });
    }
    if !points.is_empty() {
        plot.series.push(Series {
            name: "failure rate".into(),
            class: "rate".into(),
            path: d.trim_end().to_owned(),
        });
    }
    plot.summary = points
        .iter()
        .map(|p| format!("{}: {}", p.label, p.detail))
        .collect::<Vec<_>>()
        .join("; ");
    plot
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_are_round() {
        assert_eq!(nice_axis(7.3), (8.0, 2.0));
        assert_eq!(nice_axis(0.0), (1.0, 0.2));
        assert_eq!(nice_axis(430.0), (500.0, 100.0));
    }

    #[test]
    fn trend_points_link_to_kernels_and_stay_inside() {
        let pts: Vec<TrendInput> = (0..3)
            .map(|i| TrendInput {
                kernel_id: i,
                label: format!("k{i}"),
                rate: 0.01 * i as f64,
                lo: 0.0,
                hi: 0.03,
                class: "v-pass".into(),
                detail: "x".into(),
            })
            .collect();
        let p = trend(&pts, "t");
        assert_eq!(p.points.len(), 3);
        assert_eq!(p.points[2].href.as_deref(), Some("/kernels/2"));
        for pt in &p.points {
            let y: f64 = pt.y.parse().unwrap();
            assert!(y >= TOP && y <= HEIGHT - BOTTOM, "{y}");
        }
    }
}
