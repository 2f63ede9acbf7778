//! Optimizer steps, in place, following torch.optim's update rules operation by operation.
//!
//! Every single-pass optimizer is a rule of the [`engine`]; [`Config`] names them all, holds
//! one group's typed hyperparameters, says which state buffers and counters a tensor needs
//! ([`Config::layout`]) and runs a step ([`Config::step`]). Multi-pass optimizers run each
//! pass on the engine's driver (LAMB: [`engine::sweep`], then [`engine::apply`]).

pub mod adafactor;
pub mod adagrad;
pub mod adam;
pub mod elementwise;
pub mod engine;
pub mod hyper;
pub mod lamb;
pub mod prodigy;
pub mod rmsprop;
pub mod sgd;

pub use adagrad::AdagradConfig;
pub use adam::AdamConfig;
pub use elementwise::{AdaBeliefConfig, AdaBoundConfig, AdadeltaConfig, AdamaxConfig, AdemamixConfig, AdoptConfig, AsgdConfig, LionConfig, NadamConfig, RadamConfig, RpropConfig, ScheduleFreeConfig, MuonMomentumConfig, ScaledAddConfig};
pub use engine::{Layout, StateName, Storage, Tensor};
pub use lamb::LambConfig;
pub use prodigy::{ProdigyStatsConfig, ProdigyUpdateConfig};
pub use rmsprop::RmspropConfig;
pub use sgd::SgdConfig;

use crate::simd::{self, SimdLevel};
use crate::Error;

/// Declares every rule once: its `Config` variant, hyperparameter type, name, layout (state
/// buffers and counters, which may depend on the hyperparameters) and step function.
macro_rules! rules {
    ($($(#[$doc:meta])* $variant:ident($cfg:ty) = $name:literal, $layout:expr, $step:expr;)*) => {
        /// One group's configuration of an optimizer: which rule, with which hyperparameters.
        /// Built once per group (and again when an option changes).
        #[derive(Clone, Copy, Debug, PartialEq)]
        pub enum Config {
            $($(#[$doc])* $variant($cfg)),*
        }

        /// Every rule's name, as [`Config::new`] takes it.
        pub const RULES: &[&str] = &[$($name),*];

        impl Config {
            /// The configuration of rule `name` from `(hyperparameter, value)` pairs (flags as
            /// 0/1): every hyperparameter of the rule must be given, and nothing else.
            pub fn new(name: &str, pairs: &[(&str, f64)]) -> Result<Config, Error> {
                match name {
                    $($name => Ok(Config::$variant(<$cfg>::from_pairs(pairs)?)),)*
                    other => Err(Error::type_error(format!("unknown optimizer rule {other:?} (rules: {RULES:?})"))),
                }
            }

            /// The rule's name.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Config::$variant(_) => $name),*
                }
            }

            /// The state buffers (in the order a step takes them) and the float32 counters
            /// each tensor needs with these hyperparameters.
            pub fn layout(&self) -> Layout {
                match self {
                    $(Config::$variant(h) => ($layout)(h)),*
                }
            }

            /// [`Config::step`] at a given SIMD level.
            pub fn step_at<P: Storage, S: Storage<Arith = P::Arith>>(
                &self,
                tensors: Vec<Tensor<'_, P, S>>,
                grad_scale: f64,
                level: SimdLevel,
            ) -> Result<Sums, Error> {
                match self {
                    $(Config::$variant(h) => ($step)(h, tensors, grad_scale, level).map(Sums::from)),*
                }
            }
        }
    };
}

use elementwise as e;

rules! {
    Sgd(SgdConfig) = "sgd", sgd::layout, sgd::step;
    Adam(AdamConfig) = "adam", adam::layout, adam::step;
    Adagrad(AdagradConfig) = "adagrad", adagrad::layout, adagrad::step;
    Rmsprop(RmspropConfig) = "rmsprop", rmsprop::layout, rmsprop::step;
    Adamax(AdamaxConfig) = "adamax", |_| e::ADAMAX, e::adamax;
    Adadelta(AdadeltaConfig) = "adadelta", |_| e::ADADELTA, e::adadelta;
    Nadam(NadamConfig) = "nadam", |_| e::NADAM, e::nadam;
    Radam(RadamConfig) = "radam", |_| e::RADAM, e::radam;
    AdaBound(AdaBoundConfig) = "adabound", |_| e::ADABOUND, e::adabound::<P, S, false>;
    AmsBound(AdaBoundConfig) = "amsbound", |_| e::AMSBOUND, e::adabound::<P, S, true>;
    Lion(LionConfig) = "lion", |_| e::LION, e::lion;
    AdaBelief(AdaBeliefConfig) = "adabelief", |h: &AdaBeliefConfig| if h.amsgrad { e::ADABELIEF_AMS } else { e::ADABELIEF }, e::adabelief;
    Asgd(AsgdConfig) = "asgd", |_| e::ASGD, e::asgd;
    Rprop(RpropConfig) = "rprop", |_| e::RPROP, e::rprop;
    Adopt(AdoptConfig) = "adopt", |_| e::ADOPT, e::adopt;
    Ademamix(AdemamixConfig) = "ademamix", |_| e::ADEMAMIX, e::ademamix;
    /// Muon's two fused passes around its Newton-Schulz iteration (which runs on a BLAS).
    MuonMomentum(MuonMomentumConfig) = "muon_momentum", |_| e::MUON_MOMENTUM, e::muon_momentum;
    ScaledAdd(ScaledAddConfig) = "scaled_add", |_| e::SCALED_ADD, e::scaled_add;
    ScheduleFree(ScheduleFreeConfig) = "schedulefree", |h: &ScheduleFreeConfig| if h.adam { e::SCHEDULEFREE_ADAM } else { e::SCHEDULEFREE_SGD }, e::schedulefree;
    /// Two passes: moments and norms, then the update.
    Lamb(LambConfig) = "lamb", |_| lamb::LAYOUT, lamb::step;
    /// Prodigy's two passes, with the estimate of its step size between them (the caller's:
    /// it needs the sums of every group); the first returns the group's sums.
    ProdigyStats(ProdigyStatsConfig) = "prodigy_stats", |h: &ProdigyStatsConfig| prodigy::layout(h.beta1), prodigy::stats;
    ProdigyUpdate(ProdigyUpdateConfig) = "prodigy_update", |h: &ProdigyUpdateConfig| prodigy::layout(h.beta1), prodigy::update;
}

/// What a step returns: nothing, or for the first pass of an optimizer whose estimate spans
/// every group (Prodigy) the group's two float64 sums.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sums(pub Option<(f64, f64)>);

impl From<()> for Sums {
    fn from(_: ()) -> Sums {
        Sums(None)
    }
}

impl From<(f64, f64)> for Sums {
    fn from(sums: (f64, f64)) -> Sums {
        Sums(Some(sums))
    }
}

impl Config {
    /// One step over every tensor of a group, in place, each gradient element multiplied by
    /// `grad_scale` as it is read (clipping folded into the step; 1 leaves it as it is).
    /// Checks every tensor before touching any. Returns [`Sums`] (none but for a first pass
    /// that sums).
    pub fn step<P: Storage, S: Storage<Arith = P::Arith>>(&self, tensors: Vec<Tensor<'_, P, S>>, grad_scale: f64) -> Result<Sums, Error> {
        self.step_at(tensors, grad_scale, simd::level())
    }
}
