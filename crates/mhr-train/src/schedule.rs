use serde::{Deserialize, Serialize};

/// Learning-rate multiplier over a stage.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Schedule {
    Constant,
    /// Linear warm-up from 0 over `warmup_fraction` of the steps, then linear decay to `floor` (0 in
    /// transformers' `get_linear_schedule_with_warmup`, which the paper's runs use).
    Linear {
        warmup_fraction: f64,
        floor: f64,
    },
}

impl Default for Schedule {
    /// Linear warm-up over 6% of the steps, then linear decay to 0 (mttl's SNI runs).
    fn default() -> Self {
        Schedule::Linear {
            warmup_fraction: 0.06,
            floor: 0.0,
        }
    }
}

impl Schedule {
    /// The multiplier of the peak learning rate at `step` (0-based, the step about to be taken) of `total`.
    pub fn factor(&self, step: usize, total: usize) -> f64 {
        match *self {
            Schedule::Constant => 1.0,
            Schedule::Linear {
                warmup_fraction,
                floor,
            } => {
                let warmup = (total as f64 * warmup_fraction).round() as usize;
                if step < warmup {
                    step as f64 / warmup.max(1) as f64
                } else {
                    let remaining = total.saturating_sub(step) as f64;
                    let span = total.saturating_sub(warmup).max(1) as f64;
                    (remaining / span).max(floor)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_transformers_linear_schedule() {
        // transformers: lr_lambda(s) = s / max(1, w) if s < w else max(0, (T - s) / max(1, T - w))
        let s = Schedule::Linear {
            warmup_fraction: 10.0 / 110.0,
            floor: 0.0,
        };
        assert_eq!(s.factor(0, 110), 0.0);
        assert_eq!(s.factor(5, 110), 0.5);
        assert_eq!(s.factor(10, 110), 1.0);
        assert_eq!(s.factor(60, 110), 0.5);
        assert_eq!(s.factor(110, 110), 0.0);
        assert_eq!(s.factor(200, 110), 0.0);
        assert_eq!(
            Schedule::Linear {
                warmup_fraction: 0.0,
                floor: 0.0
            }
            .factor(0, 4),
            1.0
        );
        assert_eq!(
            Schedule::Linear {
                warmup_fraction: 0.0,
                floor: 0.05
            }
            .factor(99, 100),
            0.05
        );
        assert_eq!(Schedule::Constant.factor(7, 10), 1.0);
    }
}
