//! Optimizer steps, in place, following torch.optim's update rules operation by operation.

pub mod adam;
pub mod sgd;

pub use adam::{adam_step, AdamConfig, AdamTensor};
pub use sgd::{sgd_step, SgdConfig, SgdTensor};
