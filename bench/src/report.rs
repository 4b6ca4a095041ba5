//! Figures, their medians over runs, the targets of issues 6 and 13, and the two outputs: a
//! table on stdout and the same figures as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value};

/// What a figure should be (issue 6, "Targets").
#[derive(Debug, Clone, Copy)]
pub enum Target {
    AtLeast(f64),
    Below(f64),
    AtMost(f64),
}

impl Target {
    fn met(self, value: f64) -> bool {
        match self {
            Target::AtLeast(limit) => value >= limit,
            Target::Below(limit) => value < limit,
            Target::AtMost(limit) => value <= limit,
        }
    }

    fn describe(self) -> String {
        match self {
            Target::AtLeast(limit) => format!(">= {}", number(limit)),
            Target::Below(limit) => format!("< {}", number(limit)),
            Target::AtMost(limit) => format!("<= {}", number(limit)),
        }
    }
}

/// One figure of one run.
#[derive(Debug, Clone)]
pub struct Metric {
    pub name: String,
    pub unit: &'static str,
    pub value: f64,
    pub target: Option<Target>,
}

impl Metric {
    pub fn new(name: impl Into<String>, unit: &'static str, value: f64) -> Metric {
        Metric {
            name: name.into(),
            unit,
            value,
            target: None,
        }
    }

    pub fn target(mut self, target: Target) -> Metric {
        self.target = Some(target);
        self
    }
}

/// Every run of one scenario.
#[derive(Debug, Clone, Default)]
pub struct ScenarioResult {
    pub name: String,
    pub runs: Vec<Vec<Metric>>,
    /// Extra detail for the JSON only (e.g. table-health's size series), from the last run.
    pub detail: Option<Value>,
}

/// One figure over all runs.
struct Summary {
    name: String,
    unit: &'static str,
    values: Vec<f64>,
    median: f64,
    target: Option<Target>,
}

/// The median of the finite values (NaN when there are none).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

impl ScenarioResult {
    /// Figures in the order the first run reported them, each with its median.
    fn summaries(&self) -> Vec<Summary> {
        let mut order: Vec<(String, &'static str, Option<Target>)> = Vec::new();
        let mut values: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for run in &self.runs {
            for metric in run {
                if !values.contains_key(&metric.name) {
                    order.push((metric.name.clone(), metric.unit, metric.target));
                }
                values
                    .entry(metric.name.clone())
                    .or_default()
                    .push(metric.value);
            }
        }
        order
            .into_iter()
            .map(|(name, unit, target)| {
                let values = values.remove(&name).unwrap_or_default();
                Summary {
                    median: median(&values),
                    name,
                    unit,
                    values,
                    target,
                }
            })
            .collect()
    }
}

/// A figure as people read it: thousands separated, few decimals.
pub fn number(value: f64) -> String {
    if !value.is_finite() {
        return "n/a".into();
    }
    let decimals = match value.abs() {
        v if v >= 100.0 || v.fract() == 0.0 => 0,
        v if v >= 10.0 => 1,
        v if v >= 1.0 => 2,
        _ => 3,
    };
    let text = format!("{value:.decimals$}");
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut grouped = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    if frac.is_empty() {
        format!("{sign}{grouped}")
    } else {
        format!("{sign}{grouped}.{frac}")
    }
}

/// The table printed at the end: one line per figure, its median, unit, target, and
/// each run's value.
pub fn table(results: &[ScenarioResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<19} {:<44} {:>12} {:<6} {:<16} runs",
        "scenario", "figure", "median", "unit", "target"
    );
    for result in results {
        for summary in result.summaries() {
            let target = summary.target.map_or(String::new(), |target| {
                let verdict = if target.met(summary.median) {
                    "met"
                } else {
                    "MISSED"
                };
                format!("{} {verdict}", target.describe())
            });
            let runs: Vec<String> = summary.values.iter().map(|v| number(*v)).collect();
            let _ = writeln!(
                out,
                "{:<19} {:<44} {:>12} {:<6} {:<16} {}",
                result.name,
                summary.name,
                number(summary.median),
                summary.unit,
                target,
                runs.join(" ")
            );
        }
    }
    out
}

/// The same figures as JSON.
pub fn json(results: &[ScenarioResult], context: Value) -> Value {
    let scenarios: Vec<Value> = results
        .iter()
        .map(|result| {
            let figures: Vec<Value> = result
                .summaries()
                .into_iter()
                .map(|summary| {
                    let finite = |v: f64| if v.is_finite() { json!(v) } else { Value::Null };
                    json!({
                        "name": summary.name,
                        "unit": summary.unit,
                        "median": finite(summary.median),
                        "runs": summary.values.iter().map(|v| finite(*v)).collect::<Vec<_>>(),
                        "target": summary.target.map(Target::describe),
                        "met": summary.target.map(|t| t.met(summary.median)),
                    })
                })
                .collect();
            json!({"name": result.name, "figures": figures, "detail": result.detail})
        })
        .collect();
    json!({"context": context, "scenarios": scenarios})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn figures_read_with_thousands_separated() {
        assert_eq!(number(12345.678), "12,346");
        assert_eq!(number(1234567.0), "1,234,567");
        assert_eq!(number(12.345), "12.3");
        assert_eq!(number(0.01234), "0.012");
        assert_eq!(number(-2500.0), "-2,500");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.0), "0");
    }
}
