//! CartWise cross-crate and fault tests live in `tests/tests/`; this library holds their helpers.
