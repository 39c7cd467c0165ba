//! `recgw report EXPERIMENT --url URL`: the results endpoint of a running gateway as a terminal
//! table with a bar chart of the CTR intervals (and, for an interleave experiment, the
//! preference test), or as JSON or CSV for notebooks; with `--plot FILE.svg`, also the cumulative
//! lift over time ([`plot`]).
//!
//! The answer is read into the endpoint's own types ([`ResultsBody`]), so a field the endpoint
//! renames or drops is a compile error here, and the CSV's columns are those types' fields.

mod plot;

use std::fmt::Write as _;

use poem_openapi::registry::{MetaSchema, Registry};
use serde_json::Value;

use crate::api::results::body::{ArmResultsBody, ResultsBody, resolve};

pub(crate) use plot::render as plot_svg;
pub(crate) use plot::write as write_plot;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// An aligned table and a bar chart of CTR intervals.
    Table,
    /// The results as the API returns them.
    Json,
    /// One row per arm.
    Csv,
}

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReportError {
    /// The gateway could not be reached or answered with an error.
    #[error("{0}")]
    Http(String),
    /// The gateway answered results this build cannot read (another version's).
    #[error("{0}")]
    Body(String),
}

/// What a gateway answered.
pub(crate) struct Fetched {
    /// The JSON as sent: what `--format json` prints, fields this build does not know included.
    json: Value,
    /// The same read into the endpoint's types: what the table, the CSV and the plot show.
    pub(crate) body: ResultsBody,
}

/// Fetches `/experiments/{experiment}/results` from `url` (with `key` as `X-API-Key`), with the
/// days too when `by_day`.
pub(crate) async fn fetch(
    url: &str,
    experiment: &str,
    key: Option<&str>,
    by_day: bool,
) -> Result<Fetched, ReportError> {
    let query = if by_day { "?by=day" } else { "" };
    let endpoint = format!("{}/experiments/{experiment}/results{query}", url.trim_end_matches('/'));
    let mut request = reqwest::Client::new().get(&endpoint);
    if let Some(key) = key {
        request = request.header("X-API-Key", key);
    }
    // What errors name: the gateway's URL may carry credentials for a proxy in front of it.
    let shown = crate::redact::url(&endpoint);
    let failed = |e: reqwest::Error| ReportError::Http(format!("{shown}: {}", e.without_url()));
    let response = request.send().await.map_err(failed)?;
    let status = response.status();
    let json: Value = response.json().await.map_err(failed)?;
    if !status.is_success() {
        let message = json["message"].as_str().unwrap_or("no message");
        return Err(ReportError::Http(format!("{shown}: {status}: {message}")));
    }
    // Imported here: the trait's methods (`is_empty` among them) would shadow `str`'s elsewhere.
    use poem_openapi::types::ParseFromJSON;
    let body = ResultsBody::parse_from_json(Some(json.clone())).map_err(|e| {
        ReportError::Body(format!(
            "{shown}: results this recgw cannot read ({}); is the gateway another version?",
            e.into_message()
        ))
    })?;
    Ok(Fetched { json, body })
}

fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{:.2}%", x * 100.0))
}

fn signed_percent(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{:+.1}%", x * 100.0))
}

fn interval(low: Option<f64>, high: Option<f64>, show: fn(Option<f64>) -> String) -> String {
    match (low, high) {
        (Some(_), Some(_)) => format!("[{}, {}]", show(low), show(high)),
        _ => "-".into(),
    }
}

fn count(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |n| n.to_string())
}

fn p_value(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |p| format!("{p:.2e}"))
}

/// Renders fetched results in `format`.
pub(crate) fn render(results: &Fetched, format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(&results.json).unwrap_or_default() + "\n",
        Format::Csv => csv(&results.body),
        Format::Table => table(&results.body),
    }
}

/// The CSV's columns: every field of an arm's body that holds one value, in the order the body
/// declares them, a nested object's fields after its name (`cuped_lift`,
/// `per_user_sums_clicks_squared`); the lists and the `undefined` reasons are left to
/// `--format json`. Each is a path into the arm's JSON.
fn columns() -> Vec<Vec<&'static str>> {
    fn walk(registry: &Registry, schema: &MetaSchema, path: &mut Vec<&'static str>, out: &mut Vec<Vec<&'static str>>) {
        for (name, property) in &schema.properties {
            path.push(name);
            match resolve(registry, property) {
                Some(field) if matches!(field.ty, "integer" | "number" | "string" | "boolean") => {
                    out.push(path.clone())
                }
                Some(nested) if !nested.properties.is_empty() => walk(registry, nested, path, out),
                _ => {}
            }
            path.pop();
        }
    }
    use poem_openapi::types::Type;
    let mut registry = Registry::new();
    ArmResultsBody::register(&mut registry);
    let mut out = Vec::new();
    if let Some(arm) = registry.schemas.get(ArmResultsBody::name().as_ref()) {
        walk(&registry, arm, &mut Vec::new(), &mut out);
    }
    out
}

/// One row per arm, the experiment first: what notebooks read.
fn csv(results: &ResultsBody) -> String {
    use poem_openapi::types::ToJSON;
    let columns = columns();
    let names: Vec<String> = columns.iter().map(|path| path.join("_")).collect();
    let mut out = format!("experiment,{}\n", names.join(","));
    for arm in &results.arms {
        let json = arm.to_json().unwrap_or_default();
        let cells: Vec<String> = columns
            .iter()
            .map(|path| match path.iter().fold(&json, |value, field| &value[field]) {
                Value::Null => String::new(),
                // A guardrail's reason has commas: quoted as RFC 4180 says.
                Value::String(s) if s.contains([',', '"', '\n']) => format!("\"{}\"", s.replace('"', "\"\"")),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        let _ = writeln!(out, "{},{}", results.experiment, cells.join(","));
    }
    out
}

fn table(results: &ResultsBody) -> String {
    let arms = &results.arms;
    let interleave = results.kind == "interleave";
    let mut out = String::new();
    let srm = match results.srm_p_value {
        _ if interleave => "interleaved: every user sees both arms".to_string(),
        Some(p) if results.srm_detected => format!("SRM p={p:.2e}  MISMATCH: do not trust this comparison"),
        Some(p) => format!("SRM p={p:.3} (ok)"),
        None => format!(
            "SRM: {}",
            results.undefined.get("srm_p_value").map_or("-", String::as_str)
        ),
    };
    let age = results
        .age_seconds
        .map_or_else(|| "no start".into(), |s| format!("{:.1} days", s as f64 / 86_400.0));
    let _ = writeln!(
        out,
        "{} ({}, {age}, counts: {})  {srm}",
        results.experiment, results.status, results.counts,
    );
    let header = [
        "arm",
        "weight",
        "users",
        "exposures",
        "impr.",
        "clicks",
        "CTR",
        "CTR 95% CI",
        "lift",
        "lift 95% CI",
        "p-value",
        "always-valid CI",
        "av p-value",
        "decision",
        "enough",
    ];
    // With several arms against the control, both p-values are shown Holm-adjusted.
    let holm = results.adjustment == "holm";
    // With covariates, the adjusted lift and always-valid interval (what `decision` reads)
    // and how much variance the pre-period took out.
    let adjusted = arms.iter().any(|a| a.cuped.is_some());
    let mut header = header.to_vec();
    if adjusted {
        header.extend(["CUPED lift", "CUPED av CI", "var. red."]);
    }
    let rows: Vec<Vec<String>> = arms
        .iter()
        .map(|a| {
            let (fixed, sequential) = match holm {
                true => (a.p_value_adjusted, a.sequential_p_value_adjusted),
                false => (a.p_value, a.sequential_p_value),
            };
            let mut row = vec![
                a.name.clone(),
                // Interleaved arms both serve every user, a shadow nobody: a share would
                // mislead.
                match interleave || a.shadow {
                    true => "-".into(),
                    false => format!("{:.1}%", a.weight),
                },
                a.users.to_string(),
                a.exposures.to_string(),
                a.impressions.to_string(),
                a.clicks.to_string(),
                percent(a.ctr),
                interval(a.ctr_low, a.ctr_high, percent),
                signed_percent(a.lift),
                interval(a.lift_low, a.lift_high, signed_percent),
                p_value(fixed),
                interval(a.sequential_lift_low, a.sequential_lift_high, signed_percent),
                p_value(sequential),
                a.decision.clone().unwrap_or_else(|| "-".into()),
                if a.min_sample_reached { "yes" } else { "no" }.to_string(),
            ];
            if adjusted {
                let c = a.cuped.as_ref();
                row.extend([
                    signed_percent(c.and_then(|c| c.lift)),
                    interval(
                        c.and_then(|c| c.sequential_lift_low),
                        c.and_then(|c| c.sequential_lift_high),
                        signed_percent,
                    ),
                    percent(c.and_then(|c| c.variance_reduction)),
                ]);
            }
            row
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    format!("{c:<w$}", w = widths[i])
                } else {
                    format!("{c:>w$}", w = widths[i])
                }
            })
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(header.clone()));
    for row in &rows {
        let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
    }
    if !interleave {
        let _ = writeln!(
            out,
            "Act on `decision` and the always-valid (av) columns at any look; the 95% CI and p-value \
             only at a sample size fixed in advance. Users are the unit of analysis; always-valid tuning N* = {} \
             users.",
            results.sequential_tuning
        );
        if adjusted {
            let _ = writeln!(
                out,
                "`decision` reads the CUPED columns: the lift adjusted for each user's pre-period clicks and \
                 impressions (var. red. is the share of the lift's variance the pre-period explains)."
            );
        }
        if let Some(reason) = &results.users_exact_reason {
            let _ = writeln!(out, "Users are not exact, so no sample-ratio verdict: {reason}.");
        }
        if let Some(since) = &results.per_user_since {
            let _ = writeln!(
                out,
                "Statistics are over the users counted since {since}; impressions and clicks counted before \
                 then are in the totals only."
            );
        }
        if holm {
            let _ = writeln!(
                out,
                "p-values are Holm-adjusted for the {} arms compared with the control.",
                results.comparisons
            );
        }
    }
    out.push_str(&chart(arms, widths[0]));
    out.push_str(&preference(results));
    out.push_str(&lists(arms, widths[0]));
    out
}

/// What the arms' lists look like: catalogue coverage, a shadow's overlap with the control,
/// and CTR by rank.
fn lists(arms: &[ArmResultsBody], name_width: usize) -> String {
    let mut out = String::from("\nLists: coverage = distinct items served / items in the model\n");
    for arm in arms {
        let coverage = match arm.catalogue_coverage {
            Some(c) => format!("{:.2}%", c * 100.0),
            None => "-".into(),
        };
        let mut line = format!(
            "{:<name_width$}  coverage {coverage} ({} items)",
            arm.name, arm.distinct_items
        );
        if arm.shadow {
            let mean = |v: Option<f64>| v.map_or_else(|| "-".into(), |x| format!("{x:.3}"));
            let _ = write!(
                line,
                "; shadow: {} comparisons, Jaccard@k {}, RBO {}",
                count(arm.compared),
                mean(arm.overlap_jaccard),
                mean(arm.overlap_rbo)
            );
        }
        let _ = writeln!(out, "{line}");
    }
    let buckets: Vec<&str> = arms
        .first()
        .map(|a| a.by_position.iter().map(|p| p.position.as_str()).collect())
        .unwrap_or_default();
    if buckets.is_empty() {
        return out;
    }
    let _ = write!(out, "CTR by rank{:w$}", "", w = (name_width + 2).saturating_sub(11));
    for bucket in &buckets {
        let _ = write!(out, "  {bucket:>8}");
    }
    out.push('\n');
    for arm in arms.iter().filter(|a| !a.shadow) {
        let _ = write!(out, "{:<w$}", arm.name, w = name_width.max(11));
        for position in &arm.by_position {
            let _ = write!(out, "  {:>8}", percent(position.ctr));
        }
        out.push('\n');
    }
    out
}

/// The interleaving block: who won how many users, and the preference with its interval.
fn preference(results: &ResultsBody) -> String {
    let Some(test) = &results.interleaving else {
        return String::new();
    };
    let arms = &results.arms;
    let name = |i: usize| arms.get(i).map_or("?", |a| a.name.as_str());
    let wins: Vec<String> = arms.iter().map(|a| format!("{} {}", a.name, count(a.wins))).collect();
    let mut out = format!(
        "
Interleaving: {} users compared, {} ties; wins: {}
",
        test.users_compared,
        test.ties,
        wins.join(", ")
    );
    let signed = |v: Option<f64>| v.map_or_else(|| "-".into(), |x| format!("{x:+.4}"));
    match test.preference {
        Some(delta) => {
            let favours = match delta.partial_cmp(&0.0) {
                Some(std::cmp::Ordering::Greater) => format!("favours {}", name(0)),
                Some(std::cmp::Ordering::Less) => format!("favours {}", name(1)),
                _ => "no preference".to_string(),
            };
            let _ = writeln!(
                out,
                "preference {} 95% CI {} ({favours}; sign test p={})",
                signed(test.preference),
                interval(test.preference_low, test.preference_high, signed),
                p_value(test.p_value),
            );
        }
        None => {
            let why = test.undefined.get("preference").map_or("-", String::as_str);
            let _ = writeln!(out, "preference: {why}");
        }
    }
    out
}

/// One bar per arm: the 95% interval as `[====]` with the CTR as `|`, on a common scale.
fn chart(arms: &[ArmResultsBody], name_width: usize) -> String {
    const WIDTH: usize = 50;
    let top = arms.iter().filter_map(|a| a.ctr_high).fold(0.0f64, f64::max);
    if top <= 0.0 {
        return String::new();
    }
    let col = |x: f64| ((x / top) * (WIDTH - 1) as f64).round() as usize;
    let mut out = format!("\nCTR, 95% interval (scale 0 .. {:.2}%)\n", top * 100.0);
    for arm in arms {
        let mut bar = vec![' '; WIDTH];
        if let (Some(low), Some(high), Some(ctr)) = (arm.ctr_low, arm.ctr_high, arm.ctr) {
            let (l, h) = (col(low), col(high));
            for cell in &mut bar[l..=h] {
                *cell = '=';
            }
            bar[l] = '[';
            bar[h] = ']';
            bar[col(ctr)] = '|';
        }
        let _ = writeln!(
            out,
            "{:<name_width$}  {}",
            arm.name,
            bar.into_iter().collect::<String>().trim_end()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::api::results::body::with_defaults;

    /// Results as `fetch` would give them for `json`.
    fn fetched(json: Value) -> Fetched {
        Fetched {
            body: with_defaults(json.clone()),
            json,
        }
    }

    /// The CSV's rows after its header, each a map of column to cell; every row has a cell
    /// per column.
    fn rows(csv: &str) -> Vec<HashMap<String, String>> {
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
        lines
            .map(|line| {
                let cells: Vec<&str> = line.split(',').collect();
                assert_eq!(cells.len(), header.len(), "{line}");
                header
                    .iter()
                    .zip(cells)
                    .map(|(h, c)| (h.to_string(), c.to_string()))
                    .collect()
            })
            .collect()
    }

    fn sample() -> Value {
        serde_json::json!({
            "experiment": "e", "status": "running", "age_seconds": 86400, "counts": "redis",
            "srm_p_value": 0.5, "srm_detected": false, "min_sample_size": 1000, "undefined": {},
            "sequential_tuning": 5000.0, "comparisons": 1, "adjustment": "none",
            "arms": [
                {"name": "control", "control": true, "weight": 50.0, "users": 100, "exposures": 120, "impressions": 1000, "clicks": 40,
                 "clicking_users": 30, "ctr": 0.04, "ctr_low": 0.0295, "ctr_high": 0.0541, "lift": null, "lift_low": null,
                 "lift_high": null, "p_value": null, "min_sample_reached": true, "undefined": {"lift": "this is the control"}},
                {"name": "treatment", "weight": 50.0, "users": 98, "exposures": 118, "impressions": 1000, "clicks": 60,
                 "clicking_users": 41, "ctr": 0.06, "ctr_low": 0.0468, "ctr_high": 0.0766, "lift": 0.5, "lift_low": 0.0152,
                 "lift_high": 1.2163, "p_value": 0.0402, "sequential_lift_low": -0.1948, "sequential_lift_high": 1.7944,
                 "sequential_p_value": 0.4226, "decision": "inconclusive", "min_sample_reached": true, "undefined": {}}
            ]
        })
    }

    /// Coverage per arm, a shadow's overlap, and one CTR per rank bucket and serving arm.
    #[test]
    fn renders_the_list_metrics() {
        let mut results = sample();
        let by_position = serde_json::json!([
            {"position": "1", "impressions": 100, "clicks": 10, "ctr": 0.1},
            {"position": "2", "impressions": 100, "clicks": 5, "ctr": 0.05},
            {"position": "3", "impressions": 0, "clicks": 0}
        ]);
        for arm in 0..2 {
            results["arms"][arm]["by_position"] = by_position.clone();
            results["arms"][arm]["distinct_items"] = 40.into();
        }
        results["arms"][0]["catalogue_coverage"] = 0.25.into();
        results["arms"][1]["shadow"] = true.into();
        results["arms"][1]["compared"] = 12.into();
        results["arms"][1]["overlap_jaccard"] = 0.5.into();
        results["arms"][1]["overlap_rbo"] = 0.6125.into();
        let table = render(&fetched(results.clone()), Format::Table);
        assert!(table.contains("control    coverage 25.00% (40 items)\n"), "{table}");
        assert!(
            table.contains("treatment  coverage - (40 items); shadow: 12 comparisons, Jaccard@k 0.500, RBO 0.613"),
            "{table}"
        );
        let ranks = table.lines().find(|l| l.starts_with("CTR by rank")).unwrap_or_default();
        assert_eq!(
            ranks.split_whitespace().skip(3).collect::<Vec<_>>(),
            ["1", "2", "3"],
            "{table}"
        );
        let rows: Vec<&str> = table
            .lines()
            .skip_while(|l| !l.starts_with("CTR by rank"))
            .skip(1)
            .collect();
        assert_eq!(rows.len(), 1, "the shadow serves nobody, so it has no CTR: {table}");
        assert_eq!(
            rows[0].split_whitespace().collect::<Vec<_>>(),
            ["control", "10.00%", "5.00%", "-"]
        );
    }

    #[test]
    fn renders_aligned_table_chart_and_csv() {
        let table = render(&fetched(sample()), Format::Table);
        assert!(
            table.starts_with("e (running, 1.0 days, counts: redis)  SRM p=0.500 (ok)"),
            "{table}"
        );
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[1].starts_with("arm") && lines[2].starts_with("control") && lines[3].starts_with("treatment"));
        assert!(lines[2].contains("4.00%"), "{table}");
        assert!(lines[3].contains("+50.0%") && lines[3].contains("[+1.5%, +121.6%]") && lines[3].contains("4.02e-2"));
        // Significant at one look, not under continuous monitoring: the report says which.
        assert!(
            lines[3].contains("[-19.5%, +179.4%]") && lines[3].contains("4.23e-1") && lines[3].contains("inconclusive")
        );
        assert!(
            table.contains("Act on `decision`") && table.contains("N* = 5000"),
            "{table}"
        );
        assert!(!table.contains("Holm"), "{table}");
        let bars: Vec<&&str> = lines
            .iter()
            .filter(|l| l.contains('[') && l.contains(']') && l.contains('|'))
            .collect();
        assert_eq!(bars.len(), 2, "{table}");
        let csv = render(&fetched(sample()), Format::Csv);
        assert!(
            csv.starts_with("experiment,name,weight,control,users,exposures,"),
            "{csv}"
        );
        let rows = rows(&csv);
        assert_eq!(rows.len(), 2, "{csv}");
        let expected = [
            ("experiment", "e"),
            ("name", "control"),
            ("weight", "50.0"),
            ("control", "true"),
            ("users", "100"),
            ("exposures", "120"),
            ("impressions", "1000"),
            ("clicks", "40"),
            ("clicking_users", "30"),
            ("ctr", "0.04"),
            ("ctr_low", "0.0295"),
            ("lift", ""),
        ];
        for (column, cell) in expected {
            assert_eq!(rows[0][column], cell, "control {column}: {csv}");
        }
        let expected = [
            ("name", "treatment"),
            ("p_value", "0.0402"),
            ("sequential_lift_low", "-0.1948"),
            ("sequential_lift_high", "1.7944"),
            ("sequential_p_value", "0.4226"),
            ("p_value_adjusted", ""),
            ("decision", "inconclusive"),
            ("min_sample_reached", "true"),
            ("wins", ""),
            ("cuped_lift", ""),
        ];
        for (column, cell) in expected {
            assert_eq!(rows[1][column], cell, "treatment {column}: {csv}");
        }
    }

    /// The CSV has a column for every field of an arm that holds one value, nested objects'
    /// too, so a statistic added to the results is in it; lists and reasons are not.
    #[test]
    fn the_csv_has_a_column_for_every_value_of_an_arm() {
        let csv = render(&fetched(sample()), Format::Csv);
        let header: Vec<&str> = csv.lines().next().unwrap_or_default().split(',').collect();
        for column in [
            "state",
            "paused_reason",
            "impressions_outside_per_user",
            "per_user_sums_users",
            "per_user_sums_clicks_times_impressions",
            "pre_period_sums_impressions_times_pre_impressions",
            "cuped_variance_reduction",
            "cuped_users_with_pre_period",
            "overlap_rbo",
        ] {
            assert!(header.contains(&column), "no {column}: {header:?}");
        }
        for column in ["by_position", "undefined", "cuped_undefined", "per_user_sums", "cuped"] {
            assert!(!header.contains(&column), "{column}: {header:?}");
        }
        let rows = rows(&csv);
        assert_eq!(rows[0]["state"], "", "absent in the sample, so empty: {csv}");

        // A guardrail's reason has commas and quotes: one cell, quoted.
        let mut paused = sample();
        paused["arms"][1]["state"] = "paused_by_guardrail".into();
        paused["arms"][1]["paused_reason"] = "error_rate 0.2 > 0.1, over 50 \"requests\"".into();
        let csv = render(&fetched(paused), Format::Csv);
        assert!(
            csv.contains(",paused_by_guardrail,\"error_rate 0.2 > 0.1, over 50 \"\"requests\"\"\",0,"),
            "{csv}"
        );
    }

    /// With covariates, the table adds the adjusted lift, its always-valid interval and the
    /// variance reduction, says `decision` reads them, and the CSV carries every `cuped` field.
    #[test]
    fn shows_the_cuped_figures_when_the_experiment_has_covariates() {
        let mut results = sample();
        results["arms"][0]["cuped"] = serde_json::json!({"undefined": {"lift": "this is the control"}});
        results["arms"][1]["cuped"] = serde_json::json!({
            "lift": 0.45, "lift_low": 0.1, "lift_high": 0.9, "p_value": 0.01, "sequential_lift_low": 0.02,
            "sequential_lift_high": 1.1, "sequential_p_value": 0.03, "variance_reduction": 0.42,
            "users_with_pre_period": 150, "undefined": {}
        });
        let table = render(&fetched(results.clone()), Format::Table);
        let header = table.lines().nth(1).unwrap_or_default();
        let cells: Vec<&str> = header.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
        assert_eq!(
            cells[cells.len() - 3..],
            ["CUPED lift", "CUPED av CI", "var. red."],
            "{table}"
        );
        let treatment = table.lines().nth(3).unwrap_or_default();
        assert!(treatment.ends_with("+45.0%  [+2.0%, +110.0%]     42.00%"), "{table}");
        assert!(table.contains("`decision` reads the CUPED columns"), "{table}");
        let rows = rows(&render(&fetched(results.clone()), Format::Csv));
        let expected = [
            ("cuped_lift", "0.45"),
            ("cuped_lift_low", "0.1"),
            ("cuped_lift_high", "0.9"),
            ("cuped_p_value", "0.01"),
            ("cuped_sequential_lift_low", "0.02"),
            ("cuped_sequential_lift_high", "1.1"),
            ("cuped_sequential_p_value", "0.03"),
            ("cuped_variance_reduction", "0.42"),
            ("cuped_users_with_pre_period", "150"),
        ];
        for (column, cell) in expected {
            assert_eq!(rows[1][column], cell, "treatment {column}");
            assert_eq!(rows[0][column], "", "control {column}");
        }
        assert!(
            !render(&fetched(sample()), Format::Table).contains("CUPED"),
            "only with covariates"
        );
    }

    /// With several arms against the control, the p-value columns show the Holm-adjusted
    /// values, and the report says so.
    #[test]
    fn says_when_p_values_are_holm_adjusted() {
        let mut results = sample();
        results["adjustment"] = "holm".into();
        results["comparisons"] = 2.into();
        results["arms"][1]["p_value_adjusted"] = 0.0804.into();
        results["arms"][1]["sequential_p_value_adjusted"] = 0.8452.into();
        let table = render(&fetched(results.clone()), Format::Table);
        let treatment = table.lines().nth(3).unwrap_or_default();
        assert!(
            treatment.contains("8.04e-2") && treatment.contains("8.45e-1"),
            "{table}"
        );
        assert!(!treatment.contains("4.02e-2"), "{table}");
        assert!(table.contains("Holm-adjusted for the 2 arms"), "{table}");
    }

    /// An interleave experiment's report says who won how many users and which arm the
    /// preference favours.
    #[test]
    fn renders_the_preference_of_an_interleave_experiment() {
        let mut results = sample();
        results["kind"] = "interleave".into();
        results["arms"][0]["wins"] = 30.into();
        results["arms"][1]["wins"] = 50.into();
        results["interleaving"] = serde_json::json!({
            "users_compared": 90, "ties": 10, "preference": -0.1111, "preference_low": -0.2,
            "preference_high": -0.02, "p_value": 0.0328, "undefined": {}
        });
        let table = render(&fetched(results.clone()), Format::Table);
        assert!(
            table.lines().next().unwrap_or_default().contains("interleaved"),
            "{table}"
        );
        assert!(
            table.contains("Interleaving: 90 users compared, 10 ties; wins: control 30, treatment 50"),
            "{table}"
        );
        assert!(
            table.contains("preference -0.1111 95% CI [-0.2000, -0.0200] (favours treatment; sign test p=3.28e-2)"),
            "{table}"
        );
        let rows = rows(&render(&fetched(results), Format::Csv));
        assert_eq!([&rows[0]["wins"], &rows[1]["wins"]], ["30", "50"]);
    }
}
