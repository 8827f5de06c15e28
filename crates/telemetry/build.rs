//! Sets `BOTFLEET_GIT_SHA` for `botfleet_build_info`: the variable of the same
//! name when the build sets it (image builds without a `.git`), else the
//! commit of the checkout when `git` can tell offline, else `unknown`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=BOTFLEET_GIT_SHA");
    // A new commit moves HEAD (or the branch it names): build info follows.
    println!("cargo:rerun-if-changed=../../.git/HEAD");
    println!("cargo:rerun-if-changed=../../.git/refs/heads");
    let sha = std::env::var("BOTFLEET_GIT_SHA")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| {
            Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit()))
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=BOTFLEET_GIT_SHA={sha}");
}
