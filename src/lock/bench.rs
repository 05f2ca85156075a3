//! Lock benchmark, placeholder.
