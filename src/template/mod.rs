//! Templates: the serde model of the language ([`model`]), finding and
//! parsing files ([`load`]), package spec parsing ([`packages`]), and
//! linking plus merging along `extends` chains into a [`Project`]
//! ([`resolve`]).

pub mod load;
pub mod memo;
pub mod model;
pub mod packages;
pub mod resolve;

pub use resolve::{Layer, Project};
