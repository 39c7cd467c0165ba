//! The results UI's HTML, written with maud: every value is escaped unless marked otherwise, and
//! the one thing marked otherwise is the lift chart's SVG, which plotters escapes itself. Each
//! figure shown from the results is also in its element's `data-value`, exactly as the JSON
//! results give it, so a reader (or a test) can take the numbers from the page as they are.

use std::sync::Arc;

use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::api::error::ApiError;
use crate::api::results::body::{ArmResultsBody, CupedBody, DayBody, ResultsBody};
use crate::experiment::Experiment;

/// The one stylesheet, inline so a page is one request.
const STYLE: &str = "
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1440px;padding:0 1.5rem 3rem;color:#1d2330}
header{display:flex;justify-content:space-between;align-items:center;border-bottom:1px solid #d8dce4;margin-bottom:1rem}
header form{margin:0}
h1{font-size:1.5rem;margin:.8rem 0 .2rem}h2{font-size:1.1rem;margin:1.8rem 0 .5rem}
table{border-collapse:collapse;width:100%;margin:.4rem 0}
th,td{padding:.3rem .55rem;border-bottom:1px solid #e6e9ef;text-align:right;white-space:nowrap;vertical-align:top}
th:first-child,td:first-child{text-align:left}td.text{text-align:left;white-space:normal}
th{background:#f4f6f9;font-weight:600;white-space:normal}
.badge{display:inline-block;border-radius:3px;padding:0 .4rem;margin:0 .25rem .15rem 0;font-size:.8rem;font-weight:600}
.srm,.paused,.unavailable{background:#fde2e1;color:#9b1c1c}.sample,.inexact{background:#fdf3d7;color:#7a5400}.ok{background:#dff3e4;color:#1e6b35}
.better{color:#1e6b35;font-weight:600}.worse{color:#9b1c1c;font-weight:600}.inconclusive{color:#5b6475}
.act{background:#eef3fb;border-left:4px solid #3b6fd8;padding:.6rem .9rem}
.muted{color:#5b6475}dl{display:grid;grid-template-columns:max-content auto;gap:.1rem 1rem;margin:.5rem 0}dt{color:#5b6475}dd{margin:0}
svg{max-width:100%;height:auto}.wide{overflow-x:auto}#arms{font-size:13px}.bar{display:inline-block;height:.6rem;background:#3b6fd8;margin-right:.3rem}
details summary{cursor:pointer;color:#3b6fd8}
";

/// A whole page: `title`, then `content`, under a header with the way back to the list and,
/// when signed in, out.
fn layout(title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · recgw results" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    p { a href="/ui/" { "recgw · experiments" } }
                    form method="post" action="/ui/sign-out" { button type="submit" { "Sign out" } }
                }
                (content)
            }
        }
    }
}

/// `0.0423` as `4.23%`.
fn percent(v: f64) -> String {
    format!("{:.2}%", v * 100.0)
}

/// `0.053` as `+5.3%`.
fn signed(v: f64) -> String {
    format!("{:+.1}%", v * 100.0)
}

/// A p-value, to three decimals.
fn p_value(v: f64) -> String {
    match v {
        v if v < 0.001 => "< 0.001".to_string(),
        v => format!("{v:.3}"),
    }
}

/// A figure of the results: its text, and its exact value in `data-value` under the JSON
/// field's name; absent, a dash whose tooltip says why (the results' `undefined` reason).
fn figure(field: &str, value: Option<f64>, show: fn(f64) -> String, why: Option<&String>) -> Markup {
    match value {
        Some(v) => html! { span data-field=(field) data-value=(v) { (show(v)) } },
        None => html! { span.muted data-field=(field) title=[why] { "—" } },
    }
}

/// A count, exact.
fn count(field: &str, value: u64) -> Markup {
    html! { span data-field=(field) data-value=(value) { (value) } }
}

/// An interval `[low, high]` of two figures.
fn interval(
    fields: [&str; 2],
    low: Option<f64>,
    high: Option<f64>,
    show: fn(f64) -> String,
    undefined: &std::collections::BTreeMap<String, String>,
) -> Markup {
    html! {
        "[" (figure(fields[0], low, show, undefined.get(fields[0]))) ", "
        (figure(fields[1], high, show, undefined.get(fields[1]))) "]"
    }
}

/// How long ago a schedule started, in days and hours.
fn age(seconds: Option<u64>) -> String {
    match seconds {
        None => "not started".to_string(),
        Some(s) if s < 3600 => format!("{} min", s / 60),
        Some(s) if s < 86_400 => format!("{} h", s / 3600),
        Some(s) => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// Arms compared with the control: neither the control nor a shadow.
fn compared(body: &ResultsBody) -> impl Iterator<Item = &ArmResultsBody> {
    body.arms.iter().filter(|a| !a.control && !a.shadow)
}

/// The health flags of an experiment's results: a broken split, paused arms, users that could
/// not all be counted, arms short of their sample.
fn badges(body: &ResultsBody) -> Markup {
    let short: Vec<&str> = compared(body)
        .filter(|a| !a.min_sample_reached)
        .map(|a| a.name.as_str())
        .collect();
    let paused = body.arms.iter().filter(|a| a.state == "paused_by_guardrail");
    html! {
        @if body.srm_detected {
            span.badge.srm data-badge="srm" title="the users per arm do not match the weights (p < 0.001): do not trust the comparison" {
                "split broken (SRM)"
            }
        }
        @for arm in paused {
            span.badge.paused data-badge="paused" title=[arm.paused_reason.as_ref()] { (arm.name) " paused by a guardrail" }
        }
        @if !body.users_exact {
            span.badge.inexact data-badge="inexact" title=[body.users_exact_reason.as_ref()] { "users not exact" }
        }
        @if !short.is_empty() {
            span.badge.sample data-badge="sample" title={ "fewer than " (body.min_sample_size) " impressions" } {
                "sample not yet enough: " (short.join(", "))
            }
        }
        @if !body.srm_detected && body.users_exact && short.is_empty() && !body.arms.iter().any(|a| a.state == "paused_by_guardrail") {
            span.badge.ok data-badge="ok" { "healthy" }
        }
    }
}

/// What an experiment's results say in a line per comparison: each compared arm's decision; an
/// interleave experiment's preference; a shadow arm's overlap with the control.
fn verdicts(body: &ResultsBody) -> Markup {
    html! {
        @if let Some(preference) = &body.interleaving {
            div { "preference for " (body.arms[0].name) ": "
                (figure("preference", preference.preference, signed, preference.undefined.get("preference"))) " "
                (interval(["preference_low", "preference_high"], preference.preference_low, preference.preference_high, signed, &preference.undefined)) }
        } @else {
            @for arm in compared(body) {
                div data-arm=(arm.name) { (arm.name) ": " (decision(arm)) }
            }
        }
        @for arm in body.arms.iter().filter(|a| a.shadow) {
            div data-arm=(arm.name) { (arm.name) " (shadow): Jaccard@k "
                (figure("overlap_jaccard", arm.overlap_jaccard, |v| format!("{v:.3}"), arm.undefined.get("overlap_jaccard"))) }
        }
    }
}

/// An arm's decision, coloured.
fn decision(arm: &ArmResultsBody) -> Markup {
    match &arm.decision {
        Some(d) => html! { span class=(d) data-field="decision" data-value=(d) { (d) } },
        None => html! { span.muted data-field="decision" title=[arm.undefined.get("decision")] { "—" } },
    }
}

/// The list of experiments, each with its results (or why they could not be read).
pub(super) fn list(experiments: &[Arc<Experiment>], results: Vec<Result<ResultsBody, ApiError>>) -> Markup {
    let content = html! {
        h1 { "Experiments" }
        p.muted { "Decisions are the always-valid test's, which may be read at any time. Open an experiment for its figures." }
        table #experiments {
            thead { tr {
                th { "Experiment" } th { "Placement" } th { "Kind" } th { "Status" } th { "Age" }
                th { "Users" } th { "What it says" } th { "Health" }
            } }
            tbody {
                @for (experiment, body) in experiments.iter().zip(&results) {
                    tr data-experiment=(experiment.id) {
                        td.text {
                            a href={ "/ui/experiments/" (experiment.id) } { (experiment.id) }
                            br;
                            span.muted data-field="description" { (experiment.description) }
                        }
                        td { (experiment.placement) }
                        td { (experiment.kind.as_str()) }
                        td { (experiment.status.as_str()) }
                        @match body {
                            Ok(body) => {
                                td { (age(body.age_seconds)) }
                                td { (count("users", body.arms.iter().filter(|a| !a.shadow).map(|a| a.users).sum())) }
                                td.text { (verdicts(body)) }
                                td.text {
                                    (badges(body))
                                }
                            }
                            Err(e) => {
                                td {} td {} td {}
                                td.text { span.badge.unavailable data-badge="unavailable" { (e.message()) } }
                            }
                        }
                    }
                }
            }
        }
    };
    layout("Experiments", content)
}

/// One experiment's page.
pub(super) fn experiment(experiment: &Experiment, body: &ResultsBody, admin: bool) -> Markup {
    let interleave = body.interleaving.is_some();
    let cuped = body.arms.iter().any(|a| a.cuped.is_some());
    let content = html! {
        h1 { (body.experiment) }
        p data-field="description" { (experiment.description) }
        dl {
            dt { "Placement" } dd { (experiment.placement) }
            dt { "Kind" } dd { (body.kind) }
            dt { "Status" } dd { (body.status) }
            dt { "Owner" } dd { (experiment.owner) }
            dt { "Running for" } dd { (age(body.age_seconds)) }
            dt { "Counts" } dd { (body.counts) ", unit of analysis: " (body.unit) }
        }
        p { (badges(body)) }
        div.act {
            strong { "What to act on. " }
            span #act-on { (body.act_on) }
            @for arm in compared(body) {
                br;
                (arm.name) " against " (body.arms[0].name) ": " (decision(arm))
                @if let (None, Some(why)) = (&arm.decision, arm.undefined.get("decision")) { " (no decision: " (why) ")" }
                @if let Some(reason) = &arm.paused_reason { " (paused: " (reason) ")" }
            }
        }
        h2 { "Arms" }
        (arms_table(body, admin, cuped))
        @if !interleave {
            h2 { "Lift over time" }
            (lift_chart(body))
        }
        @if let Some(preference) = &body.interleaving {
            h2 { "Interleaving preference" }
            table #interleaving {
                thead { tr { th { "Users compared" } th { "Ties" } th { "Preference for " (body.arms[0].name) } th { "95% interval" } th { "p-value (sign test)" } } }
                tbody { tr {
                    td { (count("users_compared", preference.users_compared)) }
                    td { (count("ties", preference.ties)) }
                    td { (figure("preference", preference.preference, signed, preference.undefined.get("preference"))) }
                    td { (interval(["preference_low", "preference_high"], preference.preference_low, preference.preference_high, signed, &preference.undefined)) }
                    td { (figure("p_value", preference.p_value, p_value, preference.undefined.get("p_value"))) }
                } }
            }
            (team_share(body))
        }
        @if body.arms.iter().any(|a| a.shadow) {
            h2 { "Shadow overlap" }
            (shadow_table(body))
        }
        h2 { "CTR by position" }
        (by_position(body))
        @if !interleave {
            h2 { "Sample ratio" }
            p {
                "Users per arm against the weights: chi-square p = "
                (figure("srm_p_value", body.srm_p_value, p_value, body.undefined.get("srm_p_value")))
                @if body.srm_detected { " — the split is broken; find the cause before reading the comparison." }
                @else { " (a mismatch is flagged below 0.001)." }
            }
        }
        p.muted {
            "The same figures as JSON: " a href={ "/experiments/" (body.experiment) "/results?by=day" } { "results" }
            ". Each arm is compared with " (body.arms[0].name) "; users are the unit of analysis."
            @if cuped { " CUPED figures are adjusted for each user's pre-period clicks and impressions." }
        }
    };
    layout(&body.experiment, content)
}

/// The arms' table: counts, CTR, lift with both intervals, decision, CUPED figures.
fn arms_table(body: &ResultsBody, admin: bool, cuped: bool) -> Markup {
    html! {
        div.wide { table #arms {
            thead { tr {
                th { "Arm" } th { "Users" } th { "Exposures" } th { "Impressions" } th { "Clicks" }
                th { "CTR [95%]" } th { "Lift [95%, fixed horizon], p" }
                th { "Lift [95%, always valid], p" } th { "Decision" }
                @if cuped { th { "CUPED lift [95%, always valid]" } th { "Variance reduction" } }
            } }
            tbody {
                @for arm in &body.arms {
                    tr data-arm=(arm.name) {
                        td.text {
                            strong { (arm.name) }
                            @if arm.control { " " span.muted { "(control)" } }
                            br;
                            span.muted data-field="state" data-value=(arm.state) { (arm.state.replace('_', " ")) }
                            @if admin && arm.state == "paused_by_guardrail" {
                                form method="post" action={ "/ui/experiments/" (body.experiment) "/arms/" (arm.name) "/resume" } {
                                    button type="submit" data-resume=(arm.name) { "Resume" }
                                }
                            }
                        }
                        td { (count("users", arm.users)) }
                        td { (count("exposures", arm.exposures)) }
                        td { (count("impressions", arm.impressions)) }
                        td { (count("clicks", arm.clicks)) }
                        td {
                            (figure("ctr", arm.ctr, percent, arm.undefined.get("ctr"))) " "
                            (interval(["ctr_low", "ctr_high"], arm.ctr_low, arm.ctr_high, percent, &arm.undefined))
                        }
                        @if arm.control {
                            td.muted { "baseline" } td {} td {}
                        } @else {
                            td {
                                (figure("lift", arm.lift, signed, arm.undefined.get("lift"))) " "
                                (interval(["lift_low", "lift_high"], arm.lift_low, arm.lift_high, signed, &arm.undefined))
                                br; "p = " (figure("p_value", arm.p_value, p_value, arm.undefined.get("p_value")))
                            }
                            td {
                                (interval(["sequential_lift_low", "sequential_lift_high"], arm.sequential_lift_low, arm.sequential_lift_high, signed, &arm.undefined))
                                br; "p = " (figure("sequential_p_value", arm.sequential_p_value, p_value, arm.undefined.get("sequential_p_value")))
                            }
                            td { (decision(arm)) }
                        }
                        @if cuped {
                            (cuped_cells(arm.cuped.as_ref().filter(|_| !arm.control)))
                        }
                    }
                }
            }
        } }
    }
}

/// The CUPED cells of an arm (empty for the control, which has no comparison of its own).
fn cuped_cells(cuped: Option<&CupedBody>) -> Markup {
    match cuped {
        None => html! { td {} td {} },
        Some(c) => html! {
            td {
                (figure("cuped.lift", c.lift, signed, c.undefined.get("lift"))) " "
                (interval(["cuped.sequential_lift_low", "cuped.sequential_lift_high"], c.sequential_lift_low, c.sequential_lift_high, signed, &c.undefined))
            }
            td { (figure("cuped.variance_reduction", c.variance_reduction, percent, c.undefined.get("variance_reduction"))) }
        },
    }
}

/// The cumulative lift per day inside its always-valid band (the chart `recgw report --plot`
/// writes), and its numbers.
fn lift_chart(body: &ResultsBody) -> Markup {
    let chart = crate::report::plot_svg(body);
    let days = body.days.as_deref().unwrap_or_default();
    html! {
        @match chart {
            Ok(svg) => figure #lift-chart { (PreEscaped(svg)) },
            Err(e) => p.muted { (e.to_string()) },
        }
        @if !days.is_empty() {
            details #days {
                summary { "The chart's numbers (" (days.len()) @if days.len() == 1 { " day)" } @else { " days)" } }
                (days_table(body, days))
            }
        }
    }
}

/// The figures of each day: per compared arm its users, lift and always-valid interval (the
/// CUPED-adjusted ones where the experiment has them, as the chart draws).
fn days_table(body: &ResultsBody, days: &[DayBody]) -> Markup {
    let names: Vec<&str> = compared(body).map(|a| a.name.as_str()).collect();
    html! {
        table {
            thead {
                tr { th rowspan="2" { "Day (UTC)" } @for name in &names { th colspan="3" { (name) } } }
                tr { @for _ in &names { th { "Users" } th { "Lift" } th { "Always-valid 95%" } } }
            }
            tbody {
                @for day in days.iter().rev() {
                    tr data-day=(day.day) {
                        td { (day.day) }
                        @for name in &names {
                            @if let Some(arm) = day.arms.iter().find(|a| a.name == *name) {
                                td { (count("users", arm.users)) }
                                @match &arm.cuped {
                                    Some(c) => {
                                        td { (figure("lift", c.lift, signed, c.undefined.get("lift"))) }
                                        td { (interval(["sequential_lift_low", "sequential_lift_high"], c.sequential_lift_low, c.sequential_lift_high, signed, &c.undefined)) }
                                    }
                                    None => {
                                        td { (figure("lift", arm.lift, signed, arm.undefined.get("lift"))) }
                                        td { (interval(["sequential_lift_low", "sequential_lift_high"], arm.sequential_lift_low, arm.sequential_lift_high, signed, &arm.undefined)) }
                                    }
                                }
                            } @else {
                                td {} td {} td {}
                            }
                        }
                    }
                }
            }
        }
    }
}

/// CTR by the item's rank, one column per arm, each with a bar scaled to the highest CTR.
fn by_position(body: &ResultsBody) -> Markup {
    let arms: Vec<&ArmResultsBody> = body.arms.iter().filter(|a| !a.shadow).collect();
    let positions: Vec<&str> = arms
        .first()
        .map(|a| a.by_position.iter().map(|p| p.position.as_str()).collect())
        .unwrap_or_default();
    let highest = arms
        .iter()
        .flat_map(|a| a.by_position.iter().filter_map(|p| p.ctr))
        .fold(0.0_f64, f64::max);
    html! {
        table #by-position {
            thead { tr { th { "Rank" } @for arm in &arms { th { (arm.name) ": CTR (clicks / impressions)" } } } }
            tbody {
                @for (row, position) in positions.iter().enumerate() {
                    tr data-position=(position) {
                        td { (position) }
                        @for arm in &arms {
                            @if let Some(p) = arm.by_position.get(row) {
                                td data-arm=(arm.name) {
                                    @if let Some(ctr) = p.ctr.filter(|_| highest > 0.0) {
                                        span.bar style={ "width:" (format!("{:.1}", 60.0 * ctr / highest)) "px" } {}
                                    }
                                    (figure("ctr", p.ctr, percent, None)) " ("
                                    (count("clicks", p.clicks)) " / " (count("impressions", p.impressions)) ")"
                                }
                            } @else { td {} }
                        }
                    }
                }
            }
        }
    }
}

/// An interleave experiment's clicks by team: each arm's share of the clicks on interleaved
/// pages, and its wins.
fn team_share(body: &ResultsBody) -> Markup {
    let clicks: u64 = body.arms.iter().map(|a| a.clicks).sum();
    html! {
        table #team-share {
            thead { tr { th { "Arm" } th { "Users won" } th { "Clicks on its items" } th { "Click share" } } }
            tbody {
                @for arm in &body.arms {
                    tr data-arm=(arm.name) {
                        td { (arm.name) }
                        td { @if let Some(wins) = arm.wins { (count("wins", wins)) } }
                        td { (count("clicks", arm.clicks)) }
                        td { (figure("click_share", (clicks > 0).then(|| arm.clicks as f64 / clicks as f64), percent, None)) }
                    }
                }
            }
        }
    }
}

/// A shadow arm's lists against the control's for the same users.
fn shadow_table(body: &ResultsBody) -> Markup {
    html! {
        table #shadow {
            thead { tr { th { "Shadow arm" } th { "Lists compared" } th { "Jaccard@k" } th { "Rank-biased overlap" } th { "Distinct items" } th { "Catalogue coverage" } } }
            tbody {
                @for arm in body.arms.iter().filter(|a| a.shadow) {
                    tr data-arm=(arm.name) {
                        td { (arm.name) }
                        td { (count("compared", arm.compared.unwrap_or_default())) }
                        td { (figure("overlap_jaccard", arm.overlap_jaccard, |v| format!("{v:.3}"), arm.undefined.get("overlap_jaccard"))) }
                        td { (figure("overlap_rbo", arm.overlap_rbo, |v| format!("{v:.3}"), arm.undefined.get("overlap_rbo"))) }
                        td { (count("distinct_items", arm.distinct_items)) }
                        td { (figure("catalogue_coverage", arm.catalogue_coverage, percent, arm.undefined.get("catalogue_coverage"))) }
                    }
                }
            }
        }
    }
}

/// The sign-in form; `next` is where it goes back to, `failed` says the last key was refused.
pub(super) fn sign_in(next: &str, failed: bool, auth_off: bool) -> Markup {
    let content = html! {
        h1 { "Sign in" }
        @if auth_off {
            p { "Auth is off on this gateway (no " code { "auth.keys" } "): the pages are open. "
                a href=(next) { "Go to the results" } }
        } @else {
            @if failed { p.badge.srm #failed { "That key is not configured here." } }
            p.muted { "Sign in with an API key of this gateway. It is kept in a cookie for these pages only, which scripts cannot read and other sites cannot send." }
            form method="post" action="/ui/sign-in" {
                input type="hidden" name="next" value=(next);
                label { "API key " input type="password" name="key" autocomplete="current-password" required autofocus; }
                " "
                button type="submit" { "Sign in" }
            }
        }
    };
    layout("Sign in", content)
}
