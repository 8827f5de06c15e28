//! Errors of starting and configuring the sim (request-level errors are HTTP answers).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot listen on 127.0.0.1:{port}: {source} (is another process using the port? use --port 0 for a free one)")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path}: {message}")]
    KeyFile { path: PathBuf, message: String },
    #[error("cannot generate an RSA key: {0}")]
    KeyGeneration(String),
    #[error("invalid bot registration: {0}")]
    InvalidBot(String),
    #[error("cannot write the ready file {path}: {source}")]
    ReadyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("internal error: {0}")]
    Internal(String),
}
