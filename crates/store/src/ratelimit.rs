//! Rate-limit buckets (in progress).
