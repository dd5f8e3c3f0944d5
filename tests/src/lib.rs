//! Shared harness lives in tests/tests/common.
