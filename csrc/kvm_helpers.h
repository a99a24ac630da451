/*
 * Small C helpers for the KVM bindings. Declared to cffi in build_kvm.py.
 *
 * ioctl() is variadic, and errno is easy to lose between a C call and the
 * Python code that inspects it, so the wrappers return -errno on failure
 * instead. cffi releases the GIL around each call, so KVM_RUN blocks only
 * the calling thread.
 */
long pyvmm_ioctl(int fd, unsigned long request, void *arg);
long pyvmm_ioctl_val(int fd, unsigned long request, unsigned long arg);

/*
 * The signal used to kick a vCPU thread out of KVM_RUN. It gets an empty
 * handler (not SIG_DFL, which would kill the process, and not SIG_IGN,
 * which would never interrupt the ioctl). Returns the signal number, or
 * -errno if the handler could not be installed.
 */
int pyvmm_install_kick_handler(void);

/*
 * LOCK CMPXCHG16B on host memory backing guest RAM (16-byte aligned), for
 * carrying out the instruction when KVM cannot emulate it. expected[0..1]
 * is RAX:RDX on entry and receives the old value. Returns 1 if it swapped,
 * 0 if not, -1 if ptr is not 16-byte aligned.
 */
int pyvmm_cmpxchg16b(void *ptr, uint64_t *expected, uint64_t new_lo, uint64_t new_hi);

/*
 * KVM_RUN for the vCPU loop, with the exit packed into one integer so that
 * the common exit, one port access, costs Python a single call:
 *   bits 0-7    the exit reason (KVM_EXIT_*), or PYVMM_RUN_ERROR with the
 *               errno in bits 8-31; EINTR comes back as KVM_EXIT_INTR, and
 *               EAGAIN (a vCPU woken while it waits for INIT/SIPI) is retried;
 *   bit  8      PYVMM_RUN_PIO: KVM_EXIT_IO of one access of 1, 2 or 4 bytes
 *   bit  9      PYVMM_RUN_OUT: it is an out
 *   bits 12-15  its size; bits 16-31 its port;
 *   bits 32-63  the value written (out), or where in the vCPU mapping the
 *               value read goes (in: run->io.data_offset).
 * Any other exit is read from struct kvm_run as usual.
 */
#define PYVMM_RUN_ERROR 255
#define PYVMM_RUN_PIO 256
#define PYVMM_RUN_OUT 512
uint64_t pyvmm_run(int vcpu_fd, struct kvm_run *run);

/* One coalesced MMIO or PIO write, copied out of KVM's ring. */
struct pyvmm_coalesced {
    uint64_t addr;
    uint32_t len;
    uint32_t pio;
    uint8_t data[8];
};

/*
 * Take up to max entries from the coalesced MMIO/PIO ring (the page at
 * KVM_COALESCED_MMIO_PAGE_OFFSET of a vCPU mapping) into out, oldest first,
 * and give their slots back to KVM. Returns how many were taken.
 */
int pyvmm_coalesced_drain(void *ring_page, struct pyvmm_coalesced *out, int max);

/*
 * For bench/run.py only: run a vCPU until it halts, doing nothing for
 * its port I/O exits, so that pyvmm's Python exit handling can be timed
 * against a loop with no Python in it. Returns the number of port I/O
 * exits, -errno if KVM_RUN failed, or -EPROTO on any other kind of exit.
 */
long pyvmm_bench_io_loop(int vcpu_fd, struct kvm_run *run);

/*
 * Opens /dev/net/tun and attaches it to the existing tap device NAME, as a
 * tap with no packet-information header (IFF_TAP | IFF_NO_PI), without
 * creating one (IFF_TUN_EXCL is not set, but the device must exist: pyvmm
 * refuses a name that /sys/class/net does not list). Non-blocking and
 * close-on-exec. Returns the descriptor, or -errno.
 */
int pyvmm_tap_open(const char *name);
