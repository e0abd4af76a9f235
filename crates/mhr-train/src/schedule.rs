use serde::{Deserialize, Serialize};

/// Linear warm-up from 0 to the peak over `warmup` steps, then linear decay to 0 at `total` steps
/// (transformers' `get_linear_schedule_with_warmup`, which every run of the paper uses).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinearSchedule {
    pub warmup: usize,
    pub total: usize,
}

impl LinearSchedule {
    /// Warm-up as a fraction of the total (mttl's `warmup_proportion`, 0.06 in the paper's runs).
    pub fn with_warmup_fraction(total: usize, fraction: f64) -> Self {
        Self {
            warmup: (total as f64 * fraction).round() as usize,
            total,
        }
    }

    /// The multiplier of the peak learning rate at `step` (0-based, the step about to be taken).
    pub fn factor(&self, step: usize) -> f64 {
        if step < self.warmup {
            step as f64 / self.warmup.max(1) as f64
        } else {
            let remaining = self.total.saturating_sub(step) as f64;
            let span = self.total.saturating_sub(self.warmup).max(1) as f64;
            (remaining / span).max(0.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_transformers_linear_schedule() {
        // transformers: lr_lambda(s) = s / max(1, w) if s < w else max(0, (T - s) / max(1, T - w))
        let s = LinearSchedule {
            warmup: 10,
            total: 110,
        };
        assert_eq!(s.factor(0), 0.0);
        assert_eq!(s.factor(5), 0.5);
        assert_eq!(s.factor(10), 1.0);
        assert_eq!(s.factor(60), 0.5);
        assert_eq!(s.factor(110), 0.0);
        assert_eq!(s.factor(200), 0.0);
        assert_eq!(LinearSchedule::with_warmup_fraction(1000, 0.06).warmup, 60);
        assert_eq!(LinearSchedule { warmup: 0, total: 4 }.factor(0), 1.0);
    }
}
