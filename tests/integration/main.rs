//! The one integration-test binary: drives the real `amimake` executable
//! against scratch template repositories.

mod support;

mod build;
mod hashing;
mod templates;
