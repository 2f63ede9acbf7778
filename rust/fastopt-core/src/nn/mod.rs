//! The other hot loops of training: activations and their gradients, softmax and
//! cross-entropy, batch normalization. Plain functions on slices, like the optimizers; SIMD
//! level from [`crate::simd`], threads from [`crate::parallel`].

pub mod activation;
pub mod batchnorm;
pub mod softmax;
