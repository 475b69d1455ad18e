/* churn: a steady tagged-memory load for snapshot and live-migration tests.
 *
 * Each round:
 *  - 8 heap operations on 64 slots: a slot in use is verified (every word, through
 *    its tagged pointer) and freed; then it gets a new allocation of 16 to 2048
 *    bytes, filled with a pattern from a fresh random seed;
 *  - the first word of every live allocation is read back (a tag lost or changed
 *    since it was written faults: sync mode panics with status 255, async mode sets
 *    TFSR_EL1, which the round checks);
 *  - one 16 KiB stripe of a 4 MiB region is verified if it was written before, then
 *    retagged with DC GVA (IRG tag, excluding 0 and its old tag) and rewritten; one
 *    other written stripe, chosen at random, is verified too;
 *  - REPORT_CHURN_ROUND (round, live allocations, heap sum, region sum, TFSR_EL1).
 * Rounds: the boot configuration's argument (offset 24); 0 runs forever. Everything
 * follows from the IRG seed (offset 32), so a run's transcript is reproducible.
 */

#include "mte.h"
#include "runtime.h"
#include "tagheap.h"

#define SLOTS 64
#define OPS_PER_ROUND 8
#define HEAP_SIZE (8UL << 20)
#define REGION_SIZE (4UL << 20)
#define STRIPE (16UL << 10)
#define NSTRIPES (REGION_SIZE / STRIPE)
#define GOLDEN 0x9E3779B97F4A7C15UL

struct slot {
    uint64_t ptr, size, seed;
};
static struct slot slots[SLOTS];
static uint64_t stripe_ptr[NSTRIPES]; /* tagged pointer, 0 until written */
static uint64_t stripe_seed[NSTRIPES];
static uint64_t rng_state;

static uint64_t rng(void)
{
    /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DUL;
}

static uint64_t pattern(uint64_t seed, uint64_t i) { return seed ^ (i * GOLDEN); }

static void fill(uint64_t ptr, uint64_t size, uint64_t seed)
{
    volatile uint64_t *p = (volatile uint64_t *)ptr;
    for (uint64_t i = 0; i < size / 8; i++)
        p[i] = pattern(seed, i);
}

/* Sum of the words; a word that differs from the pattern is a failed check. */
static uint64_t verify(uint64_t ptr, uint64_t size, uint64_t seed)
{
    volatile uint64_t *p = (volatile uint64_t *)ptr;
    uint64_t sum = 0, bad = 0;
    for (uint64_t i = 0; i < size / 8; i++) {
        uint64_t v = p[i];
        bad += v != pattern(seed, i);
        sum += v;
    }
    TV_CHECK_EQ(0, bad);
    return sum;
}

static uint64_t heap_round(void)
{
    for (unsigned k = 0; k < OPS_PER_ROUND; k++) {
        struct slot *s = &slots[rng() % SLOTS];
        if (s->ptr) {
            verify(s->ptr, s->size, s->seed);
            TV_CHECK_EQ(0, tagheap_free(s->ptr));
        }
        s->size = 8 * (2 + rng() % 255);
        s->seed = rng();
        s->ptr = tagheap_alloc(s->size);
        TV_CHECK(s->ptr != 0);
        fill(s->ptr, s->size, s->seed);
    }
    uint64_t sum = 0;
    for (unsigned j = 0; j < SLOTS; j++)
        if (slots[j].ptr)
            sum += tv_load64(slots[j].ptr) ^ pattern(slots[j].seed, 0) ^ slots[j].seed;
    return sum;
}

static uint64_t region_round(uint64_t region, uint64_t round)
{
    uint64_t sum = 0, n = round % NSTRIPES, block = mte_dcz_block();
    uint64_t base = region + n * STRIPE;
    if (stripe_ptr[n])
        sum += verify(stripe_ptr[n], STRIPE, stripe_seed[n]);
    uint64_t old = stripe_ptr[n] ? mte_tag_of(stripe_ptr[n]) : 0;
    uint64_t ptr = mte_irg(base, 1 | (1UL << old));
    for (uint64_t off = 0; off < STRIPE; off += block)
        mte_dc_gva(ptr + off);
    stripe_ptr[n] = ptr;
    stripe_seed[n] = rng();
    fill(ptr, STRIPE, stripe_seed[n]);

    uint64_t written = round + 1 < NSTRIPES ? round + 1 : NSTRIPES;
    uint64_t other = rng() % written;
    if (other != n)
        sum += verify(stripe_ptr[other], STRIPE, stripe_seed[other]);
    return sum;
}

int main(void)
{
    if (!tv_boot.mte) {
        tv_print("churn: MTE is not available");
        return TV_EXIT_NO_MTE;
    }
    uint64_t heap = ((uint64_t)__image_end + (2UL << 20) - 1) & ~((2UL << 20) - 1);
    uint64_t region = heap + HEAP_SIZE;
    if (region + REGION_SIZE > TV_RAM_BASE + tv_boot.ram_size) {
        tv_print("churn: not enough RAM");
        return TV_EXIT_CHECKS_FAILED;
    }
    rng_state = tv_boot.seed * GOLDEN + 1;
    tagheap_init(heap, HEAP_SIZE);
    tv_report(REPORT_CHURN_INIT, 4, region, REGION_SIZE, tv_boot.arg, (uint64_t)tv_boot.seed);
    tv_clear_tfsr();

    for (uint64_t round = 0; !tv_boot.arg || round < tv_boot.arg; round++) {
        uint64_t heap_sum = heap_round();
        uint64_t region_sum = region_round(region, round);
        uint64_t tfsr = tv_read_tfsr();
        tv_clear_tfsr();
        uint64_t live = 0;
        for (unsigned j = 0; j < SLOTS; j++)
            live += slots[j].ptr != 0;
        tv_report(REPORT_CHURN_ROUND, 5, round, live, heap_sum, region_sum, tfsr);
        TV_CHECK_EQ(0, tfsr);
        if (tv_failures)
            return TV_EXIT_CHECKS_FAILED;
    }
    return TV_EXIT_OK;
}
