/* Prints the KVM uapi numbers, sizes and offsets tagvisor.kvm.uapi models, one
 * "NAME VALUE" line each, as the arm64 headers define them. */
#include <linux/kvm.h>
/* asm/kvm.h writes the VGIC frame sizes with the kernel's SZ_64K (linux/sizes.h is not
 * uapi), so the probe gives it the kernel's value to expand them. */
#define SZ_64K 0x00010000
#include <stddef.h>
#include <stdio.h>

#define P(name) printf("%s %llu\n", #name, (unsigned long long)(name))
#define SIZE(type) printf("sizeof_%s %zu\n", #type, sizeof(struct type))
#define OFF(type, field) printf("offsetof_%s_%s %zu\n", #type, #field, offsetof(struct type, field))

int main(void)
{
	P(KVM_GET_API_VERSION); P(KVM_CREATE_VM); P(KVM_CHECK_EXTENSION);
	P(KVM_GET_VCPU_MMAP_SIZE); P(KVM_CREATE_VCPU); P(KVM_GET_DIRTY_LOG);
	P(KVM_SET_USER_MEMORY_REGION); P(KVM_RUN); P(KVM_ENABLE_CAP);
	P(KVM_GET_ONE_REG); P(KVM_SET_ONE_REG); P(KVM_ARM_VCPU_INIT);
	P(KVM_ARM_PREFERRED_TARGET); P(KVM_GET_REG_LIST); P(KVM_ARM_MTE_COPY_TAGS);
	P(KVM_CLEAR_DIRTY_LOG); P(KVM_API_VERSION);
	P(KVM_GET_MP_STATE); P(KVM_SET_MP_STATE); P(KVM_CAP_MP_STATE);
	P(KVM_MP_STATE_RUNNABLE); P(KVM_MP_STATE_STOPPED); P(KVM_MP_STATE_SUSPENDED);
	P(KVM_IRQ_LINE); P(KVM_CREATE_DEVICE); P(KVM_SET_DEVICE_ATTR); P(KVM_GET_DEVICE_ATTR);
	P(KVM_CAP_IRQCHIP); P(KVM_CAP_DEVICE_CTRL);
	P(KVM_DEV_TYPE_ARM_VGIC_V3); P(KVM_CREATE_DEVICE_TEST);
	P(KVM_DEV_ARM_VGIC_GRP_ADDR); P(KVM_DEV_ARM_VGIC_GRP_DIST_REGS);
	P(KVM_DEV_ARM_VGIC_GRP_NR_IRQS); P(KVM_DEV_ARM_VGIC_GRP_CTRL);
	P(KVM_DEV_ARM_VGIC_GRP_REDIST_REGS); P(KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS);
	P(KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO); P(KVM_DEV_ARM_VGIC_CTRL_INIT);
	P(KVM_VGIC_V3_ADDR_TYPE_DIST); P(KVM_VGIC_V3_ADDR_TYPE_REDIST);
	P(KVM_VGIC_V3_DIST_SIZE); P(KVM_VGIC_V3_REDIST_SIZE);
	P(KVM_ARM_IRQ_VCPU2_SHIFT); P(KVM_ARM_IRQ_TYPE_SHIFT); P(KVM_ARM_IRQ_VCPU_SHIFT);
	P(KVM_ARM_IRQ_NUM_SHIFT); P(KVM_ARM_IRQ_TYPE_CPU); P(KVM_ARM_IRQ_TYPE_SPI);
	P(KVM_ARM_IRQ_TYPE_PPI);
	P(KVM_CAP_USER_MEMORY); P(KVM_CAP_ONE_REG); P(KVM_CAP_READONLY_MEM);
	P(KVM_CAP_ARM_EL1_32BIT); P(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2); P(KVM_CAP_ARM_MTE);
	P(KVM_EXIT_UNKNOWN); P(KVM_EXIT_EXCEPTION); P(KVM_EXIT_IO); P(KVM_EXIT_HYPERCALL);
	P(KVM_EXIT_DEBUG); P(KVM_EXIT_HLT); P(KVM_EXIT_MMIO); P(KVM_EXIT_IRQ_WINDOW_OPEN);
	P(KVM_EXIT_SHUTDOWN); P(KVM_EXIT_FAIL_ENTRY); P(KVM_EXIT_INTR);
	P(KVM_EXIT_INTERNAL_ERROR); P(KVM_EXIT_SYSTEM_EVENT); P(KVM_EXIT_ARM_NISV);
	P(KVM_SYSTEM_EVENT_SHUTDOWN); P(KVM_SYSTEM_EVENT_RESET); P(KVM_SYSTEM_EVENT_CRASH);
	P(KVM_SYSTEM_EVENT_WAKEUP); P(KVM_SYSTEM_EVENT_SUSPEND);
	P(KVM_ARM_VCPU_POWER_OFF); P(KVM_ARM_VCPU_EL1_32BIT); P(KVM_ARM_VCPU_PSCI_0_2);
	P(KVM_ARM_VCPU_PMU_V3); P(KVM_ARM_VCPU_SVE); P(KVM_ARM_VCPU_PTRAUTH_ADDRESS);
	P(KVM_ARM_VCPU_PTRAUTH_GENERIC); P(KVM_ARM_TARGET_GENERIC_V8);
	P(KVM_MEM_LOG_DIRTY_PAGES); P(KVM_MEM_READONLY);
	P(KVM_ARM_TAGS_TO_GUEST); P(KVM_ARM_TAGS_FROM_GUEST);
	P(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE); P(KVM_DIRTY_LOG_INITIALLY_SET);
	P(KVM_REG_ARM64); P(KVM_REG_SIZE_SHIFT); P(KVM_REG_SIZE_MASK); P(KVM_REG_SIZE_U32);
	P(KVM_REG_SIZE_U64); P(KVM_REG_SIZE_U128); P(KVM_REG_ARM_COPROC_SHIFT);
	P(KVM_REG_ARM_COPROC_MASK); P(KVM_REG_ARM_CORE); P(KVM_REG_ARM64_SYSREG);
	P(KVM_REG_ARM_TIMER_CTL); P(KVM_REG_ARM_TIMER_CNT); P(KVM_REG_ARM_TIMER_CVAL);
	printf("GCR_EL1 %llu\n", (unsigned long long)ARM64_SYS_REG(3, 0, 1, 0, 6));
	printf("RGSR_EL1 %llu\n", (unsigned long long)ARM64_SYS_REG(3, 0, 1, 0, 5));
	printf("TFSR_EL1 %llu\n", (unsigned long long)ARM64_SYS_REG(3, 0, 5, 6, 0));
	printf("TFSRE0_EL1 %llu\n", (unsigned long long)ARM64_SYS_REG(3, 0, 5, 6, 1));
	printf("CORE_REG_PC %llu\n", (unsigned long long)(KVM_REG_ARM64 | KVM_REG_SIZE_U64 |
		KVM_REG_ARM_CORE | KVM_REG_ARM_CORE_REG(regs.pc)));
	printf("CORE_REG_SP %llu\n", (unsigned long long)(KVM_REG_ARM64 | KVM_REG_SIZE_U64 |
		KVM_REG_ARM_CORE | KVM_REG_ARM_CORE_REG(regs.sp)));
	printf("CORE_REG_PSTATE %llu\n", (unsigned long long)(KVM_REG_ARM64 | KVM_REG_SIZE_U64 |
		KVM_REG_ARM_CORE | KVM_REG_ARM_CORE_REG(regs.pstate)));
	SIZE(kvm_userspace_memory_region); SIZE(kvm_enable_cap); SIZE(kvm_one_reg);
	SIZE(kvm_vcpu_init); SIZE(kvm_arm_copy_mte_tags); SIZE(kvm_dirty_log);
	SIZE(kvm_clear_dirty_log); SIZE(kvm_reg_list); SIZE(kvm_run);
	SIZE(kvm_mp_state); OFF(kvm_mp_state, mp_state);
	SIZE(kvm_irq_level); SIZE(kvm_create_device); SIZE(kvm_device_attr);
	OFF(kvm_irq_level, irq); OFF(kvm_irq_level, level);
	OFF(kvm_create_device, type); OFF(kvm_create_device, fd); OFF(kvm_create_device, flags);
	OFF(kvm_device_attr, flags); OFF(kvm_device_attr, group); OFF(kvm_device_attr, attr);
	OFF(kvm_device_attr, addr);
	OFF(kvm_userspace_memory_region, slot); OFF(kvm_userspace_memory_region, flags);
	OFF(kvm_userspace_memory_region, guest_phys_addr);
	OFF(kvm_userspace_memory_region, memory_size);
	OFF(kvm_userspace_memory_region, userspace_addr);
	OFF(kvm_enable_cap, cap); OFF(kvm_enable_cap, flags); OFF(kvm_enable_cap, args);
	OFF(kvm_enable_cap, pad); OFF(kvm_one_reg, id); OFF(kvm_one_reg, addr);
	OFF(kvm_vcpu_init, target); OFF(kvm_vcpu_init, features);
	OFF(kvm_arm_copy_mte_tags, guest_ipa); OFF(kvm_arm_copy_mte_tags, length);
	OFF(kvm_arm_copy_mte_tags, addr); OFF(kvm_arm_copy_mte_tags, flags);
	OFF(kvm_arm_copy_mte_tags, reserved);
	OFF(kvm_dirty_log, slot); OFF(kvm_dirty_log, dirty_bitmap);
	OFF(kvm_clear_dirty_log, slot); OFF(kvm_clear_dirty_log, num_pages);
	OFF(kvm_clear_dirty_log, first_page); OFF(kvm_clear_dirty_log, dirty_bitmap);
	OFF(kvm_run, immediate_exit); OFF(kvm_run, exit_reason);
	OFF(kvm_run, mmio.phys_addr); OFF(kvm_run, mmio.data);
	OFF(kvm_run, mmio.len); OFF(kvm_run, mmio.is_write);
	OFF(kvm_run, system_event.type); OFF(kvm_run, system_event.ndata);
	OFF(kvm_run, system_event.data);
	return 0;
}
