"""Batches for the QuickScorer layout: eight rows at a time in AVX-512 lanes ("V-QuickScorer").

Lucchese et al., "Exploiting CPU SIMD extensions to speed-up document scoring with tree
ensembles" (SIGIR 2016). Each of the eight rows of a block has its own lane: every table entry is
compared with the block's eight values in one instruction, and the entry's mask is ANDed into
the lanes whose test is false (a masked AND); a sorted list is walked until its threshold reaches
the largest value of the lanes that walk it. The exit leaves are then found for the eight rows at
once (lowest set bit by lzcnt, the values picked by a permute of the tree's leaves) and added
per class in tree order.

Each lane applies exactly the scalar rules of quickscorer.py (same comparisons in double, same
lists for zero and NaN, tiny values read as +0.0, same order of the sums), so every row's scores
are the scalar ones bit for bit. The last block of a batch repeats its last row in the spare
lanes (its walks stop no later) and writes only its own rows.

The library is built without -march (a cached library may be read by a node with another CPU):
the block kernel alone is compiled for AVX-512 (function target attribute) and chosen when the
CPU has it; elsewhere, and for a single row, the batch runs the scalar row function, which the
8-wide kernel written with portable vector extensions did not beat on AVX2 or SSE2 (measured on the
demo model: 12-15 us a row against 8 us).
"""

from __future__ import annotations

BLOCK_ROWS = 8  # one zmm of doubles

# Per mask width: one tree's eight lane masks, all ones, its masked AND with MASK[k], its widening
# to 64-bit lanes (for lzcnt).
_LANES = {
    16: ("__m128i", "_mm_set1_epi32(-1)",
         "_mm_mask_mov_epi16(m[t], (c), _mm_and_si128(m[t], _mm_set1_epi16((short)(w))))", "_mm512_cvtepu16_epi64"),
    32: ("__m256i", "_mm256_set1_epi32(-1)", "_mm256_mask_and_epi32(m[t], (c), m[t], _mm256_set1_epi32((int)(w)))",
         "_mm512_cvtepu32_epi64"),
    64: ("__m512i", "_mm512_set1_epi32(-1)",
         "_mm512_mask_and_epi64(m[t], (c), m[t], _mm512_set1_epi64((long long)(w)))", ""),
}  # fmt: skip


# The eight exit leaves' values, `at` their slots in the tree's MAXL values at `slots` (64-byte
# aligned): up to 32 slots by permutes across the slots held in registers; 64 by eight loads
# (vgatherqpd is slower than that on CPUs whose gathers are microcoded).
_LOOKUP = {
    16: "__m512d value = _mm512_permutex2var_pd(_mm512_load_pd(slots), at, _mm512_load_pd(slots + 8));",
    32: """__m512d low16 = _mm512_permutex2var_pd(_mm512_load_pd(slots), at, _mm512_load_pd(slots + 8));
      __m512d high16 = _mm512_permutex2var_pd(_mm512_load_pd(slots + 16), at, _mm512_load_pd(slots + 24));
      __m512d value = _mm512_mask_blend_pd(_mm512_test_epi64_mask(at, _mm512_set1_epi64(16)), low16, high16);""",
}
_LOOKUP_LOADS = """long long i[8];
      _mm512_storeu_si512(i, at);
      __m512d value = _mm512_set_pd({});"""


def block_source(mask_bits: int) -> str:
    """C defining `static int predict_blocks(rows, n, out)` and `block_kernel_usable()`, placed after
    quickscorer.raw_scores_source and `probabilities`: predict_blocks predicts the n rows and returns
    1, or returns 0 (nothing written) when the caller should run its row loop instead (no AVX-512,
    fewer than two rows, no memory)."""
    lanes, ones, masked_and, widen = _LANES[mask_bits]
    values = ", ".join(f"row[{i}][f]" for i in reversed(range(BLOCK_ROWS)))
    lookup = _LOOKUP.get(mask_bits) or _LOOKUP_LOADS.format(", ".join(f"slots[i[{r}]]" for r in reversed(range(8))))
    return f"""
#define BLK {BLOCK_ROWS}
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define BLOCK_KERNEL 1
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512cd")))
typedef {lanes} lanes_t;  /* the eight lanes' masks of one tree */

/* Lanes selected by c AND the mask w into tree t. */
#define LANE_AND(t, w, c) (m[t] = {masked_and})
/* Entries [k, e), walked while the threshold is below top: the lanes in `active` whose value
   exceeds the threshold take the entry's mask. */
#define BLOCK_WALK(k, e, v, active, top) \\
  for (; (k) < (e) && THR[k] < (top); ++(k)) \\
    LANE_AND(TREE[k], MASK[k], _mm512_mask_cmp_pd_mask((active), _mm512_set1_pd(THR[k]), (v), _CMP_LT_OQ))
/* Entries [k, e): the lanes in `sel` take every mask. */
#define BLOCK_APPLY(k, e, sel) for (; (k) < (e); ++(k)) LANE_AND(TREE[k], MASK[k], (sel))

/* Raw scores of the BLK rows row[0..BLK) into acc[lane * NC + class]; m: NT lanes_t of scratch. */
static AVX512 void raw_scores_block(const double *const *restrict row, double *restrict acc, lanes_t *restrict m) {{
  for (int t = 0; t < NT; ++t) m[t] = {ones};
  const __m512d kzero = _mm512_set1_pd(KZERO);
  for (int f = 0; f < NF; ++f) {{
    const int32_t *o = OFF[f];
    if (o[0] == OFF[f + 1][0]) continue;  /* no split uses this feature */
    __m512d v = _mm512_set_pd({values});
    __mmask8 nan = _mm512_cmp_pd_mask(v, v, _CMP_UNORD_Q);
    /* tiny values read as +0.0 (NaN kept: not <= compares true) */
    v = _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(_mm512_abs_pd(v), kzero, _CMP_NLE_UQ), v);
    __m512d z = _mm512_maskz_mov_pd((__mmask8)~nan, v);  /* and NaN as 0.0 */
    __mmask8 zero = _mm512_cmp_pd_mask(z, _mm512_setzero_pd(), _CMP_EQ_OQ);
    __mmask8 all = 0xff, nonzero = (__mmask8)~zero, number = (__mmask8)~nan;
    int k = o[0], e = o[1];
    BLOCK_WALK(k, e, z, all, _mm512_reduce_max_pd(z));
    k = o[1]; e = o[2];
    if (nonzero) BLOCK_WALK(k, e, z, nonzero, _mm512_mask_reduce_max_pd(nonzero, z));
    k = o[2]; e = o[3];
    if (zero) BLOCK_APPLY(k, e, zero);
    k = o[3]; e = o[4];
    if (number) BLOCK_WALK(k, e, v, number, _mm512_mask_reduce_max_pd(number, v));
    k = o[4]; e = OFF[f + 1][0];
    if (nan) BLOCK_APPLY(k, e, nan);
  }}
  __m512d sum[NC];
  for (int c = 0; c < NC; ++c) sum[c] = _mm512_setzero_pd();
  for (int t = 0; t < NT; t += NC)
    for (int c = 0; c < NC; ++c) {{
      /* exit leaf = lowest set bit = 63 - lzcnt(x & -x); never 0: every tree keeps one leaf */
      __m512i x = {widen}(m[t + c]);
      __m512i low = _mm512_and_si512(x, _mm512_sub_epi64(_mm512_setzero_si512(), x));
      __m512i at = _mm512_sub_epi64(_mm512_set1_epi64(63), _mm512_lzcnt_epi64(low));
      const double *slots = LEAF + (t + c) * MAXL;
      {lookup}
      sum[c] = _mm512_add_pd(sum[c], value);
    }}
  double lane[BLK];
  for (int c = 0; c < NC; ++c) {{
    _mm512_storeu_pd(lane, sum[c]);
    for (int i = 0; i < BLK; ++i) acc[i * NC + c] = lane[i];
  }}
}}

static int block_kernel_usable(void) {{
  static int usable = -1;  /* a benign race: every thread computes the same answer */
  if (usable < 0) {{
    __builtin_cpu_init();
    usable = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512cd");
  }}
  return usable;
}}
#else
static int block_kernel_usable(void) {{ return 0; }}
#endif

static int predict_blocks(const double *restrict rows, int64_t n, double *restrict out) {{
#ifdef BLOCK_KERNEL
  lanes_t *m = NULL;
  if (n < 2 || !block_kernel_usable() || posix_memalign((void **)&m, 64, NT * sizeof(lanes_t)) != 0) return 0;
  double acc[BLK * NC];
  const double *row[BLK];
  for (int64_t r = 0; r < n; r += BLK) {{
    int64_t count = n - r < BLK ? n - r : BLK;
    for (int i = 0; i < BLK; ++i) row[i] = rows + (r + (i < count ? i : count - 1)) * NF;
    raw_scores_block(row, acc, m);
    for (int64_t i = 0; i < count; ++i) probabilities(acc + i * NC, out + (r + i) * NOUT);
  }}
  free(m);
  return 1;
#else
  (void)rows; (void)n; (void)out;
  return 0;
#endif
}}
"""
