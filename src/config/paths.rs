//! Where the default files are: the ONNX Runtime library, the model and the store.
//!
//! The defaults follow the running executable, not the working directory, so that
//! `alarm-verifier verify-clip` works from any folder:
//!
//! 1. **Installed** (the Debian package, the Docker image): the executable is `<prefix>/bin/alarm-verifier`
//!    and `<prefix>/lib/alarm-verifier/` exists. The library and the model are in that folder, the
//!    store in `/var/lib/alarm-verifier/` (for a prefix named `usr`, the `var/lib/alarm-verifier`
//!    beside it, so that a package unpacked into a scratch root finds the root's own folder).
//! 2. **Checkout**: the first folder above the executable with `Cargo.toml` and `third_party/`
//!    (`target/release/alarm-verifier`), else the checkout the binary was built from, if it is
//!    still there (a `CARGO_TARGET_DIR` outside the checkout). `third_party/onnxruntime/`,
//!    `models/` and `data/` under it.
//! 3. Otherwise the working directory, as relative paths always were.
//!
//! Also owns the rule for paths written in a config file: relative ones are taken from the
//! config file's folder (`resolve_relative`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The ONNX Runtime library's file name, in every layout.
pub const ONNXRUNTIME_FILE: &str = "libonnxruntime.so.1.31.1";
/// The default model's file name, in every layout.
pub const MODEL_FILE: &str = "yolox_nano.onnx";
/// The store's file name, in every layout.
pub const STORE_FILE: &str = "alarm-verifier.db";
/// The installed layout's folder name, under `<prefix>/lib/` and `/var/lib/`.
const PACKAGE_DIR: &str = "alarm-verifier";

/// Where the default files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Install {
    /// `lib`: `<prefix>/lib/alarm-verifier`; `state`: the store's folder.
    Installed { lib: PathBuf, state: PathBuf },
    /// A source checkout's root.
    Checkout(PathBuf),
    /// Neither: this folder (the working directory at start-up).
    WorkingDir(PathBuf),
}

impl Install {
    /// The layout of this process, found once from its executable.
    pub fn current() -> &'static Install {
        static CURRENT: OnceLock<Install> = OnceLock::new();
        CURRENT.get_or_init(|| {
            // Without a working directory the defaults stay relative, as they always were.
            let cwd = std::env::current_dir().unwrap_or_default();
            match std::env::current_exe() {
                Ok(exe) => Install::detect(&exe, Some(Path::new(env!("CARGO_MANIFEST_DIR"))), &cwd),
                Err(_) => Install::WorkingDir(cwd),
            }
        })
    }

    /// The layout for the executable `exe`; `built_from` is the checkout it was compiled in.
    pub fn detect(exe: &Path, built_from: Option<&Path>, cwd: &Path) -> Install {
        let bin = exe.parent().unwrap_or(Path::new(""));
        if let Some(prefix) = bin.parent() {
            let lib = prefix.join("lib").join(PACKAGE_DIR);
            if lib.is_dir() {
                return Install::Installed {
                    lib,
                    state: state_dir(prefix),
                };
            }
        }
        // An empty folder would be the working directory, which is step 3's business.
        bin.ancestors()
            .chain(built_from)
            .find(|dir| !dir.as_os_str().is_empty() && is_checkout(dir))
            .map(|dir| Install::Checkout(dir.to_owned()))
            .unwrap_or_else(|| Install::WorkingDir(cwd.to_owned()))
    }

    /// The default `detector.onnxruntime`.
    pub fn onnxruntime(&self) -> PathBuf {
        match self {
            Install::Installed { lib, .. } => lib.join(ONNXRUNTIME_FILE),
            Install::Checkout(root) | Install::WorkingDir(root) => {
                root.join("third_party/onnxruntime").join(ONNXRUNTIME_FILE)
            }
        }
    }

    /// The default `detector.model`.
    pub fn model(&self) -> PathBuf {
        match self {
            Install::Installed { lib, .. } => lib.join("models").join(MODEL_FILE),
            Install::Checkout(root) | Install::WorkingDir(root) => root.join("models").join(MODEL_FILE),
        }
    }

    /// The default `store.path`.
    pub fn store(&self) -> PathBuf {
        match self {
            Install::Installed { state, .. } => state.join(STORE_FILE),
            Install::Checkout(root) | Install::WorkingDir(root) => root.join("data").join(STORE_FILE),
        }
    }
}

/// The store's folder for an installed `prefix`: `/usr` → `/var/lib/alarm-verifier`, and a
/// scratch root's `<root>/usr` → `<root>/var/lib/alarm-verifier`. Other prefixes (`/opt/…`) use
/// `/var/lib/alarm-verifier`, where the systemd unit's `StateDirectory` is.
fn state_dir(prefix: &Path) -> PathBuf {
    let system = Path::new("/var/lib").join(PACKAGE_DIR);
    match (prefix.file_name(), prefix.parent()) {
        (Some(name), Some(root)) if name == "usr" => root.join("var/lib").join(PACKAGE_DIR),
        _ => system,
    }
}

/// A source checkout: the manifest, and the folder setup.sh fills with ONNX Runtime.
fn is_checkout(dir: &Path) -> bool {
    dir.join("Cargo.toml").is_file() && dir.join("third_party").is_dir()
}

/// Takes a relative `path` from a config file as relative to that file's folder `base`; absolute
/// paths stay as they are.
pub fn resolve_relative(base: &Path, path: &mut PathBuf) {
    if path.is_relative() {
        *path = base.join(&*path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(path, b"").expect("write");
    }

    #[test]
    fn an_installed_binary_finds_its_lib_folder_and_the_roots_state_folder() {
        let root = tempfile::tempdir().expect("temp dir");
        let exe = root.path().join("usr/bin/alarm-verifier");
        touch(&exe);
        std::fs::create_dir_all(root.path().join("usr/lib/alarm-verifier")).expect("mkdir");
        let install = Install::detect(&exe, None, Path::new("/elsewhere"));
        let lib = root.path().join("usr/lib/alarm-verifier");
        assert_eq!(install.onnxruntime(), lib.join("libonnxruntime.so.1.31.1"));
        assert_eq!(install.model(), lib.join("models/yolox_nano.onnx"));
        assert_eq!(
            install.store(),
            root.path().join("var/lib/alarm-verifier/alarm-verifier.db")
        );
    }

    #[test]
    fn the_system_prefix_keeps_the_store_in_var_lib() {
        assert_eq!(state_dir(Path::new("/usr")), Path::new("/var/lib/alarm-verifier"));
        assert_eq!(
            state_dir(Path::new("/opt/alarm-verifier")),
            Path::new("/var/lib/alarm-verifier")
        );
    }

    #[test]
    fn a_binary_in_a_checkout_finds_the_checkout_above_it() {
        let root = tempfile::tempdir().expect("temp dir");
        touch(&root.path().join("Cargo.toml"));
        std::fs::create_dir_all(root.path().join("third_party")).expect("mkdir");
        let exe = root.path().join("target/release/alarm-verifier");
        touch(&exe);
        let install = Install::detect(&exe, None, Path::new("/elsewhere"));
        assert_eq!(install, Install::Checkout(root.path().to_owned()));
        assert_eq!(
            install.onnxruntime(),
            root.path().join("third_party/onnxruntime/libonnxruntime.so.1.31.1")
        );
        assert_eq!(install.model(), root.path().join("models/yolox_nano.onnx"));
        assert_eq!(install.store(), root.path().join("data/alarm-verifier.db"));
    }

    #[test]
    fn a_target_folder_outside_the_checkout_falls_back_to_the_build_checkout() {
        let checkout = tempfile::tempdir().expect("temp dir");
        touch(&checkout.path().join("Cargo.toml"));
        std::fs::create_dir_all(checkout.path().join("third_party")).expect("mkdir");
        let target = tempfile::tempdir().expect("temp dir");
        let exe = target.path().join("release/alarm-verifier");
        touch(&exe);
        let install = Install::detect(&exe, Some(checkout.path()), Path::new("/elsewhere"));
        assert_eq!(install, Install::Checkout(checkout.path().to_owned()));
        // A manifest without third_party/ is not a checkout that setup.sh prepared.
        std::fs::remove_dir(checkout.path().join("third_party")).expect("rmdir");
        let install = Install::detect(&exe, Some(checkout.path()), Path::new("/elsewhere"));
        assert_eq!(install, Install::WorkingDir(PathBuf::from("/elsewhere")));
        assert_eq!(install.model(), Path::new("/elsewhere/models/yolox_nano.onnx"));
    }

    #[test]
    fn a_bare_file_name_is_not_an_installed_layout() {
        let install = Install::detect(Path::new("alarm-verifier"), None, Path::new(""));
        assert_eq!(install, Install::WorkingDir(PathBuf::new()));
        assert_eq!(install.store(), Path::new("data/alarm-verifier.db"));
    }

    #[test]
    fn relative_config_paths_are_taken_from_the_config_folder() {
        let mut relative = PathBuf::from("models/custom.onnx");
        resolve_relative(Path::new("/etc/alarm-verifier"), &mut relative);
        assert_eq!(relative, Path::new("/etc/alarm-verifier/models/custom.onnx"));
        let mut absolute = PathBuf::from("/srv/model.onnx");
        resolve_relative(Path::new("/etc/alarm-verifier"), &mut absolute);
        assert_eq!(absolute, Path::new("/srv/model.onnx"));
    }
}
