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
 * For bench/exit_cost.py only: run a vCPU until it halts, doing nothing for
 * its port I/O exits, so that pyvmm's Python exit handling can be timed
 * against a loop with no Python in it. Returns the number of port I/O
 * exits, -errno if KVM_RUN failed, or -EPROTO on any other kind of exit.
 */
long pyvmm_bench_io_loop(int vcpu_fd, struct kvm_run *run);
