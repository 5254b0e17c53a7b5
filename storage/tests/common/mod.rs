#![allow(dead_code)]
//! Helpers shared by the store tests: the conformance suite every backend passes, and its
//! fixtures.

pub mod conformance;
