//! Inline SVG plots for the status page (issue 16 item 2): drawn by the server from
//! bounded aggregates, so the page needs no script and no network. Pure: numbers in, SVG
//! text out. Every label goes through [`esc`]; every bar carries its count in
//! `data-count` and a `<title>`, so a test (or a person hovering) reads the exact figure.

use crate::page::esc;
use std::fmt::Write;

const W: f64 = 640.0;
const H: f64 = 190.0;
/// Left margin (axis labels), bottom margin (bar labels), top margin.
const ML: f64 = 44.0;
const MB: f64 = 34.0;
const MT: f64 = 14.0;

/// Colours of outcome classes, errors in warm colours.
pub fn class_colour(class: &str) -> &'static str {
    match class {
        "ok" => "#2f9e44",
        "waiting" => "#e8a317",
        "transient" => "#f08c00",
        "rate-limited" => "#ae3ec9",
        "gone" => "#868e96",
        "local" => "#d64545",
        "auth" => "#1c7ed6",
        "events" => "#3b7dd8",
        _ => "#495057",
    }
}

/// A round number at or above `v` for the y axis (1, 2, 5 × 10^n).
fn nice_max(v: u64) -> u64 {
    let mut step = 1u64;
    loop {
        for m in [1, 2, 5] {
            if step.saturating_mul(m) >= v {
                return step.saturating_mul(m).max(1);
            }
        }
        step = step.saturating_mul(10);
    }
}

fn open(h: &mut String, id: &str, label: &str) {
    let _ = write!(
        h,
        "<svg id=\"{id}\" class=\"plot\" viewBox=\"0 0 {W} {H}\" width=\"100%\" role=\"img\" \
         aria-label=\"{}\" xmlns=\"http://www.w3.org/2000/svg\" font-size=\"10\" \
         font-family=\"system-ui,sans-serif\">",
        esc(label)
    );
}

fn y_axis(h: &mut String, max: u64) {
    let base = H - MB;
    // The middle line only where it names a whole number.
    let fracs: &[f64] = if max.is_multiple_of(2) {
        &[0.0, 0.5, 1.0]
    } else {
        &[0.0, 1.0]
    };
    for frac in fracs {
        let y = base - frac * (base - MT);
        let _ = write!(
            h,
            "<line x1=\"{ML}\" x2=\"{W}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e3e8ee\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#5b6b7c\">{}</text>",
            ML - 4.0,
            y + 3.0,
            (max as f64 * frac) as u64
        );
    }
}

/// A bar chart: one bar per `(label, count)`; `marker` draws a dashed line after the bar
/// of that index, with its text (the staleness plot's `max_interval`).
pub fn bars(
    id: &str,
    label: &str,
    bars: &[(String, u64)],
    marker: Option<(usize, &str)>,
) -> String {
    let mut h = String::with_capacity(4096);
    open(&mut h, id, label);
    let max = nice_max(bars.iter().map(|(_, n)| *n).max().unwrap_or(0));
    y_axis(&mut h, max);
    let n = bars.len().max(1) as f64;
    let slot = (W - ML) / n;
    let base = H - MB;
    for (i, (l, c)) in bars.iter().enumerate() {
        let x = ML + i as f64 * slot;
        let bh = (*c as f64 / max as f64) * (base - MT);
        let _ = write!(
            h,
            "<rect class=\"bar\" data-label=\"{l}\" data-count=\"{c}\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" \
             height=\"{bh:.1}\" fill=\"#3b7dd8\"><title>{l}: {c}</title></rect>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#5b6b7c\">{l}</text>",
            x + slot * 0.1,
            base - bh,
            slot * 0.8,
            x + slot / 2.0,
            base + 13.0,
            l = esc(l),
        );
        if *c > 0 {
            let _ = write!(
                h,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#1f2933\">{c}</text>",
                x + slot / 2.0,
                base - bh - 3.0
            );
        }
    }
    if let Some((i, text)) = marker {
        let x = ML + (i + 1).min(bars.len()) as f64 * slot;
        // The text on the side of the line with room for it.
        let (tx, anchor) = if x > W * 0.55 {
            (x - 4.0, "end")
        } else {
            (x + 4.0, "start")
        };
        let _ = write!(
            h,
            "<line class=\"marker\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{MT}\" y2=\"{:.1}\" stroke=\"#d64545\" \
             stroke-dasharray=\"4 3\" stroke-width=\"1.5\"/><text x=\"{tx:.1}\" y=\"{:.1}\" \
             text-anchor=\"{anchor}\" fill=\"#d64545\">{}</text>",
            base + 18.0,
            MT + 8.0,
            esc(text)
        );
    }
    h.push_str("</svg>");
    h
}

/// Per-minute stacked columns (oldest first): each minute's counts by class, stacked in
/// the order of `classes`. A legend with each class's total follows the plot.
pub fn per_minute(
    id: &str,
    label: &str,
    minutes: &[Vec<(String, u64)>],
    classes: &[String],
) -> String {
    let mut h = String::with_capacity(8192);
    open(&mut h, id, label);
    let max = nice_max(
        minutes
            .iter()
            .map(|m| m.iter().map(|(_, n)| n).sum::<u64>())
            .max()
            .unwrap_or(0),
    );
    y_axis(&mut h, max);
    let n = minutes.len().max(1) as f64;
    let slot = (W - ML) / n;
    let base = H - MB;
    for (i, m) in minutes.iter().enumerate() {
        let x = ML + i as f64 * slot;
        let mut y = base;
        for class in classes {
            let Some((_, c)) = m.iter().find(|(k, _)| k == class) else {
                continue;
            };
            let bh = (*c as f64 / max as f64) * (base - MT);
            y -= bh;
            let ago = minutes.len() - 1 - i;
            let _ = write!(
                h,
                "<rect class=\"seg\" data-class=\"{k}\" data-count=\"{c}\" x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" \
                 height=\"{bh:.1}\" fill=\"{}\"><title>{ago} min ago: {c} {k}</title></rect>",
                x + slot * 0.1,
                slot * 0.8,
                class_colour(class),
                k = esc(class),
            );
        }
    }
    for (x, t, anchor) in [
        (ML, "−60 min", "start"),
        (ML + (W - ML) / 2.0, "−30 min", "middle"),
        (W - 3.0, "now", "end"),
    ] {
        let _ = write!(
            h,
            "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\" fill=\"#5b6b7c\">{t}</text>",
            base + 13.0
        );
    }
    h.push_str("</svg><div class=\"legend\">");
    for class in classes {
        let total: u64 = minutes
            .iter()
            .flat_map(|m| m.iter().filter(|(k, _)| k == class).map(|(_, n)| n))
            .sum();
        let _ = write!(
            h,
            "<span><i style=\"background:{}\"></i>{} <b data-total=\"{}\">{total}</b></span>",
            class_colour(class),
            esc(class),
            esc(class),
        );
    }
    h.push_str("</div>");
    h
}

/// One worker's share of the owned repos against its weighted fair share.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    pub label: String,
    pub repos: usize,
    /// `repos` / all owned repos.
    pub actual: f64,
    /// Its weight / the live workers' weights (0 when not alive).
    pub fair: f64,
}

/// Horizontal bars of each worker's share, with its fair share marked.
pub fn shares(id: &str, shares: &[Share]) -> String {
    let row = 22.0;
    let height = MT + row * shares.len().max(1) as f64 + 6.0;
    let lw = 150.0;
    let mut h = String::with_capacity(2048);
    let _ = write!(
        h,
        "<svg id=\"{id}\" class=\"plot\" viewBox=\"0 0 {W} {height}\" width=\"100%\" role=\"img\" \
         aria-label=\"each worker's share of repos against its weighted fair share\" \
         xmlns=\"http://www.w3.org/2000/svg\" font-size=\"10\" font-family=\"system-ui,sans-serif\">"
    );
    let span = W - lw - 110.0;
    let top = shares
        .iter()
        .map(|s| s.actual.max(s.fair))
        .fold(0.0f64, f64::max)
        .max(0.01);
    for (i, s) in shares.iter().enumerate() {
        let y = MT + i as f64 * row;
        let aw = s.actual / top * span;
        let fx = lw + s.fair / top * span;
        let _ = write!(
            h,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#1f2933\">{l}</text>\
             <rect class=\"share\" data-label=\"{l}\" data-count=\"{}\" data-share=\"{:.4}\" data-fair=\"{:.4}\" \
             x=\"{lw}\" y=\"{y:.1}\" width=\"{aw:.1}\" height=\"{:.1}\" fill=\"#3b7dd8\">\
             <title>{l}: {} repos, {:.1} % (fair {:.1} %)</title></rect>\
             <line x1=\"{fx:.1}\" x2=\"{fx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#1f2933\" stroke-width=\"2\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#5b6b7c\">{:.1} % / {:.1} %</text>",
            lw - 6.0,
            y + 12.0,
            s.repos,
            s.actual,
            s.fair,
            row - 8.0,
            s.repos,
            s.actual * 100.0,
            s.fair * 100.0,
            y - 2.0,
            y + row - 6.0,
            lw + span + 8.0,
            y + 12.0,
            s.actual * 100.0,
            s.fair * 100.0,
            l = esc(&s.label),
        );
    }
    h.push_str("</svg>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(svg: &str, attr: &str) -> Vec<String> {
        svg.split(attr)
            .skip(1)
            .map(|s| s.split('"').nth(1).unwrap_or("").to_owned())
            .collect()
    }

    // Issue 16 item 2: a bar per bucket with its exact count, the marker after its bucket,
    // labels escaped.
    #[test]
    fn issue16_bars_carry_counts_and_marker() {
        let svg = bars(
            "s",
            "staleness",
            &[("≤1 min".into(), 3), ("<b>".into(), 0), ("≤1 h".into(), 12)],
            Some((2, "max_interval 1 h")),
        );
        assert_eq!(counts(&svg, "data-count="), ["3", "0", "12"]);
        assert!(svg.contains("&lt;b&gt;") && !svg.contains("<b>"));
        assert_eq!(svg.matches("class=\"marker\"").count(), 1);
        assert!(svg.contains("max_interval 1 h"));
        // The tallest bar fills the axis to its round maximum (20).
        assert!(svg.contains(">20</text>"), "{svg}");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }

    #[test]
    fn issue16_per_minute_stacks_classes_and_totals_them() {
        let minutes = vec![
            vec![("ok".to_owned(), 2), ("transient".to_owned(), 1)],
            vec![],
            vec![("ok".to_owned(), 4)],
        ];
        let classes = ["ok".to_owned(), "transient".to_owned()];
        let svg = per_minute("o", "outcomes", &minutes, &classes);
        assert_eq!(counts(&svg, "data-count="), ["2", "1", "4"]);
        assert_eq!(counts(&svg, "data-total="), ["ok", "transient"]);
        assert!(svg.contains("data-total=\"ok\">6</b>"), "{svg}");
        assert!(svg.contains("data-total=\"transient\">1</b>"), "{svg}");
    }

    #[test]
    fn issue16_shares_show_actual_and_fair() {
        let svg = shares(
            "w",
            &[
                Share {
                    label: "0 a".into(),
                    repos: 30,
                    actual: 0.75,
                    fair: 0.5,
                },
                Share {
                    label: "1 <b>".into(),
                    repos: 10,
                    actual: 0.25,
                    fair: 0.5,
                },
            ],
        );
        assert_eq!(counts(&svg, "data-share="), ["0.7500", "0.2500"]);
        assert_eq!(counts(&svg, "data-fair="), ["0.5000", "0.5000"]);
        assert!(svg.contains("75.0 % / 50.0 %"));
        assert!(!svg.contains("<b>"));
    }

    #[test]
    fn nice_maxima() {
        assert_eq!(nice_max(0), 1);
        assert_eq!(nice_max(3), 5);
        assert_eq!(nice_max(12), 20);
        assert_eq!(nice_max(1_000_000), 1_000_000);
    }
}
