//! Optimizer steps, in place, following torch.optim's update rules operation by operation.
//!
//! Every single-pass optimizer is a rule of the [`engine`]; [`Config`] names them all, holds
//! one group's typed hyperparameters, says which state buffers and counters a tensor needs
//! ([`Config::layout`]) and runs a step ([`Config::step`]). Multi-pass optimizers (LAMB,
//! Adafactor) use the engine's building blocks for each pass.

pub mod adafactor;
pub mod adagrad;
pub mod adam;
pub mod elementwise;
pub mod engine;
pub mod hyper;
pub mod lamb;
pub mod rmsprop;
pub mod sgd;

pub use adagrad::AdagradConfig;
pub use adam::AdamConfig;
pub use elementwise::{AdaBoundConfig, AdadeltaConfig, AdamaxConfig, AsgdConfig, LionConfig, NadamConfig, RadamConfig, RpropConfig};
pub use engine::{Storage, Tensor};
pub use lamb::{lamb_step, LambConfig, LambTensor};
pub use rmsprop::RmspropConfig;
pub use sgd::SgdConfig;

use crate::simd::{self, SimdLevel};
use crate::{check_len, Error};

/// A state buffer's key in torch's `state` dict and the name of its list in the functional
/// API (which error messages use).
pub type StateName = (&'static str, &'static str);

/// One group's configuration of a single-pass optimizer: which rule, with which
/// hyperparameters. Built once per group (and again when an option changes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Config {
    Sgd(SgdConfig),
    Adam(AdamConfig),
    Adagrad(AdagradConfig),
    Rmsprop(RmspropConfig),
    Adamax(AdamaxConfig),
    Adadelta(AdadeltaConfig),
    Nadam(NadamConfig),
    Radam(RadamConfig),
    AdaBound(AdaBoundConfig),
    AmsBound(AdaBoundConfig),
    Lion(LionConfig),
    AdaBelief(RadamConfig),
    Asgd(AsgdConfig),
    Rprop(RpropConfig),
    /// Two passes (moments and norms, then the update); runs on identity storage only.
    Lamb(LambConfig),
}

/// Every rule's name, as [`Config::new`] takes it.
pub const RULES: &[&str] =
    &["sgd", "adam", "adagrad", "rmsprop", "adamax", "adadelta", "nadam", "radam", "adabound", "amsbound", "lion", "adabelief", "asgd", "rprop", "lamb"];

impl Config {
    /// The configuration of rule `name` from `(hyperparameter, value)` pairs (flags as 0/1):
    /// every hyperparameter of the rule must be given, and nothing else.
    pub fn new(name: &str, pairs: &[(&str, f64)]) -> Result<Config, Error> {
        Ok(match name {
            "sgd" => Config::Sgd(SgdConfig::from_pairs(pairs)?),
            "adam" => Config::Adam(AdamConfig::from_pairs(pairs)?),
            "adagrad" => Config::Adagrad(AdagradConfig::from_pairs(pairs)?),
            "rmsprop" => Config::Rmsprop(RmspropConfig::from_pairs(pairs)?),
            "adamax" => Config::Adamax(AdamaxConfig::from_pairs(pairs)?),
            "adadelta" => Config::Adadelta(AdadeltaConfig::from_pairs(pairs)?),
            "nadam" => Config::Nadam(NadamConfig::from_pairs(pairs)?),
            "radam" => Config::Radam(RadamConfig::from_pairs(pairs)?),
            "adabound" => Config::AdaBound(AdaBoundConfig::from_pairs(pairs)?),
            "amsbound" => Config::AmsBound(AdaBoundConfig::from_pairs(pairs)?),
            "lion" => Config::Lion(LionConfig::from_pairs(pairs)?),
            "adabelief" => Config::AdaBelief(RadamConfig::from_pairs(pairs)?),
            "asgd" => Config::Asgd(AsgdConfig::from_pairs(pairs)?),
            "rprop" => Config::Rprop(RpropConfig::from_pairs(pairs)?),
            "lamb" => Config::Lamb(LambConfig::from_pairs(pairs)?),
            other => return Err(Error::type_error(format!("unknown optimizer rule {other:?} (rules: {RULES:?})"))),
        })
    }

    /// The rule's name.
    pub fn name(&self) -> &'static str {
        match self {
            Config::Sgd(_) => "sgd",
            Config::Adam(_) => "adam",
            Config::Adagrad(_) => "adagrad",
            Config::Rmsprop(_) => "rmsprop",
            Config::Adamax(_) => "adamax",
            Config::Adadelta(_) => "adadelta",
            Config::Nadam(_) => "nadam",
            Config::Radam(_) => "radam",
            Config::AdaBound(_) => "adabound",
            Config::AmsBound(_) => "amsbound",
            Config::Lion(_) => "lion",
            Config::AdaBelief(_) => "adabelief",
            Config::Asgd(_) => "asgd",
            Config::Rprop(_) => "rprop",
            Config::Lamb(_) => "lamb",
        }
    }

    /// The state buffers (in the order a step takes them) and the float32 counters each
    /// tensor needs with these hyperparameters.
    pub fn layout(&self) -> (&'static [StateName], &'static [&'static str]) {
        use elementwise as e;
        match self {
            Config::Sgd(h) => sgd::layout(h),
            Config::Adam(h) => adam::layout(h),
            Config::Adagrad(h) => adagrad::layout(h),
            Config::Rmsprop(h) => rmsprop::layout(h),
            Config::Adamax(_) => e::ADAMAX,
            Config::Adadelta(_) => e::ADADELTA,
            Config::Nadam(_) => e::NADAM,
            Config::Radam(_) => e::RADAM,
            Config::AdaBound(_) => e::ADABOUND,
            Config::AmsBound(_) => e::AMSBOUND,
            Config::Lion(_) => e::LION,
            Config::AdaBelief(_) => e::ADABELIEF,
            Config::Asgd(_) => e::ASGD,
            Config::Rprop(_) => e::RPROP,
            Config::Lamb(_) => e::RADAM,
        }
    }

    /// One step over every tensor of a group, in place, each gradient element multiplied by
    /// `grad_scale` as it is read (clipping folded into the step; 1 leaves it as it is).
    /// Checks every tensor before touching any.
    pub fn step<P: Storage, S: Storage<Arith = P::Arith>>(&self, tensors: Vec<Tensor<'_, P, S>>, grad_scale: f64) -> Result<(), Error> {
        self.step_at(tensors, grad_scale, simd::level())
    }

    /// [`Config::step`] at a given SIMD level.
    pub fn step_at<P: Storage, S: Storage<Arith = P::Arith>>(
        &self,
        tensors: Vec<Tensor<'_, P, S>>,
        grad_scale: f64,
        level: SimdLevel,
    ) -> Result<(), Error> {
        use elementwise as e;
        let (t, s, l) = (tensors, grad_scale, level);
        match self {
            Config::Sgd(h) => sgd::step(h, t, s, l),
            Config::Adam(h) => adam::step(h, t, s, l),
            Config::Adagrad(h) => adagrad::step(h, t, s, l),
            Config::Rmsprop(h) => rmsprop::step(h, t, s, l),
            Config::Adamax(h) => e::adamax(h, t, s, l),
            Config::Adadelta(h) => e::adadelta(h, t, s, l),
            Config::Nadam(h) => e::nadam(h, t, s, l),
            Config::Radam(h) => e::radam(h, t, s, l),
            Config::AdaBound(h) => e::adabound::<P, S, false>(h, t, s, l),
            Config::AmsBound(h) => e::adabound::<P, S, true>(h, t, s, l),
            Config::Lion(h) => e::lion(h, t, s, l),
            Config::AdaBelief(h) => e::adabelief(h, t, s, l),
            Config::Asgd(h) => e::asgd(h, t, s, l),
            Config::Rprop(h) => e::rprop(h, t, s, l),
            Config::Lamb(h) => lamb(h, t, s, l),
        }
    }
}

/// LAMB over the engine's tensors, viewed as their arithmetic type.
fn lamb<P: Storage, S: Storage<Arith = P::Arith>>(h: &LambConfig, tensors: Vec<Tensor<'_, P, S>>, grad_scale: f64, level: SimdLevel) -> Result<(), Error> {
    let unsupported = || Error::type_error("lamb runs on float32 and float64 buffers only");
    let mut out = Vec::with_capacity(tensors.len());
    for (i, t) in tensors.into_iter().enumerate() {
        check_len("grads", i, t.grad.len(), t.param.len())?;
        let ([m, v], [step]) = (t.states, t.counters) else {
            return Err(Error::value(format!("params[{i}]: lamb takes two state buffers (exp_avgs, exp_avg_sqs) and one counter")));
        };
        out.push(LambTensor {
            param: P::as_arith(t.param).ok_or_else(unsupported)?,
            grad: P::as_arith_ref(t.grad).ok_or_else(unsupported)?,
            exp_avg: S::as_arith(std::mem::take(m)).ok_or_else(unsupported)?,
            exp_avg_sq: S::as_arith(std::mem::take(v)).ok_or_else(unsupported)?,
            step: &mut **step,
        });
    }
    lamb::lamb_step_at(out, h, grad_scale, level)
}
