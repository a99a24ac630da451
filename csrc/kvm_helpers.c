#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/kvm.h>

#include "kvm_helpers.h"

long pyvmm_ioctl(int fd, unsigned long request, void *arg)
{
    long ret = ioctl(fd, request, arg);
    return ret < 0 ? -errno : ret;
}

long pyvmm_ioctl_val(int fd, unsigned long request, unsigned long arg)
{
    long ret = ioctl(fd, request, arg);
    return ret < 0 ? -errno : ret;
}

static void pyvmm_kick_handler(int sig)
{
    (void)sig; /* Its only job is to make a blocking KVM_RUN return EINTR. */
}

int pyvmm_install_kick_handler(void)
{
    /* glibc reserves the first real-time signals; SIGRTMIN is past them. */
    int sig = SIGRTMIN + 1;
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = pyvmm_kick_handler;
    sigemptyset(&sa.sa_mask);
    if (sigaction(sig, &sa, NULL) < 0)
        return -errno;
    return sig;
}

int pyvmm_cmpxchg16b(void *ptr, uint64_t *expected, uint64_t new_lo, uint64_t new_hi)
{
    unsigned char swapped;
    uint64_t lo = expected[0], hi = expected[1];

    if ((uintptr_t)ptr & 15)
        return -1; /* the CPU would raise #GP: refuse rather than crash */
    __asm__ volatile("lock cmpxchg16b %1\n\tsetz %0"
                     : "=q"(swapped), "+m"(*(volatile unsigned __int128 *)ptr), "+a"(lo), "+d"(hi)
                     : "b"(new_lo), "c"(new_hi)
                     : "memory", "cc");
    expected[0] = lo;
    expected[1] = hi;
    return swapped;
}

uint64_t pyvmm_run(int vcpu_fd, struct kvm_run *run)
{
    for (;;) {
        if (ioctl(vcpu_fd, KVM_RUN, 0) < 0) {
            if (errno == EAGAIN)
                continue;
            if (errno == EINTR)
                return KVM_EXIT_INTR;
            return PYVMM_RUN_ERROR | (uint64_t)errno << 8;
        }
        uint32_t reason = run->exit_reason;
        if (reason == KVM_EXIT_IO && run->io.count == 1 && run->io.size <= 4) {
            uint64_t packed = reason | PYVMM_RUN_PIO | (uint64_t)run->io.size << 12 |
                              (uint64_t)run->io.port << 16;
            if (run->io.direction == KVM_EXIT_IO_OUT) {
                uint32_t value = 0;
                memcpy(&value, (char *)run + run->io.data_offset, run->io.size);
                packed |= PYVMM_RUN_OUT | (uint64_t)value << 32;
            } else {
                packed |= (uint64_t)run->io.data_offset << 32;
            }
            return packed;
        }
        return reason & 0xff;
    }
}

int pyvmm_coalesced_drain(void *ring_page, struct pyvmm_coalesced *out, int max)
{
    struct kvm_coalesced_mmio_ring *ring = ring_page;
    const uint32_t slots = (4096 - sizeof(*ring)) / sizeof(struct kvm_coalesced_mmio);
    uint32_t first = ring->first;
    uint32_t last = __atomic_load_n(&ring->last, __ATOMIC_ACQUIRE);
    int n = 0;

    while (first != last && n < max && first < slots) {
        struct kvm_coalesced_mmio *e = &ring->coalesced_mmio[first];
        out[n].addr = e->phys_addr;
        out[n].len = e->len > 8 ? 8 : e->len;
        out[n].pio = e->pio;
        memcpy(out[n].data, e->data, 8);
        n++;
        first = (first + 1) % slots;
    }
    __atomic_store_n(&ring->first, first, __ATOMIC_RELEASE);
    return n;
}

long pyvmm_bench_io_loop(int vcpu_fd, struct kvm_run *run)
{
    long exits = 0;

    for (;;) {
        if (ioctl(vcpu_fd, KVM_RUN, 0) < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (run->exit_reason == KVM_EXIT_IO)
            exits++;
        else if (run->exit_reason == KVM_EXIT_HLT)
            return exits;
        else
            return -EPROTO;
    }
}

int pyvmm_tap_open(const char *name)
{
    struct ifreq ifr;
    int fd, err;

    if (strlen(name) >= IFNAMSIZ)
        return -ENAMETOOLONG;
    fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    memset(&ifr, 0, sizeof(ifr));
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    memcpy(ifr.ifr_name, name, strlen(name));
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        err = errno;
        close(fd);
        return -err;
    }
    return fd;
}
