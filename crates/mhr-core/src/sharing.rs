//! Routers shared by groups of adapter sites (mttl's `router_granularity` coarser than `finegrained`).
//!
//! The model owns one [`PolyRouter`] per group in a [`SharedRouters`]; a site of the group holds only the
//! group's index ([`SiteRouter::Shared`]) and is handed the router through the [`crate::RoutingContext`] of
//! each call. No site holds a copy: Burn's optimiser takes a gradient by `ParamId` once, so tied copies of one
//! parameter in several places would not train as one. With one parameter, autodiff sums the gradients of
//! every site that used it, and the routing learning rate, freezing and checkpoints see it once.

use burn::prelude::*;

use crate::adapted_linear::{AdaptedLinear, Adapter};
use crate::config::{RouterGranularity, RoutingConfig};
use crate::error::CoreError;
use crate::router::PolyRouter;

/// Where a routed adapter finds its routing logits.
#[derive(Module, Debug)]
pub enum SiteRouter<B: Backend> {
    /// Its own `Z` (per-layer routing, peft's layout).
    Own(PolyRouter<B>),
    /// The index of its group's router in the model's [`SharedRouters`].
    Shared(usize),
}

impl<B: Backend> SiteRouter<B> {
    /// The site's own router; `None` when it routes through a shared one.
    pub fn own(&self) -> Option<&PolyRouter<B>> {
        match self {
            SiteRouter::Own(router) => Some(router),
            SiteRouter::Shared(_) => None,
        }
    }
}

/// One router per group of sites that share routing, in the order the groups were first met.
#[derive(Module, Debug)]
pub struct SharedRouters<B: Backend> {
    pub routers: Vec<PolyRouter<B>>,
    /// The group each router serves (`encoder.block.0`, `decoder`, `model`), index for index.
    #[module(skip)]
    pub groups: Vec<String>,
}

impl<B: Backend> Default for SharedRouters<B> {
    fn default() -> Self {
        Self {
            routers: Vec::new(),
            groups: Vec::new(),
        }
    }
}

impl<B: Backend> SharedRouters<B> {
    pub fn len(&self) -> usize {
        self.routers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routers.is_empty()
    }

    /// The router a site routes with: its own, or its group's.
    pub fn resolve<'a>(&'a self, site: &'a SiteRouter<B>) -> Result<&'a PolyRouter<B>, CoreError> {
        match site {
            SiteRouter::Own(router) => Ok(router),
            SiteRouter::Shared(g) => self.routers.get(*g).ok_or_else(|| {
                CoreError::Config(format!(
                    "a site routes through shared router {g}, but the model has {} shared routers",
                    self.len()
                ))
            }),
        }
    }

    /// Moves the own router of the site at `path` into its group when its routing config names a shared
    /// granularity: the first site of a group gives the group its router, later ones must agree with it on
    /// heads, skills, tasks and routing settings, and drop theirs. Other sites are returned unchanged.
    pub fn share(&mut self, path: &str, mut site: AdaptedLinear<B>) -> Result<AdaptedLinear<B>, CoreError> {
        let Some(SiteRouter::Own(router)) = site.adapter.as_ref().and_then(Adapter::router) else {
            return Ok(site);
        };
        if !router.config.granularity.is_shared() {
            return Ok(site);
        }
        let group = router.config.granularity.group_of(path)?;
        let index = match self.groups.iter().position(|g| *g == group) {
            Some(g) => {
                agree(&self.routers[g], router, &group, path)?;
                g
            }
            None => {
                self.routers.push(router.clone());
                self.groups.push(group);
                self.len() - 1
            }
        };
        if let Some(slot) = site.adapter.as_mut().and_then(Adapter::router_mut) {
            *slot = SiteRouter::Shared(index);
        }
        Ok(site)
    }

    /// Keeps the routers whose index `used` holds; returns them and each old index's new one.
    pub fn retain(self, used: &[bool]) -> (Self, Vec<Option<usize>>) {
        let mut renumber = Vec::with_capacity(self.len());
        let mut kept = Self::default();
        for (g, (router, group)) in self.routers.into_iter().zip(self.groups).enumerate() {
            if used.get(g).copied().unwrap_or(false) {
                renumber.push(Some(kept.len()));
                kept.routers.push(router);
                kept.groups.push(group);
            } else {
                renumber.push(None);
            }
        }
        (kept, renumber)
    }

    /// A copy of `adapter` that owns its router: a shared router's logits become a new per-layer parameter
    /// (peft's layout, for export); the copy trains apart from the group.
    pub fn per_layer_copy(&self, adapter: &Adapter<B>) -> Result<Adapter<B>, CoreError> {
        let mut copy = adapter.clone();
        if let Some(slot) = copy.router_mut()
            && let SiteRouter::Shared(_) = slot
        {
            let shared = self.resolve(slot)?;
            let config = RoutingConfig {
                granularity: RouterGranularity::PerLayer,
                ..shared.config.clone()
            };
            let logits = shared.module_logits.val().detach();
            *slot = SiteRouter::Own(PolyRouter::from_logits(
                logits,
                shared.n_heads,
                shared.n_skills,
                config,
            ));
        }
        Ok(copy)
    }
}

/// A site joining group `group` must route like the group's router.
fn agree<B: Backend>(
    group_router: &PolyRouter<B>,
    site_router: &PolyRouter<B>,
    group: &str,
    path: &str,
) -> Result<(), CoreError> {
    let shape = |r: &PolyRouter<B>| (r.n_heads, r.n_skills, r.n_tasks());
    let (theirs, ours) = (shape(group_router), shape(site_router));
    if theirs != ours {
        return Err(CoreError::Config(format!(
            "router group `{group}` routes {} heads × {} skills × {} tasks, but its site `{path}` has {} × {} × {}",
            theirs.0, theirs.1, theirs.2, ours.0, ours.1, ours.2
        )));
    }
    if group_router.config != site_router.config {
        return Err(CoreError::Config(format!(
            "router group `{group}` has routing settings {:?}, but its site `{path}` has {:?}",
            group_router.config, site_router.config
        )));
    }
    Ok(())
}
