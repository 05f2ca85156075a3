//! Claim statements.
