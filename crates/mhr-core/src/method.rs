//! The method table of the paper as data: which parameters train in each stage, and how a new task is routed.

use std::fmt;
use std::str::FromStr;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
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
    /// The task's own routing row, which pre-training never touched and so is still at its fresh U(±1e-3)
    /// initialisation (routing starts near uniform), is trained; the other rows stay, unused. Outputs are
    /// those of mttl's `resize_module_logits(1)`, which replaces all rows by one fresh row.
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

/// Parameter groups of an adapted model: what trains in each stage, and at which learning rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamGroup {
    Base,
    Adapter,
    Routing,
}

impl ParamGroup {
    /// The group of a parameter whose path in the module tree ends with `field`: the one place that knows
    /// the adapters' field names (the tests below fail if a rename escapes it).
    pub fn of(field: &str) -> Self {
        match field {
            "module_logits" => ParamGroup::Routing,
            "lora_a" | "lora_b" | "poly_lora_a" | "poly_lora_b" | "ia3_l" | "poly_ia3_l" => {
                ParamGroup::Adapter
            }
            _ => ParamGroup::Base,
        }
    }

    /// `module` with every float parameter mapped by `map` according to its group.
    pub fn map_params<B: Backend, M: Module<B>>(module: M, map: impl GroupMap<B>) -> M {
        module.map(&mut ByGroup {
            map,
            path: Vec::new(),
        })
    }

    /// The id and group of every float parameter of `module`, in module order.
    pub fn of_params<B: Backend, M: Module<B>>(module: &M) -> Vec<(ParamId, ParamGroup)> {
        let mut visitor = GroupVisitor {
            path: Vec::new(),
            params: Vec::new(),
        };
        module.visit(&mut visitor);
        visitor.params
    }
}

struct GroupVisitor {
    path: Vec<String>,
    params: Vec<(ParamId, ParamGroup)>,
}

impl<B: Backend> ModuleVisitor<B> for GroupVisitor {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let field = self.path.last().map(String::as_str).unwrap_or("");
        self.params.push((param.id, ParamGroup::of(field)));
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
        ParamGroup::map_params(module, *self)
    }
}

impl<B: Backend> GroupMap<B> for TrainableSet {
    fn map<const D: usize>(&mut self, group: ParamGroup, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.set_require_grad(self.includes(group))
    }
}

/// What [`ParamGroup::map_params`] does to one float parameter of a group.
pub trait GroupMap<B: Backend> {
    fn map<const D: usize>(&mut self, group: ParamGroup, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>>;
}

/// Maps each float parameter with its group, as [`ParamGroup::of`] names it from the parameter's field.
struct ByGroup<F> {
    map: F,
    path: Vec<String>,
}

impl<B: Backend, F: GroupMap<B>> ModuleMapper<B> for ByGroup<F> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let field = self.path.last().map(String::as_str).unwrap_or("");
        self.map.map(ParamGroup::of(field), param)
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;

    use super::*;
    use crate::{AdaptedLinear, AdapterConfig, Ia3Config, LoraConfig, RoutedIa3Config, RoutedLoraConfig};

    type B = NdArray;

    fn groups_of(config: &AdapterConfig) -> Vec<ParamGroup> {
        let device = Default::default();
        let site = AdaptedLinear::<B>::new(Tensor::zeros([8, 8], &device), Some(Tensor::zeros([8], &device)))
            .with_adapter(config)
            .unwrap();
        ParamGroup::of_params(&site).into_iter().map(|(_, g)| g).collect()
    }

    #[test]
    fn every_adapter_parameter_is_in_its_group() {
        use ParamGroup::{Adapter, Base, Routing};
        let lora = AdapterConfig::Lora(LoraConfig::new(2, 2.0));
        assert_eq!(groups_of(&lora), [Base, Base, Adapter, Adapter]);
        let ia3 = AdapterConfig::Ia3(Ia3Config { feedforward: false });
        assert_eq!(groups_of(&ia3), [Base, Base, Adapter]);
        let routed = AdapterConfig::RoutedLora(RoutedLoraConfig::new(2, 4, 2, 3));
        assert_eq!(groups_of(&routed), [Base, Base, Adapter, Adapter, Routing]);
        let routed_ia3 = AdapterConfig::RoutedIa3(RoutedIa3Config {
            n_skills: 4,
            n_heads: 2,
            n_tasks: 3,
            feedforward: false,
            routing: Default::default(),
        });
        assert_eq!(groups_of(&routed_ia3), [Base, Base, Adapter, Routing]);
    }

    #[test]
    fn freezing_follows_the_method_table() {
        let device = Default::default();
        let config = AdapterConfig::RoutedLora(RoutedLoraConfig::new(2, 4, 2, 3));
        let site = AdaptedLinear::<burn::backend::Autodiff<B>>::new(Tensor::zeros([8, 8], &device), None)
            .with_adapter(&config)
            .unwrap();
        let trains = |method: Method, stage: Stage| {
            let site = method.trainable(stage).apply(site.clone());
            let mut flags = Vec::new();
            struct Flags<'a>(&'a mut Vec<bool>);
            impl<B: Backend> ModuleVisitor<B> for Flags<'_> {
                fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                    self.0.push(param.is_require_grad());
                }
            }
            site.visit(&mut Flags(&mut flags));
            flags
        };
        // weight, A, B, Z
        assert_eq!(trains(Method::Mhr, Stage::Pretrain), [false, true, true, true]);
        assert_eq!(trains(Method::MhrZ, Stage::Adapt), [false, false, false, true]);
        assert_eq!(trains(Method::MhrMu, Stage::Adapt), [false, true, true, false]);
        assert_eq!(
            trains(Method::FullFinetune, Stage::Adapt),
            [true, false, false, false]
        );
    }
}
