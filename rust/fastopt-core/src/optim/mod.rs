//! Optimizer steps, in place, following torch.optim's update rules operation by operation.

pub mod adafactor;
pub mod adagrad;
pub mod adam;
pub mod elementwise;
pub mod lamb;
pub mod rmsprop;
pub mod sgd;

pub use adagrad::{adagrad_step, AdagradConfig, AdagradTensor};
pub use adam::{adam_step, AdamConfig, AdamTensor};
pub use lamb::{lamb_step, LambConfig, LambTensor};
pub use rmsprop::{rmsprop_step, RmspropConfig, RmspropTensor};
pub use sgd::{sgd_step, SgdConfig, SgdTensor};
