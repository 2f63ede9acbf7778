//! Turning Python lists of NumPy arrays into checked Rust slices.
//!
//! Every check happens here, before any kernel runs, so an error leaves every array as it
//! was: the argument must be a list or tuple of `numpy.ndarray`, of the group's dtype
//! (float32, float64, float16 or `ml_dtypes.bfloat16`, native byte order, no implicit cast), C-contiguous, aligned, writeable
//! where the kernel writes, of the parameter's shape, and no array that is written may share
//! memory with any other array of the call. Errors are `TypeError` (wrong kind of object or
//! dtype) or `ValueError` (everything else) and name the argument and index.

use numpy::npyffi::objects::_PyArray_GET_ITEM_DATA;
use numpy::npyffi::{NPY_ARRAY_ALIGNED, NPY_ARRAY_C_CONTIGUOUS, NPY_ARRAY_WRITEABLE, NPY_TYPES};
use numpy::prelude::*;
use numpy::PyUntypedArray;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

/// The element types the kernels run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F64,
    /// numpy.float16.
    F16,
    /// ml_dtypes.bfloat16, told by its registered descriptor ([`bf16_type`]).
    BF16,
    /// numpy.uint8: the codes of 8-bit blockwise optimizer state (`state_dtype='int8'`),
    /// never a parameter's dtype ([`dtype_of`] does not return it).
    U8,
}

impl Dtype {
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
            Dtype::F16 => "float16",
            Dtype::BF16 => "bfloat16",
            Dtype::U8 => "uint8",
        }
    }
    fn itemsize(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::U8 => 1,
        }
    }
    /// A 16-bit type, computed in float32 (its state may be kept in float32).
    pub fn is_half(self) -> bool {
        matches!(self, Dtype::F16 | Dtype::BF16)
    }
    /// Whether an optimizer step over parameters of this dtype takes state buffers of
    /// dtype `s`: its own, float32 beside 16-bit parameters, bfloat16 beside float32 ones,
    /// 8-bit blockwise codes beside float32 and 16-bit ones (the pairs `by_storage!`
    /// instantiates).
    pub fn keeps_state_in(self, s: Dtype) -> bool {
        self == s
            || (self.is_half() && s == Dtype::F32)
            || (self == Dtype::F32 && s == Dtype::BF16)
            || (s == Dtype::U8 && (self == Dtype::F32 || self.is_half()))
    }
}

/// The error of a function that takes float32 and float64 arrays only, given `dtype`.
pub fn unsupported(dtype: Dtype) -> PyErr {
    PyTypeError::new_err(format!(
        "this function takes float32 or float64 arrays, got {} (16-bit arrays are taken by the optimizers' steps)",
        dtype.name()
    ))
}

/// Names one array of a call ("grads[3]"), formatted only when an error needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Label {
    name: &'static str,
    index: usize,
}

impl Label {
    /// A single array, named without an index.
    pub const fn plain(name: &'static str) -> Label {
        Label { name, index: usize::MAX }
    }
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.index == usize::MAX {
            f.write_str(self.name)
        } else {
            write!(f, "{}[{}]", self.name, self.index)
        }
    }
}

/// A checked array: where its elements are and how many.
#[derive(Clone, Copy)]
pub struct Raw {
    data: *mut u8,
    len: usize,
}

impl Raw {
    pub fn len(&self) -> usize {
        self.len
    }

    /// # Safety
    /// `T` must be the array's element type (checked against the group's dtype when the
    /// `Raw` was made), the array must outlive `'a` (its owner, a `Bound`, is held by the
    /// caller's [`Group`] for the whole call), and no other live slice may overlap it
    /// mutably (checked by [`Group::finish`]).
    pub unsafe fn slice_mut<'a, T>(self) -> &'a mut [T] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: per this function's contract; `data` is non-null, aligned for `T` (the
        // ALIGNED flag was checked) and spans `len` contiguous elements (C_CONTIGUOUS).
        unsafe { std::slice::from_raw_parts_mut(self.data.cast::<T>(), self.len) }
    }

    /// # Safety
    /// As [`Raw::slice_mut`], except that other read-only slices may overlap it.
    pub unsafe fn slice<'a, T>(self) -> &'a [T] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(self.data.cast::<T>().cast_const(), self.len) }
    }
}

/// Collects and checks the arrays of one kernel call.
pub struct Group<'py> {
    pub dtype: Dtype,
    /// The state buffers' dtype: `dtype`, or float32 beside 16-bit parameters.
    pub sdtype: Dtype,
    /// The parameters, whose shapes the other lists must match. Together with `owners` they
    /// keep every checked array alive until the kernel has run.
    params: Vec<Bound<'py, PyUntypedArray>>,
    owners: Vec<Bound<'py, PyUntypedArray>>,
    /// Memory of every non-empty array: (start, end, written, label).
    spans: Vec<(usize, usize, bool, Label)>,
}

pub(crate) fn items<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<Vec<Bound<'py, PyAny>>> {
    if let Ok(l) = obj.cast::<PyList>() {
        return Ok(l.iter().collect());
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        return Ok(t.iter().collect());
    }
    Err(PyTypeError::new_err(format!(
        "{name} must be a list of numpy arrays, got {}",
        type_name(obj)
    )))
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
}

fn as_array<'py>(obj: &Bound<'py, PyAny>, label: Label) -> PyResult<Bound<'py, PyUntypedArray>> {
    obj.cast::<PyUntypedArray>().map(|a| a.clone()).map_err(|_| not_an_array(obj, label))
}

fn not_an_array(obj: &Bound<'_, PyAny>, label: Label) -> PyErr {
    let module = obj.get_type().module().map(|m| m.to_string()).unwrap_or_default();
    if module.starts_with("cupy") {
        return PyTypeError::new_err(format!("{label} is a CuPy array: CuPy arrays are not supported yet, fastopt's kernels take numpy.ndarray"));
    }
    PyTypeError::new_err(format!("{label} must be a numpy.ndarray, got {}", type_name(obj)))
}

/// As [`as_array`], taking over the caller's reference (no second reference count).
fn into_array<'py>(obj: Bound<'py, PyAny>, label: Label) -> PyResult<Bound<'py, PyUntypedArray>> {
    if obj.cast::<PyUntypedArray>().is_err() {
        return Err(not_an_array(&obj, label));
    }
    // SAFETY: the line above checked that `obj` is an ndarray (or a subclass).
    Ok(unsafe { obj.cast_into_unchecked() })
}

/// numpy's own descriptors of native float32 and float64, which almost every array of these
/// dtypes points to: comparing pointers decides the dtype without touching reference counts.
fn builtin_descrs(py: Python<'_>) -> (usize, usize) {
    static DESCRS: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();
    *DESCRS.get_or_init(|| {
        // The builtin descriptors are immortal singletons inside numpy; their addresses stay valid.
        (numpy::dtype::<f32>(py).as_ptr() as usize, numpy::dtype::<f64>(py).as_ptr() as usize)
    })
}

/// The type (a numpy DType class) of `ml_dtypes.bfloat16`'s descriptor, once ml_dtypes has
/// been imported by the program (it is never imported here). Another library's 16-bit type
/// that reuses bfloat16's type character or kind is a different class, so it is not taken.
fn bf16_type(py: Python<'_>) -> Option<usize> {
    static TYPE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    if let Some(&t) = TYPE.get() {
        return Some(t);
    }
    let modules = py.import("sys").ok()?.getattr("modules").ok()?;
    let ml = modules.get_item("ml_dtypes").ok()?;
    let descr = py.import("numpy").ok()?.getattr("dtype").ok()?.call1((ml.getattr("bfloat16").ok()?,)).ok()?;
    let ty = descr.get_type();
    let addr = ty.as_ptr() as usize;
    // The class is kept alive for the life of the process (a registered dtype is never
    // unregistered), so its address cannot be reused by another object.
    std::mem::forget(ty.unbind());
    Some(*TYPE.get_or_init(|| addr))
}

/// Whether `arr` holds uint8 codes (8-bit blockwise state).
fn is_codes(arr: &Bound<'_, PyUntypedArray>) -> bool {
    arr.dtype().num() == NPY_TYPES::NPY_UBYTE as i32
}

/// The dtype of a state buffer that may hold codes ([`Dtype::U8`]), else [`dtype_of`].
fn state_dtype_of(arr: &Bound<'_, PyUntypedArray>) -> Option<Dtype> {
    if is_codes(arr) { Some(Dtype::U8) } else { dtype_of(arr) }
}

fn dtype_of(arr: &Bound<'_, PyUntypedArray>) -> Option<Dtype> {
    let descr = descr_addr(arr);
    let (f32_descr, f64_descr) = builtin_descrs(arr.py());
    if descr == f32_descr {
        return Some(Dtype::F32);
    }
    if descr == f64_descr {
        return Some(Dtype::F64);
    }
    let d = arr.dtype();
    // Native byte order only: `is_native_byteorder` is None for single-byte types and
    // Some(false) for swapped ones.
    if d.is_native_byteorder() == Some(false) {
        return None;
    }
    match d.num() {
        n if n == NPY_TYPES::NPY_FLOAT as i32 => Some(Dtype::F32),
        n if n == NPY_TYPES::NPY_DOUBLE as i32 => Some(Dtype::F64),
        n if n == NPY_TYPES::NPY_HALF as i32 => Some(Dtype::F16),
        // (numpy's own types are told by number; a user-defined one only by its class)
        n if n < NPY_TYPES::NPY_USERDEF as i32 => None,
        _ if d.itemsize() == 2 && bf16_type(arr.py()) == Some(d.get_type().as_ptr() as usize) => Some(Dtype::BF16),
        _ => None,
    }
}

fn flags(arr: &Bound<'_, PyUntypedArray>) -> i32 {
    // SAFETY: `arr` is a live ndarray and we hold the GIL; this reads its flags field.
    unsafe { (*_PyArray_GET_ITEM_DATA(arr.as_array_ptr())).flags }
}

fn descr_addr(arr: &Bound<'_, PyUntypedArray>) -> usize {
    // SAFETY: `arr` is a live ndarray and we hold the GIL; this reads its descriptor pointer.
    unsafe { (*_PyArray_GET_ITEM_DATA(arr.as_array_ptr())).descr as usize }
}

fn data_ptr(arr: &Bound<'_, PyUntypedArray>) -> *mut u8 {
    // SAFETY: as in `flags`, reading the data pointer field.
    unsafe { (*_PyArray_GET_ITEM_DATA(arr.as_array_ptr())).data.cast() }
}

/// Slice equality without a `memcmp` call (shapes have a handful of dimensions).
#[inline]
fn same_shape(a: &[usize], b: &[usize]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

pub(crate) fn shape_str(s: &[usize]) -> String {
    match s.len() {
        1 => format!("({},)", s[0]),
        _ => format!("({})", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    }
}


impl<'py> Group<'py> {
    /// Checks `params` (written): sets the group's dtype and the shapes the other lists
    /// must match. An empty list is allowed (nothing to do).
    pub fn new(params: &Bound<'py, PyAny>) -> PyResult<(Group<'py>, Vec<Raw>)> {
        Self::first_list(params, "params", true)
    }

    /// Like [`Group::new`] for a call whose first list has another name or is only read
    /// (e.g. the gradients of a norm).
    pub fn first_list(obj: &Bound<'py, PyAny>, name: &'static str, written: bool) -> PyResult<(Group<'py>, Vec<Raw>)> {
        let list = items(obj, name)?;
        let n = list.len();
        // Most calls check about five arrays per parameter.
        let mut g = Group { dtype: Dtype::F32, sdtype: Dtype::F32, params: Vec::with_capacity(n), owners: Vec::with_capacity(4 * n), spans: Vec::with_capacity(5 * n) };
        let mut raws = Vec::with_capacity(n);
        for (i, o) in list.into_iter().enumerate() {
            let label = Label { name, index: i };
            let arr = into_array(o, label)?;
            if i == 0 {
                g.dtype = dtype_of(&arr).ok_or_else(|| {
                    PyTypeError::new_err(format!(
                        "{label} has dtype {}; fastopt kernels take float32, float64, float16 or bfloat16 (ml_dtypes) arrays",
                        arr.dtype()
                    ))
                })?;
                g.sdtype = g.dtype;
            }
            g.check_dtype(&arr, label)?;
            raws.push(g.check_layout(&arr, label, g.dtype.itemsize(), written)?);
            g.params.push(arr);
        }
        Ok((g, raws))
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// The items of a list that must hold one array per parameter.
    fn per_param(&self, obj: &Bound<'py, PyAny>, name: &str) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let list = items(obj, name)?;
        if list.len() != self.len() {
            return Err(PyValueError::new_err(format!(
                "{name} has {} arrays but params has {}",
                list.len(),
                self.len()
            )));
        }
        Ok(list)
    }

    fn check_dtype(&self, arr: &Bound<'py, PyUntypedArray>, label: Label) -> PyResult<()> {
        self.check_dtype_as(arr, label, self.dtype)
    }

    fn check_dtype_as(&self, arr: &Bound<'py, PyUntypedArray>, label: Label, want: Dtype) -> PyResult<()> {
        let got = if want == Dtype::U8 { state_dtype_of(arr) } else { dtype_of(arr) };
        if got != Some(want) {
            if label.name == "grads" && want != self.dtype {
                return Err(PyTypeError::new_err(format!(
                    "{label} has dtype {} but grads[0] is {}: the gradients are all {} or all {} (fastopt never casts implicitly)",
                    arr.dtype(),
                    want.name(),
                    self.dtype.name(),
                    want.name()
                )));
            }
            let what = if want == self.dtype { "the call's arrays are" } else { "the state buffers must be" };
            return Err(PyTypeError::new_err(format!(
                "{label} has dtype {} but {what} {} (fastopt never casts implicitly)",
                arr.dtype(),
                want.name()
            )));
        }
        Ok(())
    }

    fn check(&mut self, arr: Bound<'py, PyUntypedArray>, label: Label, written: bool, dtype: Dtype) -> PyResult<Raw> {
        self.check_dtype_as(&arr, label, dtype)?;
        let want = self.params[label.index].shape();
        if !same_shape(arr.shape(), want) {
            return Err(PyValueError::new_err(format!(
                "{label} has shape {} but params[{}] has shape {}",
                shape_str(arr.shape()),
                label.index,
                shape_str(want)
            )));
        }
        let raw = self.check_layout(&arr, label, dtype.itemsize(), written)?;
        self.owners.push(arr);
        Ok(raw)
    }

    /// The shape of `params[index]`.
    pub fn param_shape(&self, index: usize) -> &[usize] {
        self.params[index].shape()
    }

    /// The items of a list with one entry per parameter (arrays, or None where the caller
    /// allows it), unchecked: see [`Group::item`].
    pub fn entries(&self, obj: &Bound<'py, PyAny>, name: &str) -> PyResult<Vec<Bound<'py, PyAny>>> {
        self.per_param(obj, name)
    }

    /// Entry `index` of list `name`: an array of the call's dtype with the shape `shape`
    /// that parameter's state needs.
    pub fn item(&mut self, obj: Bound<'py, PyAny>, name: &'static str, index: usize, shape: &[usize], written: bool) -> PyResult<Raw> {
        let label = Label { name, index };
        let arr = into_array(obj, label)?;
        self.check_dtype(&arr, label)?;
        if !same_shape(arr.shape(), shape) {
            return Err(PyValueError::new_err(format!(
                "{label} has shape {} but params[{index}] (shape {}) needs shape {}",
                shape_str(arr.shape()),
                shape_str(self.param_shape(index)),
                shape_str(shape)
            )));
        }
        let raw = self.check_layout(&arr, label, self.dtype.itemsize(), written)?;
        self.owners.push(arr);
        Ok(raw)
    }

    fn check_layout(&mut self, arr: &Bound<'py, PyUntypedArray>, label: Label, itemsize: usize, written: bool) -> PyResult<Raw> {
        let f = flags(arr);
        if f & NPY_ARRAY_C_CONTIGUOUS == 0 {
            return Err(PyValueError::new_err(format!(
                "{label} must be C-contiguous (use numpy.ascontiguousarray on a copy)"
            )));
        }
        if f & NPY_ARRAY_ALIGNED == 0 {
            return Err(PyValueError::new_err(format!("{label} is not aligned for its dtype")));
        }
        if written && f & NPY_ARRAY_WRITEABLE == 0 {
            return Err(PyValueError::new_err(format!("{label} is read-only but is updated in place")));
        }
        let len = arr.len();
        let data = data_ptr(arr);
        if len > 0 {
            let start = data as usize;
            self.spans.push((start, start + len * itemsize, written, label));
        }
        Ok(Raw { data, len })
    }

    /// Checks a list of arrays shaped like `params`, one per parameter, of the call's dtype.
    pub fn like_params(&mut self, obj: &Bound<'py, PyAny>, name: &'static str, written: bool) -> PyResult<Vec<Raw>> {
        self.like_params_as(obj, name, written, self.dtype)
    }

    /// Checks the gradients: in the parameters' dtype, or float32 beside float16/bfloat16
    /// parameters (told by the first gradient; every other one must then be float32 too).
    /// Returns them and whether they are float32 beside 16-bit parameters.
    pub fn grads(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<(Vec<Raw>, bool)> {
        let f32_grads = self.dtype.is_half()
            && obj
                .get_item(0)
                .ok()
                .and_then(|a| a.cast::<PyUntypedArray>().ok().and_then(|a| dtype_of(&a)))
                .is_some_and(|d| d == Dtype::F32);
        let dtype = if f32_grads { Dtype::F32 } else { self.dtype };
        Ok((self.like_params_as(obj, "grads", false, dtype)?, f32_grads))
    }

    /// Sets the state buffers' dtype from the first state array of `lists` (the first list's
    /// first entry) where it is one the parameters can keep their state in (float32 beside
    /// 16-bit parameters, bfloat16 beside float32 ones: [`Dtype::keeps_state_in`]), else
    /// the call's (so that a buffer of another dtype is refused by name).
    pub fn state_dtype_from(&mut self, lists: &[Bound<'py, PyAny>]) {
        self.sdtype = self.dtype;
        let first = lists.first().and_then(|l| l.get_item(0).ok());
        if let Some(arr) = first.as_ref().and_then(|a| a.cast::<PyUntypedArray>().ok()) {
            if let Some(d) = state_dtype_of(arr).filter(|&d| self.dtype.keeps_state_in(d)) {
                self.sdtype = d;
            }
        }
    }

    /// Checks a list of state buffers shaped like `params` (of the state dtype, see
    /// [`Group::state_dtype_from`]).
    pub fn like_params_state(&mut self, obj: &Bound<'py, PyAny>, name: &'static str) -> PyResult<Vec<Raw>> {
        self.like_params_as(obj, name, true, self.sdtype)
    }

    fn like_params_as(&mut self, obj: &Bound<'py, PyAny>, name: &'static str, written: bool, dtype: Dtype) -> PyResult<Vec<Raw>> {
        let list = self.per_param(obj, name)?;
        let mut raws = Vec::with_capacity(list.len());
        self.owners.reserve(list.len());
        self.spans.reserve(list.len());
        for (i, o) in list.into_iter().enumerate() {
            let label = Label { name, index: i };
            raws.push(self.check(into_array(o, label)?, label, written, dtype)?);
        }
        Ok(raws)
    }

    /// Checks a list of int16 arrays shaped like `params` (written): the low bits of float32
    /// masters beside bfloat16 parameters.
    pub fn low_bits(&mut self, obj: &Bound<'py, PyAny>, name: &'static str) -> PyResult<Vec<Raw>> {
        if self.dtype != Dtype::BF16 {
            return Err(PyTypeError::new_err(format!(
                "{name} (the low bits of float32 masters, master_weights='remainder') are kept beside bfloat16 parameters only, \
                 but the parameters are {}",
                self.dtype.name()
            )));
        }
        self.written_per_param(obj, name, 2, |arr, label, param| {
            if !arr.dtype().is_equiv_to(&numpy::dtype::<i16>(arr.py())) {
                return Err(PyTypeError::new_err(format!("{label} has dtype {} but must be int16", arr.dtype())));
            }
            if !same_shape(arr.shape(), param.shape()) {
                return Err(PyValueError::new_err(format!(
                    "{label} has shape {} but params[{}] has shape {}",
                    shape_str(arr.shape()),
                    label.index,
                    shape_str(param.shape())
                )));
            }
            Ok(())
        })
    }

    /// Checks a list of float32 arrays (written), one per parameter, each of
    /// `blockwise::blocks` of its parameter's size elements (any shape): the absmax of each
    /// block of a state buffer kept in 8-bit codes.
    pub fn absmax(&mut self, obj: &Bound<'py, PyAny>, name: &'static str) -> PyResult<Vec<Raw>> {
        self.written_per_param(obj, name, 4, |arr, label, param| {
            if dtype_of(arr) != Some(Dtype::F32) {
                return Err(PyTypeError::new_err(format!("{label} has dtype {} but must be float32 (one absmax per block)", arr.dtype())));
            }
            let n = param.len();
            let want = fastopt_core::blockwise::blocks(n);
            if arr.len() != want {
                return Err(PyValueError::new_err(format!(
                    "{label} has {} values but params[{}] ({n} elements) has {want} blocks of {}",
                    arr.len(),
                    label.index,
                    fastopt_core::blockwise::QBLOCK
                )));
            }
            Ok(())
        })
    }

    /// A list of arrays written by the kernel, one per parameter: each checked by
    /// `check(array, label, its parameter)` (dtype, size), then for layout and memory as any
    /// written buffer of `itemsize`-byte elements.
    fn written_per_param(
        &mut self,
        obj: &Bound<'py, PyAny>,
        name: &'static str,
        itemsize: usize,
        check: impl Fn(&Bound<'py, PyUntypedArray>, Label, &Bound<'py, PyUntypedArray>) -> PyResult<()>,
    ) -> PyResult<Vec<Raw>> {
        let list = self.per_param(obj, name)?;
        let mut raws = Vec::with_capacity(list.len());
        for (i, o) in list.into_iter().enumerate() {
            let label = Label { name, index: i };
            let arr = into_array(o, label)?;
            check(&arr, label, &self.params[i])?;
            raws.push(self.check_layout(&arr, label, itemsize, true)?);
            self.owners.push(arr);
        }
        Ok(raws)
    }

    /// Checks a list of float32 arrays shaped like `params` (written): the master copies of
    /// float16 or bfloat16 parameters.
    pub fn masters(&mut self, obj: &Bound<'py, PyAny>, name: &'static str) -> PyResult<Vec<Raw>> {
        if !self.dtype.is_half() {
            return Err(PyTypeError::new_err(format!(
                "{name} (float32 master copies, master_weights='float32') are kept beside float16 or bfloat16 parameters \
                 only, but the parameters are {}",
                self.dtype.name()
            )));
        }
        self.like_params_as(obj, name, true, Dtype::F32)
    }

    /// Like [`Group::like_params`] for a list the kernel needs only with some option
    /// (`required`); otherwise the list is ignored, as torch ignores it.
    pub fn optional_like_params(
        &mut self,
        obj: Option<&Bound<'py, PyAny>>,
        name: &'static str,
        required: bool,
        why: &str,
    ) -> PyResult<Option<Vec<Raw>>> {
        if !required {
            return Ok(None);
        }
        // None and an empty list both mean "not given" (torch passes [] when unused).
        let given = obj.filter(|o| !o.is_none() && !o.len().is_ok_and(|n| n == 0));
        match given {
            Some(o) => self.like_params(o, name, true).map(Some),
            None if self.len() == 0 => Ok(Some(vec![])),
            None => Err(PyValueError::new_err(format!("{name} is required with {why}"))),
        }
    }

    /// Checks a list of one-element float32 step counters (torch's `state['step']`).
    pub fn steps(&mut self, obj: &Bound<'py, PyAny>, name: &'static str) -> PyResult<Vec<Raw>> {
        let list = self.per_param(obj, name)?;
        let mut raws = Vec::with_capacity(list.len());
        for (i, o) in list.into_iter().enumerate() {
            let label = Label { name, index: i };
            let arr = into_array(o, label)?;
            if dtype_of(&arr) != Some(Dtype::F32) || arr.len() != 1 {
                return Err(PyTypeError::new_err(format!(
                    "{label} must be a one-element float32 array (a 0-d step counter), got dtype {} shape {}",
                    arr.dtype(),
                    shape_str(arr.shape())
                )));
            }
            raws.push(self.check_layout(&arr, label, 4, true)?);
            self.owners.push(arr);
        }
        Ok(raws)
    }

    /// A call on single arrays: `obj` (named `name`) sets the dtype. No parameter list.
    pub fn single(obj: &Bound<'py, PyAny>, name: &'static str, written: bool) -> PyResult<(Group<'py>, Raw)> {
        let label = Label::plain(name);
        let arr = as_array(obj, label)?;
        let dtype = dtype_of(&arr).ok_or_else(|| {
            PyTypeError::new_err(format!("{label} has dtype {}; fastopt kernels take float32 or float64 arrays", arr.dtype()))
        })?;
        let mut g = Group { dtype, sdtype: dtype, params: vec![], owners: vec![], spans: vec![] };
        let raw = g.check_layout(&arr, label, dtype.itemsize(), written)?;
        g.owners.push(arr);
        Ok((g, raw))
    }

    /// Another single array of the call: of the call's dtype (or `dtype` when given), with
    /// `shape` when given.
    pub fn array(
        &mut self,
        obj: &Bound<'py, PyAny>,
        name: &'static str,
        written: bool,
        shape: Option<&[usize]>,
        dtype: Option<Dtype>,
    ) -> PyResult<Raw> {
        let label = Label::plain(name);
        let arr = as_array(obj, label)?;
        let want = dtype.unwrap_or(self.dtype);
        let got = if want == Dtype::U8 { state_dtype_of(&arr) } else { dtype_of(&arr) };
        if got != Some(want) {
            return Err(PyTypeError::new_err(format!(
                "{label} has dtype {} but must be {} (fastopt never casts implicitly)",
                arr.dtype(),
                want.name()
            )));
        }
        if let Some(shape) = shape {
            if arr.shape() != shape {
                return Err(PyValueError::new_err(format!(
                    "{label} has shape {} but must have shape {}",
                    shape_str(arr.shape()),
                    shape_str(shape)
                )));
            }
        }
        let raw = self.check_layout(&arr, label, want.itemsize(), written)?;
        self.owners.push(arr);
        Ok(raw)
    }

    /// A C-contiguous int64 array of `len` elements (class indices), only read.
    pub fn int64(&mut self, obj: &Bound<'py, PyAny>, name: &'static str, len: usize) -> PyResult<Raw> {
        let label = Label::plain(name);
        let arr = as_array(obj, label)?;
        let d = arr.dtype();
        if d.num() != NPY_TYPES::NPY_LONGLONG as i32 && d.num() != NPY_TYPES::NPY_LONG as i32 || d.itemsize() != 8 || d.is_native_byteorder() == Some(false) {
            return Err(PyTypeError::new_err(format!("{label} must be an int64 array, got dtype {d}")));
        }
        if arr.len() != len {
            return Err(PyValueError::new_err(format!("{label} has {} elements but must have {len}", arr.len())));
        }
        let raw = self.check_layout(&arr, label, 8, false)?;
        self.owners.push(arr);
        Ok(raw)
    }

    /// Rejects any overlap between an array that is written and any other array of the call.
    pub fn finish(&mut self) -> PyResult<()> {
        // Sort by address through 8-byte keys (address << 16 | index) rather than the 48-byte
        // spans: over hundreds of small tensors the sort is a large part of the call. User
        // space addresses fit in 48 bits on every 64-bit platform numpy runs on; past 65536
        // spans (or bigger addresses) the spans are sorted directly.
        let n = self.spans.len();
        if n <= 1 << 16 && self.spans.iter().all(|s| s.0 < 1 << 48) {
            let mut keys: Vec<u64> = self.spans.iter().enumerate().map(|(i, s)| ((s.0 as u64) << 16) | i as u64).collect();
            keys.sort_unstable();
            self.spans = keys.iter().map(|&k| self.spans[(k & 0xffff) as usize]).collect();
        } else {
            self.spans.sort_unstable_by_key(|s| s.0);
        }
        // Sweep in address order, remembering the furthest-reaching span seen so far and the
        // furthest-reaching written one: a span that starts before either ends overlaps it.
        let mut far_any: Option<usize> = None;
        let mut far_written: Option<usize> = None;
        for k in 0..self.spans.len() {
            let (start, end, written, _) = self.spans[k];
            let hit = match (far_written, far_any) {
                (Some(w), _) if start < self.spans[w].1 => Some(w),
                (_, Some(a)) if written && start < self.spans[a].1 => Some(a),
                _ => None,
            };
            if let Some(j) = hit {
                return Err(overlap_error(self.spans[j].3, self.spans[k].3));
            }
            if far_any.is_none_or(|a| end > self.spans[a].1) {
                far_any = Some(k);
            }
            if written && far_written.is_none_or(|w| end > self.spans[w].1) {
                far_written = Some(k);
            }
        }
        Ok(())
    }
}

/// Two arrays of a call share memory and one is written; named in a stable order.
fn overlap_error(a: Label, b: Label) -> PyErr {
    let (first, second) = if a.to_string() < b.to_string() { (a, b) } else { (b, a) };
    PyValueError::new_err(format!(
        "{first} and {second} share memory, and one of them is updated in place; \
         pass separate arrays (e.g. a copy of the gradient)"
    ))
}

/// The one place a core error becomes a Python exception.
pub fn core_err(e: fastopt_core::Error) -> PyErr {
    match e {
        fastopt_core::Error::Value(m) => PyValueError::new_err(m),
        fastopt_core::Error::Type(m) => PyTypeError::new_err(m),
    }
}

/// The one way the binding runs a kernel: with the GIL released, and with any panic (a bug:
/// kernels report bad input as errors) caught, on the calling thread or handed over from a
/// pool thread by the core, and turned into a RuntimeError. A panic never reaches Python as
/// PyO3's PanicException (a BaseException) and never aborts the process.
pub fn detach<R: Send>(py: Python<'_>, kernel: impl FnOnce() -> R + Send) -> PyResult<R> {
    py.detach(move || std::panic::catch_unwind(std::panic::AssertUnwindSafe(kernel))).map_err(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        PyRuntimeError::new_err(format!("fastopt: internal error in a kernel ({what}); nothing was committed, please report it"))
    })
}

/// [`detach`] for a core kernel: its `Error` (input it refuses) becomes a ValueError or a
/// TypeError ([`core_err`]).
pub fn run_core<R: Send>(py: Python<'_>, kernel: impl FnOnce() -> Result<R, fastopt_core::Error> + Send) -> PyResult<R> {
    detach(py, kernel)?.map_err(core_err)
}

/// What a kernel call checked about the arrays that stay the same from step to step (the
/// parameters and the optimizer's state), kept by the optimizer for its next call: that call
/// confirms each array is the same object with the same memory, flags, dtype and shape (a
/// few field reads) instead of checking it again, and checks only the arrays that change
/// every step (the gradients), each against the remembered written spans by binary search.
/// Anything different, and the call checks everything as usual and remembers it again.
#[pyclass(module = "fastopt._fastopt", name = "CheckCache", frozen)]
pub struct CheckCache {
    inner: std::sync::Mutex<Option<Checked>>,
    /// Kernel calls of this group that completed (counted before the call returns to Python,
    /// so the optimizer can tell, after an exception raised by a signal handler as the call
    /// returned, whether the group's arrays were written).
    completed: std::sync::atomic::AtomicU64,
}

#[pymethods]
impl CheckCache {
    #[new]
    fn py_new() -> Self {
        CheckCache { inner: std::sync::Mutex::new(None), completed: std::sync::atomic::AtomicU64::new(0) }
    }

    /// A copy (deepcopy, pickle) starts empty: what was checked belongs to the original arrays.
    fn __deepcopy__(&self, _memo: &Bound<'_, PyAny>) -> Self {
        Self::py_new()
    }

    fn __copy__(&self) -> Self {
        Self::py_new()
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        Ok((slf.get_type().into_any(), PyTuple::empty(slf.py())))
    }

    /// Whether a call's arrays are remembered (the next call with them may confirm them).
    fn remembers(&self) -> bool {
        self.inner.lock().map(|g| g.is_some()).unwrap_or(false)
    }

    /// How many kernel calls with this cache have completed (written their arrays).
    fn completed(&self) -> u64 {
        self.completed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Forgets what was remembered (the next call checks everything).
    fn clear(&self) {
        if let Ok(mut g) = self.inner.lock() {
            *g = None;
        }
    }
}

impl CheckCache {
    /// Counts a completed kernel call of `result` (an error wrote nothing) and passes it on.
    pub fn count<R>(cache: Option<&Bound<'_, CheckCache>>, result: PyResult<R>) -> PyResult<R> {
        if let (Ok(_), Some(cache)) = (&result, cache) {
            cache.get().completed.fetch_add(1, std::sync::atomic::Ordering::Release);
        }
        result
    }
}

/// One remembered array: the object (kept alive by the cache) and what was checked.
struct Seen {
    obj: Py<PyAny>,
    data: usize,
    descr: usize,
    flags: i32,
    shape: Vec<usize>,
}

pub struct Checked {
    dtype: Dtype,
    sdtype: Dtype,
    /// The stable lists of the call, in the order the call passes them.
    lists: Vec<Vec<Seen>>,
    /// Every written span of the stable lists, sorted by start (they are disjoint).
    written: Vec<(usize, usize, Label)>,
}

const FLAG_BITS: i32 = NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_WRITEABLE;

impl CheckCache {
    /// A call's hold on its cache, if it has one and no other call holds it (a second thread
    /// stepping the same group at the same time checks everything instead of waiting while it
    /// holds the GIL).
    pub fn lock<'a>(cache: Option<&'a Bound<'_, CheckCache>>) -> CacheGuard<'a> {
        cache.and_then(|c| c.get().inner.try_lock().ok())
    }
}

/// A call's hold on its group's [`CheckCache`]: locked until the kernel has run, so the
/// remembered arrays stay alive (None: no cache, or another thread is using it).
pub type CacheGuard<'a> = Option<std::sync::MutexGuard<'a, Option<Checked>>>;

/// A call confirmed against its cache: the dtype, the arrays of the stable lists (in the
/// order given) and the gradients.
pub struct Confirmed<'py> {
    pub dtype: Dtype,
    pub sdtype: Dtype,
    pub stable: Vec<Vec<Raw>>,
    pub grads: Vec<Raw>,
    /// Whether the gradients are float32 beside 16-bit parameters ([`Group::grads`]).
    pub f32_grads: bool,
    /// Not read: holds the parameters and gradients for as long as the call uses their `Raw`s.
    _alive: Group<'py>,
}

/// The fast path of a call with a cache: when every stable list (params first, then the
/// state lists, all written) holds the remembered arrays, unchanged, only the gradients are
/// checked. None: check everything, then [`remember`].
pub fn confirm<'py>(guard: &CacheGuard<'_>, stable: &[&Bound<'py, PyAny>], grads: &Bound<'py, PyAny>) -> PyResult<Option<Confirmed<'py>>> {
    let Some(checked) = guard.as_ref().and_then(|g| g.as_ref()) else {
        return Ok(None);
    };
    if stable.is_empty() {
        return Ok(None);
    }
    let Some((raws, params)) = checked.confirm(stable) else {
        return Ok(None);
    };
    let mut group = checked.group(params);
    let (grads, f32_grads) = group.grads(grads)?;
    checked.finish(&group)?;
    Ok(Some(Confirmed { dtype: checked.dtype(), sdtype: checked.sdtype(), stable: raws, grads, f32_grads, _alive: group }))
}

/// After a call's full checks passed in `group`: remembers its stable lists (none given, as
/// when a required list is missing: forgets).
pub fn remember(guard: &mut CacheGuard<'_>, group: &Group<'_>, stable: &[&Bound<'_, PyAny>]) {
    if let Some(slot) = guard.as_mut() {
        **slot = if stable.is_empty() { None } else { Checked::remember(group, stable) };
    }
}

impl Checked {
    /// The arrays of `lists` (the same lists, in the same order, as when remembered) if every
    /// one is the remembered object, unchanged: their `Raw`s per list, and the parameters
    /// (the first list) for the gradients' shape checks. None on any difference.
    pub fn confirm<'py>(&self, lists: &[&Bound<'py, PyAny>]) -> Option<(Vec<Vec<Raw>>, Vec<Bound<'py, PyUntypedArray>>)> {
        if lists.len() != self.lists.len() {
            return None;
        }
        let mut raws = Vec::with_capacity(lists.len());
        let mut params = Vec::new();
        for (k, (obj, seen)) in lists.iter().zip(&self.lists).enumerate() {
            let list = obj.cast::<PyList>().ok()?;
            if list.len() != seen.len() {
                return None;
            }
            let mut out = Vec::with_capacity(seen.len());
            for (item, s) in list.iter().zip(seen) {
                if !item.is(&s.obj) {
                    return None;
                }
                // SAFETY: the identity check above makes `item` the object that was checked to
                // be an ndarray when it was remembered (an object's type cannot change).
                let arr: Bound<'py, PyUntypedArray> = unsafe { item.cast_into_unchecked() };
                if data_ptr(&arr) as usize != s.data || descr_addr(&arr) != s.descr || flags(&arr) & FLAG_BITS != s.flags || !same_shape(arr.shape(), &s.shape) {
                    return None;
                }
                out.push(Raw { data: s.data as *mut u8, len: arr.len() });
                if k == 0 {
                    params.push(arr);
                }
            }
            raws.push(out);
        }
        Some((raws, params))
    }

    /// Remembers the stable lists of a call that has passed every check in `group`.
    pub fn remember(group: &Group<'_>, lists: &[&Bound<'_, PyAny>]) -> Option<Checked> {
        let mut out = Vec::with_capacity(lists.len());
        for obj in lists {
            let list = obj.cast::<PyList>().ok()?;
            let mut seen = Vec::with_capacity(list.len());
            for item in list.iter() {
                let arr = item.cast::<PyUntypedArray>().ok()?;
                seen.push(Seen {
                    data: data_ptr(arr) as usize,
                    descr: descr_addr(arr),
                    flags: flags(arr) & FLAG_BITS,
                    shape: arr.shape().to_vec(),
                    obj: item.clone().unbind(),
                });
            }
            out.push(seen);
        }
        // `finish` left the spans sorted by start.
        let written = group.spans.iter().filter(|s| s.2).map(|s| (s.0, s.1, s.3)).collect();
        Some(Checked { dtype: group.dtype, sdtype: group.sdtype, lists: out, written })
    }

    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    pub fn sdtype(&self) -> Dtype {
        self.sdtype
    }

    /// A group for a confirmed call: its dtype and parameters, nothing else checked yet.
    pub fn group<'py>(&self, params: Vec<Bound<'py, PyUntypedArray>>) -> Group<'py> {
        Group { dtype: self.dtype, sdtype: self.sdtype, params, owners: vec![], spans: vec![] }
    }

    /// After the volatile (read-only) lists were checked into `group`: no span of theirs
    /// overlaps a remembered written span.
    pub fn finish(&self, group: &Group<'_>) -> PyResult<()> {
        for &(start, end, _, label) in &group.spans {
            // Written spans are disjoint and sorted by start, so their ends are sorted too.
            let k = self.written.partition_point(|w| w.1 <= start);
            if let Some(&(ws, _, wlabel)) = self.written.get(k) {
                if ws < end {
                    return Err(overlap_error(label, wlabel));
                }
            }
        }
        Ok(())
    }
}
