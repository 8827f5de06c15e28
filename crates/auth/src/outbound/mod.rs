//! Bot -> connector tokens (in progress).
