//! How each method of the table is put on a model for pre-training and prepared for few-shot adaptation.

use burn::module::Param;
use burn::prelude::*;
use mhr_core::peft::TargetModules;
use mhr_core::{
    Adapter, AdapterConfig, AdapterHost, Ia3Config, LoraConfig, Method, NewTaskRouting, RoutedLoraConfig,
    RoutingConfig, Stage,
};
use mhr_models::T5ForConditionalGeneration;
use serde::{Deserialize, Serialize};

use crate::error::TrainError;

type Model<B> = T5ForConditionalGeneration<B>;

/// Adapter sizes of a run; a missing field takes its [`Default`] value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdapterSizes {
    pub lora_rank: usize,
    /// LoRA's output scale is `alpha / rank`; 1 matches Poly's `1/r` (peft hard-codes it).
    pub lora_alpha: f64,
    pub poly_rank: usize,
    pub n_skills: usize,
    pub mhr_heads: usize,
    pub routing: RoutingConfig,
}

impl AdapterSizes {
    /// LoRA and the routed inventories at rank `rank`, `n_skills` skills, `mhr_heads` MHR heads; LoRA scaled by
    /// `1/r` and the paper's routing, as by default.
    pub fn new(rank: usize, n_skills: usize, mhr_heads: usize) -> Self {
        Self {
            lora_rank: rank,
            poly_rank: rank,
            n_skills,
            mhr_heads,
            ..Self::default()
        }
    }
}

impl Default for AdapterSizes {
    /// Rank 16 everywhere, 8 skills, 8 MHR heads (they must divide the adapted layers' widths), LoRA scaled
    /// by `1/r` like Poly, and the paper's routing (relaxed Bernoulli in training).
    fn default() -> Self {
        Self {
            lora_rank: 16,
            lora_alpha: 1.0,
            poly_rank: 16,
            n_skills: 8,
            mhr_heads: 8,
            routing: RoutingConfig::default(),
        }
    }
}

/// (IA)^3 as T-Few / peft put it on T5: `k`, `v` outputs and the input of the FFN down-projection `wo`.
const IA3_OUTPUT_SITES: [&str; 2] = ["k", "v"];
const IA3_INPUT_SITES: [&str; 1] = ["wo"];

fn names(list: &[&str]) -> TargetModules {
    TargetModules::Names(list.iter().map(|s| s.to_string()).collect())
}

/// One routing logit large enough that σ gives exactly 0 or 1 in f32: Private's fixed one-hot routing.
const HARD_LOGIT: f32 = 1e4;

/// Puts `method`'s pre-training adapters on `targets` (routing rows for `n_tasks` tasks) and sets which
/// parameters train. Full fine-tuning adds no adapter and unfreezes the backbone.
pub fn attach_pretraining<B: Backend>(
    model: Model<B>,
    method: Method,
    sizes: &AdapterSizes,
    targets: &TargetModules,
    n_tasks: usize,
) -> Result<Model<B>, TrainError> {
    let routed = |heads: usize| {
        AdapterConfig::RoutedLora(RoutedLoraConfig {
            routing: sizes.routing.clone(),
            ..RoutedLoraConfig::new(sizes.poly_rank, sizes.n_skills, heads, n_tasks)
        })
    };
    let model = match method.pretraining_method() {
        Method::FullFinetune => model,
        Method::Lora => model.with_adapters(targets, &lora(sizes))?,
        Method::Ia3 => model
            .with_adapters(
                &names(&IA3_OUTPUT_SITES),
                &AdapterConfig::Ia3(Ia3Config { feedforward: false }),
            )?
            .with_adapters(
                &names(&IA3_INPUT_SITES),
                &AdapterConfig::Ia3(Ia3Config { feedforward: true }),
            )?,
        Method::Poly => model.with_adapters(targets, &routed(1))?,
        Method::Mhr => model.with_adapters(targets, &routed(sizes.mhr_heads))?,
        Method::Private => {
            let config = AdapterConfig::RoutedLora(RoutedLoraConfig {
                routing: RoutingConfig {
                    relaxed_bernoulli: false,
                    ..sizes.routing.clone()
                },
                ..RoutedLoraConfig::new(sizes.poly_rank, n_tasks, 1, n_tasks)
            });
            model.with_adapters(targets, &config)?.map_routers(|mut router| {
                let device = router.module_logits.device();
                let eye = Tensor::<B, 2>::eye(n_tasks, &device) * (2.0 * HARD_LOGIT) - HARD_LOGIT;
                router.module_logits = Param::from_tensor(eye);
                router
            })
        }
        other => unreachable!("pretraining_method() never returns {other}"),
    };
    Ok(method.trainable(Stage::Pretrain).apply(model))
}

fn lora(sizes: &AdapterSizes) -> AdapterConfig {
    AdapterConfig::Lora(LoraConfig::new(sizes.lora_rank, sizes.lora_alpha))
}

/// Prepares a pre-trained model for few-shot adaptation of a held-out task whose routing row exists
/// untouched (so it is mttl's fresh U(±1e-3) row): `-μ` replaces every inventory by the mean of its skills
/// as one LoRA, Private gets a fresh LoRA of its own, and the method's adaptation parameters are unfrozen.
pub fn prepare_adaptation<B: Backend>(
    model: Model<B>,
    method: Method,
    sizes: &AdapterSizes,
) -> Result<Model<B>, TrainError> {
    let model = match method.new_task_routing() {
        NewTaskRouting::AverageSkills => model.map_sites(|_, site| {
            Ok::<_, TrainError>(match &site.adapter {
                Some(Adapter::RoutedLora(r)) => {
                    let mu = r.average_skills();
                    site.set_adapter(Some(Adapter::Lora(mu)))
                }
                _ => site,
            })
        })?,
        NewTaskRouting::FreshPrivateSkill => model.map_sites(|_, site| match site.adapter {
            Some(Adapter::RoutedLora(_)) => site.with_adapter(&lora(sizes)).map_err(TrainError::from),
            _ => Ok(site),
        })?,
        NewTaskRouting::Unrouted | NewTaskRouting::FreshRow => model,
    };
    Ok(method.trainable(Stage::Adapt).apply(model))
}
