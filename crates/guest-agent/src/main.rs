//! `hangar-guest-agent`: PID 1 of every hangar microVM.
//!
//! It is deliberately synchronous std code with no runtime: it does a few
//! things in order and must be small and boring. Order:
//! mounts → network (in a thread) while finding the virtio-serial port →
//! say `ready` → wait for `start` → dockerd (if the image has it) → runner
//! as the unprivileged user → report → power off.
//!
//! Power-off: the kernel runs with `reboot=t` and QEMU with `-no-reboot`, so
//! `reboot(RB_AUTOBOOT)` ends the QEMU process, and the host sees "VM gone"
//! as the process exit (`acpi=off` has no power-off device). Anything going
//! wrong also ends in power-off: a hung PID 1 would hold a VM forever.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hangar_guest_agent::prewarm;
use hangar_guest_agent::{
    AgentConfig, CONFIG_PATH, GuestMessage, HostMessage, JIT_CONFIG_MARKER, PORT_NAME, encode_line,
};

mod net;

fn main() {
    let is_init = std::process::id() == 1;
    let mut port: Option<File> = None;
    if let Err(message) = run(is_init, &mut port) {
        log(&format!("error: {message}"));
        if let Some(port) = port.as_mut() {
            let _ = port.write_all(&encode_line(&GuestMessage::Error { message }));
        }
    }
    power_off(is_init);
}

/// Log lines carry the guest's uptime (CLOCK_BOOTTIME, in seconds with
/// millisecond precision), to see where boot and dispatch time goes.
fn log(line: &str) {
    let ms = boot_time_ms();
    eprintln!("hangar-agent: [{}.{:03}] {line}", ms / 1000, ms % 1000);
}

/// Milliseconds since the guest booted (0 if the clock cannot be read).
fn boot_time_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_or(0, |t| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1000
            + u64::try_from(t.tv_nsec() / 1_000_000).unwrap_or(0)
    })
}

fn run(is_init: bool, port_out: &mut Option<File>) -> Result<(), String> {
    if is_init {
        mount_basics();
        let _ = nix::unistd::sethostname("hangar");
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    log("mounted");
    // The network comes up while the agent finds its port; `ready` waits
    // for it, so a pre-booted VM is fully prepared when it says ready.
    let network = std::thread::spawn(move || {
        let result = network_up(&cmdline);
        log("network up");
        result
    });
    let config: AgentConfig = serde_json::from_slice(
        &std::fs::read(CONFIG_PATH).map_err(|e| format!("reading {CONFIG_PATH}: {e}"))?,
    )
    .map_err(|e| format!("parsing {CONFIG_PATH}: {e}"))?;
    // Everything the runner's start needs that does not depend on the spec
    // is known now (the account was resolved when the image was built), so
    // a pre-booted VM's dispatch is only fork + exec.
    let user = &config.runner_user;

    let port_path = find_port(Duration::from_secs(10))?;
    let port = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&port_path)
        .map_err(|e| format!("opening {}: {e}", port_path.display()))?;
    let mut writer = port.try_clone().map_err(|e| format!("cloning the port: {e}"))?;
    *port_out = Some(port.try_clone().map_err(|e| format!("cloning the port: {e}"))?);
    network.join().map_err(|_| "the network thread panicked".to_owned())??;
    send(&mut writer, &GuestMessage::Ready)?;
    log("ready");
    // The dispatch's exec should not wait for the disk (see `prewarm`).
    // Finding the files reads their headers, so it comes after `ready`: a
    // pre-booted VM does it while idle, and a spec that is already waiting
    // loses nothing, as its exec would read the same blocks.
    if let Some(program) = config.runner_command.first() {
        prewarm::prewarm(Path::new(program));
    }

    let mut reader = BufReader::new(port);
    let (runner_id, jit_config, env, now) = loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).map_err(|e| format!("reading the port: {e}"))?;
        if n == 0 {
            // The host end is not connected (e.g. during a snapshot); wait.
            pause(Duration::from_millis(20));
            continue;
        }
        match serde_json::from_str::<HostMessage>(line.trim()) {
            Ok(HostMessage::Ping) => send(&mut writer, &GuestMessage::Ready)?,
            Ok(HostMessage::Start { runner_id, jit_config, env, now_unix_ms }) => {
                break (runner_id, jit_config, env, now_unix_ms);
            }
            Err(e) => log(&format!("ignoring a malformed message: {e}")),
        }
    };
    // No console line before the runner is started: under TCG a serial
    // line costs milliseconds, and this is the dispatch path.
    let received = boot_time_ms();
    if let Some(ms) = now.and_then(|ms| i64::try_from(ms).ok()) {
        let now = nix::sys::time::TimeSpec::new(ms / 1000, (ms % 1000) * 1_000_000);
        if let Err(e) = nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, now) {
            log(&format!("setting the clock: {e}"));
        }
    }
    let _ = nix::unistd::sethostname(&runner_id);

    if let Some(dockerd) = config.dockerd.as_deref().filter(|d| Path::new(d).exists()) {
        start_dockerd(dockerd)?;
    }

    let argv: Vec<String> =
        config.runner_command.iter().map(|a| a.replace(JIT_CONFIG_MARKER, &jit_config)).collect();
    let (program, args) = argv.split_first().ok_or("runner_command is empty")?;
    let mut command = if user.supplementary_groups {
        // std's uid/gid switch drops supplementary groups (e.g. `docker`)
        // and setting them needs `pre_exec` (unsafe, which the workspace
        // forbids), so setpriv does it: one extra exec, only for images
        // whose runner user is in other groups.
        let mut c = Command::new("/usr/bin/setpriv");
        c.arg(format!("--reuid={}", user.uid))
            .arg(format!("--regid={}", user.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(program)
            .args(args);
        c
    } else {
        // One exec: the forked child switches gid, then uid (std also
        // clears the supplementary groups), then execs the runner, and
        // `spawn` returns once that exec succeeded.
        let mut c = Command::new(program);
        c.args(args).uid(user.uid).gid(user.gid);
        c
    };
    use std::os::unix::process::CommandExt as _;
    command
        .env_clear()
        .env("HOME", &user.home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG", "C.UTF-8")
        .env("HANGAR_RUNNER_ID", &runner_id)
        .envs(env)
        .current_dir(&config.runner_workdir)
        .stdin(Stdio::null());
    let mut child = command.spawn().map_err(|e| format!("starting {program}: {e}"))?;
    let pid = child.id();
    send(&mut writer, &GuestMessage::RunnerStarted { pid })?;
    log(&format!(
        "runner {runner_id} started, pid {pid} ({} ms after the spec arrived)",
        boot_time_ms().saturating_sub(received)
    ));

    let code = if is_init {
        wait_reaping(pid)
    } else {
        child.wait().map_err(|e| format!("waiting for the runner: {e}"))?.code()
    };
    log(&format!("runner exited, code {code:?}"));
    send(&mut writer, &GuestMessage::RunnerExited { code })?;
    Ok(())
}

fn send(port: &mut File, message: &GuestMessage) -> Result<(), String> {
    port.write_all(&encode_line(message)).map_err(|e| format!("writing the port: {e}"))
}

/// As PID 1 we inherit every orphan; reap them all while waiting for the
/// runner so none stays a zombie.
fn wait_reaping(runner: u32) -> Option<i32> {
    use nix::sys::wait::{WaitStatus, waitpid};
    use nix::unistd::Pid;
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(pid, code)) if pid.as_raw().unsigned_abs() == runner => {
                return Some(code);
            }
            Ok(WaitStatus::Signaled(pid, _, _)) if pid.as_raw().unsigned_abs() == runner => {
                return None;
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return None,
        }
    }
}

fn mount_basics() {
    use nix::mount::{MsFlags, mount};
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let mounts: [(&str, &str, MsFlags, Option<&str>); 8] = [
        ("proc", "/proc", nosuid | MsFlags::MS_NOEXEC, None),
        ("sysfs", "/sys", nosuid | MsFlags::MS_NOEXEC, None),
        ("devtmpfs", "/dev", MsFlags::MS_NOSUID, None),
        (
            "devpts",
            "/dev/pts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("mode=620,ptmxmode=666"),
        ),
        ("tmpfs", "/dev/shm", nosuid, Some("mode=1777")),
        ("tmpfs", "/run", nosuid, Some("mode=755")),
        ("tmpfs", "/tmp", nosuid, Some("mode=1777")),
        ("cgroup2", "/sys/fs/cgroup", nosuid | MsFlags::MS_NOEXEC, None),
    ];
    for (fstype, target, flags, data) in mounts {
        let _ = std::fs::create_dir_all(target);
        // EBUSY (already mounted, e.g. /dev by DEVTMPFS_MOUNT) is fine.
        if let Err(e) = mount(Some(fstype), target, Some(fstype), flags, data)
            && e != nix::errno::Errno::EBUSY
        {
            log(&format!("mounting {target}: {e}"));
        }
    }
    let _ = std::os::unix::fs::symlink("/proc/self/fd", "/dev/fd");
}

/// `hangar_net=ADDR/PREFIX,GATEWAY,DNS` on the kernel command line
/// configures eth0 (addresses are not secret). Without it the VM has only
/// loopback. No `ip` is run: see `net.rs`.
fn network_up(cmdline: &str) -> Result<(), String> {
    let mut rtnl = net::Rtnl::open()?;
    rtnl.link_up("lo")?;
    let Some(net) = cmdline.split_whitespace().find_map(|w| w.strip_prefix("hangar_net=")) else {
        return Ok(());
    };
    let bad = || format!("bad hangar_net={net}: expected ADDR/PREFIX,GATEWAY[,DNS]");
    let mut parts = net.split(',');
    let (Some(addr), Some(gateway)) = (parts.next(), parts.next()) else {
        return Err(bad());
    };
    let (addr, prefix) = addr.split_once('/').ok_or_else(bad)?;
    let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(bad)?;
    let gateway: std::net::Ipv4Addr = gateway.parse().map_err(|_| bad())?;
    rtnl.addr_add("eth0", addr, prefix)?;
    rtnl.link_up("eth0")?;
    rtnl.default_route_add(gateway)?;
    if let Some(dns) = parts.next() {
        std::fs::write("/etc/resolv.conf", format!("nameserver {dns}\n"))
            .map_err(|e| format!("writing /etc/resolv.conf: {e}"))?;
    }
    Ok(())
}

/// The port's device node, found by its name in sysfs (no udev here).
fn find_port(timeout: Duration) -> Result<PathBuf, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(entries) = std::fs::read_dir("/sys/class/virtio-ports") {
            for entry in entries.flatten() {
                let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
                if name.trim() == PORT_NAME {
                    let dev = Path::new("/dev").join(entry.file_name());
                    if dev.exists() {
                        return Ok(dev);
                    }
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no virtio-serial port named {PORT_NAME} within {timeout:?}"));
        }
        pause(Duration::from_millis(10));
    }
}

fn start_dockerd(dockerd: &str) -> Result<(), String> {
    let log_file = File::create("/var/log/dockerd.log").map_err(|e| format!("dockerd log: {e}"))?;
    let err_file = log_file.try_clone().map_err(|e| format!("dockerd log: {e}"))?;
    Command::new(dockerd)
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(err_file)
        .spawn()
        .map_err(|e| format!("starting {dockerd}: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !Path::new("/var/run/docker.sock").exists() {
        if Instant::now() > deadline {
            return Err("dockerd did not create /var/run/docker.sock within 60 s".into());
        }
        pause(Duration::from_millis(50));
    }
    log("dockerd is up");
    Ok(())
}

/// The agent is plain threads-free std code with no async runtime, so the
/// workspace rule against `std::thread::sleep` (it blocks runtime threads)
/// does not apply here.
#[allow(clippy::disallowed_methods)]
fn pause(duration: Duration) {
    std::thread::sleep(duration);
}

fn power_off(is_init: bool) {
    if !is_init {
        return;
    }
    nix::unistd::sync();
    // With reboot=t and QEMU's -no-reboot this ends the VM.
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // Not reached; PID 1 must never return.
    loop {
        pause(Duration::from_secs(3600));
    }
}
