//! Summaries of timing samples.

use serde_json::{json, Value};

pub struct Summary {
    pub median: f64,
    pub p95: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

pub fn summarize(samples: &[f64]) -> Summary {
    assert!(!samples.is_empty(), "no samples");
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    Summary {
        median: at(0.5),
        p95: at(0.95),
        min: sorted[0],
        max: sorted[sorted.len() - 1],
        n: sorted.len(),
    }
}

impl Summary {
    pub fn json(&self) -> Value {
        json!({"median": self.median, "p95": self.p95, "min": self.min, "max": self.max, "n": self.n})
    }
}
