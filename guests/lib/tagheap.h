/* tagheap: a small tagged heap allocator in the spirit of Scudo's MTE mode.
 *
 * - Size classes (16 bytes to 4 KiB); each class owns one region of the arena, carved
 *   into chunks of exactly the class size, so a chunk's neighbours are chunks of the
 *   same class and an overflow past the end lands in the next chunk.
 * - Every allocation gets a random tag from IRG that excludes tag 0 (GCR_EL1), the
 *   tags of both neighbouring chunks (read with LDG) and the chunk's previous tag; the
 *   chunk is tagged and zeroed with STZ2G/STZG. Linear overflows into a neighbour and
 *   stale pointers to a reused chunk therefore mismatch.
 * - Free checks the pointer's tag against memory (a double or invalid free is refused)
 *   and retags the chunk with a fresh tag that again excludes 0, the old tag and the
 *   neighbours' tags, so a use-after-free faults and so does a live neighbour running
 *   into the freed chunk. Freed chunks go on a per-class LIFO list.
 * Without MTE (tv_boot.mte == 0) tags stay 0 and the checks are not made.
 */
#ifndef TAGVISOR_TAGHEAP_H
#define TAGVISOR_TAGHEAP_H

#include <stdint.h>

#define TAGHEAP_CLASSES 12
#define TAGHEAP_MAX_SIZE 4096UL

/* Uses [base, base + size): base 4 KiB aligned. */
void tagheap_init(uint64_t base, uint64_t size);
/* A tagged pointer to size bytes (zeroed), or 0. */
uint64_t tagheap_alloc(uint64_t size);
/* 0, or -1 when ptr is not a live allocation (bad pointer, tag mismatch). */
int tagheap_free(uint64_t ptr);
/* The usable size of the chunk ptr points into (its class size), 0 if none. */
uint64_t tagheap_chunk_size(uint64_t ptr);
/* The exclude mask IRG used for the last allocation or free. */
extern uint64_t tagheap_last_exclude;

#endif
