//! The throughput-vs-events chart of the scaling figure, as SVG.

use std::fmt::Write as _;

/// One size of the scaling figure: events, batch ingest events/s, cold rebuild events/s.
pub struct Point {
    pub events: usize,
    pub ingest_per_s: f64,
    pub rebuild_per_s: f64,
    pub bare_ingest_per_s: f64,
}

pub fn scaling_svg(points: &[Point]) -> String {
    let (width, height, left, top, plot_w, plot_h) = (760.0, 420.0, 90.0, 60.0, 600.0, 280.0);
    let max = points
        .iter()
        .flat_map(|point| {
            [
                point.ingest_per_s,
                point.rebuild_per_s,
                point.bare_ingest_per_s,
            ]
        })
        .fold(1.0_f64, f64::max);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="DejaVu Sans, sans-serif"><rect width="{width}" height="{height}" fill="#fff"/>"##
    );
    let _ = write!(
        svg,
        r##"<text x="{left}" y="32" font-size="18" font-weight="bold">Throughput vs log size (events/s, log scale on x)</text>"##
    );
    let _ = write!(
        svg,
        r##"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="#333"/><line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="#333"/>"##,
        top + plot_h,
        left + plot_w,
        top + plot_h,
        top + plot_h
    );
    let x_of = |index: usize| left + plot_w * (index as f64 + 0.5) / points.len().max(1) as f64;
    let y_of = |value: f64| top + plot_h - plot_h * value / max;
    for tick in 0..=4 {
        let value = max * f64::from(tick) / 4.0;
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" font-size="11" text-anchor="end">{:.0}k</text>"##,
            left - 6.0,
            y_of(value) + 4.0,
            value / 1000.0
        );
    }
    type Value = fn(&Point) -> f64;
    let series: [(&str, &str, Value); 3] = [
        ("batch ingest (engine)", "#4f46e5", |point| {
            point.ingest_per_s
        }),
        ("bare sled (baseline)", "#9ca3af", |point| {
            point.bare_ingest_per_s
        }),
        ("cold rebuild", "#059669", |point| point.rebuild_per_s),
    ];
    for (name_index, (name, color, value)) in series.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .enumerate()
            .map(|(index, point)| format!("{:.1},{:.1}", x_of(index), y_of(value(point))))
            .collect();
        let _ = write!(
            svg,
            r##"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2.5"/>"##,
            path.join(" ")
        );
        for (index, point) in points.iter().enumerate() {
            let _ = write!(
                svg,
                r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{color}"/>"##,
                x_of(index),
                y_of(value(point))
            );
        }
        let _ = write!(
            svg,
            r##"<rect x="{}" y="{}" width="14" height="4" fill="{color}"/><text x="{}" y="{}" font-size="12">{name}</text>"##,
            left + 10.0 + name_index as f64 * 200.0,
            height - 30.0,
            left + 30.0 + name_index as f64 * 200.0,
            height - 25.0
        );
    }
    for (index, point) in points.iter().enumerate() {
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{}" font-size="12" text-anchor="middle">{} events</text>"##,
            x_of(index),
            top + plot_h + 18.0,
            point.events
        );
    }
    svg.push_str("</svg>\n");
    svg
}
