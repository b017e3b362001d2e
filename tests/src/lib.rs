//! Whole-system test support: the simulated endpoint ([`sim`]) shared by the tests in `tests/` and by `loadtest`.

pub mod impair;
pub mod sim;
