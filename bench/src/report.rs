//! Figures and how they are printed: one table for people, `--json` for machines.

use std::time::Duration;

/// What a figure is held against.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// The median must be at least this.
    AtLeast(f64),
    /// The median must be below this.
    Below(f64),
}

impl Target {
    fn met(self, median: f64) -> bool {
        match self {
            Self::AtLeast(floor) => median >= floor,
            Self::Below(ceiling) => median < ceiling,
        }
    }

    fn text(self) -> String {
        match self {
            Self::AtLeast(floor) => format!(">= {}", number(floor)),
            Self::Below(ceiling) => format!("< {}", number(ceiling)),
        }
    }
}

/// One measured quantity: every sample, summarised by median and spread.
#[derive(Clone, Debug)]
pub struct Figure {
    pub scenario: &'static str,
    pub metric: String,
    pub unit: &'static str,
    pub samples: Vec<f64>,
    pub target: Option<Target>,
}

impl Figure {
    pub fn new(scenario: &'static str, metric: impl Into<String>, unit: &'static str) -> Self {
        Self {
            scenario,
            metric: metric.into(),
            unit,
            samples: Vec::new(),
            target: None,
        }
    }

    pub fn target(mut self, target: Target) -> Self {
        self.target = Some(target);
        self
    }

    pub fn sample(mut self, value: f64) -> Self {
        self.samples.push(value);
        self
    }

    fn sorted(&self) -> Vec<f64> {
        let mut sorted: Vec<f64> = self
            .samples
            .iter()
            .copied()
            .filter(|v| !v.is_nan())
            .collect();
        sorted.sort_by(f64::total_cmp);
        sorted
    }

    pub fn median(&self) -> f64 {
        let sorted = self.sorted();
        match sorted.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        }
    }

    fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    /// Whether the median meets the target (None: no target).
    pub fn met(&self) -> Option<bool> {
        self.target.map(|t| t.met(self.median()))
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "scenario": self.scenario,
            "metric": self.metric,
            "unit": self.unit,
            "median": self.median(),
            "min": self.min(),
            "max": self.max(),
            "samples": self.samples,
            "target": self.target.map(Target::text),
            "met": self.met(),
        })
    }
}

/// A number with thousands separators and sensible precision.
pub fn number(value: f64) -> String {
    if value.is_nan() {
        return "-".into();
    }
    if value.abs() >= 1000.0 {
        let whole = value.round() as i64;
        let digits = whole.unsigned_abs().to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if whole < 0 {
            out.insert(0, '-');
        }
        out
    } else if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// Milliseconds of a duration, as a sample.
pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The table, one row per figure.
pub fn print_table(figures: &[Figure]) {
    println!();
    println!(
        "{:<12} {:<58} {:>12} {:>12} {:>12} {:>3} {:<9} {:<12} met",
        "scenario", "metric", "median", "min", "max", "n", "unit", "target"
    );
    println!("{}", "-".repeat(140));
    for f in figures {
        let met = match f.met() {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        println!(
            "{:<12} {:<58} {:>12} {:>12} {:>12} {:>3} {:<9} {:<12} {}",
            f.scenario,
            f.metric,
            number(f.median()),
            number(f.min()),
            number(f.max()),
            f.samples.len(),
            f.unit,
            f.target.map(Target::text).unwrap_or_default(),
            met
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread_ignore_order() {
        let f = Figure::new("s", "m", "ms")
            .sample(3.0)
            .sample(1.0)
            .sample(2.0)
            .sample(10.0);
        assert_eq!(f.median(), 2.5);
        assert_eq!(f.min(), 1.0);
        assert_eq!(f.max(), 10.0);
    }

    #[test]
    fn targets_are_judged_on_the_median() {
        let f = Figure::new("s", "m", "ms")
            .sample(4.0)
            .sample(6.0)
            .sample(4.5)
            .target(Target::Below(5.0));
        assert_eq!(f.met(), Some(true));
        let f = Figure::new("s", "m", "rec/s")
            .sample(90.0)
            .sample(99.0)
            .sample(120.0)
            .target(Target::AtLeast(100.0));
        assert_eq!(f.met(), Some(false));
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(number(1_234_567.4), "1,234,567");
        assert_eq!(number(12.345), "12.3");
        assert_eq!(number(0.5), "0.50");
    }
}
