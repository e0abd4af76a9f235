//! Routers shared by groups of adapter sites (mttl's `router_granularity` coarser than `finegrained`).
//!
//! The model owns one [`PolyRouter`] per group in a [`SharedRouters`]; a site of the group holds only the
//! group's index ([`SiteRouter::Shared`]) and is handed the router through the [`crate::RoutingContext`] of
//! each call. No site holds a copy: Burn's optimiser takes a gradient by `ParamId` once, so tied copies of one
//! parameter in several places would not train as one. With one parameter, autodiff sums the gradients of
//! every site that used it, and the routing learning rate, freezing and checkpoints see it once.

use burn::prelude::*;

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

    /// The index of the group that the site at `path` joins with its own `router` (of a shared granularity):
    /// the first site of a group gives the group its router, later ones must agree with it on heads, skills,
    /// tasks and routing settings.
    pub fn join(&mut self, path: &str, router: &PolyRouter<B>) -> Result<usize, CoreError> {
        let group = router.config.granularity.group_of(path)?;
        match self.groups.iter().position(|g| *g == group) {
            Some(g) => {
                agree(&self.routers[g], router, &group, path)?;
                Ok(g)
            }
            None => {
                self.routers.push(router.clone());
                self.groups.push(group);
                Ok(self.len() - 1)
            }
        }
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

    /// A per-layer copy of the router `site` routes with: a shared router's logits become a new parameter
    /// (peft's layout, for export) that trains apart from the group.
    pub fn per_layer_router(&self, site: &SiteRouter<B>) -> Result<PolyRouter<B>, CoreError> {
        let router = self.resolve(site)?;
        Ok(match site {
            SiteRouter::Own(_) => router.clone(),
            SiteRouter::Shared(_) => {
                let config = RoutingConfig {
                    granularity: RouterGranularity::PerLayer,
                    ..router.config.clone()
                };
                let logits = router.module_logits.val().detach();
                PolyRouter::from_logits(logits, router.n_heads, router.n_skills, config)
            }
        })
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
