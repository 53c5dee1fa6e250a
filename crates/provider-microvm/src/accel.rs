//! Which accelerator QEMU can really use on this host.
//!
//! `/dev/kvm` existing proves little: on cloud VMs with PVM (like our own
//! dev and CI machines) it opens fine but boots no normal guest kernel (see
//! shared research, microvm-boot.md §1). Real hardware virtualisation shows
//! as the `vmx`/`svm` CPU flag plus a loaded `kvm_intel`/`kvm_amd` module.
//! Anything else runs under TCG, with one loud warning, because TCG is
//! several times slower and fine only for development and tests.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The accelerator a pool asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccelChoice {
    /// KVM when it really works, else TCG with a warning.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// The accelerator a VM is started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    Kvm,
    Tcg,
}

/// What the host offers, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelProbe {
    pub accel: Accel,
    pub reason: String,
}

/// Looks at the host (CPU flags, KVM modules, `/dev/kvm`) and decides.
pub fn accel_probe(root: &Path) -> AccelProbe {
    let cpuinfo = std::fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
    let has_flag = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    let module = |m: &str| root.join("sys/module").join(m).exists();
    let dev_kvm = root.join("dev/kvm").exists();
    if !dev_kvm {
        return AccelProbe { accel: Accel::Tcg, reason: "/dev/kvm does not exist".into() };
    }
    if module("kvm_pvm") && !has_flag {
        return AccelProbe {
            accel: Accel::Tcg,
            reason: "/dev/kvm is PVM (kvm_pvm loaded, no vmx/svm CPU flag): it boots only \
                     PVM guest kernels"
                .into(),
        };
    }
    if has_flag && (module("kvm_intel") || module("kvm_amd")) {
        return AccelProbe { accel: Accel::Kvm, reason: "hardware virtualisation with KVM".into() };
    }
    AccelProbe {
        accel: Accel::Tcg,
        reason: "/dev/kvm exists but no vmx/svm CPU flag with kvm_intel/kvm_amd loaded".into(),
    }
}

/// Resolves a pool's choice against the host, warning loudly (once per
/// call; the provider calls it once) when it falls back to TCG.
pub fn accel_resolve(choice: AccelChoice, probe: &AccelProbe) -> Accel {
    match choice {
        AccelChoice::Kvm => Accel::Kvm,
        AccelChoice::Tcg => Accel::Tcg,
        AccelChoice::Auto => {
            if probe.accel == Accel::Tcg {
                tracing::warn!(
                    reason = %probe.reason,
                    "KVM IS NOT USABLE: microVMs run under QEMU TCG software emulation, \
                     several times slower; fine for development and tests, not for production"
                );
            }
            probe.accel
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(flags: &str, modules: &[&str], dev_kvm: bool) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc")).unwrap();
        std::fs::write(root.path().join("proc/cpuinfo"), format!("flags\t\t: fpu {flags} sse\n"))
            .unwrap();
        for m in modules {
            std::fs::create_dir_all(root.path().join("sys/module").join(m)).unwrap();
        }
        if dev_kvm {
            std::fs::create_dir_all(root.path().join("dev")).unwrap();
            std::fs::write(root.path().join("dev/kvm"), "").unwrap();
        }
        root
    }

    #[test]
    fn pvm_hosts_and_missing_kvm_fall_back_to_tcg() {
        let pvm = host("hypervisor", &["kvm", "kvm_pvm"], true);
        assert_eq!(accel_probe(pvm.path()).accel, Accel::Tcg);
        assert!(accel_probe(pvm.path()).reason.contains("PVM"));
        assert_eq!(accel_probe(host("vmx", &["kvm_intel"], false).path()).accel, Accel::Tcg);
        assert_eq!(accel_probe(host("", &["kvm"], true).path()).accel, Accel::Tcg);
    }

    #[test]
    fn hardware_kvm_is_used() {
        assert_eq!(accel_probe(host("svm", &["kvm", "kvm_amd"], true).path()).accel, Accel::Kvm);
        assert_eq!(accel_probe(host("vmx", &["kvm", "kvm_intel"], true).path()).accel, Accel::Kvm);
    }
}
