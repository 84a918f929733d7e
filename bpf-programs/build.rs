//! Build script: compiles the C datapath (`bpf/datapath.c`) with clang into `$OUT_DIR/datapath.o`.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian's libbpf-dev installs `bpf/bpf_helpers.h` and friends.
const LIBBPF_INCLUDE: &str = "/usr/include";

fn main() {
    if let Err(message) = run() {
        // Shown by cargo as the build error, without the rest of the script's output.
        for line in message.lines() {
            println!("cargo::error={line}");
        }
    }
}

fn run() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env_var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env_var("OUT_DIR")?);
    let bpf_dir = manifest_dir.join("bpf");

    println!("cargo:rerun-if-env-changed=CLANG");
    rerun_if_changed(&bpf_dir).map_err(|e| format!("scan {}: {e}", bpf_dir.display()))?;

    let clang = env::var_os("CLANG").unwrap_or_else(|| OsString::from("clang"));
    check_clang(&clang)?;
    let helpers = Path::new(LIBBPF_INCLUDE).join("bpf/bpf_helpers.h");
    if !helpers.exists() {
        return Err(format!(
            "{} not found: install the Debian package libbpf-dev (apt-get install libbpf-dev)",
            helpers.display()
        ));
    }

    let source = bpf_dir.join("datapath.c");
    let object = out_dir.join("datapath.o");
    let mut cmd = Command::new(&clang);
    cmd.args(["-target", "bpf", "-mcpu=v3", "-O2", "-g", "-Wall", "-Wextra", "-Werror"])
        .arg("-I")
        .arg(bpf_dir.join("lib"))
        .arg("-I")
        .arg(LIBBPF_INCLUDE);
    if let Some(multiarch) = multiarch_include() {
        cmd.arg("-I").arg(multiarch);
    }
    cmd.arg("-c").arg(&source).arg("-o").arg(&object);

    let output = cmd.output().map_err(|e| format!("run {}: {e}", clang.to_string_lossy()))?;
    if !output.status.success() {
        return Err(format!(
            "compile {} with {:?} failed ({}):\n{}{}",
            source.display(),
            cmd,
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

fn env_var(name: &str) -> Result<String, String> {
    env::var(name).map_err(|e| format!("environment variable {name}: {e}"))
}

/// Fails with a message naming the Debian packages when clang cannot be run.
fn check_clang(clang: &OsString) -> Result<(), String> {
    let hint = "install the Debian packages clang and libbpf-dev \
                (apt-get install clang libbpf-dev), or set CLANG to a clang binary";
    match Command::new(clang).arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!("{} --version failed ({}): {hint}", clang.to_string_lossy(), out.status)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(format!(
            "clang not found (looked for {:?}); the eBPF datapath is compiled at build time: {hint}",
            clang
        )),
        Err(e) => Err(format!("run {}: {e}; {hint}", clang.to_string_lossy())),
    }
}

/// Debian keeps `asm/types.h` in a multiarch directory (e.g. `/usr/include/x86_64-linux-gnu`).
fn multiarch_include() -> Option<PathBuf> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").ok()?;
    let triple = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "arm" => "arm-linux-gnueabihf",
        "riscv64" => "riscv64-linux-gnu",
        "powerpc64" => "powerpc64le-linux-gnu",
        "s390x" => "s390x-linux-gnu",
        _ => return None,
    };
    let dir = Path::new("/usr/include").join(triple);
    dir.is_dir().then_some(dir)
}

/// Asks cargo to rebuild when any file (or directory listing) under `dir` changes.
fn rerun_if_changed(dir: &Path) -> io::Result<()> {
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut entries = fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            rerun_if_changed(&path)?;
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    Ok(())
}
