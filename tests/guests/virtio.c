/*
 * action=virtio: a hostile virtio driver for the virtio-blk device pyvmm
 * puts first in its MMIO window (0xd0000000; the test gives a read-only
 * disk of 1 MiB). It breaks every rule of virtio 1.2 it can, each time
 * checking that the device answered as the spec says (DEVICE_NEEDS_RESET,
 * FEATURES_OK refused, an error status) and resetting it, then reads
 * sector 0 properly to show that the device still works. Prints one line
 * per case and a summary.
 */
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

void puts(const char *s);
void putdec(u64 v);

#define BASE 0xd0000000ul
/* Registers (4.2.2) and status bits (2.1). */
#define MAGIC 0x000
#define DEVICE_ID 0x008
#define DEVICE_FEATURES 0x010
#define DEVICE_FEATURES_SEL 0x014
#define DRIVER_FEATURES 0x020
#define DRIVER_FEATURES_SEL 0x024
#define QUEUE_SEL 0x030
#define QUEUE_NUM_MAX 0x034
#define QUEUE_NUM 0x038
#define QUEUE_READY 0x044
#define QUEUE_NOTIFY 0x050
#define INTERRUPT_STATUS 0x060
#define INTERRUPT_ACK 0x064
#define STATUS 0x070
#define QUEUE_DESC 0x080
#define QUEUE_DRIVER 0x090
#define QUEUE_DEVICE 0x0a0
#define ACK 1
#define DRIVER 2
#define DRIVER_OK 4
#define FEATURES_OK 8
#define NEEDS_RESET 64
#define F_NEXT 1
#define F_WRITE 2
#define F_INDIRECT 4

/* Queue areas and buffers in the guest's RAM (the test gives 64 MiB). */
#define DESC 0x1000000ul
#define AVAIL 0x1001000ul
#define USED 0x1002000ul
#define TABLE 0x1003000ul
#define HDR 0x1004000ul
#define DATA 0x1005000ul
#define STATUS_BYTE 0x1006000ul
#define QSIZE 16

struct desc {
    u64 addr;
    u32 len;
    u16 flags, next;
};

static u32 rd(u32 off) { return *(volatile u32 *)(BASE + off); }
static void wr(u32 off, u32 v) { *(volatile u32 *)(BASE + off) = v; }
static void wr64(u32 off, u64 v)
{
    wr(off, (u32)v);
    wr(off + 4, (u32)(v >> 32));
}

static u32 cases, as_expected;

static void check(const char *name, int ok)
{
    cases++;
    as_expected += ok != 0;
    puts(ok ? "virtio ok: " : "virtio WRONG: ");
    puts(name);
    puts("\n");
}

/* Reset, then ACKNOWLEDGE | DRIVER and the features given; the status after. */
static u32 negotiate(u32 low, u32 high)
{
    wr(STATUS, 0);
    wr(STATUS, ACK);
    wr(STATUS, ACK | DRIVER);
    wr(DRIVER_FEATURES_SEL, 0);
    wr(DRIVER_FEATURES, low);
    wr(DRIVER_FEATURES_SEL, 1);
    wr(DRIVER_FEATURES, high);
    wr(STATUS, ACK | DRIVER | FEATURES_OK);
    return rd(STATUS);
}

static void queue(u32 num, u64 desc, u64 avail, u64 used)
{
    wr(QUEUE_SEL, 0);
    wr(QUEUE_NUM, num);
    wr64(QUEUE_DESC, desc);
    wr64(QUEUE_DRIVER, avail);
    wr64(QUEUE_DEVICE, used);
    wr(QUEUE_READY, 1);
}

static void zero(u64 addr, u64 n)
{
    for (u64 i = 0; i < n; i++)
        ((volatile u8 *)addr)[i] = 0;
}

/* A live device with an empty queue 0 of QSIZE in the areas above. */
static void live(void)
{
    zero(DESC, 0x4000);
    negotiate(0, 1); /* VIRTIO_F_VERSION_1 only */
    queue(QSIZE, DESC, AVAIL, USED);
    wr(STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
}

static u16 avail_idx;

/* Notify queue 0 and wait for the device's answer (it may come from
 * another host thread): an interrupt for used buffers or for a change of
 * status. The device's status. */
static u32 notify(void)
{
    wr(INTERRUPT_ACK, rd(INTERRUPT_STATUS));
    wr(QUEUE_NOTIFY, 0);
    for (u64 i = 0; i < 200000000ul && !(rd(INTERRUPT_STATUS) & 3); i++)
        __asm__ volatile("pause");
    return rd(STATUS);
}

/* Make descriptor `head` available and notify. */
static u32 offer(u16 head)
{
    volatile u16 *avail = (volatile u16 *)AVAIL;
    avail[2 + avail_idx % QSIZE] = head;
    avail_idx++;
    avail[1] = avail_idx;
    return notify();
}

static void set(int i, u64 addr, u32 len, u16 flags, u16 next)
{
    volatile struct desc *d = (volatile struct desc *)DESC + i;
    d->addr = addr;
    d->len = len;
    d->flags = flags;
    d->next = next;
}

/* A block request: header (type, sector), data, status byte. */
static void request(u32 type, u64 sector, u32 len, u16 data_flags)
{
    volatile u32 *h = (volatile u32 *)HDR;
    h[0] = type;
    h[1] = 0;
    *(volatile u64 *)(HDR + 8) = sector;
    *(volatile u8 *)STATUS_BYTE = 0xee;
    set(0, HDR, 16, F_NEXT, 1);
    set(1, DATA, len, F_NEXT | data_flags, 2);
    set(2, STATUS_BYTE, 1, F_WRITE, 0);
}

static int used_count(void) { return ((volatile u16 *)USED)[1]; }

void virtio_abuse(void)
{
    if (rd(MAGIC) != 0x74726976 || rd(DEVICE_ID) != 2) {
        puts("virtio: no block device at 0xd0000000\n");
        return;
    }
    check("a feature never offered is refused",
          !(negotiate(0, 1 | 0x80000000u) & FEATURES_OK));
    check("features without VERSION_1 are refused", !(negotiate(0, 0) & FEATURES_OK));

    negotiate(0, 1);
    queue(QSIZE, 0x100000000ul, AVAIL, USED); /* above this guest's RAM */
    check("a descriptor table outside RAM", (rd(STATUS) & NEEDS_RESET) && !rd(QUEUE_READY));
    negotiate(0, 1);
    queue(3, DESC, AVAIL, USED);
    check("a queue size that is not a power of 2", rd(STATUS) & NEEDS_RESET);
    negotiate(0, 1);
    queue(QSIZE, BASE, AVAIL, USED); /* the device's own registers */
    check("a descriptor table in the MMIO window", rd(STATUS) & NEEDS_RESET);

    live();
    for (u32 q = 1; q < 8; q++)
        wr(QUEUE_NOTIFY, q); /* queues that do not exist */
    wr(QUEUE_NOTIFY, 0xffffffff);
    check("notifications for queues never set up", !(rd(STATUS) & NEEDS_RESET));

    live();
    avail_idx = 0;
    set(0, DATA, 16, F_NEXT, 0); /* a chain that loops */
    check("a descriptor chain that loops", offer(0) & NEEDS_RESET);

    live();
    avail_idx = 0;
    set(0, 0xd0000000ul, 16, 0, 0);
    check("a buffer in the MMIO hole", offer(0) & NEEDS_RESET);

    live();
    avail_idx = 0;
    set(0, DATA, 0xffffffffu, 0, 0);
    check("a buffer of 4 GiB", offer(0) & NEEDS_RESET);

    live();
    avail_idx = 0;
    set(0, DATA, 0, F_NEXT, 1); /* zero-length header, then the status byte */
    set(1, STATUS_BYTE, 1, F_WRITE, 0);
    check("a request without its header", offer(0) & NEEDS_RESET);

    live();
    avail_idx = 0;
    ((volatile struct desc *)TABLE)[0] = (struct desc){TABLE, 16, F_INDIRECT, 0};
    set(0, TABLE, 16, F_INDIRECT, 0);
    check("an indirect table inside an indirect table", offer(0) & NEEDS_RESET);

    live();
    avail_idx = 0;
    ((volatile u16 *)AVAIL)[1] = QSIZE + 5; /* the index runs ahead of the ring */
    check("an available index running ahead", notify() & NEEDS_RESET);

    live();
    avail_idx = 0;
    request(1, 0, 512, 0); /* a write to the read-only disk */
    offer(0);
    check("a write to a read-only disk fails", *(volatile u8 *)STATUS_BYTE == 1);
    request(0, 2048, 512, F_WRITE); /* beyond the 1 MiB disk */
    offer(0);
    check("a read beyond the disk's end fails", *(volatile u8 *)STATUS_BYTE == 1);
    request(0, 0, 512, F_WRITE); /* and a proper read still works */
    offer(0);
    int ok = *(volatile u8 *)STATUS_BYTE == 0 && used_count() == 3;
    check("a proper read after all that", ok);
    char first[9];
    for (int i = 0; i < 8; i++) {
        u8 c = ((volatile u8 *)DATA)[i];
        first[i] = c >= 0x20 && c < 0x7f ? c : '.';
    }
    first[8] = 0;
    puts("virtio: sector 0 begins ");
    puts(first);
    puts("\nvirtio: ");
    putdec(as_expected);
    puts(" of ");
    putdec(cases);
    puts(" cases answered as the spec says\n");
    wr(STATUS, 0);
}
