//! Routers shared by groups of layers (mttl's `router_granularity`) on the tiny v1.1 fixture model
//! (2 encoder blocks of 7 sites, 2 decoder blocks of 11): outputs, gradients, training steps, grouping,
//! checkpoints and the peft round trip, each against a per-layer model that holds the same numbers.

use burn::backend::ndarray::NdArrayDevice;
use burn::backend::{Autodiff, NdArray};
use burn::module::Module;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::Distribution;
use mhr_core::io::SafetensorsFile;
use mhr_core::peft::{PeftAdapter, TargetModules};
use mhr_core::{
    AdapterConfig, AdapterHost, Method, PolyRouter, RoutedLoraConfig, RouterGranularity, RoutingConfig,
    RoutingContext, RoutingDiagnostics, RoutingMode, SiteRouter, Stage,
};
use mhr_models::T5ForConditionalGeneration;
use mhr_tests::{assert_abs_close, assert_rel_close, t5_fixture};
use mhr_train::methods::{AdapterSizes, attach_pretraining};
use mhr_train::optim::{OptimConfig, TwoSpeedAdamW};

type A = Autodiff<NdArray>;
type Model = T5ForConditionalGeneration<A>;
const DEV: NdArrayDevice = NdArrayDevice::Cpu;
const SITES: usize = 2 * 7 + 2 * 11;
const N_TASKS: usize = 3;
const N_SKILLS: usize = 4;

fn f32s<const D: usize>(t: Tensor<A, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

fn all_sites() -> TargetModules {
    let names = ["q", "k", "v", "o", "wi_0", "wi_1", "wo"];
    TargetModules::Names(names.iter().map(|s| s.to_string()).collect())
}

fn routing(granularity: RouterGranularity) -> RoutingConfig {
    RoutingConfig {
        granularity,
        ..RoutingConfig::default()
    }
}

/// Poly with random (non-zero) `B`, so that the routing shows in the outputs and gradients.
fn poly(granularity: RouterGranularity) -> AdapterConfig {
    AdapterConfig::RoutedLora(RoutedLoraConfig {
        init_b_zero: false,
        routing: routing(granularity),
        ..RoutedLoraConfig::new(2, N_SKILLS, 1, N_TASKS)
    })
}

fn base() -> Model {
    T5ForConditionalGeneration::load(t5_fixture("t5-v1_1"), &DEV).unwrap()
}

/// Routing logits far from 0, so that mixing weights differ clearly between tasks and skills.
fn spread(router: PolyRouter<A>) -> PolyRouter<A> {
    let logits = Tensor::random(
        [router.n_tasks(), N_SKILLS],
        Distribution::Uniform(-2.0, 2.0),
        &DEV,
    );
    PolyRouter::from_logits(logits, router.n_heads, router.n_skills, router.config)
}

fn shared_model(granularity: RouterGranularity) -> Model {
    A::seed(&DEV, 7);
    base()
        .with_adapters(&all_sites(), &poly(granularity))
        .unwrap()
        .map_routers(spread)
}

/// The shared model rebuilt by hand with per-layer routers, each set to its group's logits.
fn per_layer_twin(shared: &Model) -> Model {
    let routers = shared.shared_routers.clone();
    let twin = shared.clone().map_sites(|_, mut site| {
        if let Some(slot) = site.adapter.as_mut().and_then(|a| a.router_mut())
            && let SiteRouter::Shared(g) = *slot
        {
            let group = &routers.routers[g];
            let logits = Tensor::from_data(group.module_logits.val().into_data(), &DEV);
            let config = routing(RouterGranularity::PerLayer);
            *slot = SiteRouter::Own(PolyRouter::from_logits(logits, 1, N_SKILLS, config));
        }
        Ok::<_, std::convert::Infallible>(site)
    });
    let twin = twin.unwrap();
    // No site routes through the shared routers any more: the model drops them.
    assert!(twin.shared_routers.is_empty());
    twin
}

struct Batch {
    input_ids: Tensor<A, 2, Int>,
    attention_mask: Tensor<A, 2, Int>,
    labels: Tensor<A, 2, Int>,
    ctx: RoutingContext<A>,
}

fn batch() -> Batch {
    let reference = SafetensorsFile::open(t5_fixture("t5-v1_1/reference.safetensors")).unwrap();
    let ints = |key: &str| Tensor::<A, 2, Int>::from_data(reference.i64(key).unwrap(), &DEV);
    Batch {
        input_ids: ints("input_ids"),
        attention_mask: ints("attention_mask"),
        labels: ints("labels"),
        ctx: RoutingContext::new(Tensor::from_data([0i64, 2, 1], &DEV), RoutingMode::Deterministic),
    }
}

fn forward(model: &Model, b: &Batch) -> (Tensor<A, 3>, Tensor<A, 1>) {
    let out = model
        .forward(
            b.input_ids.clone(),
            b.attention_mask.clone(),
            b.labels.clone(),
            &b.ctx,
        )
        .unwrap();
    (out.logits, out.loss)
}

/// Sum over sites of the per-layer routers' logit gradients.
fn summed_site_grads(
    model: &Model,
    grads: &<A as burn::tensor::backend::AutodiffBackend>::Gradients,
) -> Vec<f32> {
    let mut sum = vec![0.0f32; N_TASKS * N_SKILLS];
    let mut sites = 0;
    model.for_each_site(|_, site| {
        if let Some(SiteRouter::Own(r)) = site.adapter.as_ref().and_then(|a| a.router()) {
            let g = r
                .module_logits
                .grad(grads)
                .expect("per-layer logits get a gradient");
            for (s, x) in sum.iter_mut().zip(g.into_data().to_vec::<f32>().unwrap()) {
                *s += x;
            }
            sites += 1;
        }
    });
    assert_eq!(sites, SITES);
    sum
}

#[test]
fn model_wide_sharing_routes_every_site_by_the_one_matrix() {
    let _rng = mhr_tests::rng_lock();
    let shared = shared_model(RouterGranularity::PerModel);
    assert_eq!(shared.shared_routers.len(), 1);
    assert_eq!(shared.shared_routers.groups, ["model"]);
    let mut slots = Vec::new();
    shared.for_each_site(|_, site| slots.push(site.adapter.as_ref().and_then(|a| a.router()).cloned()));
    assert_eq!(slots.len(), SITES);
    assert!(slots.iter().all(|s| matches!(s, Some(SiteRouter::Shared(0)))));

    let b = batch();
    let (logits, _) = forward(&shared, &b);
    let (twin_logits, _) = forward(&per_layer_twin(&shared), &b);
    assert_abs_close(
        &f32s(logits.clone()),
        &f32s(twin_logits),
        1e-6,
        "shared vs per-layer logits",
    );

    // The comparison can fail: other routing logits move the outputs well beyond the tolerance.
    let other = per_layer_twin(&shared.clone().map_routers(spread));
    let (other_logits, _) = forward(&other, &b);
    let moved = mhr_tests::max_abs_diff(&f32s(logits), &f32s(other_logits), "other routing");
    assert!(
        moved > 1e-3,
        "routing does not reach the outputs (moved {moved:e})"
    );
}

#[test]
fn shared_gradient_is_the_sum_of_the_per_layer_gradients_and_one_step_applies_it() {
    let _rng = mhr_tests::rng_lock();
    let shared = shared_model(RouterGranularity::PerModel);
    let twin = per_layer_twin(&shared);
    let b = batch();
    let z0 = f32s(shared.shared_routers.routers[0].module_logits.val());

    let (_, loss) = forward(&twin, &b);
    let expected = summed_site_grads(&twin, &loss.backward());
    let (_, loss) = forward(&shared, &b);
    let grads = loss.backward();
    let g = shared.shared_routers.routers[0]
        .module_logits
        .grad(&grads)
        .unwrap();
    let g = g.into_data().to_vec::<f32>().unwrap();
    assert_rel_close(
        &g,
        &expected,
        1e-5,
        "shared gradient vs sum of per-layer gradients",
    );
    assert!(
        expected.iter().any(|x| x.abs() > 1e-4),
        "vanishing routing gradient"
    );

    // Plain SGD: Z ← Z − lr · Σ_sites ∂L/∂Z.
    let lr = 0.5;
    let mut sgd = SgdConfig::new().init::<A, Model>();
    let stepped = sgd.step(lr, shared.clone(), GradientsParams::from_grads(grads, &shared));
    let z1 = f32s(stepped.shared_routers.routers[0].module_logits.val());
    let want: Vec<f32> = z0.iter().zip(&expected).map(|(z, g)| z - lr as f32 * g).collect();
    assert_rel_close(&z1, &want, 1e-5, "logits after one SGD step");
}

#[test]
fn routing_learning_rate_and_z_only_adaptation_reach_the_shared_logits() {
    let _rng = mhr_tests::rng_lock();
    let shared = shared_model(RouterGranularity::PerStack);
    // `-z` adaptation: the routing logits train, the skills do not.
    let shared = Method::PolyZ.trainable(Stage::Adapt).apply(shared);
    assert!(
        shared
            .shared_routers
            .routers
            .iter()
            .all(|r| r.module_logits.val().is_require_grad())
    );
    let twin = per_layer_twin(&shared);
    let b = batch();

    let (_, loss) = forward(&shared, &b);
    let grads = GradientsParams::from_grads(loss.backward(), &shared);
    let routing_lr = 0.05;
    let config = OptimConfig {
        lr: 0.0,
        routing_lr,
        weight_decay: 0.0,
        routing_weight_decay: 0.0,
        max_grad_norm: 0.0,
        ..OptimConfig::default()
    };
    let mut optim = TwoSpeedAdamW::new(config.clone(), &shared);
    let (stepped, _) = optim.step(1.0, shared.clone(), grads);

    // Per stack, the group's gradient is the sum over its sites; AdamW's first step is lr · g / (|g| + ε).
    let (_, loss) = forward(&twin, &b);
    let twin_grads = loss.backward();
    for (g, group) in shared.shared_routers.groups.iter().enumerate() {
        let mut sum = vec![0.0f32; N_TASKS * N_SKILLS];
        twin.for_each_site(|path, site| {
            if path.starts_with(group.as_str())
                && let Some(SiteRouter::Own(r)) = site.adapter.as_ref().and_then(|a| a.router())
            {
                let grad = r
                    .module_logits
                    .grad(&twin_grads)
                    .unwrap()
                    .into_data()
                    .to_vec::<f32>()
                    .unwrap();
                sum.iter_mut().zip(grad).for_each(|(s, x)| *s += x);
            }
        });
        let z0 = f32s(shared.shared_routers.routers[g].module_logits.val());
        let z1 = f32s(stepped.shared_routers.routers[g].module_logits.val());
        let eps = config.epsilon as f32;
        let want: Vec<f32> = z0
            .iter()
            .zip(&sum)
            .map(|(z, g)| z - routing_lr as f32 * g / (g.abs() + eps))
            .collect();
        assert_abs_close(&z1, &want, 1e-5, &format!("{group} logits after one AdamW step"));
    }
    // lr = 0 for the adapters: their skills stay put.
    let skills = |m: &Model| {
        let mut all = Vec::new();
        m.for_each_site(|_, site| {
            if let Some(mhr_core::Adapter::RoutedLora(r)) = &site.adapter {
                all.extend(f32s(r.poly_lora_a.val()));
            }
        });
        all
    };
    assert_eq!(skills(&shared), skills(&stepped));
}

#[test]
fn groups_follow_blocks_sublayers_and_stacks_of_the_tiny_model() {
    let _rng = mhr_tests::rng_lock();
    // Encoder blocks: self-attention + feed-forward; decoder blocks: + cross-attention.
    let cases = [
        (RouterGranularity::PerLayer, 0, SITES),
        (RouterGranularity::PerSublayer, 2 * 2 + 2 * 3, 10),
        (RouterGranularity::PerBlock, 4, 4),
        (RouterGranularity::PerStack, 2, 2),
        (RouterGranularity::PerModel, 1, 1),
    ];
    let per_layer_params = base()
        .with_adapters(&all_sites(), &poly(RouterGranularity::PerLayer))
        .unwrap()
        .num_params();
    for (granularity, shared, routers) in cases {
        let model = base().with_adapters(&all_sites(), &poly(granularity)).unwrap();
        assert_eq!(
            model.shared_routers.len(),
            shared,
            "{granularity:?} shared routers"
        );
        assert_eq!(model.routers().len(), routers, "{granularity:?} routers");
        // Stored once: each group's matrix counts once among the parameters (and so in checkpoints).
        let fewer = (SITES - routers) * N_TASKS * N_SKILLS;
        assert_eq!(
            model.num_params(),
            per_layer_params - fewer,
            "{granularity:?} parameters"
        );
    }
    let blocks = base()
        .with_adapters(&all_sites(), &poly(RouterGranularity::PerBlock))
        .unwrap();
    assert_eq!(
        blocks.shared_routers.groups,
        [
            "encoder.block.0",
            "encoder.block.1",
            "decoder.block.0",
            "decoder.block.1"
        ]
    );
    let names: Vec<String> = blocks.routers().into_iter().map(|(name, _)| name).collect();
    assert_eq!(names, blocks.shared_routers.groups);
}

#[test]
fn sites_of_a_group_must_agree_and_replaced_sites_release_their_router() {
    let _rng = mhr_tests::rng_lock();
    let q = TargetModules::Names(vec!["q".into()]);
    let k = TargetModules::Names(vec!["k".into()]);
    let model = base()
        .with_adapters(&q, &poly(RouterGranularity::PerModel))
        .unwrap();
    let wider = AdapterConfig::RoutedLora(RoutedLoraConfig {
        routing: routing(RouterGranularity::PerModel),
        ..RoutedLoraConfig::new(2, N_SKILLS + 1, 1, N_TASKS)
    });
    let err = model.clone().with_adapters(&k, &wider).unwrap_err().to_string();
    assert!(
        err.contains("router group `model` routes 1 heads × 4 skills × 3 tasks") && err.contains("× 5 ×"),
        "{err}"
    );
    // The same shape joins the group.
    let joined = model
        .clone()
        .with_adapters(&k, &poly(RouterGranularity::PerModel))
        .unwrap();
    assert_eq!(joined.shared_routers.len(), 1);
    // Replacing every routed adapter drops the group's router.
    let lora = AdapterConfig::Lora(mhr_core::LoraConfig::new(2, 1.0));
    let replaced = joined
        .with_adapters(&TargetModules::Names(vec!["q".into(), "k".into()]), &lora)
        .unwrap();
    assert_eq!(replaced.shared_routers.len(), 0);
}

#[test]
fn new_task_rows_and_private_one_hot_routing_use_the_shared_matrix() {
    let _rng = mhr_tests::rng_lock();
    let shared = shared_model(RouterGranularity::PerBlock);
    let grown = shared.clone().map_routers(|r| r.add_tasks(1));
    for (before, after) in shared
        .shared_routers
        .routers
        .iter()
        .zip(&grown.shared_routers.routers)
    {
        let (z0, z1) = (f32s(before.module_logits.val()), f32s(after.module_logits.val()));
        assert_eq!(after.n_tasks(), N_TASKS + 1);
        assert_eq!(z1[..z0.len()], z0[..], "existing rows are kept");
        assert!(
            z1[z0.len()..].iter().all(|z| z.abs() <= 1e-3),
            "new rows are near-uniform"
        );
    }
    let mut b = batch();
    b.ctx = RoutingContext::new(Tensor::from_data([3i64, 3, 0], &DEV), RoutingMode::Deterministic);
    assert!(
        grown
            .forward(
                b.input_ids.clone(),
                b.attention_mask.clone(),
                b.labels.clone(),
                &b.ctx
            )
            .is_ok()
    );
    let err = shared
        .forward(b.input_ids, b.attention_mask, b.labels, &b.ctx)
        .unwrap_err()
        .to_string();
    assert!(err.contains('3'), "{err}");

    let sizes = AdapterSizes {
        poly_rank: 2,
        routing: routing(RouterGranularity::PerStack),
        ..AdapterSizes::default()
    };
    let private = attach_pretraining(base(), Method::Private, &sizes, &all_sites(), N_TASKS).unwrap();
    assert_eq!(private.shared_routers.len(), 2);
    for router in &private.shared_routers.routers {
        let ids = Tensor::from_data([0i64, 1, 2], &DEV);
        let w = f32s(router.mixing_weights(ids, RoutingMode::Sampled));
        let eye: Vec<f32> = (0..9).map(|i| if i % 4 == 0 { 1.0 } else { 0.0 }).collect();
        assert_eq!(w, eye, "one-hot task → own skill");
        assert!(
            !router.module_logits.val().is_require_grad(),
            "Private routing is fixed"
        );
    }
    // Diagnostics per group: one-hot routing is fully discrete, one skill in three switched on.
    let diagnostics: Vec<(String, RoutingDiagnostics)> = private
        .routers()
        .iter()
        .map(|(group, r)| (group.clone(), RoutingDiagnostics::of(r)))
        .collect();
    assert_eq!(diagnostics.len(), 2);
    for (group, d) in diagnostics {
        assert!(group == "encoder" || group == "decoder", "{group}");
        assert_eq!(d.discreteness, 1.0, "{group}");
        assert!((d.sparsity - 1.0 / 3.0).abs() < 1e-12, "{group}: {}", d.sparsity);
    }
}

#[test]
fn checkpoint_record_round_trips_the_shared_routers() {
    let _rng = mhr_tests::rng_lock();
    let shared = shared_model(RouterGranularity::PerSublayer);
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = Recorder::<A>::record(&recorder, shared.clone().into_record(), ()).unwrap();
    let skeleton = base()
        .with_adapters(&all_sites(), &poly(RouterGranularity::PerSublayer))
        .unwrap();
    let record = Recorder::<A>::load(&recorder, bytes, &DEV).unwrap();
    let loaded = skeleton.load_record(record);
    let b = batch();
    let (want, _) = forward(&shared, &b);
    let (got, _) = forward(&loaded, &b);
    assert_abs_close(&f32s(got), &f32s(want), 0.0, "logits after a record round trip");
}

#[test]
fn peft_export_writes_the_group_matrix_into_every_site_and_reimports_per_layer() {
    let _rng = mhr_tests::rng_lock();
    let shared = shared_model(RouterGranularity::PerBlock);
    let adapters = shared.per_layer_adapters().unwrap();
    assert_eq!(adapters.len(), SITES);
    let peft = PeftAdapter::from_adapters(&adapters, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    peft.save(dir.path()).unwrap();

    let reloaded = base().load_peft_adapter(dir.path()).unwrap();
    assert_eq!(
        reloaded.shared_routers.len(),
        0,
        "peft has per-layer routers only"
    );
    assert_eq!(reloaded.routers().len(), SITES);
    let b = batch();
    let (want, _) = forward(&shared, &b);
    let (got, _) = forward(&reloaded, &b);
    assert_abs_close(
        &f32s(got),
        &f32s(want),
        1e-6,
        "eval logits after export and import",
    );

    // Every site of `encoder.block.1` holds that block's matrix.
    let group = shared
        .shared_routers
        .groups
        .iter()
        .position(|g| g == "encoder.block.1")
        .unwrap();
    let z = f32s(shared.shared_routers.routers[group].module_logits.val());
    let mut seen = 0;
    reloaded.for_each_site(|path, site| {
        if path.starts_with("encoder.block.1.")
            && let Some(SiteRouter::Own(r)) = site.adapter.as_ref().and_then(|a| a.router())
        {
            assert_eq!(f32s(r.module_logits.val()), z, "{path}");
            assert_eq!(r.config.granularity, RouterGranularity::PerLayer);
            seen += 1;
        }
    });
    assert_eq!(seen, 7);
}

#[test]
fn granularity_config_round_trips_and_rejects_unknown_names() {
    let _rng = mhr_tests::rng_lock();
    let config = routing(RouterGranularity::PerStack);
    let json = serde_json::to_string(&config).unwrap();
    assert!(json.contains(r#""granularity":"per-stack""#), "{json}");
    assert_eq!(serde_json::from_str::<RoutingConfig>(&json).unwrap(), config);
    let default: RoutingConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(default.granularity, RouterGranularity::PerLayer);

    let err = serde_json::from_str::<RoutingConfig>(r#"{"granularity": "blockwise"}"#)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown variant `blockwise`") && err.contains("per-block"),
        "{err}"
    );
    let err = RouterGranularity::PerBlock
        .group_of("lm_head")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "invalid adapter configuration: router granularity per-block: module path `lm_head` has no `block.<index>` segment"
    );
    assert_eq!(
        RouterGranularity::PerSublayer
            .group_of("decoder.block.1.layer.2.DenseReluDense.wo")
            .unwrap(),
        "decoder.block.1.layer.2"
    );
}
