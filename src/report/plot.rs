//! `recgw report EXPERIMENT --plot out.svg`: the cumulative lift of each arm over the control,
//! day by day, inside its always-valid 95% interval — the picture analysts read first, and the
//! one interval that may be read every day. Drawn from the `?by=day` results with plotters'
//! SVG backend (PNG would need a font and an image encoder; SVG opens in every browser and
//! notebook).
//!
//! The points drawn are also written, as JSON, in the SVG's `<desc>` element: screen readers
//! read it, and a test can check the picture shows exactly what the endpoint said.

use std::path::Path;

use plotters::prelude::*;
use serde_json::{Value, json};

use crate::api::results::body::ResultsBody;

/// The picture's size in pixels.
const SIZE: (u32, u32) = (960, 540);

/// Lifts outside this range are drawn at its edge: an early interval of −100% to +1000%
/// would flatten everything else.
const LIFT_RANGE: (f64, f64) = (-1.0, 2.0);

/// One colour per compared arm, in order (plotters' palette, readable on white).
const COLOURS: [RGBColor; 6] = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];

/// Why a plot could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PlotError {
    /// The results hold no day with a lift to draw.
    #[error("nothing to plot: {0}")]
    Empty(&'static str),
    /// The file name does not end in `.svg`.
    #[error("{0}: only .svg plots are written")]
    Format(String),
    /// Drawing failed.
    #[error("drawing the plot: {0}")]
    Draw(String),
    /// Writing the file failed.
    #[error("{0}: {1}")]
    Write(String, std::io::Error),
}

/// One arm's series: `(day, lift, low, high)`, days since 1970-01-01.
type Series = (String, Vec<(i64, f64, f64, f64)>);

/// The compared arms' cumulative lift and always-valid interval per day (CUPED-adjusted when
/// the experiment names covariates), from `?by=day` results; a day where an arm's interval is
/// undefined (no clicks yet) is left out of its series.
fn series(results: &ResultsBody) -> Vec<Series> {
    let days = results.days.as_deref().unwrap_or_default();
    results
        .arms
        .iter()
        .filter(|a| !a.control && !a.shadow)
        .map(|compared| {
            let points = days
                .iter()
                .filter_map(|d| {
                    let day = crate::calendar::parse_date(&d.day)?;
                    let arm = d.arms.iter().find(|a| a.name == compared.name)?;
                    // With covariates, the adjusted figures: the ones decisions read.
                    let (lift, low, high) = match &arm.cuped {
                        Some(c) => (c.lift, c.sequential_lift_low, c.sequential_lift_high),
                        None => (arm.lift, arm.sequential_lift_low, arm.sequential_lift_high),
                    };
                    Some((day, lift?, low?, high?))
                })
                .collect();
            (compared.name.clone(), points)
        })
        .filter(|(_, points): &Series| !points.is_empty())
        .collect()
}

/// Writes the plot of `results` (fetched with `?by=day`) to `path`.
pub(crate) fn write(results: &ResultsBody, path: &Path) -> Result<(), PlotError> {
    let shown = path.display().to_string();
    if path.extension().and_then(|e| e.to_str()) != Some("svg") {
        return Err(PlotError::Format(shown));
    }
    let svg = render(results)?;
    std::fs::write(path, svg).map_err(|e| PlotError::Write(shown, e))
}

/// The SVG text of the plot: what `--plot` writes and the results UI shows.
pub(crate) fn render(results: &ResultsBody) -> Result<String, PlotError> {
    if results.kind == "interleave" {
        return Err(PlotError::Empty(
            "an interleave experiment has no lift: read its preference in the report",
        ));
    }
    let series = series(results);
    let days = series.iter().flat_map(|(_, points)| points.iter().map(|p| p.0));
    let (Some(first), Some(last)) = (days.clone().min(), days.max()) else {
        return Err(PlotError::Empty(
            "no day has a lift with an interval yet (an arm needs clicks)",
        ));
    };
    let clamp = |y: f64| y.clamp(LIFT_RANGE.0, LIFT_RANGE.1);
    let values = series
        .iter()
        .flat_map(|(_, points)| points.iter().flat_map(|&(_, l, lo, hi)| [l, lo, hi]))
        .map(clamp);
    let (low, high) = values.fold((0.0_f64, 0.0_f64), |(a, b), y| (a.min(y), b.max(y)));
    let margin = ((high - low) * 0.05).max(0.01);
    let x = (first as f64 - 0.5)..(last as f64 + 0.5);
    let y = (low - margin)..(high + margin);
    let adjusted = results.arms.iter().any(|a| a.cuped.is_some());
    let title = format!(
        "{}: cumulative CTR lift over {}{}, always-valid 95% interval",
        results.experiment,
        results.arms.first().map_or("the control", |a| a.name.as_str()),
        if adjusted { " (CUPED-adjusted)" } else { "" }
    );

    let mut svg = String::new();
    {
        let draw = |e: &dyn std::fmt::Display| PlotError::Draw(e.to_string());
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(x.clone(), y)
            .map_err(|e| draw(&e))?;
        chart
            .configure_mesh()
            .x_labels(((last - first + 1) as usize).min(10))
            .x_label_formatter(&|d| crate::calendar::date(d.round() as i64))
            .y_label_formatter(&|v| format!("{:+.0}%", v * 100.0))
            .x_desc("day (UTC)")
            .y_desc("lift")
            .draw()
            .map_err(|e| draw(&e))?;
        chart
            .draw_series(LineSeries::new([(x.start, 0.0), (x.end, 0.0)], BLACK.stroke_width(1)))
            .map_err(|e| draw(&e))?;
        for ((name, points), colour) in series.iter().zip(COLOURS.iter().cycle()) {
            let x = |d: i64| d as f64;
            let band: Vec<(f64, f64)> = points
                .iter()
                .map(|&(d, _, lo, _)| (x(d), clamp(lo)))
                .chain(points.iter().rev().map(|&(d, _, _, hi)| (x(d), clamp(hi))))
                .collect();
            chart
                .draw_series([Polygon::new(band, colour.mix(0.15))])
                .map_err(|e| draw(&e))?;
            // A bar and a dot per day, so that one day alone is still seen.
            chart
                .draw_series(points.iter().map(|&(d, _, lo, hi)| {
                    PathElement::new([(x(d), clamp(lo)), (x(d), clamp(hi))], colour.mix(0.5).stroke_width(1))
                }))
                .map_err(|e| draw(&e))?;
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|&(d, lift, _, _)| Circle::new((x(d), clamp(lift)), 3, colour.filled())),
                )
                .map_err(|e| draw(&e))?;
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|&(d, lift, _, _)| (x(d), clamp(lift))),
                    colour.stroke_width(2),
                ))
                .map_err(|e| draw(&e))?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| draw(&e))?;
        root.present().map_err(|e| draw(&e))?;
    }
    Ok(with_description(&svg, &series))
}

/// `svg` with the plotted points as JSON in a `<desc>` right after its opening tag.
fn with_description(svg: &str, series: &[Series]) -> String {
    let data: Vec<Value> = series
        .iter()
        .map(|(name, points)| {
            let days: Vec<Value> = points
                .iter()
                .map(|&(d, lift, low, high)| {
                    json!({
                        "day": crate::calendar::date(d),
                        "lift": lift,
                        "sequential_lift_low": low,
                        "sequential_lift_high": high,
                    })
                })
                .collect();
            json!({ "arm": name, "days": days })
        })
        .collect();
    let text = Value::Array(data)
        .to_string()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    match svg
        .find("<svg")
        .and_then(|at| svg[at..].find('>').map(|end| at + end + 1))
    {
        Some(open) => format!("{}\n<desc>{text}</desc>{}", &svg[..open], &svg[open..]),
        None => svg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::results::body::with_defaults;

    fn results() -> Value {
        let day = |date: &str, lift: Value, low: Value, high: Value| {
            json!({"day": date, "arms": [
                {"name": "control", "impressions": 100, "clicks": 4},
                {"name": "treatment", "impressions": 100, "clicks": 6, "lift": lift,
                 "sequential_lift_low": low, "sequential_lift_high": high},
            ]})
        };
        json!({
            "experiment": "e", "kind": "split",
            "arms": [{"name": "control", "control": true}, {"name": "treatment", "control": false}],
            "days": [
                day("2026-11-30", Value::Null, Value::Null, Value::Null),
                day("2026-12-01", 0.5.into(), (-0.2).into(), 1.8.into()),
                day("2026-12-02", 0.3.into(), 0.05.into(), 0.6.into()),
            ]
        })
    }

    /// The picture holds one line per compared arm, and its description the points drawn:
    /// the days with an interval, as the results gave them.
    #[test]
    fn draws_the_days_with_an_interval_and_describes_them() {
        let svg = render(&with_defaults(results())).expect("plot");
        assert!(svg.starts_with("<svg") || svg.contains("<svg"), "{svg}");
        let desc = svg
            .split_once("<desc>")
            .and_then(|(_, rest)| rest.split_once("</desc>"))
            .map(|(desc, _)| desc)
            .expect("desc");
        let data: Value = serde_json::from_str(desc).expect("json");
        assert_eq!(
            data,
            json!([{"arm": "treatment", "days": [
                {"day": "2026-12-01", "lift": 0.5, "sequential_lift_low": -0.2, "sequential_lift_high": 1.8},
                {"day": "2026-12-02", "lift": 0.3, "sequential_lift_low": 0.05, "sequential_lift_high": 0.6},
            ]}])
        );
        assert!(
            svg.contains("treatment") && svg.contains("2026-12-02"),
            "legend and axis labels"
        );
        assert!(svg.contains("<polygon") || svg.contains("<path"), "the interval band");
    }

    /// With covariates the plot draws the adjusted lift and band, the figures `decision`
    /// reads, and its title says so.
    #[test]
    fn draws_the_cuped_figures_when_the_experiment_has_covariates() {
        let mut results = results();
        results["arms"][1]["cuped"] = json!({"lift": 0.25});
        results["days"][2]["arms"][1]["cuped"] =
            json!({"lift": 0.25, "sequential_lift_low": 0.1, "sequential_lift_high": 0.45});
        let svg = render(&with_defaults(results)).expect("plot");
        let desc = svg
            .split_once("<desc>")
            .and_then(|(_, rest)| rest.split_once("</desc>"))
            .map(|(desc, _)| desc)
            .expect("desc");
        let data: Value = serde_json::from_str(desc).expect("json");
        assert_eq!(
            data[0]["days"],
            json!([
                {"day": "2026-12-01", "lift": 0.5, "sequential_lift_low": -0.2, "sequential_lift_high": 1.8},
                {"day": "2026-12-02", "lift": 0.25, "sequential_lift_low": 0.1, "sequential_lift_high": 0.45},
            ])
        );
        assert!(svg.contains("(CUPED-adjusted)"), "the title says which figures");
    }

    #[test]
    fn refuses_what_it_cannot_draw() {
        let mut empty = results();
        empty["days"] = json!([]);
        assert!(matches!(render(&with_defaults(empty)), Err(PlotError::Empty(_))));
        let mut interleaved = results();
        interleaved["kind"] = "interleave".into();
        assert!(matches!(render(&with_defaults(interleaved)), Err(PlotError::Empty(_))));
        assert!(matches!(
            write(&with_defaults(results()), Path::new("out.png")),
            Err(PlotError::Format(_))
        ));
    }
}
