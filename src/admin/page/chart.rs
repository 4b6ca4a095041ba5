//! Each partner's last 24 hours as a bar chart: inline SVG drawn on the server, so the
//! page needs no script and no chart library. Colours are SVG attributes, not style
//! attributes. Each series carries a `<title>`, each bar a tooltip with its number, and
//! the totals are in a table beside the chart, for screen readers and for tests.

use maud::{html, Markup};

use crate::store::support::chart::{HourCounts, PartnerDay, HOURS};

/// One stacked series: its name, the colour of its bars, and its count in an hour.
struct Series {
    name: &'static str,
    fill: &'static str,
    count: fn(&HourCounts) -> i64,
}

/// Bottom to top in each bar.
const SERIES: [Series; 4] = [
    Series {
        name: "delivered",
        fill: "#2a9d50",
        count: |hour| hour.delivered,
    },
    Series {
        name: "retried",
        fill: "#e0a100",
        count: |hour| hour.retried,
    },
    Series {
        name: "rejected",
        fill: "#d04545",
        count: |hour| hour.rejected,
    },
    Series {
        name: "dead",
        fill: "#6b1d1d",
        count: |hour| hour.dead,
    },
];

/// The drawing's size in SVG units: a bar per hour, a y axis on the left, hour labels
/// below.
const SLOT: i64 = 22;
const LEFT: i64 = 36;
const TOP: i64 = 8;
const PLOT_HEIGHT: i64 = 110;
const WIDTH: i64 = LEFT + SLOT * HOURS as i64 + 4;
const HEIGHT: i64 = TOP + PLOT_HEIGHT + 22;

/// The charts of every partner that had something in its last day.
pub(super) fn last_day(days: &[PartnerDay]) -> Markup {
    html! {
        h2 { "Last 24 hours, by hour (UTC)" }
        @if days.is_empty() {
            p #charts { "Nothing was delivered, rejected, retried or dead in the last 24 hours." }
        } @else {
            section.charts #charts {
                @for (index, day) in days.iter().enumerate() { (partner_chart(index, day)) }
            }
        }
    }
}

fn partner_chart(index: usize, day: &PartnerDay) -> Markup {
    let title_id = format!("chart-title-{index}");
    let highest = day
        .hours
        .iter()
        .map(|hour| {
            SERIES
                .iter()
                .map(|series| (series.count)(hour))
                .sum::<i64>()
        })
        .max()
        .unwrap_or(0)
        .max(1);
    let total = day.total();
    html! {
        figure.chart data-partner=(day.partner) {
            figcaption { (day.partner) }
            svg.bars xmlns="http://www.w3.org/2000/svg" role="img" aria-labelledby=(title_id)
                viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } width=(WIDTH) height=(HEIGHT) {
                title id=(title_id) { (day.partner) ": deliveries and retries per hour over the last 24 hours" }
                (axes(day, highest))
                @for (position, series) in SERIES.iter().enumerate() {
                    g.series data-series=(series.name) fill=(series.fill) {
                        title { (series.name) ": " ((series.count)(&total)) " in 24 hours" }
                        @for (slot, hour) in day.hours.iter().enumerate() {
                            @let count = (series.count)(hour);
                            @if count > 0 {
                                @let below: i64 = SERIES[..position].iter().map(|under| (under.count)(hour)).sum();
                                @let (y, height) = bar(below, count, highest);
                                rect x=(LEFT + slot as i64 * SLOT + 2) y=(y) width=(SLOT - 4) height=(height) {
                                    title { (day.hour_start(slot).format("%H:00")) "–" (day.hour_start(slot + 1).format("%H:00")) " UTC: " (count) " " (series.name) }
                                }
                            }
                        }
                    }
                }
            }
            table.totals {
                thead { tr { th { "Last 24 hours" } @for series in &SERIES { th.num { (swatch(series)) " " (series.name) } } } }
                tbody { tr {
                    th { (day.partner) }
                    @for series in &SERIES { td.num data-series=(series.name) { ((series.count)(&total)) } }
                } }
            }
        }
    }
}

/// Where a bar segment starts and how tall it is, `below` counts under it.
fn bar(below: i64, count: i64, highest: i64) -> (i64, i64) {
    let scale = |count: i64| count * PLOT_HEIGHT / highest;
    let bottom = TOP + PLOT_HEIGHT - scale(below);
    let top = TOP + PLOT_HEIGHT - scale(below + count);
    // A count of one in a busy hour still shows.
    let height = (bottom - top).max(1);
    (bottom - height, height)
}

/// The baseline, the highest count on the y axis, and every sixth hour below. SVG
/// elements are closed (`{}`): in HTML an unclosed `<line>` would swallow what follows.
fn axes(day: &PartnerDay, highest: i64) -> Markup {
    let baseline = TOP + PLOT_HEIGHT;
    html! {
        g.axes fill="#5b6475" font-size="10" {
            line x1=(LEFT) y1=(baseline) x2=(WIDTH - 4) y2=(baseline) stroke="#8c96a8" {}
            line x1=(LEFT) y1=(TOP) x2=(WIDTH - 4) y2=(TOP) stroke="#e1e4ea" {}
            text x=(LEFT - 4) y=(TOP + 4) text-anchor="end" { (highest) }
            text x=(LEFT - 4) y=(baseline) text-anchor="end" { "0" }
            @for slot in (0..HOURS).step_by(6) {
                text x=(LEFT + slot as i64 * SLOT) y=(baseline + 14) { (day.hour_start(slot).format("%H:00")) }
            }
        }
    }
}

fn swatch(series: &Series) -> Markup {
    html! {
        svg width="10" height="10" aria-hidden="true" { rect width="10" height="10" fill=(series.fill) {} }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day() -> PartnerDay {
        let mut day = PartnerDay {
            partner: "acme".into(),
            current_hour: "2026-12-01T14:00:00Z".parse().expect("time"),
            hours: [HourCounts::default(); HOURS],
        };
        day.hours[23] = HourCounts {
            delivered: 3,
            rejected: 1,
            retried: 0,
            dead: 0,
        };
        day
    }

    #[test]
    fn the_tallest_hour_fills_the_plot_and_segments_stack_without_gaps() {
        assert_eq!(bar(0, 3, 4), (TOP + PLOT_HEIGHT - 82, 82));
        assert_eq!(
            bar(3, 1, 4),
            (TOP, 28),
            "on top of the first, up to the top"
        );
        assert_eq!(bar(0, 1, 1000).1, 1, "one in a busy hour still shows");
    }

    #[test]
    fn every_series_is_named_and_counted_and_the_chart_has_no_script_or_style() {
        let html = last_day(&[day()]).into_string();
        for name in ["delivered", "retried", "rejected", "dead"] {
            assert!(html.contains(&format!("<title>{name}: ")), "{name}: {html}");
        }
        assert!(html.contains("<td class=\"num\" data-series=\"delivered\">3</td>"));
        assert!(html.contains("<title>14:00–15:00 UTC: 1 rejected</title>"));
        assert!(!html.contains("style=") && !html.contains("<script"));
        assert!(
            html.contains("stroke=\"#8c96a8\"></line><line"),
            "an unclosed line would hide the axis labels: {html}"
        );
    }
}
