//! Channel -> bot token validation (in progress).
