//! Adapter management for any Burn model whose linear layers are [`AdaptedLinear`] sites.
//!
//! A model implements three methods of [`AdapterHost`] (visit its sites with their module paths, and own its
//! [`SharedRouters`]); attaching adapters by peft's `target_modules`, loading and exporting peft folders,
//! routers shared by groups of sites and routing rows for new tasks then come with the trait.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::path::Path;

use burn::prelude::*;

use crate::adapted_linear::{AdaptedLinear, Adapter};
use crate::config::{AdapterConfig, RoutingConfig};
use crate::error::CoreError;
use crate::peft::{PeftAdapter, PeftKind, TargetModules};
use crate::router::PolyRouter;
use crate::sharing::{SharedRouters, SiteRouter};
use crate::tasks::TaskMap;

/// A Burn model that carries adapter sites.
///
/// Site paths are the model's module names as peft sees them (`encoder.block.0.layer.0.SelfAttention.q`
/// for T5), so `target_modules` and peft folders address the same layers in Python and here. The model's
/// forward must hand its shared routers to the sites:
/// `ctx.clone().with_shared_routers(self.shared_routers())`.
pub trait AdapterHost<B: Backend>: Module<B> + Sized {
    /// Rebuilds the model with `f` applied to every site, in module order, with its path. Shared routers
    /// that no site routes through any more are kept: [`Self::map_sites`] drops them.
    fn map_each_site<E>(
        self,
        f: impl FnMut(&str, AdaptedLinear<B>) -> Result<AdaptedLinear<B>, E>,
    ) -> Result<Self, E>;

    /// The routers shared by groups of sites (empty with per-layer routing).
    fn shared_routers(&self) -> &SharedRouters<B>;

    /// The model with `routers` as its shared routers.
    fn with_shared_routers(self, routers: SharedRouters<B>) -> Self;

    /// The device of the model's parameters.
    fn device(&self) -> B::Device {
        self.devices().into_iter().next().unwrap_or_default()
    }

    /// Rebuilds the model with `f` applied to every site, in module order, with its path. Shared routers
    /// that no site routes through any more (their sites got other adapters) are dropped.
    fn map_sites<E>(
        self,
        f: impl FnMut(&str, AdaptedLinear<B>) -> Result<AdaptedLinear<B>, E>,
    ) -> Result<Self, E> {
        Ok(drop_unused_routers(self.map_each_site(f)?))
    }

    /// Visits every site with its path, in module order.
    fn for_each_site(&self, mut f: impl FnMut(&str, &AdaptedLinear<B>)) {
        // One traversal serves both directions: the clone is cheap, tensors are reference-counted.
        let Ok(_) = self.clone().map_each_site(|path, site| {
            f(path, &site);
            Ok::<_, Infallible>(site)
        });
    }

    /// The paths of all sites, in module order.
    fn site_paths(&self) -> Vec<String> {
        let mut paths = Vec::new();
        self.for_each_site(|path, _| paths.push(path.to_string()));
        paths
    }

    /// Attaches a fresh adapter to every site whose path `targets` matches (peft's `target_modules`).
    /// Targets that match no site are an error, as in peft: a typo would otherwise train nothing. A routed
    /// adapter whose routing granularity is shared gets its group's router (created by the group's first
    /// site).
    fn with_adapters(self, targets: &TargetModules, config: &AdapterConfig) -> Result<Self, CoreError> {
        let mut matched = 0usize;
        let model = self.map_sites(|path, site| {
            if targets.matches(path) {
                matched += 1;
                site.with_adapter(config)
            } else {
                Ok(site)
            }
        })?;
        if matched == 0 {
            return Err(CoreError::NoTargetSite {
                targets: targets.to_string(),
            });
        }
        let mut shared = model.shared_routers().clone();
        let model = model.map_each_site(|path, site| site.share_router(path, &mut shared))?;
        Ok(model.with_shared_routers(shared))
    }

    /// Puts the adapters of a peft folder on their sites, checked as peft checks them: `target_modules`
    /// must match a site of the model, and every module of the weights must be a site that
    /// `target_modules` names. peft has per-layer routers only, so the routing is per layer whatever
    /// granularity `routing` names.
    fn with_peft_adapter(self, adapter: &PeftAdapter, routing: &RoutingConfig) -> Result<Self, CoreError> {
        let targets = &adapter.config.target_modules;
        let paths = self.site_paths();
        if !paths.iter().any(|p| targets.matches(p)) {
            return Err(CoreError::NoTargetSite {
                targets: targets.to_string(),
            });
        }
        let untargeted: Vec<String> = (adapter.modules.keys())
            .filter(|m| paths.contains(m) && !targets.matches(m))
            .cloned()
            .collect();
        if !untargeted.is_empty() {
            return Err(CoreError::UntargetedModules {
                targets: targets.to_string(),
                modules: untargeted,
            });
        }
        let device = self.device();
        let mut placed = BTreeSet::new();
        let model = self.map_sites(|path, site| {
            match adapter.adapter_for::<B>(path, site.d_in(), site.d_out(), routing, &device)? {
                Some(a) => {
                    placed.insert(path.to_string());
                    Ok::<_, CoreError>(site.set_adapter(Some(a)))
                }
                None => Ok(site),
            }
        })?;
        match adapter.modules.keys().find(|m| !placed.contains(*m)) {
            Some(module) => Err(CoreError::UnknownSite {
                module: module.clone(),
            }),
            None => Ok(model),
        }
    }

    /// Loads a peft adapter folder (`adapter_config.json` + `adapter_model.safetensors`) onto this model,
    /// with peft's routing defaults; outputs then match peft's.
    fn load_peft_adapter(self, dir: impl AsRef<Path>) -> Result<Self, CoreError> {
        let adapter = PeftAdapter::load(dir)?;
        self.with_peft_adapter(&adapter, &RoutingConfig::default())
    }

    /// Applies `f` to every router once: each site's own and each shared one (one-hot Private routing, rows
    /// for new tasks).
    fn map_routers(self, mut f: impl FnMut(PolyRouter<B>) -> PolyRouter<B>) -> Self {
        let Ok(model) = self.map_each_site(|_, mut site| {
            if let Some(SiteRouter::Own(router)) = site.adapter.as_mut().and_then(Adapter::router_mut) {
                *router = f(router.clone());
            }
            Ok::<_, Infallible>(site)
        });
        let shared = model.shared_routers().clone();
        let shared = SharedRouters {
            routers: shared.routers.into_iter().map(f).collect(),
            groups: shared.groups,
        };
        model.with_shared_routers(shared)
    }

    /// Every router once, named by what it routes: a site's path for its own router, the group
    /// (`encoder.block.0`, `decoder`, `model`) for a shared one; in module order of their first site.
    fn routers(&self) -> Vec<(String, PolyRouter<B>)> {
        let shared = self.shared_routers();
        let mut listed = vec![false; shared.len()];
        let mut routers = Vec::new();
        self.for_each_site(
            |path, site| match site.adapter.as_ref().and_then(Adapter::router) {
                Some(SiteRouter::Own(router)) => routers.push((path.to_string(), router.clone())),
                Some(SiteRouter::Shared(g)) if !listed.get(*g).copied().unwrap_or(true) => {
                    listed[*g] = true;
                    routers.push((shared.groups[*g].clone(), shared.routers[*g].clone()));
                }
                _ => {}
            },
        );
        routers
    }

    /// Every site's adapter with its path, each owning its router: a shared router's logits are copied into
    /// every site of its group (peft's per-layer layout; the outputs are unchanged).
    fn per_layer_adapters(&self) -> Result<Vec<(String, Adapter<B>)>, CoreError> {
        let mut adapters = Vec::new();
        let mut error = None;
        self.for_each_site(|path, site| {
            if let Some(adapter) = &site.adapter {
                match adapter.per_layer_copy(self.shared_routers()) {
                    Ok(copy) => adapters.push((path.to_string(), copy)),
                    Err(e) => error = error.take().or(Some(e)),
                }
            }
        });
        match error {
            Some(e) => Err(e),
            None => Ok(adapters),
        }
    }

    /// The model's adapters as a peft folder's contents (`None` without adapters); a routed adapter names its
    /// routing rows with `tasks`.
    fn peft_adapter(
        &self,
        tasks: &TaskMap,
        base_model: Option<&str>,
    ) -> Result<Option<PeftAdapter>, CoreError> {
        let modules = self.per_layer_adapters()?;
        if modules.is_empty() {
            return Ok(None);
        }
        let mut adapter = PeftAdapter::from_adapters(&modules, base_model)?;
        if matches!(adapter.config.kind, PeftKind::Poly { .. }) {
            adapter.tasks = Some(tasks.clone());
        }
        Ok(Some(adapter))
    }
}

/// Keeps the shared routers some site routes through, renumbering the sites' indices.
fn drop_unused_routers<B: Backend, M: AdapterHost<B>>(model: M) -> M {
    let mut used = vec![false; model.shared_routers().len()];
    model.for_each_site(|_, site| {
        if let Some(SiteRouter::Shared(g)) = site.adapter.as_ref().and_then(Adapter::router)
            && let Some(u) = used.get_mut(*g)
        {
            *u = true;
        }
    });
    if used.iter().all(|u| *u) {
        return model;
    }
    let (kept, renumber) = model.shared_routers().clone().retain(&used);
    let Ok(model) = model.map_each_site(|_, mut site| {
        if let Some(SiteRouter::Shared(g)) = site.adapter.as_mut().and_then(Adapter::router_mut)
            && let Some(Some(new)) = renumber.get(*g)
        {
            *g = *new;
        }
        Ok::<_, Infallible>(site)
    });
    model.with_shared_routers(kept)
}
