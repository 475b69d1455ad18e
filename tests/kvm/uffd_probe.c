/* Prints the userfaultfd numbers and layouts tagvisor.kvm.linux.userfault uses, one
 * "NAME VALUE" line each, as the arm64 headers define them. */
#include <asm/unistd.h>
#include <sys/ioctl.h>
#include <linux/userfaultfd.h>
#include <stddef.h>
#include <stdio.h>

#define P(name) printf("%s %llu\n", #name, (unsigned long long)(name))

int main(void)
{
	P(__NR_userfaultfd); P(UFFD_API); P(UFFD_USER_MODE_ONLY);
	P(UFFDIO_API); P(UFFDIO_REGISTER); P(UFFDIO_UNREGISTER); P(UFFDIO_WAKE);
	P(UFFDIO_COPY); P(UFFDIO_REGISTER_MODE_MISSING); P(UFFDIO_COPY_MODE_DONTWAKE);
	P(UFFD_EVENT_PAGEFAULT);
	P(sizeof(struct uffd_msg)); P(offsetof(struct uffd_msg, arg.pagefault.address));
	P(sizeof(struct uffdio_api)); P(sizeof(struct uffdio_register));
	P(sizeof(struct uffdio_range)); P(sizeof(struct uffdio_copy));
	P(offsetof(struct uffdio_copy, copy));
	return 0;
}
