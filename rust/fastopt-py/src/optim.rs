//! Optimizer steps: one entry point for every rule of the engine. A [`Rule`] (the rule's
//! name and typed hyperparameters, built once per group) and the group's arrays go in; every
//! array is checked, then the core runs the step once over all of them with the GIL released.

use crate::arrays::{confirm, core_err, items, remember, run_core, CheckCache, Dtype, Group, Raw};
use fastopt_core::blockwise::{self, Map};
use fastopt_core::optim::engine::{tensor_key, KAHAN};
use fastopt_core::optim::{Config, Storage, Tensor, RULES};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use std::sync::Arc;

/// An optimizer rule with one group's hyperparameters: ``Rule("adam", lr=1e-3, beta1=0.9,
/// ...)``. Every hyperparameter of the rule must be given, as a number (flags as bools), and
/// nothing else: an unknown or missing name is a TypeError here, not at the step. Frozen:
/// build a new one when an option changes, or :meth:`renew` it with new numbers.
#[pyclass(module = "fastopt._fastopt", name = "Rule", frozen)]
pub struct Rule {
    cfg: Config,
    /// The hyperparameters' names in the order they were given (the order `renew` takes).
    keys: Arc<[String]>,
    /// Where each of `cfg.names()` is in `keys` (`renew` puts its values in the rule's order).
    order: Arc<[usize]>,
}

/// `v` as a hyperparameter's number, or a TypeError naming it.
fn number(rule: &str, key: &str, v: &Bound<'_, PyAny>) -> PyResult<f64> {
    v.extract::<f64>().map_err(|_| {
        PyTypeError::new_err(format!("{rule}: hyperparameter {key:?} must be a number, got {}", v.get_type().name().map(|n| n.to_string()).unwrap_or_default()))
    })
}

impl Rule {
    fn build(name: &str, keys: Arc<[String]>, values: Vec<f64>) -> PyResult<Self> {
        let pairs: Vec<(&str, f64)> = keys.iter().map(|k| k.as_str()).zip(values).collect();
        let cfg = Config::new(name, &pairs).map_err(core_err)?;
        // (every name is in `keys`, once: `Config::new` checked it)
        let order = cfg.names().iter().map(|n| keys.iter().position(|k| k == n).unwrap_or(0)).collect();
        Ok(Rule { cfg, keys, order })
    }
}

#[pymethods]
impl Rule {
    #[new]
    #[pyo3(signature = (name, /, **hyper))]
    fn new(name: &str, hyper: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let mut keys: Vec<String> = vec![];
        let mut values: Vec<f64> = vec![];
        if let Some(d) = hyper {
            for (k, v) in d.iter() {
                let k: String = k.extract()?;
                values.push(number(name, &k, &v)?);
                keys.push(k);
            }
        }
        Self::build(name, keys.into(), values)
    }

    /// The same rule with new numbers: ``values`` for the hyperparameters this Rule was built
    /// with, in the order they were given (a scheduler's new ``lr``, Schedule-Free's constants
    /// of the step). Returns None when the new numbers change the state buffers or counters
    /// the rule takes (an ``amsgrad`` flag, say): build a new Rule then. Cheaper than
    /// ``Rule(name, **hyper)``, which parses keywords.
    #[pyo3(signature = (values, /))]
    fn renew(&self, values: &Bound<'_, PyTuple>) -> PyResult<Option<Self>> {
        let name = self.cfg.name();
        if values.len() != self.keys.len() {
            return Err(PyTypeError::new_err(format!("{name}: renew takes {} values ({:?}), got {}", self.keys.len(), self.keys, values.len())));
        }
        // (in the rule's order straight away: `order` holds positions in `values`, each < its length)
        let ordered = self.order.iter().map(|&i| number(name, self.keys.get(i).map_or("?", |k| k.as_str()), &values.get_item(i)?)).collect::<PyResult<Vec<f64>>>()?;
        let cfg = self.cfg.renewed(&ordered).map_err(core_err)?;
        Ok((cfg.layout() == self.cfg.layout()).then(|| Rule { cfg, keys: self.keys.clone(), order: self.order.clone() }))
    }

    /// The rule's name.
    #[getter]
    fn name(&self) -> &'static str {
        self.cfg.name()
    }

    /// ``(states, lists, counters)``: the state buffers a tensor needs (torch's state keys),
    /// the names of their lists in the functional API, in the order :func:`step` takes them,
    /// and the float32 counters (``step`` first).
    fn layout(&self) -> (Vec<&'static str>, Vec<&'static str>, Vec<&'static str>) {
        let (states, counters) = self.cfg.layout();
        (states.iter().map(|s| s.0).collect(), states.iter().map(|s| s.1).collect(), counters.to_vec())
    }

    /// The state buffers (torch's keys) kept with the unsigned quantile map as 8-bit
    /// blockwise state (the second moments), or None for a rule that cannot keep 8-bit
    /// state (``state_dtype='int8'``).
    fn unsigned_states(&self) -> Option<Vec<&'static str>> {
        let mask = self.cfg.blockwise_unsigned()?;
        Some(self.cfg.layout().0.iter().enumerate().filter(|(k, _)| mask >> k & 1 != 0).map(|(_, s)| s.0).collect())
    }

    fn __repr__(&self) -> String {
        format!("Rule({:?})", self.cfg)
    }
}

/// The names :class:`Rule` takes.
#[pyfunction]
pub fn rule_names() -> Vec<&'static str> {
    RULES.to_vec()
}

/// One step of ``rule`` over a parameter group, in place.
///
/// ``states`` holds one list per state buffer and ``counters`` one list per float32 counter
/// (one-element arrays), in the order ``rule.layout()`` gives; one more state list, last,
/// makes a single-pass rule's step compensated (Kahan summation: the list holds each
/// parameter's compensation buffer, ``kahan_comp``). ``fresh`` (one flag per
/// parameter, or None for all False) says a parameter's state buffers were created for this
/// step (SGD's first step copies the gradient into its momentum buffer). ``grad_scale``
/// multiplies every gradient element as it is read (clipping folded into the step). With
/// ``check_only`` every argument is checked and nothing is written. ``cache``: the group's
/// ``CheckCache``, so a step over the same arrays confirms them instead of checking again.
/// Returns None, or for ``prodigy`` a list of floats: after its first pass alone (``pass=1``)
/// the group's two sums, otherwise the new ``[d_numerator, d_denom, d, d_max, d_hat]``. ``low_bits`` (bfloat16 parameters only): one int16 array per parameter, the
/// low 16 bits of its float32 master (``master_weights='remainder'``): the step updates the
/// master, exactly as a float32 parameter, and stores it back split into the parameter (the
/// master rounded to nearest, ties away from zero) and these bits. ``masters`` (float16 or
/// bfloat16 parameters): one float32 array per parameter, its master copy
/// (``master_weights='float32'``): the step updates the master as a float32 parameter and
/// stores it rounded into the parameter. ``round_key`` (float16 or bfloat16 parameters,
/// ``master_weights='stochastic'``): round each new parameter value stochastically, with
/// random bits from a counter-based generator keyed by this key, the tensor's place in the
/// call and the element's index (the caller derives the key from its seed and step).
/// ``scales`` (with 8-bit blockwise state, ``state_dtype='int8'``: every state buffer a
/// uint8 array of codes shaped like its parameter): one list per state list, each holding
/// one float32 array per parameter with the absmax of each block of 256 elements
/// (``ceil(size / 256)`` values); the step dequantizes each block, updates it in float32
/// and quantizes it again (``fastopt_core::blockwise``), writing the new absmax there.
/// Positional: keyword parsing would cost more than checking a tensor.
#[pyfunction]
#[pyo3(signature = (rule, params, grads, states, counters, fresh=None, grad_scale=1.0, check_only=false, cache=None, low_bits=None, masters=None, round_key=None, scales=None))]
#[allow(clippy::too_many_arguments)]
pub fn step<'py>(
    py: Python<'py>,
    rule: &Bound<'py, Rule>,
    params: &Bound<'py, PyAny>,
    grads: &Bound<'py, PyAny>,
    states: &Bound<'py, PyAny>,
    counters: &Bound<'py, PyAny>,
    fresh: Option<Vec<bool>>,
    grad_scale: f64,
    check_only: bool,
    cache: Option<&Bound<'py, CheckCache>>,
    low_bits: Option<&Bound<'py, PyAny>>,
    masters: Option<&Bound<'py, PyAny>>,
    round_key: Option<u64>,
    scales: Option<&Bound<'py, PyAny>>,
) -> PyResult<Option<Vec<f64>>> {
    let cfg = rule.get().cfg;
    let (state_names, counter_names) = cfg.layout();
    let state_lists = items(states, "states")?;
    let counter_lists = items(counters, "counters")?;
    let scale_lists = match scales {
        Some(s) if !s.is_none() => items(s, "scales")?,
        _ => vec![],
    };
    // (one list more than the layout's: the compensation buffers of a compensated step)
    let compensated = state_lists.len() == state_names.len() + 1;
    if !(state_lists.len() == state_names.len() || compensated) || counter_lists.len() != counter_names.len() {
        let lists: Vec<&str> = state_names.iter().map(|s| s.1).collect();
        return Err(PyValueError::new_err(format!(
            "{} takes the state lists {lists:?} (and optionally {:?}) and the counter lists {counter_names:?}, got {} and {}",
            cfg.name(),
            KAHAN.1,
            state_lists.len(),
            counter_lists.len()
        )));
    }
    let fresh = fresh.unwrap_or_default();
    let ns = state_lists.len();
    let stable: Vec<&Bound<'py, PyAny>> =
        std::iter::once(params).chain(&state_lists).chain(&counter_lists).chain(low_bits).chain(masters).chain(&scale_lists).collect();
    let mut guard = CheckCache::lock(cache);
    if let Some(c) = confirm(&guard, &stable, grads)? {
        if fresh.is_empty() || fresh.len() == c.grads.len() {
            if check_only {
                return Ok(None);
            }
            let (s, rest) = c.stable[1..].split_at(ns);
            let (k, rest) = rest.split_at(counter_lists.len());
            let (low, rest) = rest.split_at(usize::from(low_bits.is_some()));
            let (full, sc) = rest.split_at(usize::from(masters.is_some()));
            let extra = Extra { low: low.first().map(|l| &l[..]).unwrap_or_default(), masters: full.first().map(|l| &l[..]).unwrap_or_default(), f32_grads: c.f32_grads, round_key, scales: sc };
            return CheckCache::count(cache, by_storage!(c.dtype, c.sdtype, run(py, &cfg, &c.stable[0], &c.grads, s, k, extra, &fresh, grad_scale)));
        }
    }
    let (mut g, p) = Group::new(params)?;
    let (gr, f32_grads) = g.grads(grads)?;
    g.state_dtype_from(&state_lists);
    let mut s = Vec::with_capacity(ns);
    for (list, name) in state_lists.iter().zip(state_names.iter().chain([&KAHAN])) {
        s.push(g.like_params_state(list, name.1)?);
    }
    let mut c = Vec::with_capacity(counter_names.len());
    for (list, &name) in counter_lists.iter().zip(counter_names) {
        c.push(g.steps(list, if name == "step" { "state_steps" } else { name })?);
    }
    let low = match low_bits {
        Some(list) => g.low_bits(list, "low_bits")?,
        None => vec![],
    };
    let full = match masters {
        Some(list) => g.masters(list, "masters")?,
        None => vec![],
    };
    let mut sc = Vec::with_capacity(scale_lists.len());
    if g.sdtype == Dtype::U8 {
        if cfg.blockwise_unsigned().is_none() {
            return Err(PyTypeError::new_err(format!("{} cannot keep 8-bit blockwise state (state_dtype='int8'): its state buffers are uint8 arrays", cfg.name())));
        }
        if scale_lists.len() != ns {
            return Err(PyValueError::new_err(format!("8-bit blockwise state takes scales: one list of absmax arrays per state list ({ns}), got {}", scale_lists.len())));
        }
        for (list, name) in scale_lists.iter().zip(state_names) {
            sc.push(g.absmax(list, name.1)?);
        }
    } else if !scale_lists.is_empty() {
        return Err(PyValueError::new_err(format!("scales (absmax arrays) go with 8-bit blockwise state (uint8 state buffers) only, but the state buffers are {}", g.sdtype.name())));
    }
    if !fresh.is_empty() && fresh.len() != g.len() {
        return Err(PyValueError::new_err(format!("fresh has {} flags but params has {}", fresh.len(), g.len())));
    }
    g.finish()?;
    remember(&mut guard, &g, &stable);
    if check_only {
        return Ok(None);
    }
    let extra = Extra { low: &low, masters: &full, f32_grads, round_key, scales: &sc };
    CheckCache::count(cache, by_storage!(g.dtype, g.sdtype, run(py, &cfg, &p, &gr, &s, &c, extra, &fresh, grad_scale)))
}

/// What a step keeps beside its parameters besides the state: the low bits of float32
/// masters or the masters themselves (empty when not kept), one array per parameter; whether
/// the gradients are float32 beside 16-bit parameters; the stochastic rounding key.
#[derive(Clone, Copy)]
struct Extra<'a> {
    low: &'a [Raw],
    masters: &'a [Raw],
    f32_grads: bool,
    /// The call's stochastic rounding key (each tensor's: `engine::tensor_key`).
    round_key: Option<u64>,
    /// With 8-bit blockwise state: one list per state buffer of one float32 absmax array per
    /// parameter (`Group::absmax`); empty otherwise.
    scales: &'a [Vec<Raw>],
}

#[allow(clippy::too_many_arguments)]
fn run<P: Storage, S: Storage<Arith = P::Arith>>(
    py: Python<'_>,
    cfg: &Config,
    p: &[Raw],
    gr: &[Raw],
    s: &[Vec<Raw>],
    c: &[Vec<Raw>],
    extra: Extra<'_>,
    fresh: &[bool],
    grad_scale: f64,
) -> PyResult<Option<Vec<f64>>> {
    let n = p.len();
    // Every tensor's state and counter references, tensor by tensor, in two allocations.
    // SAFETY: `Group` checked that each parameter and gradient has the dtype `P` stores and
    // each state buffer the dtype `S` stores (`by_storage!` picks `P` and `S` from those
    // dtypes; counters: float32, one element), that every array is C-contiguous and aligned,
    // that written arrays are writeable and that no written array overlaps any other array
    // of this call; the caller's `Group` keeps every array alive until this function returns.
    // `extra.low`, when given, holds one int16 array per parameter of its shape
    // (`Group::low_bits`), read as u16 (the same size and alignment); `extra.masters` one
    // float32 array per parameter of its shape (`Group::masters`); both written, both in the
    // overlap checks. With `extra.f32_grads` the gradients are float32 (`Group::grads`).
    // `extra.scales` (uint8 state: `S` is `Q8`, a transparent byte) holds per state list one
    // float32 array per parameter of its block count (`Group::absmax`), written, in the
    // overlap checks.
    let mut states: Vec<&mut [S]> = Vec::with_capacity(n * s.len());
    let mut counters: Vec<&mut f32> = Vec::with_capacity(n * c.len());
    let mut scales: Vec<&mut [f32]> = Vec::with_capacity(n * extra.scales.len());
    for i in 0..n {
        states.extend(s.iter().map(|list| unsafe { list[i].slice_mut() }));
        counters.extend(c.iter().map(|list| unsafe { &mut list[i].slice_mut::<f32>()[0] }));
        scales.extend(extra.scales.iter().map(|list| unsafe { list[i].slice_mut::<f32>() }));
    }
    let ks = extra.scales.len();
    let (mut s_rest, mut c_rest, mut k_rest) = (&mut states[..], &mut counters[..], &mut scales[..]);
    let mut tensors: Vec<Tensor<'_, P, S>> = Vec::with_capacity(n);
    for i in 0..n {
        let (ts, sr) = std::mem::take(&mut s_rest).split_at_mut(s.len());
        let (tc, cr) = std::mem::take(&mut c_rest).split_at_mut(c.len());
        let (tk, kr) = std::mem::take(&mut k_rest).split_at_mut(ks);
        (s_rest, c_rest, k_rest) = (sr, cr, kr);
        // SAFETY: as above.
        let param = unsafe { p[i].slice_mut() };
        // SAFETY: as above (float32 gradients when `extra.f32_grads`, else of dtype `P`).
        let (grad, grad_f32): (&[P], &[f32]) = if extra.f32_grads { (&[], unsafe { gr[i].slice() }) } else { (unsafe { gr[i].slice() }, &[]) };
        // SAFETY: as above.
        let low_bits: &mut [u16] = match extra.low.get(i) {
            Some(l) => unsafe { l.slice_mut() },
            None => &mut [],
        };
        // SAFETY: as above.
        let master: &mut [f32] = match extra.masters.get(i) {
            Some(l) => unsafe { l.slice_mut() },
            None => &mut [],
        };
        tensors.push(Tensor { param, grad, states: ts, counters: tc, low_bits, master, grad_f32, stochastic: extra.round_key.map(|k| tensor_key(k, i)), scales: tk, unsigned: 0, fresh: fresh.get(i).copied().unwrap_or(false) });
    }
    run_core(py, move || cfg.step(tensors, grad_scale).map(|sums| sums.0))
}

/// The 256 values of a dynamic quantile map (bitsandbytes' ``create_dynamic_map``):
/// ``unsigned`` for the one without negative values.
#[pyfunction]
pub fn quantile_map(unsigned: bool) -> Vec<f32> {
    Map::of(unsigned).values().to_vec()
}

/// The arrays of a (de)quantization, checked: float32 ``values`` (C-contiguous, any shape),
/// uint8 ``codes`` of its shape, float32 ``absmax`` with one value per block of 256; the
/// codes and absmax written when quantizing, the values when dequantizing.
fn blockwise_arrays<'py>(values: &Bound<'py, PyAny>, codes: &Bound<'py, PyAny>, absmax: &Bound<'py, PyAny>, quantizing: bool) -> PyResult<(Group<'py>, [Raw; 3])> {
    let (mut g, v) = Group::single(values, "values", !quantizing)?;
    if g.dtype != Dtype::F32 {
        return Err(PyTypeError::new_err(format!("values has dtype {}; 8-bit blockwise state holds float32 values", g.dtype.name())));
    }
    let shape: Vec<usize> = values.cast::<numpy::PyUntypedArray>().map(|a| numpy::PyUntypedArrayMethods::shape(a).to_vec()).unwrap_or_default();
    let c = g.array(codes, "codes", quantizing, Some(&shape), Some(Dtype::U8))?;
    let a = g.array(absmax, "absmax", quantizing, None, Some(Dtype::F32))?;
    if a.len() != blockwise::blocks(v.len()) {
        return Err(PyValueError::new_err(format!("absmax has {} values but values has {} blocks of {}", a.len(), blockwise::blocks(v.len()), blockwise::QBLOCK)));
    }
    g.finish()?;
    Ok((g, [v, c, a]))
}

/// Quantizes float32 ``values`` (C-contiguous, any shape) block by block in place into
/// ``codes`` (uint8, the same shape) and ``absmax`` (float32, one per block of 256).
#[pyfunction]
pub fn quantize_blockwise<'py>(py: Python<'py>, values: &Bound<'py, PyAny>, codes: &Bound<'py, PyAny>, absmax: &Bound<'py, PyAny>, unsigned: bool) -> PyResult<()> {
    let (_g, [v, c, a]) = blockwise_arrays(values, codes, absmax, true)?;
    // SAFETY: `blockwise_arrays` checked the dtypes (float32 values and absmax, uint8 codes),
    // the layouts, that `codes` and `absmax` are writeable and overlap nothing; `_g` keeps
    // the arrays alive until this function returns.
    let (v, c, a) = unsafe { (v.slice::<f32>(), c.slice_mut::<u8>(), a.slice_mut::<f32>()) };
    run_core(py, move || {
        blockwise::quantize(v, Map::of(unsigned), c, a);
        Ok(())
    })
}

/// The float32 values of 8-bit blockwise ``codes`` (uint8) with their ``absmax`` (float32,
/// one per block of 256), written into ``values`` (float32, the codes' shape).
#[pyfunction]
pub fn dequantize_blockwise<'py>(py: Python<'py>, codes: &Bound<'py, PyAny>, absmax: &Bound<'py, PyAny>, values: &Bound<'py, PyAny>, unsigned: bool) -> PyResult<()> {
    let (_g, [v, c, a]) = blockwise_arrays(values, codes, absmax, false)?;
    // SAFETY: as in `quantize_blockwise` (`values` written and overlapping nothing, the
    // others read).
    let (v, c, a) = unsafe { (v.slice_mut::<f32>(), c.slice::<u8>(), a.slice::<f32>()) };
    run_core(py, move || {
        blockwise::dequantize(c, a, Map::of(unsigned), v);
        Ok(())
    })
}
