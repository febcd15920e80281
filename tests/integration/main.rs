//! The one integration-test binary: drives the real `amimake` executable
//! against scratch template repositories.

mod moto;
mod support;

mod build;
mod ec2;
mod hashing;
mod lifecycle;
mod local;
mod memo;
mod shared;
mod templates;
