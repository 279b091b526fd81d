//! harmony
