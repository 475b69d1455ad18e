/* tagheap: see tagheap.h. */

#include "tagheap.h"

#include "mte.h"
#include "runtime.h"

static const uint64_t class_size[TAGHEAP_CLASSES] = {
    16, 32, 48, 64, 96, 128, 256, 512, 768, 1024, 2048, 4096,
};

#define FREE_SLOTS 512

struct size_class {
    uint64_t base, end; /* the region */
    uint64_t next;      /* first never-used chunk */
    uint64_t nfree;
    uint64_t free[FREE_SLOTS]; /* untagged chunk addresses, LIFO */
};

static struct size_class classes[TAGHEAP_CLASSES];
static uint64_t arena_base, region_size;
uint64_t tagheap_last_exclude;

void tagheap_init(uint64_t base, uint64_t size)
{
    arena_base = base;
    region_size = (size / TAGHEAP_CLASSES) & ~0xFFFUL;
    for (unsigned c = 0; c < TAGHEAP_CLASSES; c++) {
        classes[c].base = base + c * region_size;
        classes[c].end = classes[c].base + region_size;
        classes[c].next = classes[c].base;
        classes[c].nfree = 0;
    }
}

static int class_of_size(uint64_t size)
{
    for (unsigned c = 0; c < TAGHEAP_CLASSES; c++)
        if (size <= class_size[c])
            return (int)c;
    return -1;
}

/* The class whose region holds the untagged address, or -1. */
static int class_of_address(uint64_t addr)
{
    if (addr < arena_base || !region_size)
        return -1;
    uint64_t c = (addr - arena_base) / region_size;
    return c < TAGHEAP_CLASSES ? (int)c : -1;
}

static uint64_t tag_bit(uint64_t addr) { return 1UL << mte_get_tag(addr); }

/* Tag 0, the chunk's neighbours' tags and its current tag. */
static uint64_t exclude_for(const struct size_class *sc, uint64_t chunk, uint64_t size)
{
    uint64_t exclude = 1 | tag_bit(chunk);
    if (chunk > sc->base)
        exclude |= tag_bit(chunk - size);
    if (chunk + size < sc->end)
        exclude |= tag_bit(chunk + size);
    return exclude;
}

uint64_t tagheap_alloc(uint64_t size)
{
    int c = class_of_size(size ? size : 1);
    if (c < 0)
        return 0;
    struct size_class *sc = &classes[c];
    uint64_t csize = class_size[c], chunk;
    if (sc->nfree) {
        chunk = sc->free[--sc->nfree];
    } else if (sc->next + csize <= sc->end) {
        chunk = sc->next;
        sc->next += csize;
    } else {
        return 0;
    }
    if (!tv_boot.mte) {
        memset((void *)chunk, 0, csize);
        return chunk;
    }
    tagheap_last_exclude = exclude_for(sc, chunk, csize);
    uint64_t ptr = mte_irg(chunk, tagheap_last_exclude);
    uint64_t p = ptr, end = ptr + csize;
    for (; p + 2 * MTE_GRANULE <= end; p += 2 * MTE_GRANULE)
        mte_stz2g(p);
    if (p < end)
        mte_stzg(p);
    return ptr;
}

uint64_t tagheap_chunk_size(uint64_t ptr)
{
    int c = class_of_address(mte_untagged(ptr));
    return c < 0 ? 0 : class_size[c];
}

int tagheap_free(uint64_t ptr)
{
    uint64_t chunk = mte_untagged(ptr);
    int c = class_of_address(chunk);
    if (c < 0)
        return -1;
    struct size_class *sc = &classes[c];
    uint64_t csize = class_size[c];
    if ((chunk - sc->base) % csize || chunk >= sc->next)
        return -1;
    if (tv_boot.mte) {
        if (mte_get_tag(chunk) != mte_tag_of(ptr))
            return -1; /* already freed (retagged) or a stale pointer */
        tagheap_last_exclude = exclude_for(sc, chunk, csize);
        mte_tag_range(mte_irg(chunk, tagheap_last_exclude), csize);
    }
    if (sc->nfree < FREE_SLOTS)
        sc->free[sc->nfree++] = chunk;
    return 0;
}
