//! Medians over repeated runs and the self-contained HTML report (`--out DIR`): inline SVG charts drawn here, no
//! scripts, no styles or fonts from elsewhere.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// The median of the finite values (the mean of the middle two for an even count); `None` if there are none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// The runs of one server at one N, and the median of each figure over them (`None`: no run had the figure).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Group {
    pub server: String,
    pub n: usize,
    pub runs: usize,
    pub values: BTreeMap<String, Option<f64>>,
}

/// Group `items` by `key` (server, N) and take each figure's median per group; groups come sorted by server, N.
pub fn group_medians<T, F>(
    items: &[T],
    key: impl Fn(&T) -> (String, usize),
    figures: &[(&str, F)],
) -> Vec<Group>
where
    F: Fn(&T) -> Option<f64>,
{
    let mut groups: BTreeMap<(String, usize), Vec<&T>> = BTreeMap::new();
    for item in items {
        groups.entry(key(item)).or_default().push(item);
    }
    groups
        .into_iter()
        .map(|((server, n), members)| Group {
            server,
            n,
            runs: members.len(),
            values: figures
                .iter()
                .map(|(name, f)| {
                    let vals: Vec<f64> = members.iter().filter_map(|m| f(m)).collect();
                    (name.to_string(), median(&vals))
                })
                .collect(),
        })
        .collect()
}

/// One run as the report's table lists it.
#[derive(Debug, Clone)]
pub struct RunRow {
    pub server: String,
    pub n: usize,
    pub us_per_packet: Option<f64>,
    pub delivered_pct: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    /// Negotiated SRTP profiles: publish / subscribe.
    pub srtp: String,
}

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub dashed: bool,
    /// (x, y), drawn in x order.
    pub points: Vec<(f64, f64)>,
}

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A short label for an axis value.
fn label(v: f64) -> String {
    let a = v.abs();
    if a >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if a >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Chart geometry (pixels).
const W: f64 = 660.0;
const H: f64 = 300.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 46.0;

/// The y range: `fixed`, else 0 … the largest value + 10 % (or 1 when everything is 0).
fn y_range(series: &[Series], fixed: Option<(f64, f64)>) -> (f64, f64) {
    if let Some(r) = fixed {
        return r;
    }
    let max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|y| y.is_finite())
        .fold(0.0f64, f64::max);
    (0.0, if max > 0.0 { max * 1.1 } else { 1.0 })
}

/// A line chart as inline SVG: one polyline with dots per series, a legend on the right, the x ticks at the
/// data's x values (at most 12), five y ticks. `y_fixed` pins the y range (e.g. delivery 90-100 %).
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    y_fixed: Option<(f64, f64)>,
) -> String {
    let xs: Vec<f64> = {
        let mut v: Vec<f64> = series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .filter(|x| x.is_finite())
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v.dedup();
        v
    };
    let (xmin, xmax) = match (xs.first(), xs.last()) {
        (Some(a), Some(b)) if b > a => (*a, *b),
        (Some(a), _) => (*a - 1.0, *a + 1.0),
        _ => (0.0, 1.0),
    };
    let (ymin, ymax) = y_range(series, y_fixed);
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let px = |x: f64| LEFT + (x - xmin) / (xmax - xmin) * pw;
    let py = |y: f64| TOP + ph - ((y.clamp(ymin, ymax) - ymin) / (ymax - ymin)) * ph;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        s,
        r#"<text x="{LEFT}" y="18" font-size="13" font-weight="bold">{}</text>"#,
        escape(title)
    );
    // Axes and y grid.
    for i in 0..=4 {
        let v = ymin + (ymax - ymin) * f64::from(i) / 4.0;
        let y = py(v);
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0,
            label(v)
        );
    }
    let step = xs.len().div_ceil(12).max(1);
    for x in xs.iter().step_by(step) {
        let tx = px(*x);
        let _ = write!(
            s,
            r##"<line x1="{tx:.1}" y1="{:.1}" x2="{tx:.1}" y2="{:.1}" stroke="#999"/><text x="{tx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + ph,
            TOP + ph + 4.0,
            TOP + ph + 16.0,
            label(*x)
        );
    }
    let _ = write!(
        s,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="#333"/><line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>"##,
        TOP + ph,
        TOP + ph,
        LEFT + pw,
        TOP + ph
    );
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        H - 8.0,
        escape(x_label)
    );
    let _ = write!(
        s,
        r#"<text transform="translate(14 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        TOP + ph / 2.0,
        escape(y_label)
    );
    // Series.
    for (i, se) in series.iter().enumerate() {
        let mut pts: Vec<(f64, f64)> = se
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let dash = if se.dashed {
            r#" stroke-dasharray="5 3""#
        } else {
            ""
        };
        if pts.len() > 1 {
            let path: Vec<String> = pts
                .iter()
                .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
                .collect();
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#,
                se.color,
                path.join(" ")
            );
        }
        for (x, y) in &pts {
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"><title>{}: {} → {}</title></circle>"#,
                px(*x),
                py(*y),
                se.color,
                escape(&se.name),
                label(*x),
                label(*y)
            );
        }
        let ly = TOP + 8.0 + i as f64 * 16.0;
        let lx = LEFT + pw + 12.0;
        let _ = write!(
            s,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 18.0,
            se.color,
            lx + 22.0,
            ly + 4.0,
            escape(&se.name)
        );
    }
    s.push_str("</svg>");
    s
}

/// Colours per server (giaoban first), and a fallback cycle.
pub fn color(server: &str, i: usize) -> &'static str {
    match server {
        "giaoban" => "#1f6feb",
        "janus" => "#d1242f",
        _ => ["#1a7f37", "#9a6700", "#8250df", "#57606a"][i % 4],
    }
}

/// A page around `body` (inline style only).
pub fn page(title: &str, description: &str, body: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{t}</title>
<style>body{{font-family:sans-serif;margin:24px;max-width:1100px;color:#222}}table{{border-collapse:collapse;margin:12px 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}}th{{background:#f3f3f3}}
td:first-child,th:first-child{{text-align:left}}table.kv td{{text-align:left}}.bad{{color:#b00}}figure{{margin:10px 0}}</style></head>
<body><h1>{t}</h1><p>{d}</p>
{body}
<p style="color:#777;font-size:12px">Written by <code>loadtest</code> on a machine possibly shared with other work; CPU
figures are the server process's utime + stime from /proc over the measuring window.</p>
</body></html>
"#,
        t = escape(title),
        d = escape(description),
    )
}

/// A two-column table of (figure, value).
pub fn kv_table(rows: &[(String, String)]) -> String {
    let mut s = String::from("<table class=\"kv\"><tr><th>figure</th><th>value</th></tr>");
    for (k, v) in rows {
        let _ = write!(s, "<tr><td>{}</td><td>{}</td></tr>", escape(k), escape(v));
    }
    s.push_str("</table>");
    s
}

fn fmt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "n/a".into())
}

/// The fanout report: charts of the medians against N per server (CPU per packet, latency, delivery, CPU % of the
/// machine), the medians table and every run.
pub fn fanout_html(
    medians: &[Group],
    runs: &[RunRow],
    failed: &[String],
    description: &str,
) -> String {
    let servers: Vec<String> = {
        let mut v: Vec<String> = medians.iter().map(|g| g.server.clone()).collect();
        v.dedup();
        v
    };
    let line = |server: &str, i: usize, figure: &str, name: String, dashed: bool| Series {
        name,
        color: color(server, i),
        dashed,
        points: medians
            .iter()
            .filter(|g| g.server == server)
            .filter_map(|g| Some((g.n as f64, g.values.get(figure).copied().flatten()?)))
            .collect(),
    };
    let mut body = String::new();
    let mut chart = |title: &str, y: &str, series: Vec<Series>, fixed: Option<(f64, f64)>| {
        let _ = write!(
            body,
            "<figure>{}</figure>",
            line_chart(title, "subscribers (N)", y, &series, fixed)
        );
    };
    chart(
        "Server CPU per forwarded packet (median)",
        "µs per packet",
        servers
            .iter()
            .enumerate()
            .map(|(i, s)| line(s, i, "us_per_forwarded_packet", s.clone(), false))
            .collect(),
        None,
    );
    chart(
        "Added latency, send → receive (median of runs)",
        "ms",
        servers
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                [
                    line(s, i, "latency_p50_ms", format!("{s} p50"), false),
                    line(s, i, "latency_p99_ms", format!("{s} p99"), true),
                ]
            })
            .collect(),
        None,
    );
    let min_delivered = medians
        .iter()
        .filter_map(|g| g.values.get("delivered_pct").copied().flatten())
        .fold(100.0f64, f64::min);
    chart(
        "Delivered (median)",
        "% of sent × subscribers",
        servers
            .iter()
            .enumerate()
            .map(|(i, s)| line(s, i, "delivered_pct", s.clone(), false))
            .collect(),
        Some(((min_delivered - 1.0).floor().clamp(0.0, 99.0), 100.0)),
    );
    chart(
        "Server CPU (median)",
        "% of the machine",
        servers
            .iter()
            .enumerate()
            .map(|(i, s)| line(s, i, "server_cpu_pct_of_machine", s.clone(), false))
            .collect(),
        None,
    );
    // Medians table.
    let names: Vec<String> = medians
        .first()
        .map(|g| g.values.keys().cloned().collect())
        .unwrap_or_default();
    body.push_str(
        "<h2>Medians per server and N</h2><table><tr><th>server</th><th>N</th><th>runs</th>",
    );
    for n in &names {
        let _ = write!(body, "<th>{}</th>", escape(n));
    }
    body.push_str("</tr>");
    for g in medians {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td>",
            escape(&g.server),
            g.n,
            g.runs
        );
        for n in &names {
            let _ = write!(body, "<td>{}</td>", fmt(g.values.get(n).copied().flatten()));
        }
        body.push_str("</tr>");
    }
    body.push_str("</table><h2>Every run</h2><table><tr><th>server</th><th>N</th><th>µs / packet</th><th>delivered %</th><th>p50 ms</th><th>p99 ms</th><th>SRTP publish / subscribe</th></tr>");
    for r in runs {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td></tr>",
            escape(&r.server),
            r.n,
            fmt(r.us_per_packet),
            r.delivered_pct,
            r.latency_p50_ms,
            r.latency_p99_ms,
            escape(&r.srtp)
        );
    }
    body.push_str("</table>");
    if !failed.is_empty() {
        body.push_str("<h2>Failed runs</h2><ul>");
        for f in failed {
            let _ = write!(body, "<li class=\"bad\">{}</li>", escape(f));
        }
        body.push_str("</ul>");
    }
    page("giaoban loadtest: fanout", description, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        // Non-finite values are not figures.
        assert_eq!(median(&[f64::NAN, 5.0, f64::INFINITY, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[f64::NAN]), None);
    }

    #[test]
    fn medians_group_by_server_and_n() {
        // (server, n, µs per packet, delivered %)
        let runs = [
            ("janus", 10, Some(30.0), 99.0),
            ("giaoban", 10, Some(9.0), 100.0),
            ("giaoban", 10, Some(11.0), 99.0),
            ("giaoban", 10, Some(10.0), 98.0),
            ("giaoban", 50, None, 97.0),
            ("giaoban", 50, Some(8.0), 95.0),
        ];
        type Run = (&'static str, usize, Option<f64>, f64);
        type Read = fn(&Run) -> Option<f64>;
        let figures: [(&str, Read); 2] = [("us", |r| r.2), ("delivered", |r| Some(r.3))];
        let g = group_medians(&runs, |r| (r.0.to_string(), r.1), &figures);
        assert_eq!(g.len(), 3);
        assert_eq!(
            (g[0].server.as_str(), g[0].n, g[0].runs),
            ("giaoban", 10, 3)
        );
        assert_eq!(g[0].values["us"], Some(10.0));
        assert_eq!(g[0].values["delivered"], Some(99.0));
        // A run without the figure does not count towards its median.
        assert_eq!((g[1].n, g[1].runs), (50, 2));
        assert_eq!(g[1].values["us"], Some(8.0));
        assert_eq!(g[1].values["delivered"], Some(96.0));
        assert_eq!(
            (g[2].server.as_str(), g[2].values["us"]),
            ("janus", Some(30.0))
        );
    }

    /// The points of the chart's polyline, in pixels.
    fn polyline_points(svg: &str) -> Vec<(f64, f64)> {
        let start = svg.find("points=\"").expect("a polyline") + 8;
        let end = start + svg[start..].find('"').expect("closed");
        svg[start..end]
            .split(' ')
            .map(|p| {
                let (x, y) = p.split_once(',').expect("x,y");
                (x.parse().expect("x"), y.parse().expect("y"))
            })
            .collect()
    }

    #[test]
    fn line_chart_scales_points_into_the_plot() {
        let series = [Series {
            name: "giaoban <µs>".into(),
            color: "#000",
            dashed: false,
            points: vec![(50.0, 5.0), (10.0, 10.0), (30.0, 0.0)],
        }];
        let svg = line_chart("CPU", "N", "µs", &series, None);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("giaoban &lt;µs&gt;"), "legend escaped");
        let pts = polyline_points(&svg);
        assert_eq!(pts.len(), 3);
        // Drawn in x order: N = 10 at the left edge, N = 50 at the right edge of the plot.
        assert!((pts[0].0 - LEFT).abs() < 0.1, "{pts:?}");
        assert!((pts[2].0 - (W - RIGHT)).abs() < 0.1, "{pts:?}");
        // y: 0 on the x axis; the largest (10) at 1/1.1 of the height; 5 halfway up to it.
        let axis = H - BOTTOM;
        let top_of_max = axis - (H - TOP - BOTTOM) / 1.1;
        assert!((pts[1].1 - axis).abs() < 0.1, "{pts:?}");
        assert!((pts[0].1 - top_of_max).abs() < 0.1, "{pts:?}");
        assert!(
            (pts[2].1 - (axis + top_of_max) / 2.0).abs() < 0.1,
            "{pts:?}"
        );
        // A fixed range clamps values outside it to the plot's edge.
        let svg = line_chart("d", "N", "%", &series, Some((9.0, 10.0)));
        let pts = polyline_points(&svg);
        assert!((pts[0].1 - TOP).abs() < 0.1, "{pts:?}");
        assert!((pts[1].1 - axis).abs() < 0.1, "{pts:?}");
    }

    #[test]
    fn fanout_page_is_self_contained() {
        let mut values = BTreeMap::new();
        values.insert("us_per_forwarded_packet".to_string(), Some(9.5));
        values.insert("delivered_pct".to_string(), Some(99.9));
        let groups = vec![
            Group {
                server: "giaoban".into(),
                n: 10,
                runs: 5,
                values: values.clone(),
            },
            Group {
                server: "giaoban".into(),
                n: 50,
                runs: 5,
                values,
            },
        ];
        let html = fanout_html(&groups, &[], &["run 3 <timeout>".into()], "desc & more");
        assert!(html.contains("<svg") && html.contains("9.50"));
        assert!(html.contains("desc &amp; more") && html.contains("run 3 &lt;timeout&gt;"));
        assert!(
            !html.contains("<script") && !html.contains("http://") && !html.contains("https://")
        );
    }
}
