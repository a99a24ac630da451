/*
 * Entry of the pyvmm test guest.
 *
 * The image starts with 0x200 bytes of "32-bit entry" that must never run
 * (pyvmm uses the 64-bit boot protocol), followed by the 64-bit entry, so
 * that the same code works as an ELF (entry = _start) and as the
 * protected-mode part of a bzImage (entry = load address + 0x200).
 * Everything is position-independent: a bzImage may be loaded anywhere.
 */
    .section .head, "ax"
    .code32
    .globl head32
head32:
    ud2                     /* the 32-bit entry is not supported */
    .org 0x200, 0xcc

    .code64
    .globl _start
_start:
    /* RSI = struct boot_params. Use our own stack, zero our own BSS. */
    lea     stack_top(%rip), %rsp
    mov     %rsi, %r12
    lea     __bss_start(%rip), %rdi
    lea     __bss_end(%rip), %rcx
    sub     %rdi, %rcx
    xor     %eax, %eax
    rep stosb
    mov     %r12, %rdi
    lea     _start(%rip), %rsi
    call    guest_main
1:  cli
    hlt
    jmp     1b

    .section .bss
    .balign 16
    .space  8192
stack_top:
