/* Two pieces of assembly: the static TLSDESC resolver (the descriptor's
 * second word already holds the tp-relative offset) and the jump to the
 * program's entry point with a kernel-like register state. */
	.text
	.globl ldp_tlsdesc_static
	.hidden ldp_tlsdesc_static
	.type ldp_tlsdesc_static, @function
ldp_tlsdesc_static:
	.cfi_startproc
	movq 8(%rax), %rax
	ret
	.cfi_endproc
	.size ldp_tlsdesc_static, .-ldp_tlsdesc_static

	/* void ldp_jump(void *sp, void *entry): %rsp = sp (points at argc),
	 * %rdx = 0 (no rtld_fini: ours is registered by __libc_start_main) */
	.globl ldp_jump
	.hidden ldp_jump
	.type ldp_jump, @function
ldp_jump:
	movq %rdi, %rsp
	xorl %edx, %edx
	xorl %ebp, %ebp
	xorl %eax, %eax
	jmp *%rsi
	.size ldp_jump, .-ldp_jump
	.section .note.GNU-stack,"",@progbits
