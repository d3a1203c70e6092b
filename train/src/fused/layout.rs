//! Where each parameter lives in a trial's flat host vector: libtorch's layout, each parameter
//! row-major in `Dims::param_specs` order.

use crate::model::{Dims, Module};

/// Where each parameter lives in a trial's flat vector.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    /// (offset, length) per parameter, in `Dims::param_specs` order.
    pub(super) spans: Vec<(usize, usize)>,
    /// The module of each parameter.
    pub(super) modules: Vec<Module>,
    /// Length of a trial's flat vector.
    pub(super) total: usize,
}

impl Layout {
    pub(crate) fn of(dims: &Dims) -> Self {
        let mut spans = Vec::new();
        let mut modules = Vec::new();
        let mut total = 0;
        for p in dims.param_specs() {
            let n = p.shape.iter().product::<i64>() as usize;
            spans.push((total, n));
            modules.push(p.module);
            total += n;
        }
        Layout { spans, modules, total }
    }

    pub(super) fn get<'a, T>(&self, flat: &'a [T], param: usize) -> &'a [T] {
        let (at, n) = self.spans[param];
        &flat[at..at + n]
    }

    pub(super) fn get_mut<'a, T>(&self, flat: &'a mut [T], param: usize) -> &'a mut [T] {
        let (at, n) = self.spans[param];
        &mut flat[at..at + n]
    }

    /// Splits a trial's flat vector into its parameters, in `param_specs` order.
    #[cfg(test)]
    pub(crate) fn split<'a, T>(&self, flat: &'a [T]) -> Vec<&'a [T]> {
        (0..self.spans.len()).map(|i| self.get(flat, i)).collect()
    }
}
