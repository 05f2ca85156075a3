//! Cleanup statements (see issue 5).
