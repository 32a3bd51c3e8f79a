//! placeholder

use super::OpDef;

pub static OPS: &[OpDef] = &[];
