//! The virtual machine monitor behind a small interface, so Firecracker or
//! Cloud Hypervisor can be added beside QEMU without touching the provider.
//!
//! A [`Vmm`] turns a [`VmPlan`] (paths and sizes the provider chose) into a
//! process, and knows how to ask that process to stop. Everything else —
//! overlays, networking, the guest agent channel, bookkeeping — is the
//! provider's and is VMM-independent: the agent channel is a unix socket the
//! host listens on, which every one of those VMMs can connect a virtio
//! console or hybrid vsock to.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::accel::Accel;
use crate::qmp::Qmp;

/// Everything needed to start one VM.
#[derive(Debug, Clone)]
pub struct VmPlan {
    /// A short unique name (`vm-…`), also QEMU's `-name`.
    pub name: String,
    pub kernel: PathBuf,
    /// An initramfs (Debian's stock kernel needs one to load its virtio
    /// modules). Such a kernel also finds virtio-mmio devices only through
    /// ACPI, so the VM then has ACPI.
    pub initrd: Option<PathBuf>,
    /// The VM's own copy-on-write disk (its backing file is never written).
    pub disk: PathBuf,
    /// The host listens here; the VMM connects the guest agent's port to it.
    pub agent_socket: PathBuf,
    /// The VMM's control socket (QMP for QEMU).
    pub control_socket: PathBuf,
    /// The host listens here; the VMM connects the guest's serial console
    /// to it, and the provider writes what comes to a capped, rotated log.
    pub console_socket: PathBuf,
    /// The VMM's own stdout/stderr go here.
    pub vmm_log: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub accel: Accel,
    /// Extra kernel command line words (nothing secret ever goes here).
    pub kernel_args: Vec<String>,
    /// A tap device for virtio-net, when the pool has a network.
    pub tap: Option<TapNic>,
    /// Restore this saved state instead of booting.
    pub incoming_state: Option<PathBuf>,
}

/// A tap device and the MAC address the guest gets on it.
#[derive(Debug, Clone)]
pub struct TapNic {
    pub ifname: String,
    pub mac: String,
}

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("could not open the vmm log {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not open the saved state {path}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not start {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vmm control")]
    Control(#[from] crate::qmp::QmpError),
    #[error("vmm control timed out")]
    Timeout,
}

/// A virtual machine monitor.
#[async_trait::async_trait]
pub trait Vmm: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> &'static str;

    /// Starts the VM process. The process is put in its own process group so
    /// that a signal to hangar (Ctrl-C, a restart) does not take VMs with it;
    /// hangar finds them again in its state directory.
    fn spawn(&self, plan: &VmPlan) -> Result<tokio::process::Child, VmmError>;

    /// Asks the VMM to end the VM at once (no guest shutdown: the VM is
    /// thrown away anyway).
    async fn quit(&self, plan: &VmPlan) -> Result<(), VmmError>;

    /// Saves the running VM's state to `state` (for pre-booted restores).
    async fn snapshot_save(&self, plan: &VmPlan, state: &std::path::Path) -> Result<(), VmmError>;
}

/// QEMU (Debian's `qemu-system-x86`) with the `microvm` machine.
#[derive(Debug, Clone)]
pub struct Qemu {
    pub binary: PathBuf,
    /// Host TSC frequency in kHz; under TCG it is passed to the guest so it
    /// skips calibrating against the PIT, which hangs ~1 boot in 10 there.
    pub tsc_khz: Option<u64>,
}

impl Qemu {
    pub fn new(binary: PathBuf) -> Qemu {
        Qemu { binary, tsc_khz: host_tsc_khz() }
    }

    /// The kernel command line for a plan.
    pub fn kernel_cmdline(&self, plan: &VmPlan) -> String {
        let mut words: Vec<String> = [
            "console=ttyS0",
            "quiet",
            "reboot=t",
            "panic=-1",
            "root=/dev/vda",
            "rw",
            "rootfstype=ext4",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        words.push(format!("init={}", hangar_guest_agent::AGENT_PATH));
        if let (Accel::Tcg, Some(khz)) = (plan.accel, self.tsc_khz) {
            // lpj for HZ=250 (base.config): skips the delay-loop calibration.
            // tsc=reliable: under a loaded host the clocksource watchdog
            // otherwise drops the TSC for coarse jiffies.
            words.push(format!("tsc_early_khz={khz} lpj={} tsc=reliable", khz * 4));
        }
        if plan.accel == Accel::Tcg {
            // The local APIC timer's calibration and verification cost
            // ~0.3 s of emulated boot, and under TCG it usually fails the
            // verification anyway ("APIC timer disabled due to verification
            // failure"), leaving the PIT as the clock event device: start
            // there. no_timer_check skips the ~40 ms "does the timer IRQ
            // work" delay loop (kvmclock guests skip it by themselves).
            words.push("noapictimer no_timer_check".to_owned());
            // With one vCPU the kernel rewrites every LOCK prefix in its
            // text to a NOP, one text_poke (an address-space switch and a
            // TLB flush) each: ~70-90 ms of emulated boot, to save a few
            // cycles per atomic op that TCG barely notices. Keep them.
            words.push("noreplace-smp".to_owned());
        }
        words.extend(plan.kernel_args.iter().cloned());
        words.join(" ")
    }

    /// The full argument list (tests check that no secret is in it).
    pub fn args(&self, plan: &VmPlan) -> Vec<String> {
        let p = |p: &PathBuf| p.display().to_string();
        let mut args: Vec<String> = vec![
            "-name".into(),
            plan.name.clone(),
            "-M".into(),
            if plan.initrd.is_some() { "microvm,acpi=on" } else { "microvm,acpi=off" }.into(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-smp".into(),
            plan.vcpus.to_string(),
            "-m".into(),
            format!("{}M", plan.memory_mib),
        ];
        match plan.accel {
            Accel::Kvm => {
                args.extend(["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()]);
            }
            Accel::Tcg => args.extend(["-accel".into(), "tcg".into(), "-cpu".into(), "max".into()]),
        }
        args.extend([
            // Not `-serial file:`: a guest could fill the disk through it.
            "-chardev".into(),
            format!("socket,id=console,path={}", p(&plan.console_socket)),
            "-serial".into(),
            "chardev:console".into(),
            "-kernel".into(),
            p(&plan.kernel),
            "-append".into(),
            self.kernel_cmdline(plan),
            "-drive".into(),
            format!("id=root,file={},format=qcow2,if=none", p(&plan.disk)),
            "-device".into(),
            "virtio-blk-device,drive=root".into(),
            "-device".into(),
            "virtio-rng-device".into(),
            "-device".into(),
            // Port 0 (the console, unused) and port 1 (the agent's). The
            // default of 31 ports makes the guest driver set up 64
            // virtqueues at boot: ~20 ms of `virtio_console_init` under TCG.
            "virtio-serial-device,max_ports=2".into(),
            "-chardev".into(),
            format!("socket,id=agent,path={}", p(&plan.agent_socket)),
            "-device".into(),
            format!("virtserialport,chardev=agent,name={}", hangar_guest_agent::PORT_NAME),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", p(&plan.control_socket)),
        ]);
        if let Some(initrd) = &plan.initrd {
            args.extend(["-initrd".into(), p(initrd)]);
        }
        if let Some(tap) = &plan.tap {
            args.extend([
                "-netdev".into(),
                format!("tap,id=n0,ifname={},script=no,downscript=no", tap.ifname),
                "-device".into(),
                format!("virtio-net-device,netdev=n0,mac={}", tap.mac),
            ]);
        }
        if plan.incoming_state.is_some() {
            // `spawn` opens the state file as QEMU's stdin (nothing else
            // uses it: no stdio chardev): QEMU reads it itself, instead of
            // `exec:cat` forking a shell and cat and copying through a pipe.
            args.extend(["-incoming".into(), "fd:0".into()]);
        }
        args
    }
}

#[async_trait::async_trait]
impl Vmm for Qemu {
    fn kind(&self) -> &'static str {
        "qemu"
    }

    fn spawn(&self, plan: &VmPlan) -> Result<tokio::process::Child, VmmError> {
        let log = std::fs::File::create(&plan.vmm_log)
            .map_err(|source| VmmError::Log { path: plan.vmm_log.clone(), source })?;
        let log2 = log
            .try_clone()
            .map_err(|source| VmmError::Log { path: plan.vmm_log.clone(), source })?;
        let stdin = match &plan.incoming_state {
            Some(state) => Stdio::from(
                std::fs::File::open(state)
                    .map_err(|source| VmmError::State { path: state.clone(), source })?,
            ),
            None => Stdio::null(),
        };
        tokio::process::Command::new(&self.binary)
            .args(self.args(plan))
            .stdin(stdin)
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|source| VmmError::Spawn { program: self.binary.clone(), source })
    }

    async fn quit(&self, plan: &VmPlan) -> Result<(), VmmError> {
        let quit = async {
            let mut qmp = Qmp::connect(&plan.control_socket).await?;
            match qmp.execute("quit", None).await {
                // QEMU may close the socket before answering.
                Ok(_) | Err(crate::qmp::QmpError::Closed) => Ok(()),
                Err(e) => Err(VmmError::Control(e)),
            }
        };
        tokio::time::timeout(Duration::from_secs(2), quit).await.map_err(|_| VmmError::Timeout)?
    }

    async fn snapshot_save(&self, plan: &VmPlan, state: &std::path::Path) -> Result<(), VmmError> {
        let save = async {
            let mut qmp = Qmp::connect(&plan.control_socket).await?;
            // Not `stop` first: a paused source restores paused. Migration
            // pauses the VM itself when it completes.
            qmp.execute(
                "migrate",
                Some(serde_json::json!({ "uri": format!("exec:cat > {}", state.display()) })),
            )
            .await?;
            loop {
                let status = qmp.execute("query-migrate", None).await?;
                match status.get("status").and_then(|s| s.as_str()) {
                    Some("completed") => return Ok(()),
                    Some("failed" | "cancelled") => {
                        return Err(VmmError::Control(crate::qmp::QmpError::Command {
                            command: "migrate".into(),
                            class: "MigrationFailed".into(),
                            desc: status.to_string(),
                        }));
                    }
                    _ => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), save).await.map_err(|_| VmmError::Timeout)?
    }
}

/// The host's TSC frequency from `/proc/cpuinfo` (`cpu MHz`), in kHz.
fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    let khz = (mhz * 1000.0).round();
    (khz > 0.0 && khz < 1e9).then(|| format!("{khz:.0}").parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(accel: Accel, tap: Option<TapNic>) -> VmPlan {
        let dir = PathBuf::from("/state/vm-1");
        VmPlan {
            name: "vm-1".into(),
            kernel: "/k/vmlinux".into(),
            initrd: None,
            disk: dir.join("overlay.qcow2"),
            agent_socket: dir.join("agent.sock"),
            control_socket: dir.join("qmp.sock"),
            console_socket: dir.join("console.sock"),
            vmm_log: dir.join("vmm.log"),
            vcpus: 2,
            memory_mib: 1024,
            accel,
            kernel_args: vec!["hangar_net=172.29.0.6/30,172.29.0.5,1.1.1.1".into()],
            tap,
            incoming_state: None,
        }
    }

    #[test]
    fn qemu_runs_microvm_with_direct_kernel_boot_and_no_user_networking() {
        let qemu = Qemu { binary: "qemu".into(), tsc_khz: Some(2_000_000) };
        let args = qemu.args(&plan(Accel::Tcg, None));
        let joined = args.join(" ");
        for needle in [
            "-M microvm,acpi=off",
            "-no-reboot",
            "-nodefaults",
            "-accel tcg",
            "-smp 2",
            "-m 1024M",
            "-kernel /k/vmlinux",
            "file=/state/vm-1/overlay.qcow2,format=qcow2",
            "socket,id=agent,path=/state/vm-1/agent.sock",
            "name=org.hangar.agent",
            "-chardev socket,id=console,path=/state/vm-1/console.sock -serial chardev:console",
        ] {
            assert!(joined.contains(needle), "{needle} missing from {joined}");
        }
        assert!(!joined.contains("-netdev user"), "never slirp: it exposes the host's loopback");
        assert!(!joined.contains("file:"), "no file QEMU writes on the guest's behalf: {joined}");
        let cmdline = qemu.kernel_cmdline(&plan(Accel::Tcg, None));
        assert!(cmdline.contains("tsc_early_khz=2000000 lpj=8000000"), "{cmdline}");
        assert!(cmdline.contains("init=/usr/local/sbin/hangar-guest-agent"), "{cmdline}");
        assert!(cmdline.contains("reboot=t panic=-1"), "{cmdline}");
        assert!(cmdline.contains("noapictimer"), "{cmdline}");
        assert!(cmdline.contains("noreplace-smp"), "{cmdline}");
        let kvm = qemu.kernel_cmdline(&plan(Accel::Kvm, None));
        assert!(!kvm.contains("tsc_early_khz") && !kvm.contains("noapictimer"), "{kvm}");
    }

    #[test]
    fn a_restore_reads_the_state_from_stdin_without_a_shell() {
        let qemu = Qemu { binary: "qemu".into(), tsc_khz: None };
        let mut restore = plan(Accel::Tcg, None);
        restore.incoming_state = Some("/state/snapshot/state.bin".into());
        let joined = qemu.args(&restore).join(" ");
        assert!(joined.contains("-incoming fd:0"), "{joined}");
        assert!(!joined.contains("exec:"), "{joined}");
        assert!(!qemu.args(&plan(Accel::Tcg, None)).join(" ").contains("-incoming"));
    }

    #[test]
    fn a_tap_becomes_a_virtio_net_device() {
        let qemu = Qemu { binary: "qemu".into(), tsc_khz: None };
        let tap = TapNic { ifname: "hgabcd01234567".into(), mac: "52:54:00:1d:00:06".into() };
        let joined = qemu.args(&plan(Accel::Kvm, Some(tap))).join(" ");
        assert!(
            joined.contains("tap,id=n0,ifname=hgabcd01234567,script=no,downscript=no"),
            "{joined}"
        );
        assert!(joined.contains("virtio-net-device,netdev=n0,mac=52:54:00:1d:00:06"), "{joined}");
        assert!(joined.contains("-accel kvm -cpu host"), "{joined}");
    }
}
