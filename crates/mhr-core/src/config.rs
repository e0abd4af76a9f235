//! Typed adapter and routing configuration. Defaults are peft's, so a config read from a peft
//! `adapter_config.json` and one built here agree unless a knob is set on purpose.

use serde::{Deserialize, Serialize};

use crate::error::CoreError;

/// How the `A` (and random `B`) matrices are drawn. The two references differ by `sqrt(3h)` in the bound of `A`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum InitMode {
    /// peft: Kaiming-uniform(a = √5) per (head, skill) slice, so `A ~ U(±1/√(d_in/h))`.
    #[default]
    Peft,
    /// mttl camera-ready: `A ~ U(±1/√(3·d_in))` over the full input width, for every head and skill.
    Mttl,
}

impl InitMode {
    /// Bound of the uniform distribution of `A` for an input width `d_in` split into `heads` heads.
    pub fn a_bound(self, d_in: usize, heads: usize) -> f64 {
        match self {
            InitMode::Peft => 1.0 / ((d_in / heads) as f64).sqrt(),
            InitMode::Mttl => 1.0 / (3.0 * d_in as f64).sqrt(),
        }
    }

    /// Bound of `B` when it is not zero-initialised (peft: Kaiming with fan-in `r`).
    pub fn b_bound(self, rank: usize) -> f64 {
        match self {
            InitMode::Peft => 1.0 / (rank as f64).sqrt(),
            InitMode::Mttl => 1.0 / (3.0 * rank as f64).sqrt(),
        }
    }
}

/// How the per-head skill weights are made comparable across tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Normalization {
    /// `w = z / (Σ_s z + 1e-12)`: a convex combination of skills (peft, mttl default).
    #[default]
    SumToOne,
    /// mttl's `poly_average_correction`: `w = z · √h / √S`, no normalisation.
    SqrtCorrection,
}

/// Which adapted layers share one routing matrix `Z` (mttl's `router_granularity`, PAPER.md §1.3).
///
/// Groups are read off HF module paths (`encoder.block.3.layer.1.EncDecAttention.q`), as mttl does: a shared
/// granularity groups the sites whose paths agree up to the `layer.<j>` / `block.<i>` segment or the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RouterGranularity {
    /// One `Z` per adapted linear layer: mttl's `finegrained` (its default and the paper's), peft's only layout.
    #[default]
    PerLayer,
    /// One `Z` per sublayer of a block (`layer.<j>`: self-attention, cross-attention or feed-forward), shared
    /// by its linear layers: mttl's `layerwise`.
    PerSublayer,
    /// One `Z` per block (`block.<i>`) of each stack: mttl's `blockwise`.
    PerBlock,
    /// One `Z` for the encoder and one for the decoder: mttl's `coderwise`.
    PerStack,
    /// One `Z` for the whole model: mttl's `coarsegrained`.
    PerModel,
}

impl RouterGranularity {
    /// Whether sites share a router (every granularity but per layer).
    pub fn is_shared(self) -> bool {
        self != RouterGranularity::PerLayer
    }

    /// The kebab-case name used in configs.
    pub fn name(self) -> &'static str {
        match self {
            RouterGranularity::PerLayer => "per-layer",
            RouterGranularity::PerSublayer => "per-sublayer",
            RouterGranularity::PerBlock => "per-block",
            RouterGranularity::PerStack => "per-stack",
            RouterGranularity::PerModel => "per-model",
        }
    }

    /// The group of the site at module path `path`, which names it: the path itself per layer, its prefix
    /// through `layer.<j>` or `block.<i>`, its first segment (the stack), or `model`.
    pub fn group_of(self, path: &str) -> Result<String, CoreError> {
        let through = |segment: &str| {
            let parts: Vec<&str> = path.split('.').collect();
            parts
                .windows(2)
                .position(|w| w[0] == segment && w[1].parse::<usize>().is_ok())
                .map(|i| parts[..i + 2].join("."))
                .ok_or_else(|| {
                    CoreError::Config(format!(
                        "router granularity {}: module path `{path}` has no `{segment}.<index>` segment",
                        self.name()
                    ))
                })
        };
        match self {
            RouterGranularity::PerLayer => Ok(path.to_string()),
            RouterGranularity::PerSublayer => through("layer"),
            RouterGranularity::PerBlock => through("block"),
            RouterGranularity::PerStack => Ok(path.split('.').next().unwrap_or_default().to_string()),
            RouterGranularity::PerModel => Ok("model".to_string()),
        }
    }
}

/// Every routing knob of the references in one place (PAPER.md §1.4), with peft's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// Sample a relaxed Bernoulli in training (peft: always; mttl's T0 runs: off).
    pub relaxed_bernoulli: bool,
    /// Temperature τ of the relaxed Bernoulli.
    pub temperature: f64,
    /// Round the weights in the forward pass and keep the sigmoid's gradient.
    pub straight_through: bool,
    pub normalization: Normalization,
    /// Route task ids `>= n_tasks` to the uniform average of the skills instead of failing.
    pub unknown_task_fallback: bool,
    /// mttl's `module_logits_dropout`: in training, each (head, skill) weight is zeroed with this probability
    /// before normalisation. mttl builds a fresh `nn.Dropout` at every call, which is always in training mode,
    /// so it drops at evaluation too; here it acts in training mode only.
    pub logits_dropout: f64,
    /// Which adapted layers share one routing matrix (default: each has its own).
    pub granularity: RouterGranularity,
}

impl RoutingConfig {
    /// Temperature > 0 and a dropout probability in [0, 1).
    pub fn validate(&self) -> Result<(), CoreError> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(CoreError::Config(format!(
                "routing temperature must be a positive number, found {}",
                self.temperature
            )));
        }
        if !(0.0..1.0).contains(&self.logits_dropout) {
            return Err(CoreError::Config(format!(
                "routing logits_dropout must lie in [0, 1), found {}",
                self.logits_dropout
            )));
        }
        Ok(())
    }
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            relaxed_bernoulli: true,
            temperature: 1.0,
            straight_through: false,
            normalization: Normalization::SumToOne,
            unknown_task_fallback: false,
            logits_dropout: 0.0,
            granularity: RouterGranularity::PerLayer,
        }
    }
}

/// A plain LoRA: `y = x W + (alpha / r) · (x A) B`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    #[serde(default)]
    pub init: InitMode,
    /// `B = 0` at init, so the adapted model starts as the base model.
    #[serde(default = "yes")]
    pub init_b_zero: bool,
    /// rsLoRA: scale `alpha / √r` instead of `alpha / r`.
    #[serde(default)]
    pub rslora: bool,
}

impl LoraConfig {
    pub fn new(rank: usize, alpha: f64) -> Self {
        Self {
            rank,
            alpha,
            init: InitMode::Peft,
            init_b_zero: true,
            rslora: false,
        }
    }

    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }
}

/// (IA)^3: a learned vector scales the layer output, or its input for feed-forward down-projections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ia3Config {
    /// Scale the input (peft's `feedforward_modules`, e.g. T5's `wo`) instead of the output.
    #[serde(default)]
    pub feedforward: bool,
}

/// A routed LoRA skill inventory: Poly with `n_heads = 1`, MHR with `n_heads > 1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutedLoraConfig {
    pub rank: usize,
    pub n_skills: usize,
    pub n_heads: usize,
    pub n_tasks: usize,
    /// Output scale is `alpha / rank`; peft and mttl both use `alpha = 1`.
    #[serde(default = "one")]
    pub alpha: f64,
    #[serde(default)]
    pub init: InitMode,
    #[serde(default = "yes")]
    pub init_b_zero: bool,
    #[serde(default)]
    pub routing: RoutingConfig,
}

impl RoutedLoraConfig {
    pub fn new(rank: usize, n_skills: usize, n_heads: usize, n_tasks: usize) -> Self {
        Self {
            rank,
            n_skills,
            n_heads,
            n_tasks,
            alpha: 1.0,
            init: InitMode::Peft,
            init_b_zero: true,
            routing: RoutingConfig::default(),
        }
    }

    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// Routed (IA)^3 (Poly-(IA)^3 / MHR-(IA)^3): per-skill scaling vectors mixed per head like the LoRA skills.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutedIa3Config {
    pub n_skills: usize,
    pub n_heads: usize,
    pub n_tasks: usize,
    #[serde(default)]
    pub feedforward: bool,
    #[serde(default)]
    pub routing: RoutingConfig,
}

/// What to put on an adapted linear layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum AdapterConfig {
    Lora(LoraConfig),
    Ia3(Ia3Config),
    RoutedLora(RoutedLoraConfig),
    RoutedIa3(RoutedIa3Config),
}

impl AdapterConfig {
    /// Checks the shapes this adapter needs against a layer's widths; peft only fails at forward time.
    pub fn validate(&self, d_in: usize, d_out: usize) -> Result<(), CoreError> {
        let heads_divide = |heads: usize, width: usize, what: &str| {
            if heads == 0 || !width.is_multiple_of(heads) {
                Err(CoreError::Config(format!(
                    "{what} = {width} is not divisible by n_heads = {heads}"
                )))
            } else {
                Ok(())
            }
        };
        let positive = |v: usize, what: &str| {
            if v == 0 {
                Err(CoreError::Config(format!("{what} must be at least 1")))
            } else {
                Ok(())
            }
        };
        match self {
            AdapterConfig::Lora(c) => positive(c.rank, "rank"),
            AdapterConfig::Ia3(_) => Ok(()),
            AdapterConfig::RoutedLora(c) => {
                c.routing.validate()?;
                positive(c.rank, "rank")?;
                positive(c.n_skills, "n_skills")?;
                positive(c.n_tasks, "n_tasks")?;
                heads_divide(c.n_heads, d_in, "d_in")?;
                heads_divide(c.n_heads, d_out, "d_out")
            }
            AdapterConfig::RoutedIa3(c) => {
                c.routing.validate()?;
                positive(c.n_skills, "n_skills")?;
                positive(c.n_tasks, "n_tasks")?;
                heads_divide(
                    c.n_heads,
                    if c.feedforward { d_in } else { d_out },
                    "scaled width",
                )
            }
        }
    }
}

fn yes() -> bool {
    true
}

fn one() -> f64 {
    1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_that_do_not_divide_a_width_are_refused_at_construction() {
        let config = AdapterConfig::RoutedLora(RoutedLoraConfig::new(4, 2, 3, 5));
        let err = config.validate(64, 48).unwrap_err().to_string();
        assert!(err.contains("d_in = 64 is not divisible by n_heads = 3"), "{err}");
        let err = config.validate(48, 64).unwrap_err().to_string();
        assert!(
            err.contains("d_out = 64 is not divisible by n_heads = 3"),
            "{err}"
        );
        assert!(config.validate(48, 96).is_ok());
    }

    #[test]
    fn routing_knobs_out_of_range_are_refused() {
        for (routing, message) in [
            (
                RoutingConfig {
                    logits_dropout: 1.0,
                    ..RoutingConfig::default()
                },
                "logits_dropout must lie in [0, 1), found 1",
            ),
            (
                RoutingConfig {
                    temperature: 0.0,
                    ..RoutingConfig::default()
                },
                "temperature must be a positive number, found 0",
            ),
        ] {
            let config = AdapterConfig::RoutedLora(RoutedLoraConfig {
                routing,
                ..RoutedLoraConfig::new(4, 2, 1, 3)
            });
            let err = config.validate(8, 8).unwrap_err().to_string();
            assert!(err.contains(message), "{err}");
        }
    }
}
