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
pub use prodigy::{ProdigyConfig, ProdigyStatsConfig, ProdigyUpdateConfig};
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

            /// The names of the rule's hyperparameters, in the order [`Config::renewed`] takes
            /// their values.
            pub fn names(&self) -> &'static [&'static str] {
                match self {
                    $(Config::$variant(_) => <$cfg>::NAMES),*
                }
            }

            /// The same rule with new values of its hyperparameters, in the order of
            /// [`Config::names`].
            pub fn renewed(&self, values: &[f64]) -> Result<Config, Error> {
                match self {
                    $(Config::$variant(_) => Ok(Config::$variant(<$cfg>::from_ordered(values)?))),*
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

            /// [`Config::step_at`] for every rule (8-bit blockwise state goes through
            /// [`Config::step_blockwise`], which compiles only the rules that keep it).
            fn step_any<P: Storage, S: Storage<Arith = P::Arith>>(
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
    /// Prodigy's two passes with the estimate of its step size between them, over one group,
    /// or one of the passes when the estimate spans several groups (the first returns the
    /// group's sums).
    Prodigy(ProdigyConfig) = "prodigy", |h: &ProdigyConfig| prodigy::layout(h.beta1), prodigy::step;
}

/// What a step returns: nothing, or Prodigy's values (the group's sums after a first pass, the
/// new estimate after an update: [`prodigy::step`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sums(pub Option<Vec<f64>>);

impl From<()> for Sums {
    fn from(_: ()) -> Sums {
        Sums(None)
    }
}

impl From<Vec<f64>> for Sums {
    fn from(values: Vec<f64>) -> Sums {
        Sums(Some(values))
    }
}

impl Config {
    /// Which state buffers of the layout are never negative (bit `k`: buffer `k`), for the
    /// rules that can keep 8-bit blockwise state (`state_dtype='int8'`: SGD with momentum,
    /// Adam/AdamW, Adagrad, RMSprop, Lion, AdaBelief); None for the others. Those buffers
    /// (second moments, sums of squares) use the unsigned quantile map, the others the
    /// signed one.
    pub fn blockwise_unsigned(&self) -> Option<u32> {
        match self {
            Config::Sgd(_) | Config::Lion(_) => Some(0),
            Config::Adam(_) | Config::AdaBelief(_) => Some(0b110),
            Config::Adagrad(_) | Config::Rmsprop(_) => Some(0b1),
            _ => None,
        }
    }

    /// [`Config::step`] at a given SIMD level.
    pub fn step_at<P: Storage, S: Storage<Arith = P::Arith>>(&self, tensors: Vec<Tensor<'_, P, S>>, grad_scale: f64, level: SimdLevel) -> Result<Sums, Error> {
        if S::BLOCKWISE {
            return self.step_blockwise(tensors, grad_scale, level);
        }
        self.step_any(tensors, grad_scale, level)
    }

    /// A step over 8-bit blockwise state: each tensor's [`Tensor::unsigned`] set from
    /// [`Config::blockwise_unsigned`], or an error for a rule without it.
    fn step_blockwise<P: Storage, S: Storage<Arith = P::Arith>>(&self, mut tensors: Vec<Tensor<'_, P, S>>, grad_scale: f64, level: SimdLevel) -> Result<Sums, Error> {
        let refused = || Err(Error::type_error(format!("{} cannot keep 8-bit blockwise state (state_dtype='int8')", self.name())));
        let Some(unsigned) = self.blockwise_unsigned() else {
            return refused();
        };
        for t in tensors.iter_mut() {
            t.unsigned = unsigned;
        }
        match self {
            Config::Sgd(h) => sgd::step(h, tensors, grad_scale, level).map(Sums::from),
            Config::Adam(h) => adam::step(h, tensors, grad_scale, level).map(Sums::from),
            Config::Adagrad(h) => adagrad::step(h, tensors, grad_scale, level).map(Sums::from),
            Config::Rmsprop(h) => rmsprop::step(h, tensors, grad_scale, level).map(Sums::from),
            Config::Lion(h) => e::lion(h, tensors, grad_scale, level).map(Sums::from),
            Config::AdaBelief(h) => e::adabelief(h, tensors, grad_scale, level).map(Sums::from),
            _ => refused(),
        }
    }

    /// One step over every tensor of a group, in place, each gradient element multiplied by
    /// `grad_scale` as it is read (clipping folded into the step; 1 leaves it as it is).
    /// Checks every tensor before touching any. Returns [`Sums`] (none but for a first pass
    /// that sums).
    pub fn step<P: Storage, S: Storage<Arith = P::Arith>>(&self, tensors: Vec<Tensor<'_, P, S>>, grad_scale: f64) -> Result<Sums, Error> {
        self.step_at(tensors, grad_scale, simd::level())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockwise::{self, Map, Q8};
    use crate::half::Bf16;
    use crate::parallel;
    use crate::test_util::{data, global};

    /// A rule renewed from its values in the order of its names is the rule built from
    /// (name, value) pairs in any order; a wrong count is an error.
    #[test]
    fn renewed_takes_the_values_in_the_order_of_the_names() {
        let rules: [(&str, &[&str], &[&str]); 3] = [
            ("adam", AdamConfig::NAMES, &["amsgrad", "maximize", "decoupled_weight_decay"]),
            ("prodigy", ProdigyConfig::NAMES, &["decouple", "use_bias_correction", "safeguard_warmup", "maximize"]),
            ("schedulefree", ScheduleFreeConfig::NAMES, &["adam", "maximize"]),
        ];
        for (name, names, flags) in rules {
            let value = |k: usize, n: &str| if flags.contains(&n) { (k % 2) as f64 } else { 0.25 + k as f64 };
            let pairs: Vec<(&str, f64)> = names.iter().enumerate().rev().map(|(k, &n)| (n, value(k, n))).collect();
            let built = Config::new(name, &pairs).unwrap();
            assert_eq!(built.names(), names);
            let ordered: Vec<f64> = names.iter().enumerate().map(|(k, &n)| value(k, n)).collect();
            assert_eq!(built.renewed(&ordered).unwrap(), built, "{name}");
            assert!(built.renewed(&ordered[1..]).is_err());
        }
    }

    /// Every rule that keeps 8-bit state, with options that use each of its buffers.
    fn configs() -> Vec<Config> {
        let rule = |name: &str, p: &[(&str, f64)]| Config::new(name, p).unwrap();
        vec![
            rule("sgd", &[("lr", 0.1), ("momentum", 0.9), ("dampening", 0.0), ("weight_decay", 0.01), ("nesterov", 1.0), ("maximize", 0.0)]),
            Config::Adam(AdamConfig { amsgrad: true, weight_decay: 0.1, decoupled_weight_decay: true, ..AdamConfig::default() }),
            Config::Adam(AdamConfig { cautious: true, ..AdamConfig::default() }),
            Config::Adagrad(AdagradConfig { lr: 0.1, lr_decay: 0.01, weight_decay: 0.0, eps: 1e-10, maximize: false }),
            Config::Rmsprop(RmspropConfig { momentum: 0.9, centered: true, ..RmspropConfig::default() }),
            rule("lion", &[("lr", 1e-3), ("beta1", 0.9), ("beta2", 0.99), ("weight_decay", 0.1), ("maximize", 0.0), ("cautious", 0.0)]),
            rule("adabelief", &[("lr", 1e-3), ("beta1", 0.9), ("beta2", 0.999), ("eps", 1e-16), ("weight_decay", 0.0), ("decoupled_weight_decay", 1.0), ("fixed_decay", 0.0), ("amsgrad", 1.0), ("rectify", 1.0), ("degenerated_to_sgd", 1.0), ("maximize", 0.0)]),
        ]
    }

    /// One step with 8-bit state equals: dequantize, the float32-state step, quantize (the
    /// parameter bit for bit, then the codes and absmax), at every SIMD level and thread
    /// count, over tensors that end mid-block.
    fn eight_bit_state_is_float32_state_between_quantizations<P: Storage<Arith = f32>>() {
        let _g = global();
        let sizes = [5 * blockwise::QBLOCK + 3, 300, 70_001];
        for cfg in configs() {
            let (names, counter_names) = cfg.layout();
            let unsigned = cfg.blockwise_unsigned().unwrap();
            let maps: Vec<Map> = (0..names.len()).map(|k| Map::of(unsigned >> k & 1 != 0)).collect();
            for level in crate::simd::available() {
                for threads in [1, 2, 3] {
                    parallel::set_num_threads(threads).unwrap();
                    for (t, &n) in sizes.iter().enumerate() {
                        let seed = 10 * t as u64;
                        let p0: Vec<P> = data::<f32>(n, seed).into_iter().map(P::store).collect();
                        let g: Vec<P> = data::<f32>(n, seed + 1).into_iter().map(P::store).collect();
                        // state from quantized random values (second moments: their squares)
                        let mut codes: Vec<Vec<Q8>> = vec![];
                        let mut absmax: Vec<Vec<f32>> = vec![];
                        for (k, map) in maps.iter().enumerate() {
                            let v: Vec<f32> = data::<f32>(n, seed + 2 + k as u64).iter().map(|x| if *map == Map::Unsigned { x * x * 1e-3 } else { x * 0.1 }).collect();
                            let (mut c, mut a) = (vec![0u8; n], vec![0f32; blockwise::blocks(n)]);
                            blockwise::quantize(&v, *map, &mut c, &mut a);
                            codes.push(c.into_iter().map(Q8).collect());
                            absmax.push(a);
                        }
                        // the reference: float32 state, dequantized
                        let mut rs: Vec<Vec<f32>> = codes.iter().zip(&absmax).zip(&maps).map(|((c, a), m)| {
                            let mut v = vec![0f32; n];
                            blockwise::dequantize(Q8::bytes(c), a, *m, &mut v);
                            v
                        }).collect();
                        let (mut p, mut rp) = (p0.clone(), p0.clone());
                        let (mut k1, mut k2) = (vec![3f32; counter_names.len()], vec![3f32; counter_names.len()]);
                        {
                            let mut st: Vec<&mut [Q8]> = codes.iter_mut().map(|c| &mut c[..]).collect();
                            let mut sc: Vec<&mut [f32]> = absmax.iter_mut().map(|a| &mut a[..]).collect();
                            let mut ct: Vec<&mut f32> = k1.iter_mut().collect();
                            let t = Tensor { param: &mut p, grad: &g, states: &mut st, counters: &mut ct, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut sc, unsigned: 0, fresh: false };
                            cfg.step_at(vec![t], 0.5, level).unwrap();
                        }
                        {
                            let mut st: Vec<&mut [f32]> = rs.iter_mut().map(|c| &mut c[..]).collect();
                            let mut ct: Vec<&mut f32> = k2.iter_mut().collect();
                            let t: Tensor<'_, P, f32> = Tensor { param: &mut rp, grad: &g, states: &mut st, counters: &mut ct, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut [], unsigned: 0, fresh: false };
                            cfg.step_at(vec![t], 0.5, level).unwrap();
                        }
                        let bits = |v: &[P]| v.iter().map(|x| x.load().to_bits()).collect::<Vec<u32>>();
                        assert_eq!(bits(&p), bits(&rp), "{cfg:?} {level:?} {threads}T n={n}");
                        assert_eq!(k1, k2);
                        for k in 0..names.len() {
                            let (mut c, mut a) = (vec![0u8; n], vec![0f32; blockwise::blocks(n)]);
                            blockwise::quantize(&rs[k], maps[k], &mut c, &mut a);
                            assert!(Q8::bytes(&codes[k]) == &c[..], "{cfg:?} {level:?} {threads}T n={n} codes of {}", names[k].0);
                            assert_eq!(absmax[k].iter().map(|x| x.to_bits()).collect::<Vec<_>>(), a.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
                        }
                    }
                }
            }
        }
        parallel::set_num_threads(parallel::default_threads()).unwrap();
    }

    #[test]
    fn eight_bit_state_beside_float32_parameters() {
        eight_bit_state_is_float32_state_between_quantizations::<f32>();
    }

    #[test]
    fn eight_bit_state_beside_bfloat16_parameters() {
        eight_bit_state_is_float32_state_between_quantizations::<Bf16>();
    }

    #[test]
    fn rules_without_eight_bit_state_refuse_it_and_absmax_lengths_are_checked() {
        let mut p = vec![0f32; 300];
        let g = vec![0f32; 300];
        let (mut a, mut b) = (vec![Q8(0); 300], vec![Q8(0); 300]);
        let (mut sa, mut sb) = (vec![1f32; 2], vec![1f32; 2]);
        let mut step = 0f32;
        {
            let cfg = Config::new("nadam", &[("lr", 1e-3), ("beta1", 0.9), ("beta2", 0.999), ("eps", 1e-8), ("weight_decay", 0.0), ("momentum_decay", 4e-3), ("decoupled_weight_decay", 0.0), ("maximize", 0.0)]).unwrap();
            let mut st: Vec<&mut [Q8]> = vec![&mut a, &mut b];
            let mut sc: Vec<&mut [f32]> = vec![&mut sa, &mut sb];
            let mut mu = 1f32;
            let mut ct: Vec<&mut f32> = vec![&mut step, &mut mu];
            let t = Tensor { param: &mut p, grad: &g, states: &mut st, counters: &mut ct, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut sc, unsigned: 0, fresh: false };
            let e = cfg.step(vec![t], 1.0).unwrap_err();
            assert!(e.message().contains("8-bit"), "{}", e.message());
        }
        let cfg = Config::Adam(AdamConfig::default());
        let mut short = vec![1f32; 1];
        let mut st: Vec<&mut [Q8]> = vec![&mut a, &mut b];
        let mut sc: Vec<&mut [f32]> = vec![&mut sa, &mut short];
        let mut ct: Vec<&mut f32> = vec![&mut step];
        let t = Tensor { param: &mut p, grad: &g, states: &mut st, counters: &mut ct, low_bits: &mut [], master: &mut [], grad_f32: &[], stochastic: None, scales: &mut sc, unsigned: 0, fresh: false };
        let e = cfg.step(vec![t], 1.0).unwrap_err();
        assert!(e.message().contains("absmax"), "{}", e.message());
        assert!(p.iter().all(|&x| x == 0.0) && step == 0.0);
    }
}
