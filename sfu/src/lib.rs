//! giaoban media plane.
