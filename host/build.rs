//! Builds the built-in formatter guests for wasm32-wasip2 so that `include_bytes!` can embed them
//! in the host binary. The guests build in their own target directory: the outer cargo holds the
//! lock of the host's target directory for the whole build.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const GUESTS: [(&str, &str, &str); 2] = [
    ("atkafka-formatter-standard", "atkafka_formatter_standard.wasm", "ATKAFKA_STANDARD_WASM"),
    ("atkafka-formatter-osprey", "atkafka_formatter_osprey.wasm", "ATKAFKA_OSPREY_WASM"),
];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.parent().expect("the host crate lives inside the workspace").to_path_buf();
    // `make guests` builds into the same directory, so after it this build is a quick no-op.
    let target_dir = workspace.join("target").join("guest-build");
    // Only the built-in guests' sources: the examples folder holds node_modules and build trees.
    for guest in ["shape", "standard", "osprey"] {
        println!("cargo:rerun-if-changed={}", workspace.join("guest-formatters").join(guest).display());
    }
    println!("cargo:rerun-if-changed={}", workspace.join("wit").display());

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command
        .current_dir(&workspace)
        .args(["build", "--profile", "guest", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target_dir);
    for (package, _, _) in GUESTS {
        command.args(["-p", package]);
    }
    // Flags meant for the host build must not leak into the guest build.
    for variable in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET", "CARGO_TARGET_DIR"] {
        command.env_remove(variable);
    }
    let status = command.status().expect("failed to run cargo to build the built-in formatters");
    if !status.success() {
        panic!(
            "building the built-in formatters failed ({status}); if the error says the target is \
             missing, run `rustup target add wasm32-wasip2`"
        );
    }

    for (_, file, variable) in GUESTS {
        let path = target_dir.join("wasm32-wasip2").join("guest").join(file);
        assert!(path.exists(), "the guest build did not produce {}", path.display());
        println!("cargo:rustc-env={variable}={}", path.display());
    }
}
