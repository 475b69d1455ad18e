/* The MTE instructions and system registers as C inlines (FEAT_MTE2, EL1).
 *
 * Pointers are uint64_t with the logical tag in bits 59:56 (TBI0 is on). Every
 * wrapper is `asm volatile` with a memory clobber where memory or tags change, so the
 * compiler keeps the order the program wrote.
 */
#ifndef TAGVISOR_MTE_H
#define TAGVISOR_MTE_H

#include <stdint.h>

#define MTE_GRANULE 16UL
#define MTE_TAG_SHIFT 56

#define read_sysreg(name)                                                              \
    ({                                                                                 \
        uint64_t v_;                                                                   \
        __asm__ volatile("mrs %0, " #name : "=r"(v_));                                 \
        v_;                                                                            \
    })
#define write_sysreg(name, value)                                                      \
    __asm__ volatile("msr " #name ", %0" : : "r"((uint64_t)(value)) : "memory")
#define isb() __asm__ volatile("isb" : : : "memory")
#define dsb(opt) __asm__ volatile("dsb " #opt : : : "memory")

static inline uint64_t mte_tag_of(uint64_t ptr) { return (ptr >> MTE_TAG_SHIFT) & 0xF; }

static inline uint64_t mte_with_tag(uint64_t ptr, uint64_t tag)
{
    return (ptr & ~(0xFUL << MTE_TAG_SHIFT)) | ((tag & 0xF) << MTE_TAG_SHIFT);
}

static inline uint64_t mte_untagged(uint64_t ptr) { return ptr & ((1UL << 56) - 1); }

/* IRG Xd, Xn, Xm */
static inline uint64_t mte_irg(uint64_t ptr, uint64_t exclude)
{
    uint64_t r;
    __asm__ volatile("irg %0, %1, %2" : "=r"(r) : "r"(ptr), "r"(exclude));
    return r;
}

/* GMI Xd, Xn, Xm */
static inline uint64_t mte_gmi(uint64_t ptr, uint64_t mask)
{
    uint64_t r;
    __asm__("gmi %0, %1, %2" : "=r"(r) : "r"(ptr), "r"(mask));
    return r;
}

/* ADDG / SUBG Xd, Xn, #bytes, #tag_offset (immediates: bytes a multiple of 16 up to
 * 1008, tag offset 0-15). Volatile: the result depends on GCR_EL1. */
#define mte_addg(ptr, bytes, tag_offset)                                               \
    ({                                                                                 \
        uint64_t r_;                                                                   \
        __asm__ volatile("addg %0, %1, #%2, #%3"                                       \
                         : "=r"(r_)                                                    \
                         : "r"((uint64_t)(ptr)), "i"(bytes), "i"(tag_offset));         \
        r_;                                                                            \
    })
#define mte_subg(ptr, bytes, tag_offset)                                               \
    ({                                                                                 \
        uint64_t r_;                                                                   \
        __asm__ volatile("subg %0, %1, #%2, #%3"                                       \
                         : "=r"(r_)                                                    \
                         : "r"((uint64_t)(ptr)), "i"(bytes), "i"(tag_offset));         \
        r_;                                                                            \
    })

/* LDG Xt, [Xn]: xt with bits 59:56 replaced by the tag of the granule at addr. */
static inline uint64_t mte_ldg(uint64_t xt, uint64_t addr)
{
    __asm__ volatile("ldg %0, [%1]" : "+r"(xt) : "r"(addr) : "memory");
    return xt;
}

/* The allocation tag of the granule holding addr. */
static inline uint64_t mte_get_tag(uint64_t addr) { return mte_tag_of(mte_ldg(0, addr)); }

/* STG / ST2G / STZG / STZ2G Xt, [Xn]: tag = Xt[59:56]; the tagged pointer is both. */
static inline void mte_stg(uint64_t ptr)
{
    __asm__ volatile("stg %0, [%0]" : : "r"(ptr) : "memory");
}
static inline void mte_st2g(uint64_t ptr)
{
    __asm__ volatile("st2g %0, [%0]" : : "r"(ptr) : "memory");
}
static inline void mte_stzg(uint64_t ptr)
{
    __asm__ volatile("stzg %0, [%0]" : : "r"(ptr) : "memory");
}
static inline void mte_stz2g(uint64_t ptr)
{
    __asm__ volatile("stz2g %0, [%0]" : : "r"(ptr) : "memory");
}

/* STGP Xt1, Xt2, [Xn]: 16 bytes of data and the pointer's tag. */
static inline void mte_stgp(uint64_t ptr, uint64_t lo, uint64_t hi)
{
    __asm__ volatile("stgp %1, %2, [%0]" : : "r"(ptr), "r"(lo), "r"(hi) : "memory");
}

/* LDGM / STGM / STZGM Xt, [Xn] (EL1 only). */
static inline uint64_t mte_ldgm(uint64_t addr)
{
    uint64_t r;
    __asm__ volatile("ldgm %0, [%1]" : "=r"(r) : "r"(addr) : "memory");
    return r;
}
static inline void mte_stgm(uint64_t addr, uint64_t tags)
{
    __asm__ volatile("stgm %0, [%1]" : : "r"(tags), "r"(addr) : "memory");
}
static inline void mte_stzgm(uint64_t addr, uint64_t tag)
{
    __asm__ volatile("stzgm %0, [%1]" : : "r"(tag), "r"(addr) : "memory");
}

/* DC GVA / DC GZVA, Xt: tag (and zero) the DCZID_EL0 block holding Xt with Xt's tag. */
static inline void mte_dc_gva(uint64_t ptr)
{
    __asm__ volatile("dc gva, %0" : : "r"(ptr) : "memory");
}
static inline void mte_dc_gzva(uint64_t ptr)
{
    __asm__ volatile("dc gzva, %0" : : "r"(ptr) : "memory");
}

/* PSTATE.TCO: 1 makes this EL's accesses unchecked. */
static inline void mte_set_tco(int on)
{
    if (on)
        __asm__ volatile("msr tco, #1" : : : "memory");
    else
        __asm__ volatile("msr tco, #0" : : : "memory");
}

/* Bytes covered by one LDGM/STGM (GMID_EL1.BS) and one DC ZVA/GVA/STZGM (DCZID_EL0.BS). */
static inline uint64_t mte_gm_block(void) { return 4UL << (read_sysreg(gmid_el1) & 0xF); }
static inline uint64_t mte_dcz_block(void) { return 4UL << (read_sysreg(dczid_el0) & 0xF); }

/* Tags granules [ptr, ptr + bytes) with ptr's tag (bytes a multiple of 16). */
static inline void mte_tag_range(uint64_t ptr, uint64_t bytes)
{
    uint64_t end = ptr + bytes;
    for (; ptr + 2 * MTE_GRANULE <= end; ptr += 2 * MTE_GRANULE)
        mte_st2g(ptr);
    if (ptr < end)
        mte_stg(ptr);
}

#endif
