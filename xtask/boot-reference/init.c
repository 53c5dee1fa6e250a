/* The shared research's minimal PID 1 (microvm-boot.md, appendix 20-guest.sh):
 * the reference guest of `cargo xtask bench microvm-reference`. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <unistd.h>
static void say(const char *dev, const char *msg) {
    int fd = open(dev, O_WRONLY | O_NOCTTY);
    if (fd >= 0) { write(fd, msg, strlen(msg)); close(fd); }
}
int main(void) {
    say("/dev/console", "GUEST-INIT-READY\n");
    mount("devtmpfs", "/dev", "devtmpfs", 0, 0);
    mount("proc", "/proc", "proc", 0, 0);
    say("/dev/hvc0", "AGENT-READY\n");
    sync();
    const char *e = getenv("mvm_exit");          /* unknown k=v cmdline params arrive as env */
    if (!e || strcmp(e, "reboot") != 0)
        reboot(RB_POWER_OFF);                    /* needs ACPI (microvm GED) */
    reboot(RB_AUTOBOOT);                         /* reboot=t + qemu -no-reboot => qemu exits */
    return 0;
}
