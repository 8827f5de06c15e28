//! Bot Connector client (in progress).
