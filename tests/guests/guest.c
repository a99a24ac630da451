/*
 * pyvmm test guest: a freestanding 64-bit program entered like Linux
 * (64-bit boot protocol, RSI = zero page). It reports what the loader handed
 * it on COM1, using polled I/O, then does what "action=" on its command line
 * says: reset (default, through the i8042), halt (cli; hlt), triple (a fault
 * with no usable IDT), wait (sti; hlt forever), spin (cli; a tight loop
 * forever), hostile (hammer ports and MMIO nobody claims, then triple fault),
 * virtio (break every rule of the virtio-blk device at 0xd0000000: virtio.c),
 * flood (64 KiB of output, then reset).
 *
 * Every line it prints is checked by tests/test_boot_guest.py. Guest kernel
 * code may be emulated instruction by instruction on some hosts, so the
 * program is kept short.
 */
#pragma GCC visibility push(hidden)

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

/* struct boot_params offsets (Documentation/arch/x86/zero-page.rst). */
#define BP_EXT_RAMDISK_IMAGE 0x0c0
#define BP_EXT_RAMDISK_SIZE 0x0c4
#define BP_EXT_CMD_LINE_PTR 0x0c8
#define BP_E820_ENTRIES 0x1e8
#define BP_VERSION 0x206
#define BP_TYPE_OF_LOADER 0x210
#define BP_RAMDISK_IMAGE 0x218
#define BP_RAMDISK_SIZE 0x21c
#define BP_CMD_LINE_PTR 0x228
#define BP_E820_TABLE 0x2d0

#define COM1 0x3f8

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
    u8 v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

void virtio_abuse(void); /* virtio.c */
void puts(const char *s);
void putdec(u64 v);
void puthex(u64 v, int digits);

static void putc(char c)
{
    while (!(inb(COM1 + 5) & 0x20)) /* LSR.THRE */
        ;
    outb(COM1, c);
}

void puts(const char *s)
{
    while (*s)
        putc(*s++);
}

void puthex(u64 v, int digits)
{
    puts("0x");
    for (int i = digits - 1; i >= 0; i--)
        putc("0123456789abcdef"[(v >> (i * 4)) & 0xf]);
}

void putdec(u64 v)
{
    char buf[21];
    int i = 20;
    buf[i] = 0;
    do {
        buf[--i] = '0' + v % 10;
        v /= 10;
    } while (v);
    puts(&buf[i]);
}

static u32 rd32(const u8 *bp, int off) { return *(const u32 *)(bp + off); }

static int has_word(const char *s, const char *w)
{
    for (; *s; s++) {
        const char *a = s, *b = w;
        while (*b && *a == *b)
            a++, b++;
        if (!*b && (*a == 0 || *a == ' '))
            return 1;
    }
    return 0;
}

/* The decimal number after "name" (e.g. "rate=") on the command line, or dflt. */
static u64 number_after(const char *s, const char *name, u64 dflt)
{
    for (const char *start = s; *s; s++) {
        if (s != start && s[-1] != ' ')
            continue;
        const char *a = s, *b = name;
        while (*b && *a == *b)
            a++, b++;
        if (*b || *a < '0' || *a > '9')
            continue;
        u64 v = 0;
        while (*a >= '0' && *a <= '9')
            v = v * 10 + (u64)(*a++ - '0');
        return v;
    }
    return dflt;
}

/* PIT channel 0 (i8254: 1193182 Hz input clock), counting down from 65536
 * in mode 2: a clock the guest reads without interrupts. */
#define PIT_HZ 1193182
static u16 pit_read(void)
{
    outb(0x43, 0x00); /* latch channel 0 */
    u16 lo = inb(0x40);
    return (u16)(lo | (u16)inb(0x40) << 8);
}

static u32 crc_table[256];

/* CRC-32 as zlib computes it (reflected polynomial 0xedb88320). */
static u32 crc32(const u8 *p, u64 n)
{
    for (u32 i = 0; i < 256; i++) {
        u32 c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xedb88320 ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
    u32 c = 0xffffffff;
    while (n--)
        c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffff;
}

/* Ports something answers: KVM's in-kernel PIC (0x20, 0xa0), PIT (0x40-0x43),
 * speaker/PIT gate (0x61) and ELCR (0x4d0); pyvmm's i8042, CMOS, COM1,
 * pvpanic and ACPI PM1 block. Every other port must read as all-ones. */
static int claimed(u32 port, u32 size)
{
    static const u16 ranges[][2] = {
        {0x20, 0x22}, {0xa0, 0xa2}, {0x40, 0x44}, {0x4d0, 0x4d2}, {0x60, 0x65},
        {0x70, 0x72}, {0x3f8, 0x400}, {0x505, 0x506}, {0x600, 0x606},
    };
    for (unsigned i = 0; i < sizeof(ranges) / sizeof(ranges[0]); i++)
        if (port < ranges[i][1] && port + size > ranges[i][0])
            return 1;
    return 0;
}

static u32 in_sized(u16 port, int size)
{
    u32 v = 0;
    if (size == 1)
        __asm__ volatile("inb %1, %b0" : "+a"(v) : "Nd"(port));
    else if (size == 2)
        __asm__ volatile("inw %1, %w0" : "+a"(v) : "Nd"(port));
    else
        __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static void out_sized(u16 port, int size, u32 v)
{
    if (size == 1)
        __asm__ volatile("outb %b0, %1" : : "a"(v), "Nd"(port));
    else if (size == 2)
        __asm__ volatile("outw %w0, %1" : : "a"(v), "Nd"(port));
    else
        __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port));
}

/* What a hostile or broken guest might do: write junk of every size to every
 * port nobody claims and read every port back; write and read MMIO at
 * addresses that are neither RAM nor a device (the rest of the 32-bit MMIO
 * gap, and above this guest's RAM when it has less than 3 GiB). pyvmm must
 * answer all of it like an empty bus and keep running. */
static void hostile(void)
{
    static const int sizes[] = {1, 2, 4};
    u32 seed = 12345, ports_bad = 0, mmio_bad = 0;
    u64 port_exits = 0, mmio_exits = 0;

    for (int s = 0; s < 3; s++) {
        for (u32 port = 0; port <= 0xffff; port++) {
            u32 size = sizes[s], ones = size == 4 ? 0xffffffff : (1u << (8 * size)) - 1;
            if (claimed(port, size)) {
                in_sized(port, size); /* reads are harmless everywhere */
                port_exits++;
                continue;
            }
            seed = seed * 1103515245 + 12345;
            out_sized(port, size, seed);
            if (in_sized(port, size) != ones)
                ports_bad++;
            port_exits += 2;
        }
    }

    /* Every 1 MiB from 3 GiB to the IOAPIC, plus the page below LAPIC and
     * the absent HPET; and above RAM (the test gives 64 MiB). */
    u64 ram_end = 64 << 20;
    for (u64 a = 0xc0000000; a < 0x100000000; a += 0x100000) {
        if (a == 0xfec00000 || a == 0xfee00000 || a >= 0xfff00000)
            continue; /* IOAPIC and LAPIC are KVM's; the top is KVM's TSS and EPT pages */
        for (int k = 0; k < 2; k++) {
            u64 addr = k ? a - 0xc0000000 + ram_end : a; /* a matching offset above RAM */
            volatile u8 *b = (volatile u8 *)addr;
            volatile u16 *w = (volatile u16 *)(addr + 2);
            volatile u32 *d = (volatile u32 *)(addr + 4);
            volatile u64 *q = (volatile u64 *)(addr + 8);
            *b = 0x5a;
            *w = 0x5a5a;
            *d = 0x5a5a5a5a;
            *q = 0x5a5a5a5a5a5a5a5aul;
            if (*b != 0xff || *w != 0xffff || *d != 0xffffffff || *q != ~0ul)
                mmio_bad++;
            mmio_exits += 8;
        }
    }
    puts("hostile: ");
    putdec(port_exits);
    puts(" port accesses, ");
    putdec(ports_bad);
    puts(" unclaimed ports not all-ones; ");
    putdec(mmio_exits);
    puts(" MMIO accesses, ");
    putdec(mmio_bad);
    puts(" not all-ones\n");
}

static void uart_selftest(void)
{
    int ok = 1;
    outb(COM1 + 7, 0x5a); /* scratch register keeps what is written */
    ok &= inb(COM1 + 7) == 0x5a;
    outb(COM1 + 2, 0x07); /* FCR: enable and clear FIFOs */
    ok &= (inb(COM1 + 2) & 0xc0) == 0xc0; /* IIR: FIFOs enabled (16550A) */
    outb(COM1 + 4, 0x1a); /* MCR: loopback, RTS, OUT2 */
    ok &= (inb(COM1 + 6) & 0xf0) == 0x90; /* MSR: CTS and DCD follow RTS and OUT2 */
    outb(COM1, 'L'); /* loopback: transmitted byte comes back */
    ok &= (inb(COM1 + 5) & 0x01) && inb(COM1) == 'L';
    ok &= !(inb(COM1 + 5) & 0x01);
    outb(COM1 + 4, 0x03); /* MCR: normal operation, DTR + RTS */
    puts(ok ? "uart: ok\n" : "uart: FAILED\n");
}

static u8 xsave_area[4096] __attribute__((aligned(64)));

/* XSAVE and XRSTOR at CPL0 (a host that emulates kernel mode may have to
 * carry them out itself): XMM0 must come back as saved, and the area must
 * hold it where the SDM's legacy region puts it (byte 160). */
static void xsave_selftest(void)
{
    static const u64 pattern[2] __attribute__((aligned(16))) = {0x1122334455667788, 0x99aabbccddeeff00};
    static const u64 zero[2] __attribute__((aligned(16)));
    u64 back[2] __attribute__((aligned(16)));
    u32 a, b, c, d;
    u64 cr4;

    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
    if (!(c & (1u << 26))) { /* CPUID.1:ECX.XSAVE */
        puts("xsave: not supported\n");
        return;
    }
    __asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
    cr4 |= (1 << 9) | (1 << 18); /* OSFXSR, OSXSAVE */
    __asm__ volatile("mov %0, %%cr4" : : "r"(cr4));
    __asm__ volatile("xsetbv" : : "a"(3), "d"(0), "c"(0)); /* XCR0 = x87 | SSE */
    __asm__ volatile("movdqa %0, %%xmm0" : : "m"(pattern));
    __asm__ volatile("xsave64 %0" : "+m"(xsave_area) : "a"(-1), "d"(-1));
    __asm__ volatile("movdqa %0, %%xmm0" : : "m"(zero));
    __asm__ volatile("xrstor64 %0" : : "m"(xsave_area), "a"(-1), "d"(-1));
    __asm__ volatile("movdqa %%xmm0, %0" : "=m"(back));
    int ok = back[0] == pattern[0] && back[1] == pattern[1];
    ok &= *(const u64 *)(xsave_area + 160) == pattern[0];
    ok &= (*(const u64 *)(xsave_area + 512) & 2) != 0; /* XSTATE_BV: SSE saved */
    puts(ok ? "xsave: ok\n" : "xsave: FAILED\n");
}

void guest_main(const u8 *bp, u64 entry)
{
    u64 cr0, cr4;
    u32 efer_lo, efer_hi;

    puts("pyvmm test guest\n");
    puts("entry: ");
    puthex(entry, 8);
    puts(" zero page: ");
    puthex((u64)bp, 8);
    puts("\n");

    __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
    __asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
    __asm__ volatile("rdmsr" : "=a"(efer_lo), "=d"(efer_hi) : "c"(0xc0000080));
    puts("long mode: ");
    puts((cr0 & 0x80000001) == 0x80000001 && (cr4 & 0x20) && (efer_lo & 0x500) == 0x500
             ? "yes\n"
             : "NO\n");

    puts("loader: type ");
    puthex(bp[BP_TYPE_OF_LOADER], 2);
    puts(" protocol ");
    puthex(*(const u16 *)(bp + BP_VERSION), 4);
    puts("\n");

    const char *cmdline =
        (const char *)(rd32(bp, BP_CMD_LINE_PTR) | (u64)rd32(bp, BP_EXT_CMD_LINE_PTR) << 32);
    puts("cmdline: ");
    puts(cmdline);
    puts("\n");

    int n = bp[BP_E820_ENTRIES];
    for (int i = 0; i < n; i++) {
        const u8 *e = bp + BP_E820_TABLE + 20 * i;
        u64 addr = *(const u64 *)e, size = *(const u64 *)(e + 8);
        u32 type = *(const u32 *)(e + 16);
        puts("e820: ");
        puthex(addr, 16);
        puts("-");
        puthex(addr + size - 1, 16);
        puts(type == 1 ? " ram\n" : type == 2 ? " reserved\n" : " other\n");
    }

    u64 rd_addr = rd32(bp, BP_RAMDISK_IMAGE) | (u64)rd32(bp, BP_EXT_RAMDISK_IMAGE) << 32;
    u64 rd_size = rd32(bp, BP_RAMDISK_SIZE) | (u64)rd32(bp, BP_EXT_RAMDISK_SIZE) << 32;
    if (rd_size) {
        puts("initrd: addr ");
        puthex(rd_addr, 8);
        puts(" size ");
        putdec(rd_size);
        puts(" crc32 ");
        puthex(crc32((const u8 *)rd_addr, rd_size), 8);
        puts("\n");
    } else {
        puts("initrd: none\n");
    }

    uart_selftest();

    if (has_word(cmdline, "action=xsave"))
        xsave_selftest();

    if (has_word(cmdline, "action=cpuid")) {
        /* What CPUID says here: on hardware KVM, the table pyvmm set. */
        u32 a, b, c, d;
        __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
        puts("cpuid 1: logical ");
        putdec((b >> 16) & 0xff);
        puts(" htt ");
        putdec((d >> 28) & 1);
        puts(" hypervisor ");
        putdec(c >> 31);
        puts("\n");
    }

    if (has_word(cmdline, "action=wait")) {
        puts("waiting\n"); /* with interrupts on: only the host can end this */
        for (;;)
            __asm__ volatile("sti; hlt");
    }

    if (has_word(cmdline, "action=flood")) {
        /* 64 KiB through the UART, for bench/run.py's throughput figure. */
        puts("flood begin\n");
        for (int i = 0; i < 1024; i++)
            puts("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n");
        puts("flood end\n");
    }

    if (has_word(cmdline, "action=echo")) {
        outb(COM1 + 2, 0x01); /* FCR: FIFOs on */
        outb(COM1 + 1, 0x01); /* IER: received-data interrupt on (IF stays clear) */
        outb(COM1 + 4, 0x0b); /* MCR: DTR, RTS, OUT2: the port is open, input may flow */
        puts("echo ready\n");
        for (u32 idle = 0;; idle++) {
            if (inb(COM1 + 5) & 0x01) { /* LSR.DR */
                putc(inb(COM1));
                idle = 0;
            } else if (idle == 2000) {
                putc('.');
                idle = 0;
            }
        }
    }

    if (has_word(cmdline, "action=memcount")) {
        /* 4096 pages from 16 MiB; page i holds the last n written with n % 4096 == i. */
        volatile u64 *area = (volatile u64 *)0x1000000;
        const u64 pages = 4096;
        for (u64 n = 1;; n++) {
            area[(n % pages) * 512] = n;
            if (n % 1000)
                continue;
            u64 sum = 0, want;
            for (u64 i = 0; i < pages; i++)
                sum += area[i * 512];
            want = n < pages ? n * (n + 1) / 2 : pages * n - pages * (pages - 1) / 2;
            puts("count ");
            putdec(n / 1000);
            puts(sum == want ? " ok\n" : " BAD\n");
        }
    }

    if (has_word(cmdline, "action=dirty")) {
        /* Dirties rate= pages a second (default 10000), round the 16384
         * pages from 32 MiB, timed by the PIT; says every second how many. */
        volatile u64 *area = (volatile u64 *)0x2000000;
        const u64 pages = 16384, rate = number_after(cmdline, "rate=", 10000);
        outb(0x43, 0x34); /* channel 0, lobyte/hibyte, mode 2 */
        outb(0x40, 0);
        outb(0x40, 0); /* reload 0: 65536 */
        u64 ticks = 0, written = 0, reported = 0;
        u16 last = pit_read();
        puts("dirtying\n");
        for (;;) {
            u16 now = pit_read();
            ticks += (u16)(last - now);
            last = now;
            for (u64 due = ticks * rate / PIT_HZ; written < due; written++)
                area[(written % pages) * 512] = written;
            if (ticks / PIT_HZ > reported) {
                reported = ticks / PIT_HZ;
                puts("dirtied ");
                putdec(written);
                puts("\n");
            }
        }
    }

    if (has_word(cmdline, "action=count")) {
        for (u64 n = 1;; n++) {
            puts("count ");
            putdec(n);
            puts("\n");
            for (volatile int i = 0; i < 20000; i++) /* a little time between lines */
                ;
        }
    }

    if (has_word(cmdline, "action=spin")) {
        puts("spinning\n"); /* no exits, no halt: only the host can end this */
        __asm__ volatile("cli; 1: jmp 1b");
    }

    if (has_word(cmdline, "action=hostile"))
        hostile();
    if (has_word(cmdline, "action=virtio"))
        virtio_abuse();

    if (has_word(cmdline, "action=halt")) {
        puts("halting\n");
        __asm__ volatile("cli; hlt");
    } else if (has_word(cmdline, "action=triple") || has_word(cmdline, "action=hostile")) {
        static const struct __attribute__((packed)) {
            u16 limit;
            u64 base;
        } no_idt = {0, 0};
        puts("triple fault\n");
        __asm__ volatile("lidt %0; ud2" : : "m"(no_idt));
    } else {
        puts("reset\n");
        outb(0x64, 0xfe); /* i8042: pulse the CPU reset line */
    }
    for (;;)
        __asm__ volatile("cli; hlt");
}
