//! Conversation references (in progress).
