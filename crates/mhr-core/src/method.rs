//! The method table of the paper as data: which parameters train in each stage, and how a new task is routed.

use std::fmt;
use std::str::FromStr;

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Multi-task pre-training, then few-shot adaptation to a held-out task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Pretrain,
    Adapt,
}

/// Which groups of parameters receive gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainableSet {
    /// The backbone's own weights (full fine-tuning only).
    pub base: bool,
    /// LoRA / (IA)^3 parameters and skill inventories.
    pub adapters: bool,
    /// Routing logits `Z`.
    pub routing: bool,
}

/// How a held-out task is routed at adaptation time (PAPER.md §1.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NewTaskRouting {
    /// No routing: the method has a single adapter (LoRA, (IA)^3) or none.
    Unrouted,
    /// mttl's `resize_module_logits(1)`: the pre-trained rows are dropped and one fresh row U(±1e-3) is
    /// trained, i.e. routing starts near uniform.
    FreshRow,
    /// `-μ`: the skills are averaged with uniform weights into one plain LoRA; routing is discarded.
    AverageSkills,
    /// Private: the new task gets its own adapter, trained from a fresh initialisation.
    FreshPrivateSkill,
}

/// The methods of the paper's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    Lora,
    Ia3,
    Private,
    Poly,
    PolyZ,
    PolyMu,
    Mhr,
    MhrZ,
    MhrMu,
    FullFinetune,
}

impl Method {
    pub const ALL: [Method; 10] = [
        Method::Lora,
        Method::Ia3,
        Method::Private,
        Method::Poly,
        Method::PolyZ,
        Method::PolyMu,
        Method::Mhr,
        Method::MhrZ,
        Method::MhrMu,
        Method::FullFinetune,
    ];

    /// The name used in configs and `results.json`.
    pub fn name(self) -> &'static str {
        match self {
            Method::Lora => "lora",
            Method::Ia3 => "ia3",
            Method::Private => "private",
            Method::Poly => "poly",
            Method::PolyZ => "poly-z",
            Method::PolyMu => "poly-mu",
            Method::Mhr => "mhr",
            Method::MhrZ => "mhr-z",
            Method::MhrMu => "mhr-mu",
            Method::FullFinetune => "full-ft",
        }
    }

    /// Whether the adapter is a routed skill inventory during pre-training.
    pub fn is_routed(self) -> bool {
        matches!(
            self,
            Method::Private
                | Method::Poly
                | Method::PolyZ
                | Method::PolyMu
                | Method::Mhr
                | Method::MhrZ
                | Method::MhrMu
        )
    }

    /// Whether the inventory is split into several heads (MHR) rather than one (Poly).
    pub fn is_multi_head(self) -> bool {
        matches!(self, Method::Mhr | Method::MhrZ | Method::MhrMu)
    }

    /// `Poly-z`, `-μ` and plain Poly share their pre-training: only adaptation differs.
    pub fn pretraining_method(self) -> Method {
        match self {
            Method::PolyZ | Method::PolyMu => Method::Poly,
            Method::MhrZ | Method::MhrMu => Method::Mhr,
            m => m,
        }
    }

    pub fn trainable(self, stage: Stage) -> TrainableSet {
        let set = |base, adapters, routing| TrainableSet {
            base,
            adapters,
            routing,
        };
        match (self, stage) {
            (Method::FullFinetune, _) => set(true, false, false),
            (Method::Lora | Method::Ia3, _) => set(false, true, false),
            // Private routing is a fixed one-hot assignment of tasks to their own skill.
            (Method::Private, _) => set(false, true, false),
            (Method::Poly | Method::Mhr, _) => set(false, true, true),
            (Method::PolyZ | Method::MhrZ, Stage::Pretrain) => set(false, true, true),
            (Method::PolyZ | Method::MhrZ, Stage::Adapt) => set(false, false, true),
            (Method::PolyMu | Method::MhrMu, Stage::Pretrain) => set(false, true, true),
            (Method::PolyMu | Method::MhrMu, Stage::Adapt) => set(false, true, false),
        }
    }

    pub fn new_task_routing(self) -> NewTaskRouting {
        match self {
            Method::Lora | Method::Ia3 | Method::FullFinetune => NewTaskRouting::Unrouted,
            Method::Private => NewTaskRouting::FreshPrivateSkill,
            Method::Poly | Method::PolyZ | Method::Mhr | Method::MhrZ => NewTaskRouting::FreshRow,
            Method::PolyMu | Method::MhrMu => NewTaskRouting::AverageSkills,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Method::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| {
            let names: Vec<_> = Method::ALL.iter().map(|m| m.name()).collect();
            format!("unknown method `{s}` (known: {})", names.join(", "))
        })
    }
}

/// The group a parameter belongs to, from its field name in the module tree.
fn group_of(field: &str) -> ParamGroup {
    match field {
        "module_logits" => ParamGroup::Routing,
        "lora_a" | "lora_b" | "poly_lora_a" | "poly_lora_b" | "ia3_l" | "poly_ia3_l" => ParamGroup::Adapter,
        _ => ParamGroup::Base,
    }
}

/// Parameter groups of an adapted model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamGroup {
    Base,
    Adapter,
    Routing,
}

impl ParamGroup {
    /// The group of a parameter whose path in the module tree ends with `field`.
    pub fn of(field: &str) -> Self {
        group_of(field)
    }
}

impl TrainableSet {
    pub fn includes(&self, group: ParamGroup) -> bool {
        match group {
            ParamGroup::Base => self.base,
            ParamGroup::Adapter => self.adapters,
            ParamGroup::Routing => self.routing,
        }
    }

    /// Sets `require_grad` on every float parameter of `module` by its group; nothing else changes.
    pub fn apply<B: Backend, M: Module<B>>(&self, module: M) -> M {
        let mut mapper = Freezer {
            set: *self,
            path: Vec::new(),
        };
        module.map(&mut mapper)
    }
}

struct Freezer {
    set: TrainableSet,
    path: Vec<String>,
}

impl<B: Backend> ModuleMapper<B> for Freezer {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let field = self.path.last().map(String::as_str).unwrap_or("");
        param.set_require_grad(self.set.includes(group_of(field)))
    }
}
