/* lkprobe: issue one raw syscall from inside a container and print "OK" or the errno's name.
 * Built statically at test time (tests/security/conftest.py) and copied into a busybox rootfs.
 * usage: lkprobe OP [ARG]  - see the table in main(). Exit code 0 = the call succeeded. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/keyctl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif

static const char *ename(int e) {
    switch (e) {
    case EPERM: return "EPERM"; case EACCES: return "EACCES"; case EROFS: return "EROFS";
    case ENOSYS: return "ENOSYS"; case ESRCH: return "ESRCH"; case EINVAL: return "EINVAL";
    case ENOENT: return "ENOENT"; case ENOEXEC: return "ENOEXEC"; case EBADF: return "EBADF";
    case EFAULT: return "EFAULT"; case EBUSY: return "EBUSY"; case ENOTDIR: return "ENOTDIR";
    case EAFNOSUPPORT: return "EAFNOSUPPORT"; case ENODEV: return "ENODEV"; case EEXIST: return "EEXIST";
    default: return "EOTHER";
    }
}

static int report(long r) {
    if (r < 0) { printf("%s\n", ename(errno)); return 1; }
    printf("OK\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: lkprobe OP [ARG]\n"); return 2; }
    const char *op = argv[1];
    const char *arg = argc > 2 ? argv[2] : "";
    static char image[64] = "\177ELF not a module";
    if (!strcmp(op, "keyctl")) return report(syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0));
    if (!strcmp(op, "add_key")) return report(syscall(SYS_add_key, "user", "lk", "x", 1, KEY_SPEC_PROCESS_KEYRING));
    if (!strcmp(op, "unshare_user")) return report(unshare(CLONE_NEWUSER));
    if (!strcmp(op, "unshare_net")) return report(unshare(CLONE_NEWNET));
    if (!strcmp(op, "unshare_mnt")) return report(unshare(CLONE_NEWNS));
    if (!strcmp(op, "clone_user")) {
        long pid = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
        if (pid == 0) _exit(0);
        if (pid > 0) waitpid(pid, 0, 0);
        return report(pid);
    }
    if (!strcmp(op, "clone3")) return report(syscall(SYS_clone3, 0, 0));
    if (!strcmp(op, "setns")) {
        int fd = open("/proc/1/ns/net", O_RDONLY);
        if (fd < 0) return report(fd);
        return report(setns(fd, 0));
    }
    if (!strcmp(op, "ptrace")) return report(ptrace(PTRACE_ATTACH, atoi(arg), 0, 0));
    if (!strcmp(op, "init_module")) return report(syscall(SYS_init_module, image, sizeof image, ""));
    if (!strcmp(op, "finit_module")) {
        int fd = open("/bin/busybox", O_RDONLY);
        return report(syscall(SYS_finit_module, fd, "", 0));
    }
    if (!strcmp(op, "delete_module")) return report(syscall(SYS_delete_module, "lk_no_such_module", O_NONBLOCK));
    if (!strcmp(op, "mount")) return report(mount("none", "/tmp", "tmpfs", 0, ""));
    if (!strcmp(op, "remount_rw")) return report(mount(NULL, arg[0] ? arg : "/", NULL, MS_REMOUNT | MS_BIND, NULL));
    if (!strcmp(op, "umount")) return report(umount2(arg, MNT_DETACH));
    if (!strcmp(op, "bpf")) return report(syscall(SYS_bpf, 0, 0, 0));
    if (!strcmp(op, "perf_event_open")) return report(syscall(SYS_perf_event_open, 0, 0, -1, -1, 0));
    if (!strcmp(op, "kexec_load")) return report(syscall(SYS_kexec_load, 0, 0, 0, 0));
    if (!strcmp(op, "open_by_handle_at")) return report(syscall(SYS_open_by_handle_at, AT_FDCWD, 0, 0));
    if (!strcmp(op, "clock_settime")) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return report(clock_settime(CLOCK_REALTIME, &ts));
    }
    if (!strcmp(op, "personality")) return report(personality(PER_LINUX | ADDR_NO_RANDOMIZE));
    if (!strcmp(op, "vsock")) return report(socket(AF_VSOCK, SOCK_STREAM, 0));
    if (!strcmp(op, "io_uring")) return report(syscall(SYS_io_uring_setup, 1, 0));
    if (!strcmp(op, "userfaultfd")) return report(syscall(SYS_userfaultfd, 0));
    if (!strcmp(op, "swapon")) return report(syscall(SYS_swapon, "/lk-no-such-swap", 0));
    if (!strcmp(op, "syslog")) return report(syscall(SYS_syslog, 10, 0, 0));   /* SYSLOG_ACTION_SIZE_BUFFER */
    if (!strcmp(op, "pivot_root")) return report(syscall(SYS_pivot_root, ".", "."));
    if (!strcmp(op, "chroot")) return report(chroot("/"));
    if (!strcmp(op, "open")) return report(open(arg, O_RDONLY));
    fprintf(stderr, "lkprobe: unknown op %s\n", op);
    return 2;
}
